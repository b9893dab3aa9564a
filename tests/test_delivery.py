"""What arrives at a real HTTP server on 127.0.0.1: batching, flush, shutdown, send=False, sync_mode."""

from __future__ import annotations

import gzip
import json
import threading
import time
from typing import Any, List, Optional

import pytest

import analytics_vitally
from analytics_vitally import Client, ConfigurationError
from analytics_vitally.settings import SETTING_NAMES
from analytics_vitally.testing import Receiver, Reply, Request

from .conftest import TOKEN, MakeClient, run_script


def batch_sizes(receiver: Receiver) -> List[int]:
    return [len(r.messages or []) for r in receiver.requests]


def test_module_api_sends_every_type_with_the_right_headers(module_api: Any, receiver: Receiver) -> None:
    module_api.organization("org-1", {"name": "World Cup"})
    module_api.group("acct-1", {"name": "Argentina"}, organization_id="org-1")
    module_api.identify("32", {"name": "Lionel Messi"}, account_id="acct-1")
    module_api.track("32", "scored-goal", {"minute": 14})
    module_api.unlink("32", "acct-1")
    queued, message = module_api.custom_object_instance(
        "deal-9", "co-123", {"stage": "won"}, name="Q1 Renewal", account_id="acct-1"
    )
    assert queued is True
    assert module_api.flush() is True
    assert (module_api.stats().sent, module_api.stats().batches) == (6, 1)
    assert [m["type"] for m in receiver.messages] == [
        "organization",
        "account",
        "user",
        "track",
        "unlink",
        "customobjectinstance",
    ]
    assert receiver.messages[-1] == message
    (request,) = receiver.requests
    assert request.path == "/analytics/v1/batch"
    assert request.headers["authorization"] == f"Basic {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith(f"analytics-vitally/{analytics_vitally.__version__}")
    body = json.loads(request.body)
    assert isinstance(body, list) and len(body) == 6
    segment_only = {"writeKey", "context", "integrations", "anonymousId"}
    assert not any(segment_only & m.keys() for m in body)
    assert TOKEN not in request.body.decode()


def test_module_attributes_are_the_settings() -> None:
    for name in SETTING_NAMES:
        assert getattr(analytics_vitally, name) == getattr(analytics_vitally.Settings(), name), name


def test_module_functions_before_any_call_need_no_client(module_api: Any) -> None:
    assert module_api.flush(timeout=1) is True and module_api.stats().enqueued == 0
    assert module_api.default.client is None


def test_module_settings_are_checked_at_the_first_call(module_api: Any) -> None:
    module_api.subdomain = "evil.com/x"
    module_api.host = None
    with pytest.raises(ConfigurationError, match="subdomain"):
        module_api.track("u", "e")


def test_batches_by_size(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(upload_size=10, upload_interval=60)
    for i in range(25):
        client.track("u", "e", {"i": i})
    assert receiver.wait_for(20)
    assert batch_sizes(receiver) == [10, 10]
    assert client.flush()
    assert batch_sizes(receiver) == [10, 10, 5]
    assert [m["properties"]["i"] for m in receiver.messages] == list(range(25))


def test_message_ids_do_not_follow_the_apps_random_seed(make_client: MakeClient) -> None:
    import random

    client = make_client(send=False)
    random.seed(7)
    first = client.track("u", "e")[1]["messageId"]
    random.seed(7)
    assert client.track("u", "e")[1]["messageId"] != first


def test_batches_by_interval_without_flush(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(upload_interval=0.05)
    for i in range(3):
        client.track("u", "e", {"i": i})
    assert receiver.wait_for(3)
    assert sum(batch_sizes(receiver)) == 3


def test_no_request_before_the_interval(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(upload_interval=60)
    client.track("u", "e")
    assert not receiver.wait_for(1, timeout=0.3)
    assert client.flush()
    assert len(receiver.messages) == 1


def test_batches_respect_max_batch_bytes(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(max_batch_bytes=5_000, upload_interval=60)
    for i in range(20):
        client.track("u", "e", {"pad": "x" * 900, "i": i})
    assert client.flush()
    assert len(receiver.messages) == 20
    assert all(len(r.body) <= 5_000 for r in receiver.requests)
    assert len(receiver.requests) >= 4


def test_flush_covers_everything_queued_before_it(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(upload_interval=60, thread=3)
    for i in range(1_050):
        client.track("u", "e", {"i": i})
    assert client.flush()
    assert len(receiver.messages) == 1_050
    assert len(set(receiver.message_ids())) == 1_050
    stats = client.stats()
    assert (stats.enqueued, stats.sent, stats.failed, stats.queue_depth) == (1_050, 1_050, 0, 0)
    assert stats.batches == len(receiver.requests)


def test_flush_with_timeout_returns_false_when_time_runs_out(make_client: MakeClient, receiver: Receiver) -> None:
    release = threading.Event()

    def stall(request: Request) -> Optional[Reply]:
        release.wait(10)
        return None

    receiver.respond = stall
    client = make_client()
    client.track("u", "e")
    started = time.monotonic()
    assert client.flush(timeout=0.3) is False
    assert time.monotonic() - started < 2
    release.set()
    assert client.flush(timeout=10) is True
    assert len(receiver.messages) == 1


def test_shutdown_drains_then_stops_and_the_client_can_go_on(make_client: MakeClient, receiver: Receiver) -> None:
    before = threading.enumerate()
    client = make_client(upload_interval=60)
    for _ in range(5):
        client.track("u", "e")
    assert client.shutdown(timeout=10)
    assert len(receiver.messages) == 5
    assert not [t for t in threading.enumerate() if t.name == "analytics_vitally" and t not in before]
    client.track("u", "again")
    client.join()
    assert len(receiver.messages) == 6


def test_send_false_never_touches_the_network(receiver: Receiver) -> None:
    client = Client(TOKEN, host=receiver.url, send=False)
    queued, message = client.track("u", "e")
    assert queued is True and message["event"] == "e"
    assert client.flush(timeout=None) is True
    assert client.shutdown() is True
    assert receiver.requests == []


def test_send_false_needs_no_write_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITALLY_WRITE_KEY", raising=False)
    assert Client(send=False).track("u", "e")[0]


def test_sync_mode_sends_before_returning(make_client: MakeClient, receiver: Receiver) -> None:
    before = threading.enumerate()
    client = make_client(sync_mode=True)
    queued, message = client.track("u", "e")
    assert queued is True
    assert receiver.messages == [message]
    assert not [t for t in threading.enumerate() if t.name == "analytics_vitally" and t not in before]


def test_sync_mode_reports_a_rejected_message(make_client: MakeClient, receiver: Receiver) -> None:
    errors: List[Any] = []
    receiver.respond = lambda request: Reply(400, {"message": "blocked"})
    client = make_client(sync_mode=True, on_error=lambda error, messages: errors.append((error, messages)))
    queued, message = client.track("u", "e")
    assert queued is False
    ((error, messages),) = errors
    assert error.status == 400 and messages == [message]


def test_on_error_gets_the_messages_exactly_as_sent(make_client: MakeClient, receiver: Receiver) -> None:
    errors: List[Any] = []
    receiver.respond = lambda request: Reply(403, {"message": "nope"})
    client = make_client(on_error=lambda error, messages: errors.append((error, messages)))
    traits = {"n": 1}
    _, sent = client.identify("u", traits, account_id="a")
    traits["n"] = 2  # changing the caller's dict afterwards does not change what was sent
    assert client.flush()
    ((error, messages),) = errors
    assert error.status == 403 and "nope" in error.body
    assert messages == [{**sent, "traits": {"n": 1}}]
    assert client.stats().failed == 1


def test_gzip(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(gzip=True)
    client.track("u", "e")
    assert client.flush()
    (request,) = receiver.requests
    assert request.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(request.body))[0]["event"] == "e"
    assert len(receiver.messages) == 1


def test_settings_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("VITALLY_WRITE_KEY", TOKEN)
    monkeypatch.setenv("VITALLY_HOST", receiver.url)
    monkeypatch.setenv("VITALLY_SUBDOMAIN", "acme")
    client = Client()
    assert client.settings.url == receiver.url + "/analytics/v1/batch"
    client.track("u", "e")
    assert client.flush(timeout=10)
    assert len(receiver.messages) == 1
    monkeypatch.delenv("VITALLY_HOST")
    assert Client().settings.url == "https://acme.api.vitally.io/analytics/v1/batch"


@pytest.mark.parametrize(
    "settings, name",
    [
        ({"upload_size": 101}, "upload_size"),
        ({"upload_size": 0}, "upload_size"),
        ({"thread": 0}, "thread"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"timeout": -1}, "timeout"),
    ],
)
def test_bad_settings_are_refused(settings: Any, name: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Client("k", subdomain="acme", **settings)
    assert raised.value.setting == name


def test_missing_write_key_or_target_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("VITALLY_WRITE_KEY", "VITALLY_SUBDOMAIN", "VITALLY_HOST"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigurationError, match="write_key is not set"):
        Client(subdomain="acme")
    with pytest.raises(ConfigurationError, match="subdomain is not set"):
        Client("k")
    with pytest.raises(TypeError):
        Client("k", subdomain="acme", no_such_setting=1)


def test_exit_delivers_everything_without_flush(receiver: Receiver) -> None:
    started = time.monotonic()
    done = run_script(
        """
        import analytics_vitally as analytics
        for i in range(1000):
            analytics.track("32", "scored-goal", {"i": i})
        """,
        VITALLY_WRITE_KEY=TOKEN,
        VITALLY_HOST=receiver.url,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert len(receiver.messages) == 1000
    assert len(set(receiver.message_ids())) == 1000
    assert sorted(m["properties"]["i"] for m in receiver.messages) == list(range(1000))
    print(f"exit drain: {len(receiver.messages)} of 1000 delivered, script took {elapsed:.2f}s")


def test_flush_inside_on_error_does_not_deadlock(make_client: MakeClient, receiver: Receiver) -> None:
    inner: List[bool] = []
    receiver.respond = lambda request: Reply(403, {"message": "no"})
    client: Client = make_client(on_error=lambda error, messages: inner.append(client.flush()))
    client.track("u", "e")
    assert client.flush(timeout=10) is True
    assert inner == [False]


def test_a_producer_that_never_pauses_loses_nothing(make_client: MakeClient, receiver: Receiver) -> None:
    # A loop of calls with no other work keeps the GIL; the worker must still get the CPU to drain the queue.
    client = make_client(max_queue_size=2_000)
    for i in range(40_000):
        client.track("u", "e", {"i": i})
    assert client.flush(timeout=60)
    assert client.stats().dropped == 0
    assert len(receiver.messages) == 40_000
