"""A hostile HTTP server on 127.0.0.1 for tests and benchmarks: raw sockets, so it can break every rule.

    with HostileServer(first(1, trickle_headers)) as server:
        client = Client("key", host=server.url, timeout=1)
        ...
        assert server.connections == 1

Each accepted connection runs on its own thread: it reads requests one after the other and hands
each to ``answer(peer, request)``, which writes whatever it likes and returns True to keep the
connection open for the next request. ``request.index`` numbers requests across all connections,
so ``first(n, hostile)`` misbehaves only on the first ``n``. With ``tls=True`` it speaks HTTPS with
a self-signed certificate for 127.0.0.1: trust it with ``REQUESTS_CA_BUNDLE=certificate_file()``
(or give ``tls=`` a server ``ssl.SSLContext`` of your own). With ``read_body=False`` an answer gets
each request as soon as its head arrived, its body still unread: ``peer.linger()`` then ends the
connection the way a server answering early does.
The server stops itself after ``lifetime`` seconds; stopping (or leaving the ``with`` block) closes
every connection.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

__all__ = [
    "HostileServer",
    "Peer",
    "RawRequest",
    "certificate_file",
    "continue_flood",
    "echo_headers",
    "endless_chunked",
    "expired_certificate_file",
    "first",
    "huge_body",
    "interim",
    "never_answer",
    "ok",
    "ok_then_close",
    "reply",
    "server_context",
    "trickle_body",
    "trickle_headers",
    "trickle_after_status",
    "truncated",
]


@dataclass
class RawRequest:
    index: int
    """Its place among all requests the server received, from 0."""
    head: bytes
    headers: Dict[str, str]
    body: bytes
    arrived: float
    """time.monotonic() when it was read whole."""

    def messages(self) -> List[Dict[str, Any]]:
        body = gzip.decompress(self.body) if self.headers.get("content-encoding") == "gzip" else self.body
        try:
            batch = json.loads(body)
        except ValueError:
            return []
        return batch if isinstance(batch, list) else []


Answer = Callable[["Peer", RawRequest], bool]
"""Writes an answer (or not); True to read the next request on the same connection."""


class Peer:
    """One accepted connection, as an answer sees it."""

    def __init__(self, server: HostileServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self._buffer = b""

    @property
    def stopping(self) -> bool:
        return self.server.stopped.is_set()

    def read_request(self, read_body: bool = True) -> Optional[RawRequest]:
        """The next request on this connection; None once the client closed it or the server stops.
        Without ``read_body`` the request's ``body`` is empty and its bytes are left unread."""
        while b"\r\n\r\n" not in self._buffer:
            if not self._receive():
                return None
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        headers: Dict[str, str] = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if not read_body:
            return self.server._record(head, headers, b"")
        while len(self._buffer) < length:
            if not self._receive():
                return None
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return self.server._record(head, headers, body)

    def read_body(self, request: RawRequest) -> bytes:
        """Read the body a ``read_body=False`` server left unread; it also becomes ``request.body``."""
        length = int(request.headers.get("content-length", "0"))
        while len(self._buffer) < length:
            if not self._receive():
                break
        request.body, self._buffer = self._buffer[:length], self._buffer[length:]
        return request.body

    def _receive(self) -> bool:
        while not self.stopping:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return False
            if not data:
                return False
            self._buffer += data
            return True
        return False

    def send(self, data: bytes) -> bool:
        """Write ``data``; False if the client is gone or the server stops."""
        view = memoryview(data)
        while view and not self.stopping:
            try:
                view = view[self.sock.send(view) :]
            except socket.timeout:
                continue
            except OSError:
                return False
        return not view

    def trickle(self, data: bytes, interval: float) -> bool:
        """Write ``data`` one byte every ``interval`` seconds."""
        return all(self.send(data[index : index + 1]) and not self.wait(interval) for index in range(len(data)))

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the server stopped meanwhile."""
        return self.server.stopped.wait(seconds)

    def linger(self, seconds: float = 10.0) -> None:
        """End the connection as a server that answered before reading the body does (nginx's
        lingering close): stop writing, then read and discard what the client still sends until it
        closes or ``seconds`` pass, so the answer is not lost to a reset."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        ends = time.monotonic() + seconds
        while time.monotonic() < ends and self._receive():
            self._buffer = b""


class HostileServer:
    """A raw-socket HTTP server on 127.0.0.1 answering every request with ``answer``; a context manager."""

    def __init__(
        self,
        answer: Answer,
        *,
        tls: Union[bool, ssl.SSLContext] = False,
        lifetime: float = 60.0,
        read_body: bool = True,
    ) -> None:
        self.answer = answer
        self.read_body = read_body
        self._tls: Optional[ssl.SSLContext] = None
        if isinstance(tls, ssl.SSLContext):
            self._tls = tls
        elif tls:
            self._tls = server_context()
        self.lifetime = lifetime
        self.stopped = threading.Event()
        self.connections = 0
        """Connections accepted so far."""
        self.closed = 0
        """Connections this server closed (or saw closed) so far."""
        self.requests: List[RawRequest] = []
        self.messages: List[Dict[str, Any]] = []
        """Messages of the batches answered 200 by ``ok``, duplicates included."""
        self._lock = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.settimeout(0.05)
        self._peers: List[socket.socket] = []
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        self._thread = threading.Thread(target=self._accept, name="hostile-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            peers, self._peers = self._peers, []
        for peer in peers:
            peer.close()
        self._listener.close()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``count`` requests arrived; False if ``timeout`` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.requests) >= count, timeout)

    def wait_for_closed(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``count`` connections were closed; False if ``timeout`` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: self.closed >= count, timeout)

    def message_ids(self) -> List[str]:
        with self._lock:
            return [str(message.get("messageId")) for message in self.messages]

    def _record(self, head: bytes, headers: Dict[str, str], body: bytes) -> RawRequest:
        with self._lock:
            request = RawRequest(len(self.requests), head, headers, body, time.monotonic())
            self.requests.append(request)
            self._lock.notify_all()
        return request

    def _accept(self) -> None:
        ends = time.monotonic() + self.lifetime
        while not self.stopped.is_set():
            if time.monotonic() > ends:
                self.stopped.set()  # bounded in time whatever the test does
                break
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._peers.append(sock)
            threading.Thread(target=self._serve, args=(sock,), name="hostile-peer", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        peer = Peer(self, sock)
        try:
            if self._tls is not None:
                sock.settimeout(10)
                peer.sock = self._tls.wrap_socket(sock, server_side=True)
            peer.sock.settimeout(0.05)  # short, so every loop sees the server stop
            while True:
                request = peer.read_request(self.read_body)
                if request is None or not self.answer(peer, request):
                    break
        except OSError:
            pass  # the TLS handshake failed
        finally:
            peer.sock.close()
            sock.close()
            with self._lock:
                if sock in self._peers:
                    self._peers.remove(sock)
                self.closed += 1
                self._lock.notify_all()


# A self-signed certificate for 127.0.0.1 (valid until 2126), for HTTPS tests only; its key is public.
CERTIFICATE = """-----BEGIN CERTIFICATE-----
MIIBtDCCAVqgAwIBAgIUSZeQhLBmGDBJP8uroEQ+otGC94owCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTIwMTExMDU0M1oYDzIxMjYxMTA3
MTEwNTQzWjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAASiNgVaUnvI2AP8abZht/N3jHL92f3q+gaKEyctWePoxsXScQW+k/VV
xF4wPf8lwNjYfT6QbESyeF4sCFhAKp8No4GHMIGEMB0GA1UdDgQWBBSi5pXDikqQ
wPull5G+wU7poOTj5DAfBgNVHSMEGDAWgBSi5pXDikqQwPull5G+wU7poOTj5DAP
BgNVHREECDAGhwR/AAABMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeAMBMG
A1UdJQQMMAoGCCsGAQUFBwMBMAoGCCqGSM49BAMCA0gAMEUCIGWACX327fajT9GB
F60Lk+t37ocATGiqf3+xyqxg5zpMAiEAp4wYAwyhgHQADEwfAYQHlOKeAbNZtdBG
J2Ft3xo0BoM=
-----END CERTIFICATE-----
"""
_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgnu5ADPScfgL8sdYO
P4am82QXwHR73SD9rEX1c45/pBuhRANCAASiNgVaUnvI2AP8abZht/N3jHL92f3q
+gaKEyctWePoxsXScQW+k/VVxF4wPf8lwNjYfT6QbESyeF4sCFhAKp8N
-----END PRIVATE KEY-----
"""
# The same for a certificate that expired on 2020-01-02 (trusted as its own CA, so only its dates fail).
EXPIRED_CERTIFICATE = """-----BEGIN CERTIFICATE-----
MIIBYDCCAQagAwIBAgIUPm/AfM7Lu7tTdBnx4tflGR5sdpowCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMB4XDTIwMDEwMTAwMDAwMFoXDTIwMDEwMjAw
MDAwMFowFDESMBAGA1UEAwwJMTI3LjAuMC4xMFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEL3vRxCHM5hZa6KTZtcPduHyLbYRRZ1kAcVHuscm0UyqBqF9JD9/I1k5k
wX03gnisKpZkys9qoaV8I5wDoxDZ0qM2MDQwDwYDVR0RBAgwBocEfwAAATAMBgNV
HRMBAf8EAjAAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMAoGCCqGSM49BAMCA0gAMEUC
IQD9Hkf3LUvBrWAe/okyhDkg42Xl8gEctOFSQk39b2AdsgIgLFgxmgETSgzXzlxE
n1Cw+BdKlVhM+AaHayT5cmEc1aw=
-----END CERTIFICATE-----
"""
_EXPIRED_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgr95xPg8TlIvBLg8V
huohlI5EsJpufck/apWy5t1DJZ6hRANCAAQve9HEIczmFlropNm1w924fItthFFn
WQBxUe6xybRTKoGoX0kP38jWTmTBfTeCeKwqlmTKz2qhpXwjnAOjENnS
-----END PRIVATE KEY-----
"""
_files: Dict[str, str] = {}


def expired_certificate_file() -> str:
    """A file holding ``EXPIRED_CERTIFICATE``: trusting it leaves only the expiry to fail."""
    return _written("expired.pem", EXPIRED_CERTIFICATE)


def server_context(*, expired: bool = False) -> ssl.SSLContext:
    """A server TLS context with the 127.0.0.1 certificate (or the expired one), to change before use."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if expired:
        context.load_cert_chain(expired_certificate_file(), _written("expired-key.pem", _EXPIRED_KEY))
    else:
        context.load_cert_chain(certificate_file(), _key_file())
    return context


def certificate_file() -> str:
    """A file holding ``CERTIFICATE``: the CA bundle a client needs to trust a ``tls=True`` server."""
    return _written("certificate.pem", CERTIFICATE)


def _key_file() -> str:
    return _written("key.pem", _KEY)


def _written(name: str, text: str) -> str:
    if name not in _files:
        directory = _files.setdefault("", tempfile.mkdtemp(prefix="hostile-"))
        with open(os.path.join(directory, name), "w") as file:
            file.write(text)
        _files[name] = os.path.join(directory, name)
    return _files[name]


def head(status: int, headers: Optional[Dict[str, str]] = None) -> bytes:
    lines = [f"HTTP/1.1 {status} Hostile"] + [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# Answers. --------------------------------------------------------------------------------------------------


def ok(peer: Peer, request: RawRequest) -> bool:
    """200 as Vitally answers, keeping the connection; the batch's messages count as delivered."""
    with peer.server._lock:
        peer.server.messages.extend(request.messages())
    body = b'{"message":"Success."}'
    return peer.send(head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}) + body)


def ok_then_close(peer: Peer, request: RawRequest) -> bool:
    """``ok``, then the connection is closed without a word, as a server ending an idle keep-alive does."""
    ok(peer, request)
    return False


def reply(status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> Answer:
    """A well-formed answer with ``status``, ``body`` and ``headers``, keeping the connection."""

    def answer(peer: Peer, request: RawRequest) -> bool:
        return peer.send(head(status, {"Content-Length": str(len(body)), **(headers or {})}) + body)

    return answer


def first(count: int, hostile: Answer, then: Answer = ok) -> Answer:
    """``hostile`` for the first ``count`` requests the server receives, ``then`` for the others."""
    return lambda peer, request: (hostile if request.index < count else then)(peer, request)


TRICKLE = 0.2
"""Seconds between two bytes trickled: shorter than any timeout a test sets, so no single read times out."""


def trickle_headers(peer: Peer, request: RawRequest) -> bool:
    """A 200 whose status line and headers come one byte at a time, for ever."""
    line = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"z" * 10**6
    peer.trickle(line, TRICKLE)
    return False


def trickle_after_status(peer: Peer, request: RawRequest) -> bool:
    """A whole ``200`` status line at once, then its headers one byte at a time, for ever."""
    if peer.send(b"HTTP/1.1 200 OK\r\n"):
        peer.trickle(b"X-Slow: " + b"z" * 10**6, TRICKLE)
    return False


def interim(status: int, then: Answer = ok) -> Answer:
    """An interim answer (``102 Processing``, ``103 Early Hints``) with a header, then ``then``'s."""

    def answer(peer: Peer, request: RawRequest) -> bool:
        return peer.send(b"HTTP/1.1 %d Interim\r\nLink: </style.css>; rel=preload\r\n\r\n" % status) and then(
            peer, request
        )

    return answer


def trickle_body(status: int = 500) -> Answer:
    """Headers at once, then a body one byte at a time, for ever."""

    def answer(peer: Peer, request: RawRequest) -> bool:
        if peer.send(head(status, {"Content-Length": str(10**9)})):
            peer.trickle(b"z" * 10**6, TRICKLE)
        return False

    return answer


def endless_chunked(status: int = 500) -> Answer:
    """A chunked body that never ends, as fast as the client takes it."""

    def answer(peer: Peer, request: RawRequest) -> bool:
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        if peer.send(head(status, {"Transfer-Encoding": "chunked"})):
            while peer.send(chunk):
                pass
        return False

    return answer


def huge_body(size: int, status: int = 500) -> Answer:
    """A body of ``size`` bytes with its Content-Length, as fast as the client takes it."""

    def answer(peer: Peer, request: RawRequest) -> bool:
        block = b"x" * 65536
        if not peer.send(head(status, {"Content-Length": str(size)})):
            return False
        left = size
        while left > 0 and peer.send(block[: min(left, len(block))]):
            left -= len(block)
        return left <= 0

    return answer


def truncated(status: int = 503, length: int = 100, sent: int = 5) -> Answer:
    """Announces ``length`` bytes of body, sends ``sent``, then closes the connection."""

    def answer(peer: Peer, request: RawRequest) -> bool:
        peer.send(head(status, {"Content-Length": str(length)}) + b"x" * sent)
        return False

    return answer


def continue_flood(peer: Peer, request: RawRequest) -> bool:
    """``HTTP/1.1 100 Continue`` lines, ten a second, for ever: never a final answer."""
    while peer.send(b"HTTP/1.1 100 Continue\r\n\r\n") and not peer.wait(0.1):
        pass
    return False


def never_answer(peer: Peer, request: RawRequest) -> bool:
    """Reads the request and says nothing until the server stops."""
    peer.wait(3600)
    return False


def echo_headers(status: int = 403, cut_at: Optional[int] = None, status_line: bool = False) -> Answer:
    """Sends the request's head back in a ``status`` answer's body; with ``cut_at``, padded so that the
    middle of the Authorization header's value falls at byte ``cut_at`` of the body; with ``status_line``,
    the Authorization value inside a garbled status line instead."""

    def answer(peer: Peer, request: RawRequest) -> bool:
        authorization = request.headers.get("authorization", "").encode("latin-1")
        if status_line:
            peer.send(b"XTTP/1.1 200 " + authorization + b"\r\n\r\n")
            return False
        body = request.head
        if cut_at is not None:
            middle = body.index(authorization) + len(authorization) // 2
            body = b"p" * (cut_at - middle) + body
        return peer.send(head(status, {"Content-Length": str(len(body))}) + body)

    return answer
