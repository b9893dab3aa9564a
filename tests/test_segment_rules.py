"""The rules by which ``analytics_vitally.segment`` turns Segment's calls into Vitally's messages.

Each test makes Segment-shaped calls and asserts on what reached the local receiver (the
ported Segment suite is ``test_segment_dropin.py``; the example app, ``test_segment_example.py``).
"""

from __future__ import annotations

import gc
import logging
import math
import warnings
import weakref
from datetime import datetime, timezone
from typing import Any, Dict, List

import pytest

import analytics_vitally
from analytics_vitally import ConfigurationError, InvalidMessageError, InvalidTypeError
from analytics_vitally.segment import Client
from analytics_vitally.testing import Receiver

from .conftest import TOKEN, run_script

LOGGER = "analytics_vitally"


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> List[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and text in r.getMessage()
    ]


def by_type(messages: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    return [message for message in messages if message["type"] == kind]


# group: an account and the user's link to it ---------------------------------------------


def test_group_sends_the_account_and_the_user_linked_to_it(segment_api: Any, receiver: Receiver) -> None:
    queued, message = segment_api.group("u1", "acct-1", {"name": "Argentina"})
    assert queued and message["type"] == "group" and message["groupId"] == "acct-1"
    segment_api.flush()
    (account,) = by_type(receiver.messages, "account")
    (user,) = by_type(receiver.messages, "user")
    assert account["accountId"] == "acct-1" and account["traits"] == {"name": "Argentina"}
    assert user["userId"] == "u1" and user["accountId"] == "acct-1" and user["traits"] == {}
    assert len(receiver.messages) == 2


def test_a_replayed_group_makes_the_same_pair_of_message_ids(segment_api: Any, receiver: Receiver) -> None:
    for _ in range(2):
        segment_api.group("u1", "acct-1", {"name": "A"}, message_id="replayed-1")
    segment_api.group("u1", "acct-1", {"name": "A"}, message_id="another-1")
    segment_api.group("u1", "acct-1", {"name": "A"})
    segment_api.group("u1", "acct-1", {"name": "A"})
    segment_api.flush()
    ids = [
        (a["messageId"], u["messageId"]) for a, u in zip(*(by_type(receiver.messages, k) for k in ("account", "user")))
    ]
    assert len(ids) == 5
    assert ids[0] == ids[1]
    assert ids[0][0] != ids[0][1]  # the account and the user message are two messages to Vitally
    assert len({ids[0], ids[2], ids[3], ids[4]}) == 4  # another message_id, or none: another pair


def test_group_with_only_an_anonymous_id_still_sends_the_account(segment_api: Any, receiver: Receiver) -> None:
    segment_api.group(group_id="acct-9", traits={"name": "Nine"}, anonymous_id="anon-1")
    segment_api.flush()
    assert [(m["type"], m["accountId"]) for m in receiver.messages] == [("account", "acct-9")]


def test_errors_name_the_segment_arguments(segment_api: Any) -> None:
    with pytest.raises(InvalidMessageError, match="group_id"):
        segment_api.group("u1", None)
    with pytest.raises(InvalidTypeError, match="group_id"):
        segment_api.group("u1", ["not", "an", "id"])
    with pytest.raises(InvalidTypeError, match=r"context\['groupId'\]"):
        segment_api.track("u1", "Event", context={"groupId": {"id": 1}})
    with pytest.raises(InvalidMessageError, match="user_id or anonymous_id"):
        segment_api.track(event="Nobody's")
    with pytest.raises(InvalidTypeError, match="traits"):
        segment_api.identify("u1", ["a", "list"])
    with pytest.raises(InvalidMessageError, match="event"):
        segment_api.track("u1")


# identify: the account from context["groupId"], from a group(), or held until one ------------


def test_identify_with_context_group_id_is_sent_at_once(segment_api: Any, receiver: Receiver) -> None:
    segment_api.identify("u1", {"email": "a@example.com"}, {"groupId": "acct-1", "ip": "10.0.0.1"})
    segment_api.flush()
    assert receiver.messages[0]["type"] == "user"
    assert receiver.messages[0]["accountId"] == "acct-1"
    assert receiver.messages[0]["traits"] == {"email": "a@example.com"}
    assert "context" not in receiver.messages[0] and "ip" not in str(receiver.messages[0])


def test_identify_goes_to_the_account_of_the_user_s_last_group(segment_api: Any, receiver: Receiver) -> None:
    segment_api.group("u1", "acct-1")
    segment_api.group("u1", "acct-2")
    segment_api.identify("u1", {"plan": "pro"})
    segment_api.flush()
    user = by_type(receiver.messages, "user")[-1]
    assert user["accountId"] == "acct-2" and user["traits"] == {"plan": "pro"}


def test_identify_without_an_account_is_held_until_group_and_said_once(
    segment_api: Any, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    assert segment_api.identify("u1", {"email": "a@example.com", "plan": "free"})[0] is True
    assert segment_api.identify("u1", {"plan": "pro"})[0] is True
    assert segment_api.identify("u2", {"email": "b@example.com"})[0] is True
    segment_api.flush()
    assert receiver.messages == []
    assert len(warnings_of(caplog, "held")) == 1
    segment_api.group("u1", "acct-1", {"name": "One"})
    segment_api.flush()
    (user,) = by_type(receiver.messages, "user")
    assert user["accountId"] == "acct-1"
    assert user["traits"] == {"email": "a@example.com", "plan": "pro"}  # both identifies, the later one winning
    segment_api.group("u1", "acct-1")
    segment_api.flush()
    assert by_type(receiver.messages, "user")[-1]["traits"] == {}  # sent once: no longer held


def test_held_traits_are_bounded_and_what_is_let_go_is_said(
    segment_api: Any, receiver: Receiver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analytics_vitally.segment import accounts

    monkeypatch.setattr(accounts, "MAX_USERS", 3)
    for index in range(5):
        segment_api.identify(f"u{index}", {"n": index})
    assert len(warnings_of(caplog, "let go")) == 1
    for index in range(5):
        segment_api.group(f"u{index}", "acct-1")
    segment_api.flush()
    traits = {m["userId"]: m["traits"] for m in by_type(receiver.messages, "user")}
    assert traits == {"u0": {}, "u1": {}, "u2": {"n": 2}, "u3": {"n": 3}, "u4": {"n": 4}}


def test_a_client_nobody_holds_is_collected_and_says_what_it_held(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(TOKEN, receiver.url)
    client.identify("u1", {"plan": "pro"})
    client.track("u1", "Sent before it was dropped")
    gone = weakref.ref(client)
    del client
    gc.collect()
    assert gone() is None
    assert len(warnings_of(caplog, "identify() traits of 1 user(s) were never sent")) == 1
    assert receiver.wait_for(1) and receiver.messages[0]["event"] == "Sent before it was dropped"


def test_what_is_still_held_at_exit_is_logged_with_its_count(receiver: Receiver) -> None:
    result = run_script(
        f"""
        import analytics_vitally.segment as analytics
        analytics.write_key = {TOKEN!r}
        analytics.host = {receiver.url!r}
        analytics.identify("u1", {{"plan": "pro"}})
        analytics.identify("u2", {{"plan": "free"}})
        analytics.track("u1", "Sent")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "identify() traits of 2 user(s) were never sent" in result.stderr
    assert receiver.wait_for(1) and [m["event"] for m in receiver.messages] == ["Sent"]


# track, page, screen ----------------------------------------------------------------------


def test_track_takes_its_account_from_context_group_id_and_drops_the_rest(segment_api: Any, receiver: Receiver) -> None:
    segment_api.track("u1", "Exported", {"rows": 3}, {"groupId": "acct-1", "ip": "10.0.0.1", "library": {}})
    segment_api.track("u1", "Exported", {"rows": 4}, {"ip": "10.0.0.1"}, anonymous_id="anon-1")
    segment_api.flush()
    first, second = receiver.messages
    assert first["accountId"] == "acct-1" and first["properties"] == {"rows": 3}
    assert "accountId" not in second
    assert set(first) == {"type", "userId", "accountId", "event", "properties", "messageId", "timestamp"}


def test_page_and_screen_are_tracks_named_as_segment_destinations_name_them(
    segment_api: Any, receiver: Receiver
) -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    segment_api.page("u1", "Docs", "Install", {"path": "/docs/install"}, timestamp=when, message_id="page-1")
    segment_api.page("u1", name="Pricing", properties={"name": "given wins"})
    segment_api.page("u1")
    segment_api.screen("u1", "Settings", "Billing")
    segment_api.screen("u1")
    segment_api.flush()
    assert [m["event"] for m in receiver.messages] == [
        "Viewed Docs Install Page",
        "Viewed Pricing Page",
        "Loaded a Page",
        "Viewed Settings Billing Screen",
        "Loaded a Screen",
    ]
    first = receiver.messages[0]
    assert first["properties"] == {"path": "/docs/install", "name": "Install", "category": "Docs"}
    assert first["messageId"] == "page-1" and first["timestamp"] == "2024-05-06T07:08:09.000Z"
    assert receiver.messages[1]["properties"] == {"name": "given wins"}


# what is not sent -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "integrations,sent",
    [
        ({"All": False}, False),
        ({"Vitally": False}, False),
        ({"All": True, "Vitally": False}, False),
        ({"All": False, "Vitally": True}, True),
        ({"All": False, "Vitally": {"someOption": 1}}, True),
        ({"Amplitude": True}, True),
        ({"Amplitude": False}, True),
        ({}, True),
    ],
)
def test_integrations_route_as_segment_routes(
    segment_api: Any, receiver: Receiver, integrations: Dict[str, Any], sent: bool
) -> None:
    assert segment_api.track("u1", "Routed", integrations=integrations)[0] is True
    assert segment_api.identify("u1", {"a": 1}, {"groupId": "acct-1"}, integrations=integrations)[0] is True
    assert segment_api.group("u1", "acct-1", integrations=integrations)[0] is True
    assert segment_api.page("u1", integrations=integrations)[0] is True
    segment_api.flush()
    assert len(receiver.messages) == (5 if sent else 0)


def test_anonymous_calls_and_alias_send_nothing_and_say_so_once_each(
    segment_api: Any, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    for index in range(3):
        assert segment_api.track(anonymous_id=f"anon-{index}", event="Browsed")[0] is True
        assert segment_api.identify(anonymous_id=f"anon-{index}", traits={"a": 1})[0] is True
        assert segment_api.page(anonymous_id=f"anon-{index}", name="Home")[0] is True
        queued, message = segment_api.alias(f"anon-{index}", "u1")
        assert queued is True and message["type"] == "alias" and message["previousId"] == f"anon-{index}"
    segment_api.flush()
    assert receiver.messages == []
    assert len(warnings_of(caplog, "anonymous_id")) == 1
    assert len(warnings_of(caplog, "alias()")) == 1
    with pytest.raises(InvalidMessageError, match="previous_id"):
        segment_api.alias(None, "u1")


# values Segment cleans --------------------------------------------------------------------


class Opaque:
    pass


def test_values_segment_cleans_are_cleaned_and_each_dropped_one_is_named(
    segment_api: Any, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    properties = {
        "raw": b"bytes",
        "object": Opaque(),
        "nan": math.nan,
        "latin1": b"\xff\xfe",
        "nested": {"list": [b"x", Opaque(), 1, (2, 3)], "ok": True},
        "kept": 1.5,
    }
    queued, message = segment_api.track("u1", "Cleaned", properties)
    segment_api.identify("u1", {"avatar": b"png", "object": Opaque()}, {"groupId": "acct-1"})
    segment_api.group("u1", "acct-1", {"logo": bytearray(b"svg"), "inf": math.inf})
    assert queued is True
    segment_api.flush()
    track, user, account, link = receiver.messages
    assert link["type"] == "user" and link["accountId"] == "acct-1"
    assert track["properties"] == {"raw": "bytes", "nested": {"list": ["x", 1, [2, 3]], "ok": True}, "kept": 1.5}
    assert message["properties"] == track["properties"]
    assert user["traits"] == {"avatar": "png"}
    assert account["traits"] == {"logo": "svg"}
    dropped = warnings_of(caplog, "was left out")
    for path in ("properties['object']", "properties['nan']", "properties['latin1']", "traits['inf']"):
        assert any(line.startswith(path) for line in dropped), (path, dropped)
    assert any(line.startswith("properties['nested']['list'][1]") for line in dropped), dropped


def test_what_segment_refuses_still_raises_and_sends_nothing(segment_api: Any, receiver: Receiver) -> None:
    with pytest.raises(InvalidMessageError):
        segment_api.track("u1", "Too big", {"blob": "x" * 600_000})
    with pytest.raises(InvalidTypeError, match="properties"):
        segment_api.track("u1", "Listed", ["not", "a", "dict"])
    segment_api.flush()
    assert receiver.messages == []


# timestamps ---------------------------------------------------------------------------------


def test_a_naive_timestamp_of_now_is_local_time_and_an_old_one_utc(receiver: Receiver) -> None:
    result = run_script(
        f"""
        from datetime import datetime
        import analytics_vitally.segment as analytics
        analytics.write_key = {TOKEN!r}
        analytics.host = {receiver.url!r}
        now = datetime.now()
        analytics.track("u1", "Now", timestamp=now)
        analytics.track("u1", "Old", timestamp=datetime(2014, 9, 3, 12, 0))
        analytics.flush()
        print(now.isoformat())
        """,
        TZ="Asia/Tokyo",
    )
    assert result.returncode == 0, result.stderr
    local = datetime.fromisoformat(result.stdout.strip())
    now, old = receiver.messages
    sent = datetime.strptime(now["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs((local - sent).total_seconds() - 9 * 3600) < 1  # Tokyo is UTC+9
    assert old["timestamp"] == "2014-09-03T12:00:00.000Z"


# settings and the default client ------------------------------------------------------------


def test_client_takes_segment_s_positional_order_and_its_own_settings(receiver: Receiver) -> None:
    errors: List[Any] = []
    client = Client(TOKEN, receiver.url, False, 1234, True, lambda e, b: errors.append(e), max_total_backoff_duration=7)
    try:
        assert client.host == receiver.url and client.max_queue_size == 1234 and client.max_retry_time == 7
        assert client.oauth_scope == "tracking_api:write" and client.max_rate_limit_duration is None
        client.track("u1", "Positional")
        assert client.flush(timeout=10)
        assert [m["event"] for m in receiver.messages] == ["Positional"] and errors == []
    finally:
        client.shutdown(timeout=5)
    with pytest.raises(TypeError, match="multiple values"):
        Client(TOKEN, receiver.url, host=receiver.url)
    with pytest.raises(TypeError, match="spool"):
        Client(TOKEN, receiver.url, spoool="x")


def test_segment_only_settings_are_accepted_and_oauth_credentials_refused(receiver: Receiver) -> None:
    client = Client(TOKEN, host=receiver.url, oauth_client_id=None, oauth_key_id=None, max_rate_limit_duration=1800)
    client.shutdown(timeout=5)
    with pytest.raises(ConfigurationError, match="oauth_client_id"):
        Client(TOKEN, host=receiver.url, oauth_client_id="id", oauth_client_key="key", oauth_key_id="kid")
    with pytest.raises(ConfigurationError, match="max_rate_limit_duration"):
        Client(TOKEN, host=receiver.url, max_rate_limit_duration=-1)


def test_upload_size_above_100_is_capped_with_one_warning(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    client = Client(TOKEN, receiver.url, upload_size=500, upload_interval=60)
    try:
        assert client.upload_size == 100
        for index in range(250):
            client.track("u1", "Batch", {"i": index})
        assert client.flush(timeout=20)
    finally:
        client.shutdown(timeout=5)
    assert len(receiver.messages) == 250
    assert max(len(request.messages or []) for request in receiver.requests) == 100
    assert len(warnings_of(caplog, "upload_size=500")) == 1


@pytest.mark.parametrize(
    "host", ["https://api.segment.io", "https://events.eu1.segmentapis.com/", "https://API.Segment.io/v1/batch"]
)
def test_a_segment_host_is_refused_with_the_way_to_vitally(host: str, segment_api: Any) -> None:
    with pytest.raises(ConfigurationError, match="subdomain"):
        Client(TOKEN, host)
    with pytest.raises(ConfigurationError, match="Segment's API"):
        analytics_vitally.Client(TOKEN, host=host)
    segment_api.host = host
    with pytest.raises(ConfigurationError, match="Segment's API"):
        segment_api.track("u1", "Never sent")


def test_default_client_is_none_until_the_first_call_and_none_makes_a_new_one(
    segment_api: Any, receiver: Receiver
) -> None:
    assert segment_api.default_client is None
    segment_api.flush()
    first = segment_api.default_client
    assert isinstance(first, Client) and first.write_key == TOKEN
    segment_api.default_client = None
    segment_api.gzip = True
    segment_api.track("u1", "After reset")
    assert segment_api.default_client is not first and segment_api.default_client.gzip is True
    segment_api.flush()
    assert [m["event"] for m in receiver.messages] == ["After reset"]
    assert receiver.requests[-1].headers.get("content-encoding") == "gzip"


def test_a_setting_changed_after_the_client_was_made_warns_once_and_a_typo_raises(segment_api: Any) -> None:
    segment_api.flush()
    with pytest.warns(RuntimeWarning, match="default_client = None"):
        segment_api.debug = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segment_api.debug = False  # said once
        segment_api.oauth_scope = "tracking_api:" + "write"  # an equal value is no change
    with pytest.raises(AttributeError, match="write_key"):
        segment_api.wirte_key = "typo"
    with pytest.warns(RuntimeWarning, match="oauth_scope"):
        segment_api.oauth_scope = "other"  # Segment's own names are settings too
