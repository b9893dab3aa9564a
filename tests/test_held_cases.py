"""Cases a hostile round found holding (issue 16), kept so by a test: answers shaped unusually but
legally, a TLS handshake that never completes, NO_PROXY, and many asyncio tasks at once."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from analytics_vitally import AsyncClient, Client
from analytics_vitally.testing import Receiver

from .conftest import TOKEN, MakeClient
from .hostile import HostileServer, Peer, RawRequest

Errors = List[Tuple[Exception, List[Any]]]


def accept(peer: Peer, request: RawRequest) -> None:
    with peer.server._lock:
        peer.server.messages.extend(request.messages())


def http_1_0(peer: Peer, request: RawRequest) -> bool:
    """An HTTP/1.0 answer: no length, the body ends when the connection closes."""
    accept(peer, request)
    peer.send(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"message":"Success."}')
    return False


def chunked_ok(peer: Peer, request: RawRequest) -> bool:
    """A 200 whose body comes in chunks, keeping the connection."""
    accept(peer, request)
    body = b'{"message":"Success."}'
    return peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[Peer, RawRequest], bool]], HostileServer]]:
    servers: List[HostileServer] = []

    def start(answer: Callable[[Peer, RawRequest], bool]) -> HostileServer:
        server = HostileServer(answer, lifetime=60).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize(("answer", "connections"), [(http_1_0, 3), (chunked_ok, 1)], ids=["HTTP/1.0", "chunked"])
def test_legal_but_unusual_answers_are_read_as_deliveries(
    serve: Callable[..., HostileServer], answer: Callable[[Peer, RawRequest], bool], connections: int
) -> None:
    server = serve(answer)
    errors: Errors = []
    with Client(TOKEN, host=server.url, upload_size=5, on_error=lambda e, m: errors.append((e, m))) as client:
        for i in range(15):
            client.track("u", "e", {"i": i})
            if i % 5 == 4:
                assert client.flush(timeout=10)
        assert (client.stats().sent, client.stats().failed, errors) == (15, 0, [])
    assert len(set(server.message_ids())) == 15
    assert server.connections == connections  # HTTP/1.0 closes each one; chunked keeps it


def test_a_tls_handshake_that_never_completes_ends_within_the_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)  # the kernel accepts; nobody speaks TLS
    port = listener.getsockname()[1]
    errors: Errors = []
    try:
        client = Client(
            TOKEN,
            host=f"https://127.0.0.1:{port}",
            timeout=0.5,
            max_retries=0,
            on_error=lambda error, messages: errors.append((error, messages)),
        )
        client.track("u", "e")
        started = time.monotonic()
        assert client.flush(timeout=10)
        assert time.monotonic() - started < 0.5 + 2
        ((error, messages),) = errors
        assert "timed out" in str(error) and len(messages) == 1
        client.shutdown(timeout=2)
    finally:
        listener.close()


def test_no_proxy_sends_directly(make_client: MakeClient, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    client = make_client()
    for i in range(5):
        client.track("u", "e", {"i": i})
    assert client.flush(timeout=10)
    assert receiver.wait_for(5) and client.stats().failed == 0


def test_ten_thousand_asyncio_tasks_each_deliver_once(receiver: Receiver) -> None:
    async def main() -> Tuple[int, bool]:
        async with AsyncClient(TOKEN, host=receiver.url) as client:
            results = await asyncio.gather(*(client.track(f"u{i}", "e", {"i": i}) for i in range(10_000)))
            return sum(queued for queued, _ in results), await client.flush(timeout=30)

    queued, flushed = asyncio.run(main())
    assert (queued, flushed) == (10_000, True)
    assert receiver.wait_for(10_000, timeout=10)
    ids = receiver.message_ids()
    assert (len(ids), len(set(ids))) == (10_000, 10_000)
