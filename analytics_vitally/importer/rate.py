"""The importer's pacing: ``rate``, at most so many batch requests per second."""

from __future__ import annotations

import time
from typing import Callable

RATE_LIMITS = (0.01, 1000.0)
"""``rate`` bounds: one request per 100 s at least; 1000 requests/s (100,000 messages/s) is
already more than the importer can read, so a higher cap would be no cap."""


def within_limits(rate: float) -> bool:
    low, high = RATE_LIMITS
    return low <= rate <= high  # also false for nan


class RateLimiter:
    """At most ``rate`` batch requests per second: messages are queued in bursts of one batch,
    each burst sent at once, one burst per 1/rate seconds."""

    def __init__(self, rate: float, size: int, send_now: Callable[[], None], stopping: Callable[[], bool]) -> None:
        self._interval = 1.0 / rate
        self._size = size
        self._send_now = send_now
        self._stopping = stopping
        self._next = 0.0
        """When (time.monotonic()) the next burst may begin."""
        self._count = 0
        """Messages queued in the burst under way."""
        self._open = False
        """A burst is under way: its time slot is taken."""

    def wait(self) -> None:
        """Before queueing a message: wait for the next slot, unless a burst is under way."""
        if self._open:
            return
        now = time.monotonic()
        while self._next > now and not self._stopping():  # a stop ends the wait (rate 0.01: 100 s)
            time.sleep(min(self._next - now, 0.25))
            now = time.monotonic()
        self._next = max(now, self._next) + self._interval
        self._open = True

    def queued(self) -> None:
        """After queueing a message: a full burst is sent now, as one batch."""
        self._count += 1
        if self._count == self._size:
            self._count = 0
            self._open = False
            self._send_now()

    def restart(self) -> None:
        """The queue was flushed (a checkpoint): the next message begins a new burst."""
        self._count = 0
        self._open = False
