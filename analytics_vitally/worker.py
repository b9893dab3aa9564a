"""The queue and the background threads that turn it into batches.

Callers ``put()`` encoded messages without taking a lock; worker threads take
batches of up to ``upload_size`` messages (and ``max_batch_bytes``) when that
many are waiting, when the oldest has waited ``upload_interval`` seconds, on
``flush()``, or on ``shutdown()``, and hand them to ``deliver``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Deque, List, Optional

from .settings import Settings
from .transport import Outcome

log = logging.getLogger("analytics_vitally")

DROP_LOG_INTERVAL = 10.0
"""Seconds between two log lines about a full queue."""
_LIVENESS_CHECK = 0.25


@dataclass(frozen=True)
class Stats:
    """A snapshot of a client's counters (``Client.stats()``)."""

    enqueued: int = 0
    """Messages accepted by a call (queued, or sent at once in sync_mode)."""
    sent: int = 0
    """Messages Vitally accepted."""
    failed: int = 0
    """Messages that failed for good (each was reported to on_error)."""
    dropped: int = 0
    """Messages refused because the queue was full."""
    retried: int = 0
    """Requests that were tried again."""
    batches: int = 0
    """Requests Vitally accepted."""
    queue_depth: int = 0
    """Messages waiting in the queue now."""


class Worker:
    """A bounded queue of encoded messages and the threads that deliver it."""

    def __init__(self, deliver: Callable[[List[str]], Outcome], settings: Settings) -> None:
        self._deliver = deliver
        self._size = settings.upload_size
        self._interval = settings.upload_interval
        self._max_bytes = settings.max_batch_bytes
        self._capacity = settings.max_queue_size
        self._thread_count = settings.thread
        self._reset()

    def _reset(self) -> None:
        self._pending: Deque[str] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads: List[threading.Thread] = []
        self._taken = 0
        self._in_flight: List[int] = []  # queue position of each batch being delivered
        self._flush_to = 0
        self._stopping = False
        self._nudged = False
        self._oldest: Optional[float] = None
        self._stats = Stats()
        self._drops_unlogged = 0
        self._drop_logged_at = -DROP_LOG_INTERVAL

    reset_after_fork = _reset
    """In a forked child: a fresh queue, lock and threads; the parent's messages stay the parent's."""

    # The caller's side. --------------------------------------------------------------

    def put(self, item: str) -> bool:
        """Queue one encoded message; False (and counted) if the queue is full."""
        pending = self._pending
        if len(pending) >= self._capacity:
            self._drop()
            return False
        pending.append(item)
        if not self._threads:
            self._start()
        waiting = len(pending)
        if (waiting == 1 or waiting >= self._size) and not self._nudged:
            self._nudged = True
            with self._cond:
                self._cond.notify()
        return True

    def deliver_now(self, item: str) -> bool:
        """Deliver one message on the calling thread (sync_mode); True if Vitally took it."""
        with self._cond:
            self._taken += 1
        outcome = self._deliver([item])
        with self._cond:
            self._record(outcome)
        return outcome.sent == 1

    def _drop(self) -> None:
        with self._cond:
            self._stats = replace(self._stats, dropped=self._stats.dropped + 1)
            self._drops_unlogged += 1
            now = time.monotonic()
            if now - self._drop_logged_at < DROP_LOG_INTERVAL:
                return
            count, self._drops_unlogged, self._drop_logged_at = self._drops_unlogged, 0, now
        log.warning(
            "queue full (max_queue_size=%d): dropped %d message(s); Vitally is slow or unreachable, "
            "or messages are made faster than they can be sent",
            self._capacity,
            count,
        )

    def stats(self) -> Stats:
        with self._cond:
            return replace(self._stats, enqueued=self._taken + len(self._pending), queue_depth=len(self._pending))

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every message queued before the call is delivered or failed.

        Returns False if ``timeout`` seconds passed first.
        """
        if threading.current_thread() in self._threads:
            log.warning("flush() called from on_error on the worker thread: it would wait for itself; skipped")
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._taken + len(self._pending)
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            while not self._done(target):
                remaining = _LIVENESS_CHECK if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if not any(thread.is_alive() for thread in self._threads) and not self._start_locked():
                    self._drain_here()
                    continue
                self._cond.wait(min(remaining, _LIVENESS_CHECK))
        return True

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Deliver everything queued, then stop the threads; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        drained = self.flush(timeout)
        for thread in list(self._threads):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return drained

    # The threads' side. -------------------------------------------------------------

    def _start(self) -> None:
        with self._cond:
            if not self._threads:
                self._start_locked()

    def _start_locked(self) -> bool:
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        try:
            while len(self._threads) < self._thread_count:
                thread = threading.Thread(target=self._run, name="analytics_vitally", daemon=True)
                thread.start()
                self._threads.append(thread)
        except RuntimeError:  # at interpreter shutdown no new thread may start
            return bool(self._threads)
        return True

    def _done(self, target: int) -> bool:
        return self._taken >= target and all(start >= target for start in self._in_flight)

    def _take(self) -> Optional[List[str]]:
        """The next batch if one is due (lock held)."""
        pending = self._pending
        if not pending:
            self._oldest = None
            return None
        now = time.monotonic()
        if self._oldest is None:
            self._oldest = now
        due = (
            len(pending) >= self._size
            or self._stopping
            or self._taken < self._flush_to
            or now - self._oldest >= self._interval
        )
        if not due:
            self._nudged = False  # so the caller wakes us again when a full batch is waiting
            return None
        batch: List[str] = []
        size = 2
        while pending and len(batch) < self._size:
            size += len(pending[0]) + 1
            if batch and size > self._max_bytes:
                break
            batch.append(pending.popleft())
        self._in_flight.append(self._taken)
        self._taken += len(batch)
        self._nudged = False
        if not pending:
            self._oldest = None
        elif len(pending) >= self._size:
            self._cond.notify()
        return batch

    def _wait_time(self) -> float:
        if self._oldest is None:
            return self._interval or _LIVENESS_CHECK
        return max(0.0, self._oldest + self._interval - time.monotonic())

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                batch = self._take()
                while batch is None:
                    if self._stopping and not self._pending:
                        if me in self._threads:
                            self._threads.remove(me)
                        if not self._threads:
                            self._stopping = False  # drained: the next message starts threads afresh
                        self._cond.notify_all()
                        return
                    self._cond.wait(self._wait_time())
                    batch = self._take()
                start = self._taken - len(batch)
            self._send(batch, start)

    def _send(self, batch: List[str], start: int) -> None:
        outcome = Outcome(failed=len(batch))
        try:
            outcome = self._deliver(batch)
        except Exception:  # a bug must not kill the thread or hang flush()
            log.exception("delivering a batch of %d failed", len(batch))
        finally:
            with self._cond:
                self._in_flight.remove(start)
                self._record(outcome)
                self._cond.notify_all()

    def _drain_here(self) -> None:
        """No thread can run (interpreter shutdown): deliver on this thread (lock held)."""
        self._flush_to = max(self._flush_to, self._taken + len(self._pending))
        batch = self._take()
        if batch is None:
            return
        start = self._taken - len(batch)
        self._cond.release()
        try:
            self._send(batch, start)
        finally:
            self._cond.acquire()

    def _record(self, outcome: Outcome) -> None:
        stats = self._stats
        self._stats = replace(
            stats,
            sent=stats.sent + outcome.sent,
            failed=stats.failed + outcome.failed,
            retried=stats.retried + outcome.retried,
            batches=stats.batches + outcome.batches,
        )


__all__ = ["Stats", "Worker"]
