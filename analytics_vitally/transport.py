"""HTTP delivery of batches: retries, error mapping, isolation of bad messages, bounded requests.

``Transport.deliver(items)`` posts already-encoded messages as one batch and
never raises: the returned ``Outcome`` says what was delivered, and which messages
were not and why (``failures``); it reports nothing itself.

Whatever the server does, one request ends within ``timeout`` seconds (a watchdog
thread shuts down the socket of a request past its deadline), at most
``ANSWER_LIMIT`` bytes of an answer are read, and nothing the server sends back
is passed on or logged with the write key in it.
"""

from __future__ import annotations

import contextlib
import gzip
import heapq
import http.client
import itertools
import json
import logging
import math
import os
import platform
import socket
import ssl
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http.client import HTTPException, IncompleteRead
from typing import Any, Dict, List, Optional, Protocol, Tuple, Type, Union

import backoff
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH, select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import wait_for_read

from . import lifecycle
from .delivery import Failure, Outcome
from .errors import AuthenticationError, DeliveryError
from .settings import Settings
from .version import VERSION

log = logging.getLogger("analytics_vitally")

USER_AGENT = f"analytics-vitally/{VERSION} (python {platform.python_version()})"
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
"""Answers worth trying again: Vitally or the network may get better."""
SPLIT_STATUSES = frozenset({400, 413})
"""Answers to a batch that may be caused by only some of its messages."""
MAX_WAIT = 30.0
"""No single wait between tries is longer than this: a longer Retry-After is capped to it."""
AUTH_PAUSE = 60.0
"""After a 401, batches fail without a request for this many seconds."""
ANSWER_LIMIT = 4096
"""Bytes of an answer's body read at most; the connection of a longer answer is closed instead."""
REDACTED = "[redacted write_key]"

_BROKEN = (requests.RequestException, urllib3.exceptions.HTTPError, HTTPException, OSError)
"""What a request or the reading of its answer raises when the connection or the server failed."""


def retry_after_seconds(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now (not capped)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _environment_settings(url: str, proxies: Optional[Dict[str, str]]) -> Dict[str, Any]:
    """Proxies and certificate settings for ``url`` from the environment, as requests would find them."""
    with requests.Session() as probe:
        found = probe.merge_environment_settings(url, dict(proxies or {}), None, None, None)
    return {"proxies": found["proxies"], "verify": found["verify"]}


def _given_up(error: DeliveryError, why: str) -> DeliveryError:
    """``error`` as the final word on a batch, saying why it is not tried again."""
    return DeliveryError(f"{error} ({why})", error.status, error.body, error.retry_after)


class Transport:
    """Posts batches to Vitally for one client.

    ``retries`` counts the retries decided so far, each as soon as it is decided (before its wait).
    """

    retries: int

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._url = settings.url
        self._headers = {
            "Authorization": f"Basic {settings.write_key}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        if settings.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._environment = _environment_settings(self._url, settings.proxies)
        self._proxied = select_proxy(self._url, self._environment["proxies"]) is not None
        self._redact = _Redactor(settings.write_key or "")
        self._addresses: List[_Address] = []
        """Vitally's addresses as looked up while the program ran (under gevent or eventlet only)."""
        self.reset_after_fork()
        lifecycle.track_transport(self)

    def __repr__(self) -> str:
        return f"<Transport {self._url}>"

    def _lane(self) -> _Lane:
        """This thread's way to Vitally: its own kept-alive connection (or, via a proxy, requests' adapter)."""
        lane: Optional[_Lane] = getattr(self._local, "lane", None)
        if lane is None:
            if self._proxied:
                lane = _ProxiedLane(self._url, self._headers, self._environment)
            else:
                lane = _DirectLane(self._url, self._headers, self._environment["verify"], self._addresses)
            self._local.lane = lane
        return lane

    def reset_after_fork(self) -> None:
        """Forget connections, pauses and counts inherited from the parent process."""
        self._made_with = lifecycle.threading_kind()
        self._local = threading.local()
        self._aborted = threading.Event()
        self._lock = threading.Lock()  # guards retries and _paused_until
        self._auth_paused_until = 0.0
        self._paused_until = 0.0  # no request before this (a 429 or a Retry-After), for every thread
        self._pause_status: Optional[int] = None
        self.retries = 0

    def _refresh_locks(self) -> None:
        """Make the lock, the abort flag and the per-thread connections again with patched ``threading``."""
        aborted = self._aborted.is_set()
        self._made_with = lifecycle.threading_kind()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._aborted = threading.Event()
        if aborted:
            self._aborted.set()

    def get_ready(self) -> None:
        """On a worker thread as it starts: under gevent or eventlet, look up Vitally's addresses now.

        Their resolvers run each look-up on an OS thread, which Python refuses to start once the
        interpreter is exiting (3.12 on), or first register an atexit hook, refused then too
        (3.9): a connection made by the exit drain would fail. The exit drain connects to the
        addresses found here instead. Elsewhere it does nothing.
        """
        if self._proxied or not lifecycle.green():
            return
        parsed = urllib3.util.parse_url(self._url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            found = socket.getaddrinfo((parsed.host or "").strip("[]"), port, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError, RuntimeError) as error:  # the request will look again
            log.debug("looking up %s at a worker thread's start failed: %s", parsed.host, error)
            return
        self._addresses[:] = found

    def release(self) -> None:
        """Close the calling thread's connection (a worker thread calls this as it ends)."""
        lane: Optional[_Lane] = getattr(self._local, "lane", None)
        if lane is not None:
            self._local.lane = None
            lane.close()

    def abort(self) -> None:
        """Stop waiting between retries and end requests in flight; what is undelivered fails at once."""
        self._aborted.set()
        _watchdog.get().fire_all(self)

    def deliver(self, items: List[str]) -> Outcome:
        """Post encoded messages as one batch (splitting it if Vitally rejects some); never raises.

        What was not delivered is in the outcome's ``failures``, by position in ``items``: the
        transport reports nothing; its caller decides what a failure means (``delivery.Reporting``,
        ``durable.Durable``)."""
        if lifecycle.patched_since(self._made_with):  # gevent or eventlet patched threading since
            self._refresh_locks()
        outcome = Outcome()
        self._deliver(items, 0, outcome)
        return outcome

    def _deliver(self, items: List[str], start: int, outcome: Outcome) -> None:
        try:
            self._post_with_retries(items, outcome)
        except DeliveryError as error:
            if error.status in SPLIT_STATUSES and len(items) > 1:
                middle = len(items) // 2
                log.debug("batch of %d rejected (%s); retrying its halves", len(items), error.status)
                self._deliver(items[:middle], start, outcome)
                self._deliver(items[middle:], start + middle, outcome)
                return
            outcome.failures.append(Failure(error, start, start + len(items)))
        except Exception as exception:  # a bug must not lose messages silently, nor kill the worker
            log.debug("unexpected error delivering a batch of %d", len(items), exc_info=True)
            why = f"not delivered: unexpected {type(exception).__name__}: {self._redact.text(exception)}"
            outcome.failures.append(Failure(DeliveryError(why), start, start + len(items)))
        else:
            outcome.sent += len(items)
            outcome.batches += 1

    def _post_with_retries(self, items: List[str], outcome: Outcome) -> None:
        settings = self._settings
        body = ("[" + ",".join(items) + "]").encode()
        if settings.gzip:
            body = gzip.compress(body, compresslevel=6)
        waits = backoff.expo(factor=settings.retry_wait, max_value=MAX_WAIT)
        next(waits)
        deadline = time.monotonic() + settings.max_retry_time
        tries = 0
        while True:
            if self._paused_until:
                self._wait_out_pause(deadline)
            try:
                self._post(body, len(items))
                return
            except DeliveryError as failure:
                error = failure
            if error.status is not None and error.status not in RETRY_STATUSES:
                raise error
            tries += 1
            if self._aborted.is_set():
                raise _given_up(error, "not retried: the client is shutting down")
            retry_after = error.retry_after
            wait = min(retry_after, MAX_WAIT) if retry_after is not None else backoff.full_jitter(next(waits))
            client_wide = error.status == 429 or retry_after is not None
            if client_wide:  # Vitally asked the whole client to slow down: no thread sends before it passes
                with self._lock:
                    self._paused_until = max(self._paused_until, time.monotonic() + wait)
                    self._pause_status = error.status
            if tries > settings.max_retries:
                raise _given_up(error, f"gave up after {tries} tries")
            if time.monotonic() + wait > deadline:
                raise _given_up(
                    error, f"gave up: waiting {wait:.1f}s more would pass max_retry_time={settings.max_retry_time}s"
                )
            with self._lock:
                self.retries += 1
            outcome.retried += 1
            log.debug("retrying a batch of %d in %.2fs after: %s", len(items), wait, error)
            if client_wide:
                continue  # the pause is waited out before the next request
            if self._aborted.wait(wait):
                raise _given_up(error, "not retried: the client is shutting down")

    def _wait_out_pause(self, deadline: float) -> None:
        """Wait until the client-wide pause (a 429 or a Retry-After) is over, unless aborted."""
        while not self._aborted.is_set():
            left = self._paused_until - time.monotonic()
            if left <= 0:
                return
            if time.monotonic() + left > deadline:
                raise DeliveryError(
                    f"not sent: the client is paused {left:.1f}s more (Vitally answered {self._pause_status}), "
                    f"which would pass max_retry_time={self._settings.max_retry_time}s",
                    self._pause_status,
                )
            self._aborted.wait(left)

    def _post(self, body: bytes, count: int) -> None:
        """One request: returns if Vitally accepted it, else raises ``DeliveryError``.

        The error's ``status`` is None when no (complete) answer came back; with ``RETRY_STATUSES``
        it says whether another try is worth it, and ``retry_after`` is Vitally's Retry-After.
        """
        if self._aborted.is_set():
            raise DeliveryError("not sent: the client shut down before these messages could be delivered")
        paused = self._auth_paused_until - time.monotonic()
        if paused > 0:
            raise AuthenticationError(
                f"not sent: Vitally refused the write_key (401) recently; sending is paused for {paused:.0f}s more",
                401,
            )
        timeout = self._settings.timeout
        watchdog = _watchdog.get()
        started = time.monotonic()
        deadline = watchdog.arm(timeout, self)
        lane = self._lane()
        try:
            if self._aborted.is_set():  # abort() ran after the check above: it did not see this deadline
                raise DeliveryError("not sent: the client shut down before these messages could be delivered")
            try:
                response = lane.post(body, timeout)
            except _BROKEN as exception:
                log.debug("batch of %d: no response (%s)", count, type(exception).__name__)
                raise DeliveryError(f"no response from Vitally: {self._why(exception, deadline)}") from None
            if deadline.fired:  # the headers "ended" because the deadline shut the socket: no whole answer
                response.close()
                why = self._why(TimeoutError("the answer's headers did not arrive whole"), deadline)
                raise DeliveryError(f"no complete response from Vitally: {why}")
            status = response.status
            try:
                answer, longer = lane.read_answer(response)
            except _BROKEN as exception:
                if 200 <= status < 300:  # accepted; only the rest of the answer got lost
                    log.debug("batch of %d: %d, then the answer broke off", count, status)
                    return
                why = self._why(exception, deadline)
                raise DeliveryError(f"Vitally answered {status}, then the answer broke off: {why}") from None
        finally:
            watchdog.disarm(deadline)
            if deadline.fired:  # its socket was shut down: never reused
                lane.close()
        log.debug("batch of %d: %d in %.0f ms", count, status, (time.monotonic() - started) * 1000)
        if 200 <= status < 300:
            return
        text = self._redact.answer(answer, longer)
        shown = f"{text} [cut at {ANSWER_LIMIT} bytes]" if longer else text
        if status == 401:
            self._auth_paused_until = time.monotonic() + AUTH_PAUSE
            raise AuthenticationError(
                f"Vitally refused the write_key (401): check the Analytics API token; "
                f"sending is paused for {AUTH_PAUSE:.0f}s",
                status,
                text,
            )
        retry_after = retry_after_seconds(response.headers.get("Retry-After")) if status in (429, 503) else None
        raise DeliveryError(f"Vitally answered {status}: {shown}", status, text, retry_after)

    def _why(self, exception: BaseException, deadline: _Deadline) -> str:
        """Why a request got no (complete) answer, without the write key a server may have echoed."""
        if deadline.fired:
            if self._aborted.is_set():
                return "the client shut down during the request"
            return f"timed out after {self._settings.timeout}s"
        return f"{type(exception).__name__}: {self._redact.text(exception)}"


class _Lane(Protocol):
    """How one worker thread posts a batch: ``post`` returns the answer with its body unread."""

    def post(self, body: bytes, timeout: float) -> _Response: ...

    def read_answer(self, response: Any) -> Tuple[bytes, bool]:
        """The first ``ANSWER_LIMIT`` bytes of the body as sent (not decompressed), and whether there was more.

        A body read whole leaves its connection open for the next batch; the connection of a longer
        one is closed rather than read on. A body cut short raises ``IncompleteRead``.
        """
        ...

    def close(self) -> None: ...


class _Response(Protocol):
    status: int

    @property
    def headers(self) -> Any: ...

    def close(self) -> None: ...


class _DirectLane:
    """One kept-alive connection to Vitally, spoken over its socket directly.

    Every batch is the same POST but for its body, so its head is written once; the answer is
    read with http.client's parser. Per batch this costs about a third of the CPU of posting
    through urllib3's pool (which http.client's request machinery and urllib3's checks make up).
    TLS is set up as requests would (its CA bundle, or ``REQUESTS_CA_BUNDLE``), with the standard
    library's defaults: TLS 1.2 or later, certificate and host name checked.
    """

    def __init__(
        self, url: str, headers: Dict[str, str], verify: Union[bool, str], addresses: List[_Address]
    ) -> None:
        self._addresses = addresses
        """Looked up while the program ran (``Transport.get_ready``): what the exit drain connects to."""
        parsed = urllib3.util.parse_url(url)
        assert parsed.host is not None  # settings refuse a host without one
        self._host = parsed.host.strip("[]")  # an IPv6 literal without its brackets
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._tls = _tls_context(verify) if parsed.scheme == "https" else None
        netloc = parsed.host if parsed.port is None else f"{parsed.host}:{parsed.port}"
        lines = [f"POST {parsed.request_uri} HTTP/1.1", f"Host: {netloc}", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()]  # printable ASCII: settings checked them
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("ascii")  # parse_url IDNA-encodes hosts
        self._sock: Optional[socket.socket] = None
        self._handle: Optional[socket.socket] = None
        """A duplicate of the socket's descriptor for the request deadline: TLS wraps (and detaches) the socket."""

    def post(self, body: bytes, timeout: float) -> http.client.HTTPResponse:
        sock = self._sock
        if sock is not None and wait_for_read(sock, timeout=0.0):  # closed by the server while idle
            self.close()
            sock = None
        try:
            if sock is None:
                sock = self._connect(timeout)
            else:
                assert self._handle is not None
                _watchdog.get().attach(self._handle)
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

    def _connect(self, timeout: float) -> socket.socket:
        if self._addresses and lifecycle.exiting():  # a green resolver cannot start its thread now
            sock = _connect_to(self._addresses, timeout)
        else:
            sock = socket.create_connection((self._host, self._port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handle = sock.dup()
            _watchdog.get().attach(self._handle)  # from here the request deadline covers the TLS handshake too
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
    """http.client's answer, skipping every interim (1xx) answer before the final one.

    http.client skips ``100 Continue`` only: a ``102 Processing`` or ``103 Early Hints`` would be
    taken as the batch's answer, and the real one read as the next batch's. A server sending
    interim answers for ever is stopped by the request's deadline, like one that trickles.
    """

    def _read_status(self) -> Tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 < status < 200 or status == 101:  # 100 is skipped by begin(); 101 is final
                return version, status, reason
            http.client.parse_headers(self.fp)  # an interim answer's headers: read and dropped


_Address = Tuple[Any, ...]
"""One of ``socket.getaddrinfo``'s answers: family, type, protocol, canonical name, socket address."""


def _connect_to(addresses: List[_Address], timeout: float) -> socket.socket:
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


def _tls_context(verify: Union[bool, str]) -> ssl.SSLContext:
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


class _ProxiedLane:
    """Through a proxy: requests' adapter, which knows a proxy's ways (CONNECT, its headers)."""

    def __init__(self, url: str, headers: Dict[str, str], environment: Dict[str, Any]) -> None:
        # Every batch is the same POST but for its body: prepared once, copied per request.
        self._template = requests.Request("POST", url, headers=headers).prepare()
        self._environment = environment
        self._adapter = _WatchedAdapter()

    def post(self, body: bytes, timeout: float) -> urllib3.BaseHTTPResponse:
        request = self._template.copy()
        request.prepare_body(body, None)
        raw: urllib3.BaseHTTPResponse = self._adapter.send(request, timeout=timeout, **self._environment).raw
        return raw

    def read_answer(self, response: urllib3.BaseHTTPResponse) -> Tuple[bytes, bool]:
        try:
            data: bytes = response.read(ANSWER_LIMIT + 1, decode_content=False)
            if len(data) <= ANSWER_LIMIT and not response.closed:  # a short read before the end: only at its end
                data += response.read(ANSWER_LIMIT + 1 - len(data), decode_content=False)
        except BaseException:
            self._drop(response)
            raise
        if len(data) > ANSWER_LIMIT:
            self._drop(response)
            return data[:ANSWER_LIMIT], True
        if not response.closed or response.length_remaining:
            self._drop(response)
            raise IncompleteRead(data, response.length_remaining)
        response.release_conn()
        return data, False

    @staticmethod
    def _drop(response: urllib3.BaseHTTPResponse) -> None:
        """Close the answer's connection without reading on; its pool makes a new one when needed."""
        response.close()
        response.release_conn()

    def close(self) -> None:
        self._adapter.close()


class _Redactor:
    """Removes the write key from what a server sent back (it may echo the request's headers)."""

    def __init__(self, secret: str) -> None:
        texts = {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]}
        raw = {secret.encode(), json.dumps(secret).encode()[1:-1]}  # settings allow printable ASCII keys only
        texts.update(repr(form)[2:-1] for form in list(raw))  # as shown inside a bytes repr
        self._texts = sorted((form for form in texts if form), key=len, reverse=True)
        self._raw = sorted((form for form in raw if form), key=len, reverse=True)

    def text(self, value: object) -> str:
        text = str(value)
        for form in self._texts:
            text = text.replace(form, REDACTED)
        return text

    def answer(self, data: bytes, cut: bool) -> str:
        """An answer's body as text; ``cut``: it went on, so a key may begin at its very end."""
        for form in self._raw:
            data = data.replace(form, REDACTED.encode())
            if cut:
                for length in range(min(len(form), len(data)) - 1, 0, -1):
                    if data.endswith(form[:length]):
                        data = data[:-length] + REDACTED.encode()
                        break
        return self.text(data.decode("utf-8", errors="replace"))


# Request deadlines. -------------------------------------------------------------------------
#
# requests' timeout applies to each socket operation, so a server trickling bytes can hold a
# request forever. Each request arms a deadline; the connection it uses (a subclass, through the
# adapter below) attaches its socket to the deadline armed on its thread; one watchdog thread shuts
# that socket down when the deadline passes, so the blocked call returns at once. DNS resolution is
# not covered (no socket exists yet); the connect itself is bounded by ``timeout`` per address.


class _Deadline:
    __slots__ = ("at", "fired", "handle", "owner")

    def __init__(self, at: float, owner: object) -> None:
        self.at = at
        self.owner: Optional[object] = owner  # None once disarmed
        self.handle: Optional[socket.socket] = None
        self.fired = False


class _Watchdog:
    """One thread ending the requests whose deadline passed (per request: a lock, a heap push, a flag)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: List[Tuple[float, int, _Deadline]] = []  # a disarmed entry is dropped once on top
        self._order = itertools.count()
        self._sleeping_until = math.inf
        self._thread: Optional[threading.Thread] = None
        self._current = threading.local()  # .deadline: the one armed on this thread

    def arm(self, seconds: float, owner: object) -> _Deadline:
        deadline = _Deadline(time.monotonic() + seconds, owner)
        with self._lock:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._start()
            elif deadline.at < self._sleeping_until:
                self._wake.notify()
        self._current.deadline = deadline
        return deadline

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="analytics_vitally-deadlines", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # at interpreter shutdown no thread may start: only per-read timeouts apply
            return
        self._thread = thread

    def disarm(self, deadline: _Deadline) -> None:
        self._current.deadline = None
        heap = self._heap
        with self._lock:  # so the watchdog never shuts down a socket once it went back to the pool
            deadline.owner = None
            deadline.handle = None
            while heap and heap[0][2].owner is None:  # keeps the heap about as long as requests in flight
                heapq.heappop(heap)

    def attach(self, handle: socket.socket) -> None:
        """Called by a connection about to be used: the deadline armed on this thread now covers it."""
        deadline: Optional[_Deadline] = getattr(self._current, "deadline", None)
        if deadline is None:
            return
        with self._lock:
            if deadline.owner is not None:
                deadline.handle = handle
                if deadline.fired:
                    _shut(handle)

    def fire_all(self, owner: object) -> None:
        """End every request of ``owner`` in flight now."""
        with self._lock:
            for _, _, deadline in self._heap:
                if deadline.owner is owner:
                    self._fire(deadline)

    def _fire(self, deadline: _Deadline) -> None:
        deadline.fired = True
        if deadline.handle is not None:
            _shut(deadline.handle)

    def _run(self) -> None:
        heap = self._heap
        with self._lock:
            while True:
                now = time.monotonic()
                while heap and (heap[0][0] <= now or heap[0][2].owner is None):
                    deadline = heapq.heappop(heap)[2]
                    if deadline.owner is not None:
                        self._fire(deadline)
                self._sleeping_until = heap[0][0] if heap else math.inf
                self._wake.wait(min(self._sleeping_until - now, 3600.0) if heap else None)


def _shut(handle: socket.socket) -> None:
    with contextlib.suppress(OSError):
        handle.shutdown(socket.SHUT_RDWR)  # a blocked read or write on the connection returns at once


_watchdog = lifecycle.PerProcess(_Watchdog)
"""Made at the first request of each process (the parent's thread does not exist in a forked child,
and its lock may be held there), and again once gevent or eventlet patched ``threading``."""


class _WatchedHTTPConnection(HTTPConnection):
    """A connection whose socket the deadline armed on the calling thread can shut down."""

    _handle: Optional[socket.socket] = None
    """A duplicate of the socket's descriptor: it stays valid when TLS wraps (and detaches) the socket."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._close_handle()
        self._handle = sock.dup()
        _watchdog.get().attach(self._handle)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self._handle is not None and self.sock is not None:  # a kept-alive connection
            _watchdog.get().attach(self._handle)
        super().request(*args, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._close_handle()

    def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS: Dict[str, Type[HTTPConnectionPool]] = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections (direct or through an HTTP proxy) obey request deadlines."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # not SOCKS: its pools need their own connections
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


__all__ = ["ANSWER_LIMIT", "MAX_WAIT", "Transport", "retry_after_seconds"]
