"""What the worker hands batches to, and what comes back: below both the worker and the transport.

The worker (``worker.py``) queues entries and calls a ``Delivery`` with each batch; the
transport (``transport/``) posts messages and says what became of each slice of a batch
(an ``Outcome`` with its ``Failure`` list) without reporting anything. Between the two sits the
policy for messages that failed: ``Reporting`` (in memory: every failure goes to ``on_error``)
or ``durable.Durable`` (with a spool: refused ones to the dead letters, the rest kept on disk).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Protocol

from . import lifecycle
from .errors import DeliveryError
from .settings import ErrorCallback

log = logging.getLogger("analytics_vitally")


@dataclass
class Failure:
    """Messages ``start`` to ``stop`` (by index in the batch given to the transport) were not delivered."""

    error: DeliveryError
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start

    @property
    def refused(self) -> bool:
        """Vitally refused them for good (a 4xx other than 401, 408 and 429): trying again cannot help.

        Otherwise the reason may pass (no answer, a 5xx, a 429, a 401 while the key is being fixed)."""
        status = self.error.status
        return status is not None and 400 <= status < 500 and status not in (401, 408, 429)


@dataclass
class Outcome:
    """What became of one batch."""

    sent: int = 0
    failed: int = 0
    """Messages that failed for good and were reported (to on_error, or the log)."""
    retried: int = 0
    batches: int = 0
    """Requests Vitally accepted."""
    failures: List[Failure] = field(default_factory=list)
    """The transport's account of what was not delivered, and why (in the order it happened)."""


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
    """Messages refused (the call returned False): the queue was full, or with a spool, the spool refused
    them (full, closed, a disk error such as a failed fsync)."""
    filtered: int = 0
    """Messages ``before_send`` dropped (it returned None), or that failed in it (it raised, or returned a
    message that breaks Vitally's rules; each logged at ERROR): none was sent."""
    retried: int = 0
    """Requests that were tried again."""
    batches: int = 0
    """Requests Vitally accepted."""
    queue_depth: int = 0
    """Messages waiting in the queue now."""


class Totals:
    """This process's counts over every client, only ever growing (a client that is gone keeps its part):
    what ``instrument_metrics`` exports. Updated per batch and per refused message, never per call."""

    __slots__ = ("_lock", "dropped", "failed", "filtered", "retried", "sent")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = self.failed = self.dropped = self.filtered = self.retried = 0

    def add(self, sent: int = 0, failed: int = 0, dropped: int = 0, filtered: int = 0, retried: int = 0) -> None:
        with self._lock:
            self.sent += sent
            self.failed += failed
            self.dropped += dropped
            self.filtered += filtered
            self.retried += retried


totals = lifecycle.PerProcess(Totals)
"""Made again in a forked child (its counts start at zero: the parent exports its own)."""

RequestObserver = Callable[[str, float, Optional[int], Optional[str]], None]
"""``observe(url, seconds, status, error)`` after each request: where it went, its duration, the HTTP status
if an answer came, and why it failed (the status, or ``no_response``), or None."""

request_observers: List[RequestObserver] = []
"""Called by the transport after each request (``instrument_metrics`` adds one); empty: nothing is timed."""


class Sender(Protocol):
    """A transport: posts encoded messages, says what became of them, never raises, reports nothing."""

    def deliver(self, items: List[str]) -> Outcome: ...

    def get_ready(self) -> None: ...

    def release(self) -> None: ...

    def abort(self) -> None: ...

    def stop_retrying(self, why: str) -> None: ...


class Delivery(Protocol):
    """What a worker hands its batches to. The worker never looks inside an entry.

    - ``deliver(batch)`` runs on a worker thread (or the caller's, in sync_mode) and never raises;
      the returned ``Outcome`` feeds the counters.
    - ``get_ready()`` and ``release()`` run on each worker thread as it starts and as it ends
      (a connection per thread is made ready and closed); ``release()`` also runs on the thread
      calling ``shutdown()``, whose connection sync_mode may have opened.
    - ``abort()``: time is running out at exit: stop retrying and end requests in flight.
    - ``stop_retrying()``: each batch gets one try from now on (too many dropped clients retry at once).
    - ``let_go()``: the client was dropped (its worker delivers what is queued, then retires the
      delivery). True if the delivery keeps every entry elsewhere (on disk): it then gives each batch
      one try, and the worker ends at the first batch that fails for a reason that may pass, leaving
      the rest where it is, for a later process; False: retries go on within their bounds.
    - ``retire()``: the worker is done with it for now (its client was dropped and its threads
      ended, or the exit drain ended). True if entries not delivered are kept elsewhere (on
      disk), so none is lost with the process.
    """

    def deliver(self, batch: List[Any]) -> Outcome: ...

    def get_ready(self) -> None: ...

    def release(self) -> None: ...

    def abort(self) -> None: ...

    def stop_retrying(self, why: str) -> None: ...

    def let_go(self) -> bool: ...

    def retire(self) -> bool: ...


class Feed(Protocol):
    """More entries for a worker's queue from somewhere else than calls (a spool's leftovers and retries),
    or from calls that found the queue full (the feed kept them: ``Worker.put_aside``, ``taken_back``).

    A worker with a feed starts with a backlog: ``flush()`` waits for it too, until a ``read``
    comes back with fewer entries than there was room for. A worker thread calls ``read`` outside
    the worker's lock when ``due_in()`` is not above zero (at once while there is a backlog, or
    while entries calls put aside are not all read back), one thread at a time.
    """

    def due_in(self) -> float:
        """Seconds until the feed should be read again."""
        ...

    def read(self, room: int) -> List[Any]:
        """At most ``room`` entries (``room`` may be 0: nothing is read, and the next read is put off)."""
        ...

    def reset_after_fork(self) -> None:
        """In a forked child (before any other thread runs): what the parent put aside is the parent's."""
        ...


def report(on_error: Optional[ErrorCallback], error: DeliveryError, messages: List[str]) -> None:
    """Tell the program that ``messages`` (encoded) failed for good: ``on_error``, or the log at ERROR."""
    if on_error is None:
        log.error("%d message(s) not delivered: %s", len(messages), error)
        return
    log.info("%d message(s) not delivered (passed to on_error): %s", len(messages), error)
    try:
        on_error(error, [json.loads(message) for message in messages])
    except Exception:
        log.exception("on_error raised")


class Reporting:
    """Delivery from memory: a transport's failures are final, and each goes to ``on_error`` or the log."""

    def __init__(self, sender: Sender, on_error: Optional[ErrorCallback]) -> None:
        self._sender = sender
        self._on_error = on_error
        self.get_ready = sender.get_ready
        self.release = sender.release
        self.abort = sender.abort
        self.stop_retrying = sender.stop_retrying

    def deliver(self, batch: List[str]) -> Outcome:
        outcome = self._sender.deliver(batch)
        for failure in outcome.failures:
            outcome.failed += failure.count
            report(self._on_error, failure.error, batch[failure.start : failure.stop])
        return outcome

    def let_go(self) -> bool:
        return False  # only memory holds these messages: they are tried for as long as the settings allow

    def retire(self) -> bool:
        return False  # nothing is kept: what was not delivered was reported or is counted lost


__all__ = [
    "Delivery",
    "Failure",
    "Feed",
    "Outcome",
    "Reporting",
    "RequestObserver",
    "Sender",
    "Stats",
    "Totals",
    "report",
    "request_observers",
    "totals",
]
