"""Faults injected at a real server on 127.0.0.1: every good message arrives, none is accepted twice,
no wait is unbounded."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from analytics_vitally import AuthenticationError, Client, ConfigurationError, DeliveryError
from analytics_vitally.delivery import Reporting
from analytics_vitally.settings import Settings
from analytics_vitally.testing import Receiver, Reply, Request
from analytics_vitally.transport import Transport, retry_after_seconds
from analytics_vitally.worker import Worker

from .conftest import TOKEN, MakeClient, run_script

Errors = List[Tuple[Exception, List[Any]]]
FAST = {"retry_wait": 0.01, "upload_interval": 60}


def first_n(n: int, reply: Callable[[], Reply]) -> Callable[[Request], Optional[Reply]]:
    """A respond hook answering the first ``n`` requests with ``reply()``, then as Vitally would."""
    count = [0]
    lock = threading.Lock()

    def respond(request: Request) -> Optional[Reply]:
        with lock:
            count[0] += 1
            return reply() if count[0] <= n else None

    return respond


def assert_each_arrived_once(receiver: Receiver, expected: int) -> None:
    ids = receiver.message_ids()
    assert len(set(ids)) == expected, "a message is missing"
    assert len(ids) == expected, "a message was accepted twice"


@pytest.fixture
def errors() -> Errors:
    return []


def collect(errors: Errors) -> Callable[[Exception, List[Any]], None]:
    return lambda error, messages: errors.append((error, messages))


def send(client: Client, count: int) -> None:
    for i in range(count):
        client.track("u", "e", {"i": i})


def test_a_burst_of_503_is_retried(make_client: MakeClient, receiver: Receiver, errors: Errors) -> None:
    receiver.respond = first_n(3, lambda: Reply(503, {"message": "busy"}))
    client = make_client(on_error=collect(errors), **FAST)
    send(client, 250)
    assert client.flush(timeout=30)
    assert_each_arrived_once(receiver, 250)
    assert errors == []
    assert client.stats().retried == 3
    first_try, retry = receiver.requests[0], receiver.requests[1]
    assert first_try.body == retry.body  # same messages, same messageIds


@pytest.mark.parametrize("status", [500, 502, 504, 408, 429])
def test_transient_statuses_are_retried(make_client: MakeClient, receiver: Receiver, status: int) -> None:
    receiver.respond = first_n(1, lambda: Reply(status, {"message": "later"}))
    client = make_client(**FAST)
    send(client, 3)
    assert client.flush(timeout=30)
    assert_each_arrived_once(receiver, 3)


def test_429_retry_after_is_honoured(make_client: MakeClient, receiver: Receiver) -> None:
    arrivals: List[float] = []

    def limited(request: Request) -> Optional[Reply]:
        arrivals.append(time.monotonic())
        return Reply(429, {"message": "slow down"}, {"Retry-After": "1"}) if len(arrivals) == 1 else None

    receiver.respond = limited
    client = make_client(**FAST)  # its own backoff would wait about 10 ms
    send(client, 5)
    assert client.flush(timeout=30)
    assert arrivals[1] - arrivals[0] >= 0.9
    assert_each_arrived_once(receiver, 5)


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("7", now) == 7
    assert retry_after_seconds("2.5", now) == 2.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_a_retry_after_beyond_max_retry_time_gives_up(
    make_client: MakeClient, receiver: Receiver, errors: Errors
) -> None:
    receiver.respond = lambda request: Reply(429, {"message": "tomorrow"}, {"Retry-After": "3600"})
    client = make_client(on_error=collect(errors), max_retry_time=5, **FAST)
    send(client, 2)
    started = time.monotonic()
    assert client.flush(timeout=10)
    assert time.monotonic() - started < 5
    ((error, messages),) = errors
    assert isinstance(error, DeliveryError) and error.status == 429 and "max_retry_time" in str(error)
    assert error.retry_after == 3600  # what Vitally asked for, before the 30 s cap
    assert len(messages) == 2


def test_connections_reset_mid_request_are_retried(make_client: MakeClient, receiver: Receiver) -> None:
    receiver.respond = first_n(2, lambda: Reply(reset=True))
    client = make_client(**FAST)
    send(client, 40)
    assert client.flush(timeout=30)
    assert_each_arrived_once(receiver, 40)
    assert client.stats().retried == 2


def test_responses_slower_than_timeout_are_retried_with_the_same_ids(
    make_client: MakeClient, receiver: Receiver
) -> None:
    slow = [True]

    def respond(request: Request) -> Optional[Reply]:
        if slow[0]:
            slow[0] = False
            time.sleep(1.0)
            return Reply(503)  # answered after the client gave up on it
        return None

    receiver.respond = respond
    client = make_client(timeout=0.2, **FAST)
    send(client, 10)
    started = time.monotonic()
    assert client.flush(timeout=30)
    assert time.monotonic() - started < 10
    assert_each_arrived_once(receiver, 10)
    assert receiver.requests[0].body == receiver.requests[1].body


def test_one_rejected_message_does_not_sink_the_batch(
    make_client: MakeClient, receiver: Receiver, errors: Errors
) -> None:
    def reject_marked(request: Request) -> Optional[Reply]:
        if any(m.get("properties", {}).get("bad") for m in request.messages or []):
            return Reply(400, {"message": "Bad Request", "detail": "bad message"})
        return None

    receiver.respond = reject_marked
    client = make_client(on_error=collect(errors), **FAST)
    for i in range(100):
        client.track("u", "e", {"i": i, "bad": i == 37})
    assert client.flush(timeout=30)
    assert_each_arrived_once(receiver, 99)
    assert 37 not in {m["properties"]["i"] for m in receiver.messages}
    ((error, messages),) = errors
    assert isinstance(error, DeliveryError) and error.status == 400 and "bad message" in (error.body or "")
    assert [m["properties"]["i"] for m in messages] == [37]
    stats = client.stats()
    assert (stats.sent, stats.failed, stats.retried) == (99, 1, 0)
    print(f"400 isolation: 99/99 good delivered in {len(receiver.requests)} requests")


def test_other_4xx_are_not_retried(make_client: MakeClient, receiver: Receiver, errors: Errors) -> None:
    receiver.respond = lambda request: Reply(404, {"message": "Not Found"})
    client = make_client(on_error=collect(errors), **FAST)
    send(client, 3)
    assert client.flush(timeout=10)
    assert len(receiver.requests) == 1
    assert errors[0][0].status == 404 and len(errors[0][1]) == 3  # type: ignore[attr-defined]


def test_401_is_reported_not_retried_and_pauses_sending(
    make_client: MakeClient, receiver: Receiver, errors: Errors, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="analytics_vitally")
    client = make_client(write_key="wrong-key", on_error=collect(errors), **FAST)
    send(client, 3)
    assert client.flush(timeout=10)
    send(client, 2)
    started = time.monotonic()
    assert client.flush(timeout=10)
    assert time.monotonic() - started < 2
    assert len(receiver.requests) == 1  # the second batch did not reach the server
    assert [type(error) for error, _ in errors] == [AuthenticationError, AuthenticationError]
    assert [len(messages) for _, messages in errors] == [3, 2]
    assert "401" in str(errors[0][0]) and "paused" in str(errors[1][0])
    assert "refused the write_key" in caplog.text
    assert receiver.messages == []


def test_failures_are_logged_as_errors_unless_on_error_takes_them(
    make_client: MakeClient, receiver: Receiver, errors: Errors, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="analytics_vitally")
    receiver.respond = lambda request: Reply(403, {"message": "Forbidden"})
    unhandled = make_client(**FAST)
    send(unhandled, 1)
    assert unhandled.flush(timeout=10)
    handled = make_client(on_error=collect(errors), **FAST)
    send(handled, 1)
    assert handled.flush(timeout=10)
    levels = [r.levelno for r in caplog.records if "not delivered" in r.getMessage()]
    assert levels == [logging.ERROR, logging.INFO]


def test_gives_up_after_max_retries(make_client: MakeClient, receiver: Receiver, errors: Errors) -> None:
    receiver.respond = lambda request: Reply(503)
    client = make_client(on_error=collect(errors), max_retries=2, **FAST)
    send(client, 4)
    assert client.flush(timeout=10)
    assert len(receiver.requests) == 3
    assert "gave up after 3 tries" in str(errors[0][0])
    assert client.stats().failed == 4


def test_total_retry_time_is_capped(make_client: MakeClient, receiver: Receiver, errors: Errors) -> None:
    receiver.respond = lambda request: Reply(503)
    client = make_client(on_error=collect(errors), max_retries=1000, max_retry_time=0.5, retry_wait=0.05)
    send(client, 1)
    started = time.monotonic()
    assert client.flush(timeout=10)
    assert time.monotonic() - started < 2
    assert len(errors) == 1


@pytest.fixture
def stalled(receiver: Receiver) -> Iterator[threading.Event]:
    """The receiver never answers until the test ends."""
    release = threading.Event()

    def hang(request: Request) -> Optional[Reply]:
        release.wait(30)
        return None

    receiver.respond = hang
    yield release
    release.set()


def test_flush_and_shutdown_are_bounded_when_the_server_never_answers(
    make_client: MakeClient, stalled: threading.Event
) -> None:
    client = make_client(timeout=30, **FAST)
    send(client, 10)
    started = time.monotonic()
    assert client.flush(timeout=0.5) is False
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    assert client.shutdown(timeout=0.5) is False
    assert time.monotonic() - started < 1.5


def test_after_a_timed_out_shutdown_delivery_goes_on(
    make_client: MakeClient, receiver: Receiver, stalled: threading.Event
) -> None:
    client = make_client(timeout=30, **FAST)
    send(client, 3)
    assert client.shutdown(timeout=0.3) is False
    stalled.set()
    assert client.flush(timeout=10)
    client.track("u", "later")
    assert client.flush(timeout=10)
    assert_each_arrived_once(receiver, 4)


def test_calls_never_wait_on_the_network(make_client: MakeClient, stalled: threading.Event) -> None:
    client = make_client(timeout=30, upload_size=1)
    started = time.monotonic()
    for i in range(500):
        client.track("u", "e", {"i": i})
    assert time.monotonic() - started < 2  # each call is microseconds; the server is stuck for 30 s


def test_flush_is_bounded_when_the_server_is_down(make_client: MakeClient) -> None:
    with Receiver() as gone:
        url = gone.url
    # retries cannot run out within the second: full jitter could otherwise end ten short waits early
    client = make_client(host=url, max_retries=10**6, **FAST)
    send(client, 10)
    started = time.monotonic()
    assert client.flush(timeout=1) is False
    assert time.monotonic() - started < 2.5


def test_a_full_queue_drops_at_once_counts_and_logs_once(
    make_client: MakeClient, stalled: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(max_queue_size=5, upload_size=1, timeout=30)
    results = [client.track("u", "e", {"i": i})[0] for i in range(200)]
    assert results.count(False) >= 150
    stats = client.stats()
    assert stats.dropped == results.count(False)
    assert stats.enqueued == results.count(True)
    drops = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(drops) == 1


def test_stats_count_what_happened(make_client: MakeClient, receiver: Receiver) -> None:
    receiver.respond = first_n(1, lambda: Reply(503))
    client = make_client(upload_size=10, **FAST)
    send(client, 30)
    assert client.flush(timeout=10)
    stats = client.stats()
    assert (stats.enqueued, stats.sent, stats.failed, stats.dropped) == (30, 30, 0, 0)
    assert (stats.retried, stats.batches, stats.queue_depth) == (1, 3, 0)


def test_debug_logs_each_batch(make_client: MakeClient, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="analytics_vitally")
    client = make_client(debug=True)
    send(client, 7)
    assert client.flush(timeout=10)
    assert any("batch of 7: 200 in" in r.getMessage() for r in caplog.records)


def test_the_write_key_is_never_shown(
    make_client: MakeClient, receiver: Receiver, errors: Errors, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "SECRET-write-key-9f8e7d"
    caplog.set_level(logging.DEBUG, logger="analytics_vitally")
    client = make_client(write_key=secret, debug=True, on_error=collect(errors), **FAST)
    send(client, 2)
    assert client.flush(timeout=10)
    with pytest.raises(ConfigurationError) as raised:
        Client(secret, subdomain="bad.domain")
    shown = [caplog.text, repr(client), str(client), repr(client.settings), str(raised.value)]
    transport = Transport(client.settings)
    shown += [repr(transport), repr(Worker(Reporting(transport, None), client.settings))]
    shown += [str(error) for error, _ in errors] + [repr(error) for error, _ in errors]
    assert errors and all(secret not in text for text in shown)


@pytest.mark.parametrize("subdomain", ["evil.com/x", "a.b", "acme@evil.com", "acme evil", ""])
def test_subdomain_must_be_a_plain_label(subdomain: str) -> None:
    with pytest.raises(ValueError, match="subdomain"):
        Client("k", subdomain=subdomain) if subdomain else Client("k", subdomain=subdomain, send=True)


@pytest.mark.parametrize(
    "host",
    ["ftp://127.0.0.1", "http://example.com", "http://10.0.0.1:8080", "example.com", "https://x.io/?a=1", "file:///x"],
)
def test_unsafe_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="host"):
        Client("k", host=host)


@pytest.mark.parametrize(
    "host",
    [
        "https://proxy.example.com",
        "https://eu.example.com/base/",
        "http://localhost:8765",
        "http://127.0.0.9:1",
        "http://[::1]:8765",
    ],
)
def test_safe_hosts_are_accepted(host: str) -> None:
    assert Client("k", host=host).settings.url.endswith("/analytics/v1/batch")


def transport(**settings: Any) -> Transport:
    """A transport made as ``Client("k", **settings)`` makes its own."""
    return Transport(Settings(write_key="k", **settings).resolved())


def test_tls_certificates_are_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    assert transport(subdomain="acme").environment["verify"] is True
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/bundle.pem")  # a CA bundle, still verifying
    assert transport(subdomain="acme").environment["verify"] == "/etc/ssl/certs/bundle.pem"


def test_environment_proxies_are_read_once_and_explicit_ones_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert transport(subdomain="acme").environment["proxies"] == {"https": "http://127.0.0.1:3128"}
    explicit = transport(subdomain="acme", proxies={"https": "http://127.0.0.1:9"})
    assert explicit.environment["proxies"]["https"] == "http://127.0.0.1:9"


def test_proxies_are_used(make_client: MakeClient, receiver: Receiver) -> None:
    # The receiver plays the proxy: a request through an HTTP proxy carries the full URL.
    client = make_client(host="http://127.0.0.1:9", proxies={"http": receiver.url})
    client.track("u", "e")
    assert client.flush(timeout=10)
    assert receiver.requests[0].path == "http://127.0.0.1:9/analytics/v1/batch"


def test_redirects_are_not_followed(make_client: MakeClient, receiver: Receiver, errors: Errors) -> None:
    receiver.respond = lambda request: Reply(307, {}, {"Location": "http://127.0.0.1:9/elsewhere"})
    client = make_client(on_error=collect(errors), **FAST)
    send(client, 2)
    assert client.flush(timeout=10)
    assert len(receiver.requests) == 1
    assert errors[0][0].status == 307  # type: ignore[attr-defined]


def test_a_forked_child_delivers_its_own_messages(receiver: Receiver) -> None:
    done = run_script(
        """
        import os, sys
        import analytics_vitally as analytics
        analytics.upload_interval = 60
        analytics.track("parent", "before-fork")          # queued, not yet sent
        pid = os.fork()
        if pid == 0:
            for i in range(100):
                analytics.track("child", "in-child", {"i": i})
            ok = analytics.flush(timeout=20)
            os._exit(0 if ok else 3)
        analytics.track("parent", "after-fork")           # its ID must differ from the child's
        _, status = os.waitpid(pid, 0)
        assert analytics.flush(timeout=20)
        sys.exit(os.waitstatus_to_exitcode(status))
        """,
        VITALLY_WRITE_KEY=TOKEN,
        VITALLY_HOST=receiver.url,
    )
    assert done.returncode == 0, done.stderr
    events = [m["event"] for m in receiver.messages]
    assert events.count("in-child") == 100
    assert events.count("before-fork") == 1
    assert events.count("after-fork") == 1
    assert len(set(receiver.message_ids())) == 102


def test_the_exit_drain_is_bounded(receiver: Receiver, stalled: threading.Event) -> None:
    started = time.monotonic()
    done = run_script(
        """
        import analytics_vitally as analytics
        analytics.exit_timeout = 1
        analytics.track("u", "never-answered")
        """,
        VITALLY_WRITE_KEY=TOKEN,
        VITALLY_HOST=receiver.url,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 8
    assert "1 message(s) not delivered" in done.stderr  # the request in flight was ended and reported
    assert "lost" not in done.stderr
