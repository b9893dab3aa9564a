"""The local receiver answers like Vitally's batch endpoint (asked directly over HTTP)."""

from __future__ import annotations

import gzip
import json
from typing import Any, Dict, List

import requests

from analytics_vitally.testing import Receiver, Reply, Request

TOKEN = "test-token"
GOOD: Dict[str, Any] = {
    "type": "track",
    "userId": "32",
    "event": "scored-goal",
    "properties": {"minute": 14},
    "messageId": "a3f9e3c4-8f0b-4c36-b1de-2f8b0f4c7a10",
    "timestamp": "2018-05-15T12:31:12.123Z",
}


def post(receiver: Receiver, body: Any, token: str = TOKEN, **headers: str) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json", **headers}
    return requests.post(f"{receiver.url}/analytics/v1/batch", data=data, headers=headers, timeout=10)


def track(number: int) -> Dict[str, Any]:
    return {**GOOD, "messageId": f"message-{number}"}


def errors(response: requests.Response) -> List[Dict[str, Any]]:
    body: Dict[str, Any] = response.json()
    return list(body["errors"])


def test_good_batch_is_accepted(vitally_receiver: Receiver) -> None:
    response = post(vitally_receiver, [GOOD, track(2)])

    assert response.status_code == 200
    assert response.json() == {"message": "Success."}
    assert vitally_receiver.messages == [GOOD, track(2)]


def test_empty_batch_is_refused(vitally_receiver: Receiver) -> None:
    response = post(vitally_receiver, [])

    assert response.status_code == 400
    assert "1 to 100 messages, not 0" in errors(response)[0]["error"]
    assert vitally_receiver.messages == []


def test_more_than_100_messages_are_refused(vitally_receiver: Receiver) -> None:
    response = post(vitally_receiver, [track(number) for number in range(101)])

    assert response.status_code == 400
    assert "not 101" in errors(response)[0]["error"]
    assert vitally_receiver.messages == []
    assert post(vitally_receiver, [track(number) for number in range(100)]).status_code == 200


def test_body_that_is_not_an_array_is_refused(vitally_receiver: Receiver) -> None:
    assert post(vitally_receiver, GOOD).status_code == 400
    assert post(vitally_receiver, b"[{not json").status_code == 400


def test_unknown_type_is_refused(vitally_receiver: Receiver) -> None:
    response = post(vitally_receiver, [GOOD, {**GOOD, "type": "page"}])

    assert response.status_code == 400
    [problem] = errors(response)
    assert (problem["index"], problem["field"]) == (1, "type")
    assert "page" in problem["error"]
    assert vitally_receiver.messages == []  # a 400 rejects the whole batch


def test_missing_field_is_named_with_its_index(vitally_receiver: Receiver) -> None:
    incomplete = {key: value for key, value in track(3).items() if key != "event"}
    response = post(vitally_receiver, [GOOD, track(2), incomplete])

    assert response.status_code == 400
    [problem] = errors(response)
    assert (problem["index"], problem["field"]) == (2, "event")
    assert "required" in problem["error"]


def test_wrong_or_missing_token_is_refused(vitally_receiver: Receiver) -> None:
    assert post(vitally_receiver, [GOOD], token="wrong").status_code == 401
    no_token = requests.post(f"{vitally_receiver.url}/analytics/v1/batch", json=[GOOD], timeout=10)
    assert no_token.status_code == 401
    assert vitally_receiver.messages == []


def test_gzip_body_is_accepted(vitally_receiver: Receiver) -> None:
    body = gzip.compress(json.dumps([GOOD]).encode())

    response = post(vitally_receiver, body, **{"Content-Encoding": "gzip"})

    assert response.status_code == 200
    assert vitally_receiver.messages == [GOOD]


def test_get_messages_lists_what_was_accepted(vitally_receiver: Receiver) -> None:
    post(vitally_receiver, [GOOD])
    post(vitally_receiver, [{**GOOD, "type": "page"}])  # refused: not listed
    post(vitally_receiver, [track(2)])

    response = requests.get(f"{vitally_receiver.url}/messages", timeout=10)

    assert response.status_code == 200
    assert response.json() == [GOOD, track(2)]


def test_respond_hook_answers_instead() -> None:
    seen: List[Request] = []

    def respond(request: Request) -> Reply:
        seen.append(request)
        return Reply(429, {"message": "slow down"}, headers={"Retry-After": "3"})

    with Receiver(TOKEN, respond=respond) as receiver:
        response = post(receiver, [GOOD])

    assert (response.status_code, response.headers["Retry-After"]) == (429, "3")
    assert seen[0].messages == [GOOD]
    assert receiver.messages == []
