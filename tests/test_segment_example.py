"""examples/segment_flask_app.py: a Segment-instrumented Flask app, moved to Vitally by one import line.

The app runs in a fresh interpreter (the module state of ``analytics_vitally.segment``, such as
the traits identify() holds, must not leak between tests), driven by Flask's test client, against
the local receiver. ``upload_interval`` is set long before the app is imported, so nothing leaves
on the interval: what arrives was sent at exit (the app's ``atexit`` flush, then the library's drain).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest

from analytics_vitally.settings import BATCH_PATH
from analytics_vitally.testing import Receiver

from .conftest import TOKEN

APP = Path(__file__).resolve().parent.parent / "examples" / "segment_flask_app.py"
OUR_IMPORT = "import analytics_vitally.segment as analytics"
SEGMENT_IMPORT = "import segment.analytics as analytics"

DRIVE = """
import json
import sys

import analytics_vitally.segment

analytics_vitally.segment.upload_interval = 60  # only the flush at exit can deliver
sys.path.insert(0, {examples!r})
from segment_flask_app import app

client = app.test_client()
answers = [
    client.post("/signup", json={{
        "user_id": "u-1", "email": "ada@acme.example", "name": "Ada", "plan": "enterprise",
        "company_id": "acme", "company_name": "Acme Inc", "employees": 42,
    }}),
    client.post("/login", json={{"user_id": "u-2", "email": "bob@globex.example", "company_id": "globex"}}),
    client.get("/docs/quickstart?user_id=u-1"),
    client.post("/rename", json={{"previous_id": "u-1", "user_id": "ada"}}),
    client.post("/export", json={{"user_id": "u-1", "format": "csv", "rows": 1200}}),
]
print(json.dumps([[answer.status_code, answer.get_json()] for answer in answers]))
"""

EXPECTED: List[Dict[str, Any]] = [
    # /signup: group() sends the account, and the user with the traits identify() held for them
    {"type": "account", "accountId": "acme", "traits": {"name": "Acme Inc", "employees": 42}},
    {
        "type": "user",
        "userId": "u-1",
        "accountId": "acme",
        "traits": {"email": "ada@acme.example", "name": "Ada", "plan": "enterprise"},
    },
    # context["groupId"] is the account; context["ip"] is dropped
    {"type": "track", "userId": "u-1", "accountId": "acme", "event": "Signed Up", "properties": {"plan": "enterprise"}},
    # /login: identify() with context["groupId"] sends the user in that account at once
    {"type": "user", "userId": "u-2", "accountId": "globex", "traits": {"email": "bob@globex.example"}},
    # /docs/quickstart: page() is a track named as Segment's destinations name it
    {
        "type": "track",
        "userId": "u-1",
        "event": "Viewed Docs quickstart Page",
        "properties": {"name": "quickstart", "category": "Docs", "path": "/docs/quickstart"},
    },
    # /rename: alias() sends nothing
    # /export: {"All": False, "Vitally": True} is sent; {"Vitally": False} ("Export Rows Counted") is not
    {"type": "track", "userId": "u-1", "event": "Exported Data", "properties": {"format": "csv"}},
]


def run_app(receiver: Receiver) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VITALLY_")}
    env.update(VITALLY_WRITE_KEY=TOKEN, VITALLY_HOST=receiver.url, PYTHONUNBUFFERED="1")
    code = textwrap.dedent(DRIVE).format(examples=str(APP.parent))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def canonical(message: Dict[str, Any]) -> str:
    return json.dumps(message, sort_keys=True)


def test_segment_flask_app_sends_vitally_messages(receiver: Receiver) -> None:
    pytest.importorskip("flask")
    result = run_app(receiver)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers == [[200, {"ok": True}]] * 5, result.stderr

    assert receiver.wait_for(len(EXPECTED), timeout=10), (receiver.messages, result.stderr)
    arrived = [dict(message) for message in receiver.messages]  # the app has exited: nothing more can come
    assert len(set(receiver.message_ids())) == len(arrived)  # each message once
    for message in arrived:
        assert message.pop("messageId"), message
        assert message.pop("timestamp"), message
    assert sorted(map(canonical, arrived)) == sorted(map(canonical, EXPECTED)), result.stderr
    assert all(request.path == BATCH_PATH for request in receiver.requests)
    assert "alias()" in result.stderr  # the warning that alias() sent nothing
    assert "An error occurred" not in result.stderr  # the app's on_error was never called


def test_switching_from_segment_is_the_import_line() -> None:
    source = APP.read_text()
    assert source.count(OUR_IMPORT) == 1
    assert f"\n{OUR_IMPORT}  # was: {SEGMENT_IMPORT}\n" in source
    assert "analytics_vitally" not in source.replace(OUR_IMPORT, SEGMENT_IMPORT)
