"""The direct lane: one kept-alive connection to Vitally per worker thread, spoken over its socket.

Its socket is attached to the deadline ``post`` is given, explicitly: no thread-local is involved.
"""

from __future__ import annotations

import email.parser
import http.client
import os
import socket
import ssl
from http.client import IncompleteRead
from typing import Any, BinaryIO, Dict, List, Optional, Tuple, Union

import urllib3
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.util import wait_for_read

from .. import lifecycle
from .deadline import Deadline
from .lane import ANSWER_LIMIT, ClosedWhenDropped

HEAD_LIMIT = 1 << 20
"""Bytes of an answer's head read at most (1 MiB): its status line, its header lines and the blank
line after them, interim (1xx) answers before it included. Within it any number of header lines of
any length is read (a server or proxy may send more than http.client's 100, or one over its 64 KiB);
a head longer than that is no HTTP answer, and fails as one that broke off (retried)."""

Address = Tuple[Any, ...]
"""One of ``socket.getaddrinfo``'s answers: family, type, protocol, canonical name, socket address."""


class DirectLane(ClosedWhenDropped):
    """One kept-alive connection to Vitally, spoken over its socket directly.

    Every batch is the same POST but for its body, so its head is written once; the answer's
    head is read whole or not at all (``_Answer``), its body by http.client. Per batch this costs
    about a third of the CPU of posting through urllib3's pool (which http.client's request
    machinery and urllib3's checks make up).
    TLS is set up as requests would (its CA bundle, or ``REQUESTS_CA_BUNDLE``), with the standard
    library's defaults: TLS 1.2 or later, certificate and host name checked.
    """

    def __init__(
        self, url: str, headers: Dict[str, str], verify: Union[bool, str], addresses: List[Address]
    ) -> None:
        self._addresses = addresses
        """Looked up while the program ran (``Transport.get_ready``): what the exit drain connects to."""
        parsed = urllib3.util.parse_url(url)
        assert parsed.host is not None  # settings refuse a host without one
        self._host = parsed.host.strip("[]")  # an IPv6 literal without its brackets
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._tls = tls_context(verify) if parsed.scheme == "https" else None
        netloc = parsed.host if parsed.port is None else f"{parsed.host}:{parsed.port}"
        lines = [f"POST {parsed.request_uri} HTTP/1.1", f"Host: {netloc}", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()]  # printable ASCII: settings checked them
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("ascii")  # parse_url IDNA-encodes hosts
        self._sock: Optional[socket.socket] = None
        self._handle: Optional[socket.socket] = None
        """A duplicate of the socket's descriptor for the request deadline: TLS wraps (and detaches) the socket."""

    def post(self, body: bytes, deadline: Deadline) -> http.client.HTTPResponse:
        """Send ``body`` on the kept-alive connection (or a new one) attached to ``deadline``; the
        answer with its status line and headers read whole (else a connection error), its body not."""
        sock = self._sock
        if sock is not None and wait_for_read(sock, timeout=0.0):  # closed by the server while idle
            self.close()
            sock = None
        try:
            if sock is None:
                sock = self._connect(deadline)
            else:
                assert self._handle is not None
                deadline.attach(self._handle)
            sock.sendall(b"%s%d\r\n\r\n%s" % (self._head, len(body), body))
            response = _Answer(sock, method="POST")
            try:
                response.begin()
            except BaseException:
                response.close()  # its file holds the socket open until closed
                raise
        except BaseException:
            self.close()
            raise
        return response

    def _connect(self, deadline: Deadline) -> socket.socket:
        timeout = deadline.seconds  # each socket operation's own bound; the deadline bounds them all
        if self._addresses and lifecycle.exiting():  # a green resolver cannot start its thread now
            sock = _connect_to(self._addresses, timeout)
        else:
            sock = socket.create_connection((self._host, self._port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handle = sock.dup()
            deadline.attach(self._handle)  # from here the request deadline covers the TLS handshake too
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        return sock

    def read_answer(self, response: http.client.HTTPResponse) -> Tuple[bytes, bool]:
        try:
            data = response.read(ANSWER_LIMIT + 1)
            if len(data) <= ANSWER_LIMIT and not response.isclosed():  # a short read: one more shows the end
                data += response.read(ANSWER_LIMIT + 1 - len(data))
            if len(data) > ANSWER_LIMIT:
                self.close()
                return data[:ANSWER_LIMIT], True
            if response.length:  # the connection ended before the Content-Length did
                raise IncompleteRead(data, response.length)
            if response.will_close:
                self.close()
            return data, False
        except BaseException:
            self.close()
            raise
        finally:
            response.close()  # its file holds the socket open until closed

    def close(self) -> None:
        sock, self._sock = self._sock, None
        handle, self._handle = self._handle, None
        for each in (sock, handle):
            if each is not None:
                each.close()


class _Answer(http.client.HTTPResponse):
    """http.client's answer, its head read by this lane (whole, or not at all), its body by http.client.

    http.client takes a connection that closed mid-head for the end of the status line or of the
    headers, so a ``200`` cut short by a dying proxy counted as a delivery; it also refuses more
    than 100 header lines, or one over 64 KiB, that a server may well send with a 2xx. Here an
    answer counts only once its status line (ended by CRLF or LF), every header line and the blank
    line after them arrived, and any number of header lines of any length is read within
    ``HEAD_LIMIT``: a head cut short raises ``RemoteDisconnected``, one past the limit
    ``HTTPException``, each a connection error the transport retries.

    Every interim answer (1xx but ``101``) before the final one is read whole and skipped:
    http.client skips ``100 Continue`` only, and a ``103 Early Hints`` taken as the batch's answer
    left the real one to be read as the next batch's. Interim answers sent for ever are ended by
    the request's deadline, or by ``HEAD_LIMIT``.
    """

    def begin(self) -> None:
        """Read the answer's head, then decide its body's framing as http.client's ``begin`` does."""
        fp, left = self.fp, HEAD_LIMIT
        while True:
            line = _head_line(fp, left)
            left -= len(line)
            version, status, reason = _status(line)
            lines = []
            while True:
                line = _head_line(fp, left)
                left -= len(line)
                lines.append(line)
                if line == b"\r\n" or line == b"\n":
                    break
            if not 100 <= status < 200 or status == 101:  # 101 is final
                break
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = headers = _parser.parsestr(b"".join(lines).decode("iso-8859-1"))
        encoding = headers.get("transfer-encoding")
        self.chunked = encoding is not None and encoding.lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()  # type: ignore[attr-defined]  # http.client's, 3.9 to 3.13
        self.length = None
        length = headers.get("content-length")
        if status in (204, 304) or 100 <= status < 200:
            self.length = 0
        elif length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                pass
            else:
                if self.length < 0:  # nonsense: ignored
                    self.length = None
        if self.length is None and not self.chunked:  # the body ends with the connection
            self.will_close = True


_parser = email.parser.Parser(_class=http.client.HTTPMessage)
"""Header lines as http.client makes them an ``HTTPMessage``."""


def _head_line(fp: BinaryIO, left: int) -> bytes:
    """One line of an answer's head, its newline included, of at most ``left`` bytes.

    A line without its newline is cut short: by the connection's end (or the deadline's shutting
    it), or by ``HEAD_LIMIT``."""
    line = fp.readline(left)
    if line[-1:] != b"\n":
        if len(line) == left:
            raise http.client.HTTPException(f"the answer's status line and headers passed {HEAD_LIMIT} bytes")
        arrived = HEAD_LIMIT - left + len(line)
        if not arrived:
            raise http.client.RemoteDisconnected("the connection closed without an answer")
        raise http.client.RemoteDisconnected(
            f"the connection closed after {arrived} bytes of the answer, before its status line and headers ended"
        )
    return line


def _status(line: bytes) -> Tuple[str, int, str]:
    """A status line's version, status and reason, as http.client reads them (its status: three digits)."""
    text = str(line, "iso-8859-1")
    parts = text.split(None, 2)
    code = parts[1] if len(parts) > 1 else ""
    status = int(code) if len(code) == 3 and code.isascii() and code.isdigit() else 0
    if status < 100 or not parts[0].startswith("HTTP/"):
        raise http.client.BadStatusLine(text)
    return parts[0], status, parts[2] if len(parts) > 2 else ""


def _connect_to(addresses: List[Address], timeout: float) -> socket.socket:
    """A connected socket to the first of ``addresses`` that takes it (``socket.create_connection``
    without the look-up)."""
    error: Optional[OSError] = None
    for family, kind, protocol, _, address in addresses:
        sock = socket.socket(family, kind, protocol)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as failure:
            sock.close()
            error = failure
    raise error if error is not None else OSError("no address to connect to")


def tls_context(verify: Union[bool, str]) -> ssl.SSLContext:
    """A client TLS context checking certificates and host names against requests' CA bundle, or ``verify``'s.

    ``verify`` is what requests found in the environment: True, or the path of a CA bundle file or
    directory (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``); nothing there turns checking off.
    """
    if isinstance(verify, str) and os.path.isdir(verify):
        context = ssl.create_default_context(capath=verify)
    else:
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


__all__ = ["Address", "DirectLane", "tls_context"]
