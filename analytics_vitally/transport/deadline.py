"""Request deadlines: one request ends within its ``timeout`` seconds, whatever the server does.

requests' and the socket module's timeouts apply to each socket operation, so a server trickling
bytes can hold a request for ever. Each request arms a ``Deadline`` (``watchdog.get().arm``) and
is handed it; the socket it sends on is attached to that deadline (``Deadline.attach``), and one
watchdog thread per process shuts that socket down when the deadline passes, so the blocked call
on it returns at once. ``Deadline.disarm`` ends the watch before the socket can be used again.

What a deadline covers: the whole request from the moment it is armed (before the connection is
looked for), so the connect, the TLS handshake, sending the batch, and reading the answer's
headers and body all use up the same ``timeout`` seconds. The connect itself cannot be cut short
(there is no connected socket to shut down yet): it is bounded by the per-operation timeout, per
address tried; a socket attached after its deadline passed is shut down at once.

What it does not cover: the DNS look-up of Vitally's host (no socket exists yet; it takes as long
as the system resolver takes).

Nothing here knows how a socket is opened: the lanes (``direct``, ``proxied``) attach their
sockets to the deadline they are given.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import socket
import threading
import time
from typing import List, Optional, Tuple

from .. import lifecycle


class Deadline:
    """One request's deadline, armed by ``Watchdog.arm`` and passed to the lane that sends the request.

    ``seconds`` is the request's ``timeout``: also the per-operation timeout of its socket.
    ``fired`` is True once the deadline passed (or ``Watchdog.fire_all`` ended it): its socket was
    shut down, and the connection must not be used again.
    """

    __slots__ = ("_watchdog", "at", "fired", "handle", "owner", "seconds")

    def __init__(self, watchdog: Watchdog, seconds: float, owner: object) -> None:
        self._watchdog = watchdog
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.owner: Optional[object] = owner  # None once disarmed
        self.handle: Optional[socket.socket] = None
        self.fired = False

    def attach(self, handle: socket.socket) -> None:
        """The socket this request is about to use (connected, before any byte is sent): shut down
        when the deadline passes, or at once if it already did. Nothing once disarmed.

        ``handle`` may be a duplicate of the socket's descriptor (``socket.dup``), which stays
        valid when TLS wraps (and detaches) the socket: shutting it down ends the connection.
        """
        self._watchdog._attach(self, handle)

    def disarm(self) -> None:
        """The request is over: its socket is never shut down by this deadline from now on (it may
        go back to a pool or be kept alive for the next request)."""
        self._watchdog._disarm(self)


class Watchdog:
    """One thread ending the requests whose deadline passed (per request: a lock, a heap push, a flag)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: List[Tuple[float, int, Deadline]] = []  # a disarmed entry is dropped once on top
        self._order = itertools.count()
        self._sleeping_until = math.inf
        self._thread: Optional[threading.Thread] = None

    def arm(self, seconds: float, owner: object) -> Deadline:
        """A deadline ``seconds`` from now for a request of ``owner`` (``fire_all(owner)`` ends it)."""
        deadline = Deadline(self, seconds, owner)
        with self._lock:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._start()
            elif deadline.at < self._sleeping_until:
                self._wake.notify()
        return deadline

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="analytics_vitally-deadlines", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # at interpreter shutdown no thread may start: only per-read timeouts apply
            return
        self._thread = thread

    def _attach(self, deadline: Deadline, handle: socket.socket) -> None:
        with self._lock:
            if deadline.owner is not None:
                deadline.handle = handle
                if deadline.fired:
                    _shut(handle)

    def _disarm(self, deadline: Deadline) -> None:
        heap = self._heap
        with self._lock:  # so the watchdog never shuts down a socket once it went back to the pool
            deadline.owner = None
            deadline.handle = None
            while heap and heap[0][2].owner is None:  # keeps the heap about as long as requests in flight
                heapq.heappop(heap)

    def fire_all(self, owner: object) -> None:
        """End every request of ``owner`` in flight now."""
        with self._lock:
            for _, _, deadline in self._heap:
                if deadline.owner is owner:
                    self._fire(deadline)

    def _fire(self, deadline: Deadline) -> None:
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


watchdog = lifecycle.PerProcess(Watchdog)
"""The process's watchdog. Made at the first request of each process (the parent's thread does not
exist in a forked child, and its lock may be held there), and again once gevent or eventlet patched
``threading``."""

__all__ = ["Deadline", "Watchdog", "watchdog"]
