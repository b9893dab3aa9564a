"""Cases a hostile round found holding (issue 16), kept so by a test: answers shaped unusually but
legally, answers given before the body was read, TLS the client must refuse (1.0/1.1 only, an
expired certificate, a handshake that never completes), a CONNECT proxy that must never see the
key, NO_PROXY, and many asyncio tasks at once. (Untrusted and wrong-name certificates, redirects,
keep-alive resets and ``proxies=`` are in test_hostile_server.py and test_reliability.py; SIGKILLed
spool writers and forks with a spool in test_durability.py and test_spool.py.)"""

from __future__ import annotations

import asyncio
import base64
import select
import socket
import ssl
import threading
import time
from typing import Any, Callable, Iterator, List, Tuple, Union

import pytest

from analytics_vitally import AsyncClient, Client
from analytics_vitally.testing import Receiver

from .conftest import TOKEN, MakeClient
from .hostile import (
    HostileServer,
    Peer,
    RawRequest,
    certificate_file,
    expired_certificate_file,
    head,
    ok,
    server_context,
)

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

    def start(
        answer: Callable[[Peer, RawRequest], bool], tls: Union[bool, ssl.SSLContext] = False, read_body: bool = True
    ) -> HostileServer:
        server = HostileServer(answer, tls=tls, lifetime=60, read_body=read_body).__enter__()
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


# Answers before the body was read. ---------------------------------------------------------------------


def early(status: int, refuse: Callable[[RawRequest], bool]) -> Callable[[Peer, RawRequest], bool]:
    """A server that answers ``status`` from the request's head alone when ``refuse(request)``, then
    closes the way servers do (lingering: the body is read and thrown away, so the answer is not lost
    to a reset); any other request's body is read and accepted with a 200."""

    def answer(peer: Peer, request: RawRequest) -> bool:
        if refuse(request):
            peer.send(head(status, {"Retry-After": "0", "Connection": "close", "Content-Length": "0"}))
            peer.linger()
            return False
        peer.read_body(request)
        accept(peer, request)
        return peer.send(head(200, {"Content-Length": "22"}) + b'{"message":"Success."}')

    return answer


def test_an_early_413_splits_the_batch_and_everything_arrives_once(serve: Callable[..., HostileServer]) -> None:
    # More than 50,000 bytes is "too large" here, answered on seeing Content-Length: 100 messages of
    # about 3 KB (300 KB, more than loopback takes without the server reading) are halved until they fit.
    server = serve(early(413, lambda request: int(request.headers["content-length"]) > 50_000), read_body=False)
    errors: Errors = []
    with Client(TOKEN, host=server.url, on_error=lambda e, m: errors.append((e, m)), upload_interval=60) as client:
        for i in range(100):
            client.track("u", "e", {"i": i, "padding": "x" * 3000})
        assert client.flush(timeout=20)
        assert (client.stats().sent, client.stats().failed, errors) == (100, 0, [])
    ids = server.message_ids()
    assert (len(ids), len(set(ids))) == (100, 100)
    refused = [request for request in server.requests if not request.body]
    assert len(refused) >= 3 and all(int(request.headers["content-length"]) > 50_000 for request in refused)


def test_an_early_503_is_retried_and_everything_arrives_once(serve: Callable[..., HostileServer]) -> None:
    server = serve(early(503, lambda request: request.index < 3), read_body=False)
    errors: Errors = []
    with Client(TOKEN, host=server.url, on_error=lambda e, m: errors.append((e, m)), retry_wait=0.01) as client:
        for i in range(20):
            client.track("u", "e", {"i": i, "padding": "x" * 3000})
        assert client.flush(timeout=20)
        assert (client.stats().sent, client.stats().failed, errors) == (20, 0, [])
    assert len(server.requests) == 4 and sorted(server.message_ids()) == sorted(set(server.message_ids()))
    assert len(server.message_ids()) == 20


# TLS the client refuses. ---------------------------------------------------------------------------------


def refused_over_tls(server: HostileServer) -> str:
    """One message to ``server``, no retry: the text of the one error it got. Nothing was sent."""
    errors: Errors = []
    client = Client(TOKEN, host=server.url, max_retries=0, timeout=5, on_error=lambda e, m: errors.append((e, m)))
    client.track("u", "e")
    assert client.flush(timeout=10)
    client.shutdown(timeout=2)
    ((error, messages),) = errors
    assert len(messages) == 1 and client.stats().failed == 1
    assert server.requests == []  # no request was read: the key never left the client
    return str(error)


def old_tls_context(version: ssl.TLSVersion, server_side: bool) -> ssl.SSLContext:
    context = server_context() if server_side else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not server_side:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        context.minimum_version = context.maximum_version = version
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.0/1.1 above level 0
    except (ValueError, ssl.SSLError) as error:
        pytest.skip(f"this Python's OpenSSL cannot be set to {version.name}: {error}")
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # the point of the test
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLS 1.0", "TLS 1.1"])
def test_a_server_speaking_only_tls_1_0_or_1_1_is_refused(
    serve: Callable[..., HostileServer], version: ssl.TLSVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok, tls=old_tls_context(version, server_side=True))
    try:  # proof that the server speaks the old version, so the refusal below is the client's
        probing = old_tls_context(version, server_side=False)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, probing.wrap_socket(raw) as probe:
            spoken = probe.version()
    except (OSError, ssl.SSLError) as error:
        pytest.skip(f"this Python's OpenSSL cannot speak {version.name} at all: {error}")
    assert spoken in ("TLSv1", "TLSv1.1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate_file())  # trusted: only the version is wrong
    refusal = refused_over_tls(server)  # a client context allowing TLS 1.1 fails here: nothing is refused
    assert "version" in refusal.lower() or "protocol" in refusal.lower(), refusal


def test_an_expired_certificate_is_refused(
    serve: Callable[..., HostileServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok, tls=server_context(expired=True))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", expired_certificate_file())  # trusted: only its dates are wrong
    error = refused_over_tls(server)
    assert "expired" in error, error


# A CONNECT proxy. ---------------------------------------------------------------------------------------


class ConnectProxy:
    """An HTTPS proxy on 127.0.0.1 that records every byte the client sends it: the CONNECT request,
    then the tunnel, which it pipes to the target unread."""

    def __init__(self) -> None:
        self.seen = bytearray()
        self.heads: List[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(sock,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    return
                data += chunk
            with self._lock:
                self.seen += data
                self.heads.append(data.split(b"\r\n\r\n")[0])
            host, _, port = data.split(b" ")[1].decode().rpartition(":")
            with socket.create_connection((host, int(port)), timeout=10) as target:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                target.sendall(data.split(b"\r\n\r\n", 1)[1])
                while not self._stop.is_set():
                    readable, _, _ = select.select([client, target], [], [], 0.05)
                    for sock in readable:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return
                        if sock is client:
                            with self._lock:
                                self.seen += chunk
                        (target if sock is client else client).sendall(chunk)


@pytest.mark.parametrize("how", ["proxies=", "HTTPS_PROXY"])
def test_through_a_connect_proxy_the_key_is_never_visible_to_the_proxy(
    serve: Callable[..., HostileServer], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    server = serve(ok, tls=True)
    proxy = ConnectProxy()
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate_file())
    if how == "HTTPS_PROXY":
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    try:
        options = {"proxies": {"https": proxy.url}} if how == "proxies=" else {}
        with Client(TOKEN, host=server.url, upload_size=10, **options) as client:
            for i in range(30):
                client.track("u", "e", {"i": i})
            assert client.flush(timeout=20)
            assert (client.stats().sent, client.stats().failed) == (30, 0)
        assert len(set(server.message_ids())) == 30
        assert all(request.headers["authorization"].startswith("Basic ") for request in server.requests)
        with proxy._lock:
            seen, heads = bytes(proxy.seen), list(proxy.heads)
        assert heads and all(h.startswith(f"CONNECT 127.0.0.1:{server.port} ".encode()) for h in heads)
        assert len(seen) > 3000  # the tunnel went through it
        for secret in (TOKEN.encode(), base64.b64encode(f"{TOKEN}:".encode())):
            assert secret not in seen
        assert b"messageId" not in seen  # nor any message: the proxy saw TLS records only
    finally:
        proxy.close()
