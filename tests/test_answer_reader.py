"""The direct lane's answer reader: an answer counts only once its status line, every header line and
the blank line after them arrived; a connection closed before that is no answer (retried, then
reported). Any number of header lines of any length is read, within 1 MiB (``HEAD_LIMIT``).

Against raw-socket servers on 127.0.0.1 (tests/hostile.py), through a real ``Client``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from analytics_vitally import Client, DeliveryError
from analytics_vitally.delivery import Stats

from .conftest import TOKEN
from .hostile import Answer, HostileServer, Peer, RawRequest

HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 22\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
BODY = b'{"message":"Success."}'
VALID = HEAD + BODY
MAX_RETRIES = 1
"""So a batch whose answer never arrives whole is tried at least twice (the transport's schedule decides
how often a failure without an answer is tried within a step), then reported."""

Errors = List[Tuple[Exception, List[Any]]]


def collect(errors: Errors) -> Callable[[Exception, List[Any]], None]:
    return lambda error, messages: errors.append((error, messages))


def client_for(server: HostileServer, errors: Errors, **settings: Any) -> Client:
    """A client with fast retries, reporting to ``errors``."""
    settings = {"max_retries": MAX_RETRIES, "retry_wait": 0.01, "upload_interval": 60, "timeout": 5, **settings}
    return Client(TOKEN, host=server.url, on_error=collect(errors), **settings)


def closed_after(data: bytes) -> Answer:
    """Sends ``data`` (whatever the request), then closes the connection."""

    def answer(peer: Peer, request: RawRequest) -> bool:
        peer.send(data)
        return False

    return answer


# Every cut of a valid answer, through one server and one client. ---------------------------------------------


@dataclass
class Cut:
    requests: int
    """Requests the server received for this cut's batch."""
    error: Optional[Exception]
    """What on_error got for it; None if it counted sent."""


@dataclass
class Cuts:
    stats: Stats
    each: Dict[int, Cut]
    """By cut offset."""


@pytest.fixture(scope="module")
def cuts() -> Iterator[Cuts]:
    """One batch per cut offset of ``VALID`` (its first ``cut`` bytes sent, then the connection closed),
    each on a connection of its own, one after the other through one client; what became of each."""

    def cut_answer(peer: Peer, request: RawRequest) -> bool:
        (message,) = request.messages()
        peer.send(VALID[: message["properties"]["cut"]])
        return False

    errors: Errors = []
    with HostileServer(cut_answer, lifetime=120) as server:
        client = client_for(server, errors, upload_size=1)
        try:
            for cut in range(len(VALID) + 1):
                client.track("u", "cut", {"cut": cut})
            assert client.flush(timeout=60)
            stats = client.stats()
        finally:
            client.shutdown(timeout=5)
        requests: Dict[int, int] = {}
        for request in server.requests:
            (message,) = request.messages()
            requests[message["properties"]["cut"]] = requests.get(message["properties"]["cut"], 0) + 1
    reported = {messages[0]["properties"]["cut"]: error for error, messages in errors}
    assert all(len(messages) == 1 for _, messages in errors)
    yield Cuts(stats, {cut: Cut(requests.get(cut, 0), reported.get(cut)) for cut in range(len(VALID) + 1)})


def test_of_every_cut_only_those_after_the_head_count_as_sent(cuts: Cuts) -> None:
    head_cuts = len(HEAD)  # offsets 0 to len(HEAD) - 1: the blank line's LF never arrived
    counted = [cut for cut in range(head_cuts) if cuts.each[cut].error is None]
    print(f"{len(counted)} of {head_cuts} answers cut in their head counted sent: {counted}")
    assert counted == []
    stats = cuts.stats
    assert (stats.sent, stats.failed) == (len(BODY) + 1, head_cuts)
    assert stats.retried >= head_cuts * MAX_RETRIES


@pytest.mark.parametrize("cut", range(len(HEAD)))
def test_an_answer_cut_in_its_status_line_or_headers_is_retried_then_reported(cuts: Cuts, cut: int) -> None:
    # http.client took the close for the end of the status line or of the headers: cut anywhere from
    # "HTTP/1.1 200" on, the batch counted sent though no answer arrived whole.
    result = cuts.each[cut]
    assert isinstance(result.error, DeliveryError), f"cut after {VALID[:cut]!r}: counted sent"
    assert result.error.status is None and result.requests >= 1 + MAX_RETRIES
    assert "gave up after" in str(result.error)


@pytest.mark.parametrize("cut", range(len(HEAD), len(VALID) + 1))
def test_a_2xx_cut_in_its_body_counts_as_accepted_and_is_not_sent_again(cuts: Cuts, cut: int) -> None:
    # The body rule (docs/reliability.md, "Answers are read 4 KB at most"): a 2xx whose head arrived whole was
    # accepted; only the rest of its answer got lost.
    assert cuts.each[cut].error is None and cuts.each[cut].requests == 1


# The examples, and what is no answer either. -----------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"HTTP/1.1 200", id="a status line without its end"),
        pytest.param(b"HTTP/1.1 200 OK\r\n", id="a status line, no headers"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Le", id="cut in a header"),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", id="100 Continue, then a cut status line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r", id="a CR without its LF"),
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 2\n", id="LF lines, no blank line"),
        pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n", id="an interim answer cut"),
        pytest.param(b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\n", id="an interim answer, then a cut one"),
    ],
)
def test_a_connection_closed_before_the_headers_ended_is_no_answer(sent: bytes) -> None:
    errors: Errors = []
    with HostileServer(closed_after(sent)) as server:
        client = client_for(server, errors)
        try:
            client.track("u", "e")
            assert client.flush(timeout=20)
            stats = client.stats()
        finally:
            client.shutdown(timeout=5)
        assert len(server.requests) >= 1 + MAX_RETRIES
    ((error, messages),) = errors
    assert isinstance(error, DeliveryError) and error.status is None and len(messages) == 1
    assert (stats.sent, stats.failed) == (0, 1) and stats.retried >= MAX_RETRIES
    assert "no response from Vitally" in str(error)


# Heads that real servers send: any number of header lines, of any length. -----------------------------------


def head_of(status: str, lines: List[str]) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *lines]) + "\r\n\r\n").encode("latin-1")


def length(body: bytes) -> str:
    return f"Content-Length: {len(body)}"


MANY = [f"Set-Cookie: c{i}=v{i}; Path=/; HttpOnly" for i in range(150)]


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(head_of("200 OK", [*MANY, length(BODY)]) + BODY, id="150 header lines, Content-Length last"),
        pytest.param(head_of("200 OK", ["X-Big: " + "b" * (100 << 10), length(BODY)]) + BODY, id="a 100 KiB line"),
        pytest.param(
            head_of("103 Early Hints", [f"Link: </{i}.css>; rel=preload" for i in range(150)])
            + head_of("200 OK", [length(BODY)])
            + BODY,
            id="an interim answer of 150 lines, then a 200",
        ),
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 22\n\n" + BODY, id="LF line ends (a guard)"),
    ],
)
def test_a_complete_2xx_counts_and_keeps_its_connection_whatever_its_head_holds(answer: bytes) -> None:
    # http.client refused more than 100 header lines, or one over 64 KiB: the batch, accepted by
    # the server, was retried and reported as failed.
    errors: Errors = []
    with HostileServer(lambda peer, request: peer.send(answer)) as server:
        client = client_for(server, errors)
        try:
            for batch in range(2):
                client.track("u", "e", {"batch": batch})
                assert client.flush(timeout=20)
            stats = client.stats()
        finally:
            client.shutdown(timeout=5)
        assert (len(server.requests), server.connections) == (2, 1)  # the answer read whole: connection kept
    assert errors == []
    assert (stats.sent, stats.failed, stats.retried, stats.batches) == (2, 0, 0, 2)


def test_a_head_past_one_mib_is_no_answer() -> None:
    lines = [f"X-Pad-{i}: " + "p" * (60 << 10) for i in range(18)]  # each under http.client's 64 KiB
    answer = head_of("200 OK", [*lines, length(BODY)]) + BODY
    assert len(answer) > 1 << 20
    errors: Errors = []
    with HostileServer(lambda peer, request: peer.send(answer)) as server:
        client = client_for(server, errors)
        try:
            client.track("u", "e")
            assert client.flush(timeout=20)
            stats = client.stats()
        finally:
            client.shutdown(timeout=5)
    ((error, _),) = errors
    assert isinstance(error, DeliveryError) and error.status is None
    assert "passed 1048576 bytes" in str(error)
    assert (stats.sent, stats.failed) == (0, 1) and stats.retried >= MAX_RETRIES
