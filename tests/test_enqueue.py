"""Client.enqueue: messages already in Vitally's wire form, checked by the same rules table."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict

import pytest

from analytics_vitally import Client, InvalidMessageError, InvalidTypeError
from analytics_vitally.testing import Receiver

from .conftest import MakeClient


def test_a_wire_message_is_completed_and_delivered(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client()
    queued, message = client.enqueue(
        {
            "type": "track",
            "userId": 32,
            "event": "scored-goal",
            "accountId": None,
            "timestamp": "2023-05-15T14:31:12+02:00",
        }
    )
    assert queued
    assert client.flush(timeout=10)
    [arrived] = receiver.messages
    assert arrived == message
    assert arrived["userId"] == "32" and "accountId" not in arrived
    assert arrived["properties"] == {}
    assert arrived["timestamp"] == "2023-05-15T12:31:12.000Z"
    assert len(arrived["messageId"]) == 36


def test_a_given_message_id_is_kept_and_no_timestamp_is_added(make_client: MakeClient) -> None:
    client = make_client(send=False)
    _, message = client.enqueue({"type": "user", "userId": "u", "accountId": "a", "messageId": "m-1"})
    assert message == {"type": "user", "userId": "u", "accountId": "a", "traits": {}, "messageId": "m-1"}


def test_a_datetime_timestamp_is_written_in_vitallys_form(make_client: MakeClient) -> None:
    client = make_client(send=False)
    moment = datetime(2020, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    _, message = client.enqueue({"type": "organization", "organizationId": "o", "timestamp": moment})
    assert message["timestamp"] == "2020-01-02T03:04:05.678Z"


@pytest.mark.parametrize(
    "wire, field, kind",
    [
        ({"type": "track", "event": "e"}, "userId", InvalidMessageError),
        ({"type": "track", "userId": "u", "event": 5}, "event", InvalidTypeError),
        (
            {"type": "track", "userId": "u", "event": "e", "properties": {"price": float("nan")}},
            "properties['price']",
            InvalidMessageError,
        ),
        ({"type": "track", "userId": "u", "event": "e", "timestamp": "yesterday"}, "timestamp", InvalidMessageError),
        ({"type": "track", "userId": "u", "event": "e", "timestamp": 5}, "timestamp", InvalidMessageError),
        ({"type": "unlink", "userId": "u"}, "accountId", InvalidMessageError),
        ({"type": "page", "userId": "u"}, "type", InvalidMessageError),
        ({"type": ["track"]}, "type", InvalidMessageError),
        ({"type": "track", "userId": "u", "event": "e", "writeKey": "k"}, "writeKey", InvalidMessageError),
        (["track"], "message", InvalidTypeError),
    ],
)
def test_errors_name_the_wire_field(wire: Any, field: str, kind: type, make_client: MakeClient) -> None:
    client = make_client(send=False)
    with pytest.raises(kind) as raised:
        client.enqueue(wire)
    assert raised.value.field == field  # type: ignore[attr-defined]


def test_the_callers_dict_is_not_changed(make_client: MakeClient) -> None:
    client = make_client(send=False)
    wire: Dict[str, Any] = {"type": "track", "userId": 7, "event": "e"}
    client.enqueue(wire)
    assert wire == {"type": "track", "userId": 7, "event": "e"}


def test_the_module_level_enqueue(module_api: Any, receiver: Receiver) -> None:
    module_api.enqueue({"type": "account", "accountId": "a", "traits": {"name": "Argentina"}})
    assert module_api.flush(timeout=10)
    assert receiver.messages[0]["traits"] == {"name": "Argentina"}


def test_same_rules_as_the_methods(make_client: MakeClient) -> None:
    client: Client = make_client(send=False)
    _, by_method = client.track("32", "e", {"a": 1}, message_id="m", timestamp=datetime(2020, 1, 1))
    _, by_wire = client.enqueue(
        {
            "type": "track",
            "userId": "32",
            "event": "e",
            "properties": {"a": 1},
            "messageId": "m",
            "timestamp": "2020-01-01T00:00:00",
        }
    )
    assert by_method == by_wire
