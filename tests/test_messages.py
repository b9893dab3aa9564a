"""Every message type, its fields on the wire, and every bad-input case at the call site."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict

import pytest

from analytics_vitally import Client, InvalidMessageError, InvalidTypeError
from analytics_vitally.messages import RULES, problems

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


@pytest.fixture
def client() -> Client:
    return Client("k", send=False)


def test_every_message_type_has_its_wire_fields(client: Client) -> None:
    built = [
        client.organization("org-1", {"name": "World Cup"})[1],
        client.group("acct-1", {"name": "Argentina"}, organization_id="org-1")[1],
        client.identify("32", {"name": "Lionel Messi"}, account_id="acct-1")[1],
        client.track("32", "scored-goal", {"minute": 14})[1],
        client.unlink("32", "acct-1")[1],
        client.custom_object_instance("deal-9", "co-123", {"stage": "won"}, name="Q1", account_id="acct-1")[1],
    ]
    without_generated = [{k: v for k, v in m.items() if k not in ("messageId", "timestamp")} for m in built]
    assert without_generated == [
        {"type": "organization", "organizationId": "org-1", "traits": {"name": "World Cup"}},
        {"type": "account", "accountId": "acct-1", "organizationId": "org-1", "traits": {"name": "Argentina"}},
        {"type": "user", "userId": "32", "accountId": "acct-1", "traits": {"name": "Lionel Messi"}},
        {"type": "track", "userId": "32", "event": "scored-goal", "properties": {"minute": 14}},
        {"type": "unlink", "userId": "32", "accountId": "acct-1"},
        {
            "type": "customobjectinstance",
            "externalId": "deal-9",
            "customObjectId": "co-123",
            "name": "Q1",
            "accountId": "acct-1",
            "traits": {"stage": "won"},
        },
    ]
    assert {m["type"] for m in built} == set(RULES)
    for message in built:
        assert str(uuid.UUID(message["messageId"], version=4)) == message["messageId"]
        assert TIMESTAMP.match(message["timestamp"])
        assert list(problems(message)) == []


def test_defaults_and_absent_optionals(client: Client) -> None:
    _, account = client.group("a")
    _, user = client.identify("u", organization_id="o")
    _, event = client.track(None, "renewed", account_id="a")
    assert account["traits"] == {} and "organizationId" not in account
    assert user["traits"] == {} and "accountId" not in user
    assert event["properties"] == {} and "userId" not in event
    assert all(value is not None for m in (account, user, event) for value in m.values())


def test_integer_ids_become_strings(client: Client) -> None:
    _, message = client.track(32, "e", account_id=7, organization_id=9)
    assert (message["userId"], message["accountId"], message["organizationId"]) == ("32", "7", "9")


def test_message_ids_are_unique_and_caller_ids_kept(client: Client) -> None:
    ids = {client.track("u", "e")[1]["messageId"] for _ in range(1000)}
    assert len(ids) == 1000
    assert client.track("u", "e", message_id="mine-1")[1]["messageId"] == "mine-1"


def test_timestamps_are_utc_milliseconds(client: Client) -> None:
    aware = datetime(2018, 5, 15, 14, 31, 12, 123999, tzinfo=timezone(timedelta(hours=2)))
    naive = datetime(2018, 5, 15, 12, 31, 12, 123000)
    assert client.track("u", "e", timestamp=aware)[1]["timestamp"] == "2018-05-15T12:31:12.123Z"
    assert client.track("u", "e", timestamp=naive)[1]["timestamp"] == "2018-05-15T12:31:12.123Z"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    stamped = client.track("u", "e")[1]["timestamp"]
    after = datetime.now(timezone.utc)
    parsed = datetime.strptime(stamped, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert before - timedelta(milliseconds=1) <= parsed <= after


Call = Callable[[Client], Any]
BAD_CALLS: Dict[str, tuple[Call, type, str]] = {
    "no event": (lambda c: c.track("u", None), InvalidMessageError, "event"),
    "empty event": (lambda c: c.track("u", ""), InvalidMessageError, "event"),
    "event not a string": (lambda c: c.track("u", 5), InvalidTypeError, "event"),
    "track without anyone": (lambda c: c.track(None, "e"), InvalidMessageError, "user_id"),
    "user without account": (lambda c: c.identify("u", {}), InvalidMessageError, "account_id"),
    "user without id": (lambda c: c.identify(None, {}, account_id="a"), InvalidMessageError, "user_id"),
    "empty user id": (lambda c: c.identify("", {}, account_id="a"), InvalidMessageError, "user_id"),
    "float id": (lambda c: c.identify(1.5, {}, account_id="a"), InvalidTypeError, "user_id"),
    "bool id": (lambda c: c.group(True), InvalidTypeError, "account_id"),
    "account without id": (lambda c: c.group(None), InvalidMessageError, "account_id"),
    "organization without id": (lambda c: c.organization(None), InvalidMessageError, "organization_id"),
    "unlink without account": (lambda c: c.unlink("u", None), InvalidMessageError, "account_id"),
    "unlink without user": (lambda c: c.unlink(None, "a"), InvalidMessageError, "user_id"),
    "object without external id": (
        lambda c: c.custom_object_instance(None, "co", {}, account_id="a"),
        InvalidMessageError,
        "external_id",
    ),
    "object without custom object id": (
        lambda c: c.custom_object_instance("x", None, {}, account_id="a"),
        InvalidMessageError,
        "custom_object_id",
    ),
    "object without owner": (lambda c: c.custom_object_instance("x", "co", {}), InvalidMessageError, "account_id"),
    "object name not a string": (
        lambda c: c.custom_object_instance("x", "co", {}, name=3, account_id="a"),
        InvalidTypeError,
        "name",
    ),
    "traits not a dict": (lambda c: c.identify("u", ["x"], account_id="a"), InvalidTypeError, "traits"),
    "properties not a dict": (lambda c: c.track("u", "e", "x"), InvalidTypeError, "properties"),
    "timestamp a string": (lambda c: c.track("u", "e", timestamp="2020-01-01"), InvalidTypeError, "timestamp"),
    "timestamp a number": (lambda c: c.track("u", "e", timestamp=1.5), InvalidTypeError, "timestamp"),
    "message id a number": (lambda c: c.track("u", "e", message_id=5), InvalidTypeError, "message_id"),
    "NaN": (lambda c: c.track("u", "e", {"x": float("nan")}), InvalidMessageError, "properties['x']"),
    "infinity": (lambda c: c.group("a", {"n": [1, float("inf")]}), InvalidMessageError, "traits['n'][1]"),
    "unencodable": (lambda c: c.track("u", "e", {"o": object()}), InvalidTypeError, "properties['o']"),
    "bad key": (lambda c: c.track("u", "e", {"d": {(1, 2): 3}}), InvalidTypeError, "properties['d']"),
    "too big": (lambda c: c.track("u", "e", {"blob": "x" * 600_000}), InvalidMessageError, "message"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_naming_the_parameter(client: Client, case: str) -> None:
    call, kind, field = BAD_CALLS[case]
    with pytest.raises(kind) as raised:
        call(client)
    assert raised.value.field == field
    assert str(raised.value).startswith(field)
    assert client.stats().enqueued == 0


def test_user_without_account_says_how_to_fix_it(client: Client) -> None:
    with pytest.raises(ValueError, match=r"account_id or organization_id is required .*pass the account"):
        client.identify("u", {"name": "x"})


def test_errors_are_value_and_type_errors(client: Client) -> None:
    with pytest.raises(ValueError):
        client.track("u", "")
    with pytest.raises(TypeError):
        client.track("u", "e", [])


def test_problems_names_wire_fields_and_finds_all() -> None:
    found = list(problems({"type": "user", "userId": 5, "traits": [], "writeKey": "x"}))
    assert [p.field for p in found] == ["accountId", "userId", "traits", "messageId", "writeKey"]
    assert [p.field for p in problems({"type": "page"})] == ["type"]
    assert [p.field for p in problems([])] == ["message"]
    bad_time = {"type": "unlink", "userId": "u", "accountId": "a", "timestamp": "2018-05-15 12:31"}
    assert [p.field for p in problems(bad_time)] == ["timestamp"]
    ok = {"type": "unlink", "userId": "u", "accountId": "a", "timestamp": "2018-05-15T12:31:12.123Z"}
    assert list(problems(ok)) == []
