"""Servers that break every rule (tests/hostile.py): the write key never comes back out, memory and time
stay bounded, nothing fails silently, a 429 slows the whole client."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from analytics_vitally import Client, DeliveryError
from analytics_vitally.delivery import Outcome, Reporting
from analytics_vitally.settings import Settings
from analytics_vitally.transport import ANSWER_LIMIT, Transport

from .conftest import TOKEN, run_script
from .hostile import (
    Answer,
    HostileServer,
    certificate_file,
    continue_flood,
    echo_headers,
    endless_chunked,
    first,
    huge_body,
    interim,
    never_answer,
    ok,
    ok_then_close,
    reply,
    trickle_after_status,
    trickle_body,
    trickle_headers,
    truncated,
)

Errors = List[Tuple[Exception, List[Any]]]
SECRET = "SECRET-write-key-4a7b9c"


@pytest.fixture
def serve() -> Iterator[Callable[..., HostileServer]]:
    servers: List[HostileServer] = []

    def start(answer: Answer, **options: Any) -> HostileServer:
        server = HostileServer(answer, lifetime=60, **options).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: List[Client] = []

    def make(write_key: str = TOKEN, **settings: Any) -> Client:
        settings.setdefault("retry_wait", 0.01)
        settings.setdefault("upload_interval", 60)
        client = Client(write_key, **settings)
        made.append(client)
        return client

    yield make
    for client in made:
        client._transport.abort()  # no request or retry left running into the next test
        client.shutdown(timeout=2)


def collect(errors: Errors) -> Callable[[Exception, List[Any]], None]:
    return lambda error, messages: errors.append((error, messages))


def send(client: Client, count: int) -> None:
    for i in range(count):
        client.track("u", "e", {"i": i})


class Sender:
    """A transport with the reporting a client without a spool puts in front of it (on_error, counts)."""

    def __init__(self, settings: Settings) -> None:
        self.transport = Transport(settings)
        self.abort = self.transport.abort
        self._reporting = Reporting(self.transport, settings.on_error)

    def deliver(self, items: List[str]) -> Outcome:
        return self._reporting.deliver(items)

    @property
    def retries(self) -> int:
        return self.transport.retries


def transport(url: str, **settings: Any) -> Sender:
    return Sender(Settings(write_key=TOKEN, host=url, **settings).resolved())


def counts(outcome: Outcome) -> Tuple[int, int, int, int]:
    return outcome.sent, outcome.failed, outcome.retried, outcome.batches


def item(i: int) -> str:
    return json.dumps({"type": "track", "userId": "u", "event": "e", "properties": {"i": i}, "messageId": f"m-{i}"})


# Item 3: the write key never comes back out. ------------------------------------------------------------


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(echo_headers(403), id="in the body"),
        pytest.param(echo_headers(500), id="in a retried body"),
        pytest.param(echo_headers(403, cut_at=ANSWER_LIMIT), id="cut by the read limit"),
        pytest.param(echo_headers(status_line=True), id="in a garbled status line"),
    ],
)
def test_a_write_key_echoed_by_the_server_is_redacted(
    serve: Callable[..., HostileServer],
    clients: Callable[..., Client],
    echo: Answer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="analytics_vitally")
    server = serve(echo)
    errors: Errors = []
    client = clients(SECRET, host=server.url, on_error=collect(errors), max_retries=1, debug=True)
    send(client, 2)
    assert client.flush(timeout=10)
    ((error, messages),) = errors
    assert len(messages) == 2
    assert SECRET in server.requests[0].head.decode()  # it was sent, and echoed
    shown = [str(error), repr(error), str(getattr(error, "body", "")), caplog.text]
    assert all(SECRET not in text and SECRET[: len(SECRET) // 2] not in text for text in shown)
    assert "[redacted" in str(error)


# Item 4: bounded reads, and the connection kept when the answer was read whole. ----------------------------


def test_sequential_batches_share_one_connection(
    serve: Callable[..., HostileServer], clients: Callable[..., Client]
) -> None:
    server = serve(first(1, reply(503, b'{"message":"busy"}')))
    client = clients(host=server.url)
    for i in range(20):
        client.track("u", "e", {"i": i})
        assert client.flush(timeout=10)
    assert len(server.requests) == 21  # the 503 answer was read whole: its connection was kept too
    assert server.connections == 1
    assert len(set(server.message_ids())) == 20


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_batches_over_one_kept_alive_connection_arrive_whole(
    serve: Callable[..., HostileServer], clients: Callable[..., Client], tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate_file())
    server = serve(ok, tls=tls)
    client = clients(host=server.url, gzip=True)
    for i in range(5):
        send(client, 3)
        assert client.flush(timeout=10), i
    assert server.connections == 1
    assert len(server.requests) == 5 and len(set(server.message_ids())) == 15
    first_request = server.requests[0]
    assert first_request.head.startswith(b"POST /analytics/v1/batch HTTP/1.1\r\n")
    assert first_request.headers["authorization"] == f"Basic {TOKEN}"
    assert first_request.headers["host"] == server.url.split("//")[1]
    assert first_request.headers["content-length"] == str(len(first_request.body))


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_retry(
    serve: Callable[..., HostileServer], clients: Callable[..., Client], tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate_file())
    server = serve(ok_then_close, tls=tls)
    errors: Errors = []
    client = clients(host=server.url, on_error=collect(errors), retry_wait=5)
    for batch in range(3):
        send(client, 2)
        assert client.flush(timeout=10)
        assert server.wait_for_closed(batch + 1)  # closed while the client's connection sits idle
    assert errors == [] and client.stats().retried == 0
    assert server.connections == 3 and len(server.message_ids()) == 6


@pytest.mark.parametrize("answer", [ok, reply(500)], ids=["delivered", "failed"])
def test_a_worker_thread_closes_its_connection_as_it_ends(serve: Callable[..., HostileServer], answer: Answer) -> None:
    server = serve(answer)
    script = f"""
        import gc, warnings
        warnings.simplefilter("always", ResourceWarning)
        from analytics_vitally import Client
        client = Client("key", host={server.url!r}, max_retries=0, on_error=lambda error, messages: None)
        client.track("u", "e")
        assert client.shutdown(timeout=10)
        gc.collect()
        print("stopped")
    """
    result = run_script(script)
    assert result.returncode == 0 and "stopped" in result.stdout, result.stderr
    assert "unclosed" not in result.stderr  # closed by the thread, not left to the garbage collector
    assert server.wait_for_closed(1) and len(server.requests) == 1


@pytest.mark.parametrize(
    ("host", "trusted"),
    [("127.0.0.1", False), ("localhost", True)],
    ids=["certificate not trusted", "name not in the certificate"],
)
def test_an_unverified_https_server_gets_no_messages(
    serve: Callable[..., HostileServer],
    clients: Callable[..., Client],
    host: str,
    trusted: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if trusted:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate_file())
    else:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    server = serve(ok, tls=True)
    errors: Errors = []
    client = clients(host=f"https://{host}:{server.port}", on_error=collect(errors), max_retries=0)
    send(client, 2)
    assert client.flush(timeout=10)
    ((error, messages),) = errors
    assert "CERTIFICATE_VERIFY_FAILED" in str(error) and len(messages) == 2
    assert server.requests == []


RSS_SCRIPT = """
    import json, resource
    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))  # without the fix: MemoryError, not swap
    from analytics_vitally import Client

    def status(name):
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) for line in lines if line.startswith(name + ":"))

    errors = []
    client = Client({token!r}, host={url!r}, retry_wait=0.01, max_retries=3, timeout=10,
                    on_error=lambda error, messages: errors.append(str(error)[:200]))
    client.track("u", "warm-up")
    assert client.flush(timeout=30)
    before = status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # peak RSS := current RSS
    except OSError:
        pass
    for i in range(10):
        client.track("u", "e", {{"i": i}})
    flushed = client.flush(timeout=60)
    print(json.dumps({{"growth_kib": status("VmHWM") - before, "flushed": flushed, "errors": errors,
                      "stats": client.stats().__dict__}}))
"""


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(huge_body(300 << 20), id="300 MB body"),
        pytest.param(endless_chunked(500), id="endless chunked body"),
    ],
)
def test_a_huge_error_body_is_not_read(serve: Callable[..., HostileServer], hostile: Answer) -> None:
    server = serve(lambda peer, request: (hostile if 1 <= request.index <= 2 else ok)(peer, request))
    done = run_script(RSS_SCRIPT.format(token=TOKEN, url=server.url))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    print(f"peak RSS growth: {result['growth_kib']} KiB")
    assert result["flushed"] and result["errors"] == [], result
    assert result["growth_kib"] < 20 * 1024, result
    assert len(set(server.message_ids())) == 11


# Item 5: a broken answer is a connection error; nothing fails silently. -------------------------------------


@pytest.mark.parametrize("status", [503, 400, 200])
def test_an_answer_cut_short_is_retried_like_a_connection_error(
    serve: Callable[..., HostileServer], clients: Callable[..., Client], status: int
) -> None:
    server = serve(first(2, truncated(status, length=100, sent=5)))
    errors: Errors = []
    client = clients(host=server.url, on_error=collect(errors))
    send(client, 10)
    assert client.flush(timeout=10)
    stats = client.stats()
    assert errors == []
    assert stats.failed == 0
    if status == 200:  # accepted: only the rest of its answer got lost, so it is not sent again
        assert (len(server.requests), stats.sent, stats.retried) == (1, 10, 0)
    else:
        assert (len(server.requests), stats.sent, stats.retried) == (3, 10, 2)
        assert len(server.message_ids()) == 10


def test_deliver_never_raises_and_reports_exactly_what_failed(serve: Callable[..., HostileServer]) -> None:
    server = serve(ok)
    errors: Errors = []
    unsendable = item(1)[:-1] + ',"x":"\ud800"}'  # a lone surrogate: can't be encoded as UTF-8
    outcome = transport(server.url, on_error=collect(errors)).deliver([item(0), unsendable])
    assert counts(outcome) == (0, 2, 0, 0)
    ((error, messages),) = errors
    assert isinstance(error, DeliveryError) and "UnicodeEncodeError" in str(error)
    assert [message["messageId"] for message in messages] == ["m-0", "m-1"]


# Item 6: one request ends within its timeout, whatever the server does. ------------------------------------


@pytest.mark.parametrize(
    ("hostile", "via_proxy"),
    [
        pytest.param(trickle_headers, False, id="headers trickled"),
        pytest.param(trickle_body(500), False, id="error body trickled"),
        pytest.param(continue_flood, False, id="100 Continue for ever"),
        pytest.param(trickle_headers, True, id="headers trickled through an http proxy"),
        pytest.param(trickle_after_status, False, id="a whole status line, then headers trickled"),
        pytest.param(trickle_after_status, True, id="a whole status line, then headers trickled, via a proxy"),
    ],
)
def test_a_request_ends_within_its_timeout_and_is_retried(
    serve: Callable[..., HostileServer], clients: Callable[..., Client], hostile: Answer, via_proxy: bool
) -> None:
    server = serve(first(1, hostile))
    errors: Errors = []
    route = {"host": "http://127.0.0.1:9", "proxies": {"http": server.url}} if via_proxy else {"host": server.url}
    client = clients(timeout=0.5, on_error=collect(errors), **route)
    send(client, 5)
    started = time.monotonic()
    assert client.flush(timeout=20)
    assert time.monotonic() - started < 0.5 + 3
    first_try, retry = server.requests[0], server.requests[1]
    assert retry.arrived - first_try.arrived < 0.5 + 2
    assert first_try.body == retry.body
    assert errors == [] and client.stats().retried == 1
    assert len(server.message_ids()) == 5


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_request_that_times_out_says_so(
    serve: Callable[..., HostileServer], tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate_file())
    server = serve(trickle_headers, tls=tls)
    errors: Errors = []
    sender = transport(server.url, timeout=0.5, max_retries=0, on_error=collect(errors))
    started = time.monotonic()
    outcome = sender.deliver([item(0)])
    assert time.monotonic() - started < 0.5 + 2
    assert outcome.failed == 1
    ((error, _),) = errors
    assert isinstance(error, DeliveryError) and error.status is None and "timed out after 0.5s" in str(error)
    assert server.requests  # the request got through (over TLS too) before the answer stalled


def test_an_accepted_batch_whose_answer_never_ends_is_not_sent_again(
    serve: Callable[..., HostileServer], clients: Callable[..., Client]
) -> None:
    server = serve(trickle_body(200))
    client = clients(host=server.url, timeout=0.5)
    send(client, 3)
    started = time.monotonic()
    assert client.flush(timeout=20)
    assert time.monotonic() - started < 0.5 + 3
    assert len(server.requests) == 1
    assert (client.stats().sent, client.stats().retried) == (3, 0)


def test_abort_ends_a_request_in_flight_and_reports_it(serve: Callable[..., HostileServer]) -> None:
    server = serve(never_answer)
    errors: Errors = []
    sender = transport(server.url, timeout=30, on_error=collect(errors))
    outcomes: List[Outcome] = []
    thread = threading.Thread(target=lambda: outcomes.append(sender.deliver([item(0), item(1)])))
    thread.start()
    assert server.wait_for_requests(1)
    started = time.monotonic()
    sender.abort()
    thread.join(10)
    assert time.monotonic() - started < 2
    assert [counts(outcome) for outcome in outcomes] == [(0, 2, 0, 0)]
    ((error, messages),) = errors
    assert "shut" in str(error) and len(messages) == 2
    assert sender.deliver([item(2)]).failed == 1  # later batches fail at once, without a request
    assert len(server.requests) == 1


# Item 7: a 429 or a Retry-After pauses the whole client, for at most MAX_WAIT. ------------------------------


def test_a_429_pauses_every_thread(serve: Callable[..., HostileServer], clients: Callable[..., Client]) -> None:
    server = serve(first(1, reply(429, b'{"message":"slow down"}', {"Retry-After": "2"})))
    client = clients(host=server.url, thread=4, upload_size=5, max_queue_size=10_000)
    sent, feeding_until = 0, time.monotonic() + 10
    while time.monotonic() < feeding_until:  # a steady stream of full batches, through the pause and after it
        send(client, 5)
        sent += 5
        if server.requests:
            feeding_until = min(feeding_until, server.requests[0].arrived + 2.3)
        time.sleep(0.005)
    assert client.flush(timeout=30)
    assert len(set(server.message_ids())) == sent
    limited = server.requests[0].arrived
    window = [request.arrived - limited for request in server.requests[1:] if request.arrived < limited + 2]
    print(f"{len(server.requests)} requests; {len(window)} during the 2 s Retry-After, at {window} s")
    assert [late for late in window if late > 0.5] == []  # those in flight when the 429 came may still arrive
    assert server.requests[-1].arrived > limited + 1.9


def test_retry_after_is_capped_and_each_retry_is_counted_at_once(serve: Callable[..., HostileServer]) -> None:
    server = serve(first(1, reply(429, b"{}", {"Retry-After": "3600"})))
    errors: Errors = []
    sender = transport(server.url, max_retry_time=60, on_error=collect(errors))
    outcomes: List[Outcome] = []
    thread = threading.Thread(target=lambda: outcomes.append(sender.deliver([item(0)])))
    thread.start()
    deadline = time.monotonic() + 10
    while sender.retries < 1 and time.monotonic() < deadline and not errors:
        time.sleep(0.01)
    # 3600 s would pass max_retry_time and give up at once; capped to MAX_WAIT (30 s), it waits.
    assert errors == [] and sender.retries == 1 and thread.is_alive()
    sender.abort()  # ends the pause at once
    thread.join(10)
    assert [counts(outcome) for outcome in outcomes] == [(0, 1, 1, 0)]
    assert len(server.requests) == 1


def test_a_pause_past_max_retry_time_fails_later_batches_without_a_request(
    serve: Callable[..., HostileServer],
) -> None:
    server = serve(first(1, reply(429, b"{}", {"Retry-After": "20"})))
    errors: Errors = []
    sender = transport(server.url, max_retry_time=5, on_error=collect(errors))
    started = time.monotonic()
    assert sender.deliver([item(0)]).failed == 1  # 20 s would pass max_retry_time: given up at once
    assert sender.deliver([item(1)]).failed == 1  # and Vitally's pause holds for the next batch too
    assert time.monotonic() - started < 2
    assert len(server.requests) == 1
    assert [error.status for error, _ in errors] == [429, 429]  # type: ignore[attr-defined]
    assert "paused" in str(errors[1][0])


@pytest.mark.parametrize("status", [102, 103])
def test_interim_answers_are_skipped_and_each_batch_gets_its_own_answer(
    serve: Callable[..., HostileServer], clients: Callable[..., Client], status: int
) -> None:
    # http.client skips 100 Continue only: a 103 was taken as the batch's (failed) answer, and the
    # real 200 as the next batch's, counting as sent messages the server never received.
    server = serve(interim(status))
    errors: Errors = []
    client = clients(host=server.url, upload_size=5, on_error=collect(errors))
    for i in range(20):
        client.track("u", "e", {"i": i})
        if i % 5 == 4:
            assert client.flush(timeout=10)  # one batch at a time, on one kept-alive connection
    assert errors == []
    assert (client.stats().sent, client.stats().failed, len(server.message_ids())) == (20, 0, 20)
    assert server.connections == 1
