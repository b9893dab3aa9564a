"""Segment call shapes, each a short script written for Segment's ``analytics-python`` 2.4.0, and what
Vitally needs to receive from it.

The shapes come from Segment's own tests (``test_client.py``, ``test_module.py``, ``test_init.py``),
its README and its spec (``context.groupId``), grouped by area. Each runs in a fresh interpreter with
only its import swapped (``import <module> as analytics``) against a local receiver, and passes when it
raised nothing and the receiver got exactly the expected messages (field subsets, in order).

    python tests/segment_shapes.py                              # against analytics_vitally.segment
    python tests/segment_shapes.py --module analytics_vitally   # the main module, import swapped alone

prints the table per area. ``tests/test_segment_shapes.py`` runs every shape against the face.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

TOKEN = "test-token"


@dataclass(frozen=True)
class Shape:
    area: str
    name: str
    code: str
    expected: List[Dict[str, Any]] = field(default_factory=list)
    """Each message Vitally must get, as a subset of its fields, in order."""


def track(**fields: Any) -> Dict[str, Any]:
    return {"type": "track", **fields}


def user(**fields: Any) -> Dict[str, Any]:
    return {"type": "user", **fields}


def account(**fields: Any) -> Dict[str, Any]:
    return {"type": "account", **fields}


E = "python test event"
T = "2014-09-03T00:00:00.000Z"
ADVANCED = '{"property": "value"}, {"ip": "192.168.0.1"}, datetime(2014, 9, 3), "anonymousId", {"Amplitude": True}'
ONE = [track(userId="userId", event="python module event")]
"""What a settings shape sends: its one track."""

SETTINGS = [
    Shape("module settings", name, f'{code}\nanalytics.track("userId", "python module event")', ONE)
    for name, code in [
        ("debug", "analytics.debug = True"),
        ("gzip", "analytics.gzip = True"),
        ("max_queue_size", "analytics.max_queue_size = 1337"),
        ("sync_mode", "analytics.sync_mode = True"),
        ("timeout", "analytics.timeout = 1.234"),
        ("max_retries", "analytics.max_retries = 3"),
        ("send and on_error", "analytics.send = True\nanalytics.on_error = lambda error, batch: None"),
        ("oauth_* left None", "analytics.oauth_client_id = None\nanalytics.oauth_key_id = None"),
        ("default_client reset", "analytics.flush()\nanalytics.default_client = None\nanalytics.debug = False"),
        ("log_handler", "import logging\nanalytics.log_handler = logging.NullHandler()"),
    ]
]

TRACKS = [
    Shape("track", "basic", 'analytics.track("userId", "python test event")', [track(userId="userId", event=E)]),
    Shape(
        "track",
        "stringifies user_id",
        "analytics.track(user_id=157963456373623802, event=E)",
        [track(userId="157963456373623802")],
    ),
    Shape("track", "numeric user_id", "analytics.track(1234, E)", [track(userId="1234")]),
    Shape(
        "track",
        "advanced, 8 positional",
        f'analytics.track("userId", E, {ADVANCED}, "messageId")',
        [track(userId="userId", properties={"property": "value"}, timestamp=T, messageId="messageId")],
    ),
    Shape("track", "context=", 'analytics.track("u", E, {"p": 1}, context={"ip": "1.2.3.4"})', [track(userId="u")]),
    Shape("track", "integrations=", 'analytics.track("u", E, integrations={"Amplitude": True})', [track(userId="u")]),
    Shape("track", "anonymous_id beside user_id", 'analytics.track("u", E, anonymous_id="a")', [track(userId="u")]),
    Shape("track", "4th positional (context)", 'analytics.track("u", E, {"p": 1}, {"ip": "1.2.3.4"})', [track()]),
    Shape("track", "timestamp=", 'analytics.track("u", E, timestamp=datetime(2014, 9, 3))', [track(timestamp=T)]),
    Shape("track", "message_id=", 'analytics.track("u", E, message_id="m-1")', [track(messageId="m-1")]),
    Shape(
        "track", "a bytes value", 'analytics.track("u", E, {"blob": b"bytes"})', [track(properties={"blob": "bytes"})]
    ),
    Shape(
        "track",
        "a date value",
        'analytics.track("u", E, {"on": date(1981, 2, 2)})',
        [track(properties={"on": "1981-02-02"})],
    ),
    Shape("track", "context.groupId", 'analytics.track("u", E, context={"groupId": "g1"})', [track(accountId="g1")]),
    Shape(
        "track",
        "a Decimal value",
        'analytics.track("u", E, {"price": Decimal("9.99")})',
        [track(properties={"price": 9.99})],
    ),
    Shape(
        "track",
        "integrations All off, Vitally on",
        'analytics.track("u", E, integrations={"All": False, "Vitally": True})',
        [track(userId="u")],
    ),
    Shape(
        "track",
        "a tuple value",
        'analytics.track("u", E, {"tags": ("a", "b")})',
        [track(properties={"tags": ["a", "b"]})],
    ),
    Shape(
        "track",
        "all keywords",
        'analytics.track(user_id="u", event=E, properties={"nested": {"a": [1, 2]}})',
        [track(properties={"nested": {"a": [1, 2]}})],
    ),
]

LINKED = [user(userId="userId", accountId="groupId")]
IDENTIFIES = [
    Shape(
        "identify",
        "basic, then group (Segment's order)",
        'analytics.identify("userId", {"email": "user@email.com"})\nanalytics.group("userId", "groupId")',
        [account(accountId="groupId"), user(userId="userId", accountId="groupId", traits={"email": "user@email.com"})],
    ),
    Shape(
        "identify",
        "advanced, 7 positional, then group",
        'analytics.identify("userId", {"trait": "value"}, {"ip": "192.168.0.1"}, datetime(2014, 9, 3), "anonymousId",'
        ' {"Amplitude": True}, "messageId")\nanalytics.group("userId", "groupId")',
        [account(accountId="groupId"), user(userId="userId", accountId="groupId", traits={"trait": "value"})],
    ),
    Shape(
        "identify",
        "context.groupId",
        'analytics.identify("userId", {"trait": "value"}, context={"groupId": "groupId"})',
        [user(userId="userId", accountId="groupId", traits={"trait": "value"})],
    ),
    Shape(
        "identify",
        "a date trait, keywords",
        'analytics.identify(user_id="userId", traits={"birthdate": date(1981, 2, 2)}, context={"groupId": "groupId"})',
        [user(userId="userId", accountId="groupId", traits={"birthdate": "1981-02-02"})],
    ),
    Shape(
        "identify",
        "anonymous_id beside user_id",
        'analytics.identify("userId", {"t": 1}, anonymous_id="a", context={"groupId": "groupId"})',
        LINKED,
    ),
    Shape(
        "identify",
        "no traits, then group",
        'analytics.identify("userId")\nanalytics.group("userId", "groupId")',
        [account(accountId="groupId"), user(userId="userId", accountId="groupId", traits={})],
    ),
    Shape(
        "identify",
        "numeric IDs",
        'analytics.identify(1234, {"t": 1}, {"groupId": 5})',
        [user(userId="1234", accountId="5")],
    ),
    Shape(
        "identify",
        "positional context with groupId",
        'analytics.identify("userId", {"t": 1}, {"ip": "1.2.3.4", "groupId": "groupId"})',
        LINKED,
    ),
]

PAIR = [account(accountId="groupId"), user(userId="userId", accountId="groupId")]
GROUPS = [
    Shape("group", "basic", 'analytics.group("userId", "groupId")', PAIR),
    Shape(
        "group",
        "advanced, 8 positional",
        'analytics.group("userId", "groupId", {"trait": "value"}, {"ip": "192.168.0.1"}, datetime(2014, 9, 3),'
        ' "anonymousId", {"Amplitude": True}, "messageId")',
        [account(accountId="groupId", traits={"trait": "value"}, timestamp=T), user(userId="userId", timestamp=T)],
    ),
    Shape(
        "group",
        "traits",
        'analytics.group("userId", "groupId", {"name": "Argentina"})',
        [account(traits={"name": "Argentina"}), user(accountId="groupId")],
    ),
    Shape("group", "keywords", 'analytics.group(user_id="userId", group_id="groupId", traits={"a": 1})', PAIR),
    Shape(
        "group", "numeric group_id", 'analytics.group("userId", 42)', [account(accountId="42"), user(accountId="42")]
    ),
    Shape("group", "message_id=", 'analytics.group("userId", "groupId", message_id="m-1")', PAIR),
    Shape("group", "context=", 'analytics.group("userId", "groupId", {"a": 1}, context={"ip": "1.2.3.4"})', PAIR),
]

PAGES = [
    Shape("page, screen", "page basic", 'analytics.page("userId")', [track(userId="userId", event="Loaded a Page")]),
    Shape("page, screen", "page name=", 'analytics.page("userId", name="name")', [track(event="Viewed name Page")]),
    Shape(
        "page, screen",
        "page advanced, 9 positional",
        f'analytics.page("userId", "category", "name", {ADVANCED}, "messageId")',
        [track(event="Viewed category name Page", messageId="messageId", timestamp=T)],
    ),
    Shape(
        "page, screen",
        "page with properties",
        'analytics.page("u", "Docs", "Install", {"path": "/docs"})',
        [track(properties={"path": "/docs", "name": "Install", "category": "Docs"})],
    ),
    Shape("page, screen", "screen basic", 'analytics.screen("userId")', [track(event="Loaded a Screen")]),
    Shape(
        "page, screen", "screen name=", 'analytics.screen("userId", name="name")', [track(event="Viewed name Screen")]
    ),
    Shape(
        "page, screen",
        "screen advanced, 9 positional",
        f'analytics.screen("userId", "category", "name", {ADVANCED}, "messageId")',
        [track(event="Viewed category name Screen", messageId="messageId")],
    ),
]

ALIASES = [
    Shape("alias", "basic", 'analytics.alias("previousId", "userId")'),
    Shape("alias", "keywords and context", 'analytics.alias(previous_id="a", user_id="b", context={"ip": "1.2.3.4"})'),
]

CLIENT_TRACK = '\nclient.track("userId", "python module event")\nclient.flush()'
CLIENTS = [
    Shape("Client(...)", name, code + CLIENT_TRACK, ONE)
    for name, code in [
        ("keywords, on_error", "client = analytics.Client(KEY, host=URL, on_error=lambda error, batch: None)"),
        ("write_key, host positional", "client = analytics.Client(KEY, URL)"),
        ("oauth_* None", "client = analytics.Client(KEY, host=URL, oauth_client_id=None, oauth_client_key=None)"),
        ("max_total_backoff_duration", "client = analytics.Client(KEY, host=URL, max_total_backoff_duration=60)"),
        ("upload_size=500 (Segment's docs)", "client = analytics.Client(KEY, host=URL, upload_size=500)"),
        ("sync_mode", "client = analytics.Client(KEY, host=URL, sync_mode=True)"),
        ("gzip, upload_size, upload_interval", "client = analytics.Client(KEY, host=URL, gzip=True, upload_size=10)"),
    ]
]

ENDINGS = [
    Shape("flush, join, shutdown", "flush() with nothing queued", "analytics.flush()"),
    Shape("flush, join, shutdown", "join()", 'analytics.track("userId", "python module event")\nanalytics.join()', ONE),
    Shape(
        "flush, join, shutdown",
        "shutdown()",
        'analytics.track("userId", "python module event")\nanalytics.shutdown()',
        ONE,
    ),
]

SHAPES: List[Shape] = SETTINGS + TRACKS + IDENTIFIES + GROUPS + PAGES + ALIASES + CLIENTS + ENDINGS
AREAS = [
    "module settings",
    "track",
    "identify",
    "group",
    "page, screen",
    "alias",
    "Client(...)",
    "flush, join, shutdown",
]

PRELUDE = """\
from datetime import date, datetime
from decimal import Decimal
import json, sys
import {module} as analytics
KEY, URL, E = {token!r}, {url!r}, "python test event"
analytics.write_key = KEY
analytics.host = URL
"""


def script(module: str, shape: Shape, url: str) -> str:
    """The shape as a program: the prelude (the import, the key, the receiver as host), the calls, a flush."""
    return PRELUDE.format(module=module, token=TOKEN, url=url) + shape.code + "\nanalytics.flush()\n"


def run(module: str, shape: Shape, url: str) -> Tuple[bool, str]:
    """Run ``shape`` in a fresh interpreter; (raised nothing, the last line of its error)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("VITALLY_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script(module, shape, url))],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stderr.strip().splitlines()
    return done.returncode == 0, lines[-1] if done.returncode and lines else ""


def arrived_as_expected(shape: Shape, messages: List[Dict[str, Any]]) -> bool:
    if len(messages) != len(shape.expected):
        return False
    return all(all(got.get(key) == value for key, value in want.items()) for got, want in zip(messages, shape.expected))


def main() -> None:
    from analytics_vitally.testing import Receiver

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default="analytics_vitally.segment")
    parser.add_argument("--verbose", action="store_true", help="one line per shape")
    args = parser.parse_args()
    passed: Dict[str, List[bool]] = {area: [] for area in AREAS}
    for shape in SHAPES:
        with Receiver(token=TOKEN) as receiver:
            ran, error = run(args.module, shape, receiver.url)
            ok = ran and arrived_as_expected(shape, receiver.messages)
            passed[shape.area].append(ok)
            if args.verbose or not ok:
                shown = error or json.dumps(receiver.messages)[:200]
                print(f"{'ok  ' if ok else 'FAIL'} {shape.area} / {shape.name}: {'' if ok else shown}", file=sys.stderr)
    print(f"| area | run unchanged with `import {args.module} as analytics` and deliver what Vitally needs |")
    print("| --- | ---: |")
    for area in AREAS:
        print(f"| {area} | {sum(passed[area])} / {len(passed[area])} |")
    total = [ok for found in passed.values() for ok in found]
    print(f"| **all** | **{sum(total)} / {len(total)}** |")


if __name__ == "__main__":
    main()
