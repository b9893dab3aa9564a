"""The queue and the background threads that turn it into batches.

Callers ``put()`` entries without taking a lock; worker threads take batches of up
to ``upload_size`` entries (and ``max_batch_bytes``) when that many are waiting, when
the oldest has waited ``upload_interval`` seconds, on ``flush()``, or on
``shutdown()``, and hand them to a ``Delivery`` (``delivery.py``). An entry is an
encoded message, or a ``(message, tag)`` pair whose tag the worker carries and never
reads; what a batch means beyond that is the delivery's business.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any, Deque, Dict, List, Optional

from . import lifecycle
from .delivery import Delivery, Feed, Outcome, Stats, totals
from .servers import warn_if_threads_cannot_run
from .settings import Settings

log = logging.getLogger("analytics_vitally")

DROP_LOG_INTERVAL = 10.0
"""Seconds between two log lines about a full queue."""
_LIVENESS_CHECK = 0.25
_YIELD = 0.0 if sys.version_info >= (3, 11) else 1e-6
"""A yield of the GIL: from 3.11 a zero sleep enters the scheduler, so a waiting thread takes the GIL;
before 3.11 a zero sleep returns at once (select with no timeout) and the caller keeps it, so it
sleeps for a microsecond (about 50 µs with Linux's timer slack, paid only when the queue is backed up)."""
_YIELD_EVERY = 64
"""With the queue half full (max_queue_size), a caller yields the GIL once in this many calls."""


class Worker:
    """A bounded queue of entries and the threads that hand it, in batches, to a ``Delivery``.

    ``delivery.deliver(batch) -> Outcome`` runs on a worker thread, or on the caller's in
    sync_mode. A ``Feed``, when given, adds entries from elsewhere (what earlier processes left on disk,
    and calls' entries it kept because the queue was full: ``put_aside``): ``flush()`` waits for those too.

    How the threads agree (CPython, with the GIL):

    - Positions. A message's position is the number of messages queued before it.
      ``_taken`` is the position of the next message to leave the queue; ``_in_flight``
      maps the first position of each batch being delivered to its size; ``_flush_to`` is
      the position up to which a ``flush()`` asked for batches without waiting for the
      interval. A flush with target T is done when ``_taken >= T`` and no batch in flight
      starts before T (``_done``). Positions only grow, so no flush can be satisfied early.
    - The feed's entries get positions when a thread queues them (``_refill``, one thread at a
      time: ``_refilling``). Entries calls put aside are counted in the order the feed keeps them
      (``_aside``; ``_aside_back``: those it has read back). A flush first waits until the feed has
      read back as many as had been put aside when it began, then for the queue up to
      ``_fed_end``, where the refill that read the last of them left it.
    - The lock. ``_cond`` guards every field, with three exceptions that ``put()`` reads
      or writes without it, because the call path must not take a lock per message:
      ``_pending``, a deque, whose ``append`` (callers) and ``popleft`` (threads, under
      the lock) are atomic under the GIL, and whose ``len`` is a snapshot; ``_nudged``, a
      hint meaning "a thread was woken for what is queued": a lost update costs at most
      one wake-up too many, or a batch that waits for the interval instead of leaving at
      once (``_run`` never waits longer than the interval); and ``_threads``, read to start
      the threads on first use, which ``_start`` checks again under the lock. ``_capacity``
      is read there too; ``close()`` writes it once, at exit.
    - The lock is re-entrant because a signal handler runs on a thread that may be inside
      a locked section: its ``flush()`` takes the lock again and ``wait()`` releases it.
    - Free-threaded Python (3.13t) removes the GIL these exceptions rely on: ``put()`` would
      need the lock, or an atomic counter for ``len(_pending)`` and a lock-free flag.
    - After ``os.fork()`` the child calls ``reset_after_fork`` (``_reset``): a new queue,
      lock and threads; what the parent had queued is the parent's to send.
    """

    def __init__(self, delivery: Delivery, settings: Settings, feed: Optional[Feed] = None) -> None:
        self._delivery = delivery
        self._feed = feed
        self.exit_timeout = settings.exit_timeout
        self._size = settings.upload_size
        self._interval = settings.upload_interval
        self._max_bytes = settings.max_batch_bytes
        self._capacity = settings.max_queue_size
        self._backlog = max(self._size, self._capacity // 2)
        """Past this many queued messages a caller yields the GIL now and then (``_make_room``)."""
        self._thread_count = settings.thread
        self._retired = False
        self._kept_elsewhere = False
        """The client was dropped and the delivery keeps every entry elsewhere: the first batch that fails
        for a reason that may pass ends the threads (``_give_up``)."""
        self._reset()
        self._unread = feed is not None
        """The feed's backlog is still being read into the queue: flush() waits for it. (Not ``_backlog``,
        the queue length past which callers yield the GIL.)"""
        lifecycle.track_worker(self)

    def _reset(self) -> None:
        self._pending: Deque[Any] = deque()  # entries: encoded messages, or (message, tag) pairs
        # Re-entrant: a signal handler that calls flush() while this thread is inside a locked
        # section (track(), stats()) must get the lock, not deadlock; its wait releases it.
        self._cond = threading.Condition(threading.RLock())
        self._local = threading.local()  # .flushing: a flush on this thread is waiting
        self._made_with = lifecycle.threading_kind()
        self._threads: List[threading.Thread] = []
        self._taken = 0
        self._in_flight: Dict[int, int] = {}  # queue position -> size of each batch being delivered
        self._flush_to = 0
        self._unread_end = 0  # the queue position where the feed's backlog ended
        self._refilling = False  # a thread is reading the feed
        self._fed_end = 0  # the queue position after the last entries read from the feed
        self._aside = 0
        self._aside_back = 0
        self._stopping = False
        self._closed = False
        self._sent_in_sync_mode = 0
        self._calls_backed_up = 0
        self._nudged = False
        self._oldest: Optional[float] = None
        self._stats = Stats()
        self._drops_unlogged = 0
        self._drop_logged_at = -DROP_LOG_INTERVAL

    def hurry(self) -> None:
        """Too many dropped clients are retrying: each batch left gets one more try, then goes to ``on_error``."""
        self._delivery.stop_retrying(
            f"the client was dropped, and more than {lifecycle.MAX_DROPPED_RETRYING} dropped clients were retrying"
        )

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh queue, lock and threads; the parent's messages stay the parent's."""
        self._reset()
        self._unread = False  # the parent's backlog is the parent's to send
        if self._feed is not None:
            self._feed.reset_after_fork()

    def retire(self) -> None:
        """The client is gone: deliver what is queued (and the feed's backlog), then end the threads
        and retire the delivery (its connections and files). A delivery that keeps every entry
        elsewhere (``let_go``: on disk) ends it sooner: at the first batch that fails for a reason
        that may pass, the threads leave the rest where it is (``_give_up``). Returns at once; safe
        from a garbage collection."""
        with self._cond:
            self._retired = True
            if self._threads:
                self._stopping = True
                self._kept_elsewhere = self._delivery.let_go()
                self._cond.notify_all()
                if not self._kept_elsewhere:
                    lifecycle.dropped(self)  # memory-only: it retries, but only so many at once
                return
        self._delivery.retire()

    # The caller's side. --------------------------------------------------------------

    def put(self, entry: Any, count_refusal: bool = True) -> bool:
        """Queue one entry; False if the queue is full or closed: counted as dropped, unless not
        ``count_refusal`` (the caller keeps the entry elsewhere: ``put_aside``)."""
        pending = self._pending
        if len(pending) >= self._capacity:  # close() sets the capacity to 0: one test on the hot path
            if count_refusal:
                self._drop()
            return False
        pending.append(entry)
        if not self._threads:
            self._start()
        waiting = len(pending)
        if (waiting == 1 or waiting >= self._size) and not self._nudged:
            self._nudged = True
            with self._cond:
                self._cond.notify()
        if waiting > self._backlog:
            self._make_room(waiting)
        return True

    def _make_room(self, waiting: int) -> None:
        """The queue is backing up: let the worker threads have the GIL now and then.

        A caller that never pauses keeps the GIL but for one switch interval (5 ms) in a
        while, so the threads send a few thousand messages a second and the queue fills
        although Vitally keeps up. Yielding (a zero sleep) every ``interval`` calls, from
        every 64th call at the watermark to every call when the queue is full, hands them
        the CPU that delivery needs. It costs nothing while the queue is short, and only a
        system call when the threads are waiting on the network, not the CPU.
        """
        left = self._capacity - waiting
        interval = 1 + (_YIELD_EVERY * left) // (self._capacity - self._backlog)
        self._calls_backed_up += 1
        if self._calls_backed_up >= interval:
            self._calls_backed_up = 0
            time.sleep(_YIELD)

    def put_aside(self, first: bool) -> None:
        """Count an entry a call gave the feed instead of the queue (it was full), in the feed's order (the
        feed holds its own lock): a thread reads it back as the queue empties, and ``flush()`` waits for
        it. ``first`` of a run: start the threads if none runs."""
        if first and not self._closed:
            self._start()
        with self._cond:
            self._aside += 1

    def taken_back(self, count: int) -> None:
        """The feed's ``read`` (now running) returns ``count`` entries put aside, or found them gone."""
        with self._cond:
            self._aside_back += count

    def backed_up(self) -> None:
        """A call found the queue full (its entry went to the feed): let the threads have the GIL, as a
        call at a full queue does (``_make_room``)."""
        time.sleep(_YIELD)

    def refuse(self, logged: bool = False) -> bool:
        """Count an entry refused before ``put()`` (``logged``: whoever refused it said why); False."""
        self._drop(logged)
        return False

    def count_filtered(self) -> None:
        """Count a message that ``before_send`` kept from being queued."""
        with self._cond:
            self._stats = replace(self._stats, filtered=self._stats.filtered + 1)
        totals.get().add(filtered=1)

    def deliver_now(self, entry: Any) -> bool:
        """Deliver one entry on the calling thread (sync_mode); True if Vitally took it."""
        with self._cond:
            self._sent_in_sync_mode += 1  # not _taken: flush() must never wait for these
        outcome = self._delivery.deliver([entry])
        with self._cond:
            self._record(outcome)
        return outcome.sent == 1

    def _drop(self, logged: bool = False) -> None:
        """Count a refused entry; log it (at most every 10 s) unless ``logged``: who refused it said why."""
        totals.get().add(dropped=1)
        with self._cond:
            self._stats = replace(self._stats, dropped=self._stats.dropped + 1)
            if logged:
                return
            self._drops_unlogged += 1
            now = time.monotonic()
            if now - self._drop_logged_at < DROP_LOG_INTERVAL:
                return
            count, self._drops_unlogged, self._drop_logged_at = self._drops_unlogged, 0, now
        if self._closed:
            log.warning(
                "dropped %d message(s) made after the exit drain (for example in a late atexit handler): "
                "nothing sends them any more",
                count,
            )
            return
        log.warning(
            "queue full (max_queue_size=%d): dropped %d message(s); Vitally is slow or unreachable, "
            "or messages are made faster than they can be sent",
            self._capacity,
            count,
        )

    def stats(self) -> Stats:
        with self._cond:
            return replace(
                self._stats,
                enqueued=self._taken + len(self._pending) + self._sent_in_sync_mode + self._set_aside(),
                queue_depth=len(self._pending),
            )

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every message queued before the call is delivered or failed.

        Returns False if ``timeout`` seconds passed first, and at once when waiting could
        never end: on a worker thread (from ``on_error``), or nested in a flush that a
        signal handler interrupted on this thread.
        """
        if self._on_worker_thread("flush()"):
            return False
        if getattr(self._local, "flushing", False):
            log.debug("flush() called while a flush() on the same thread was waiting (a signal handler?): skipped")
            return False
        self._refresh_locks()
        self._local.flushing = True
        try:
            return self._wait_for(self._target(), None if timeout is None else time.monotonic() + timeout)
        finally:
            self._local.flushing = False

    def send_now(self) -> None:
        """Make every message queued so far due, and wake the threads; returns at once."""
        self._target()

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Deliver everything queued, then stop the threads; False if ``timeout`` passed first."""
        if self._on_worker_thread("shutdown()"):
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            stopping = list(self._threads)  # a thread leaves the list before it ends (thread_ended runs after)
            self._cond.notify_all()
        drained = self.flush(timeout)
        # Once drained, a thread on the list but not in the snapshot was started for newer messages: not ours.
        later = [] if drained else [thread for thread in self._threads if thread not in stopping]
        for thread in stopping + later:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._cond:
            if not self._threads:  # (a thread that ran resets it as it leaves; this covers none having run)
                self._stopping = False  # the next message starts threads that batch as usual
        self._delivery.release()  # sync_mode delivered on this thread: its connection ends here too
        return drained

    # The exit drain (``lifecycle.drain_at_exit`` plans every worker's together). ---------

    def stop(self) -> None:
        """The exit drain begins: deliver what is queued without waiting for the interval, then end the
        threads. Returns at once, so every worker of the process drains at the same time."""
        with self._cond:
            self._stopping = True
            self._flush_to = max(self._flush_to, self._taken + len(self._pending))
            if self._pending or self._unread or self._set_aside():
                self._start_locked()  # (a worker whose threads ended while idle has none)
            self._cond.notify_all()

    def drained(self, deadline: float) -> bool:
        """Wait until everything queued is delivered or reported, or until ``deadline`` (monotonic)."""
        if self._on_worker_thread("the exit drain"):
            return False
        return self._wait_for(self._taken + len(self._pending), deadline)

    def abort(self) -> None:
        """Time is running out at exit: the delivery stops retrying and ends its requests in flight, so
        each batch fails at once and is reported. One more thread reports them, in case every worker
        thread is stuck (in a request that could not be ended, or in on_error)."""
        self._delivery.abort()
        with self._cond:
            self._start_locked(extra=1)

    def close(self, timeout: float) -> int:
        """The exit drain of this worker alone: deliver within ``timeout``, report what cannot be, then
        refuse new messages for good. Returns how many entries were neither delivered, reported, nor
        kept elsewhere by the delivery (on disk, for a later process)."""
        return lifecycle.close_together([(self, timeout)])

    def finish(self) -> int:
        """The exit drain ended: refuse new messages for good and retire the delivery. Returns how many
        entries were neither delivered, reported, nor kept elsewhere by the delivery (on disk, for a
        later process): those still queued or in flight now, after every report had its time."""
        with self._cond:
            self._closed = True
            self._capacity = 0
            left = len(self._pending) + sum(self._in_flight.values())
            self._pending.clear()
        if self._delivery.retire():  # what is left is kept for a later process (the delivery logs how many)
            return 0
        return left

    def _on_worker_thread(self, call: str) -> bool:
        if threading.current_thread() in self._threads:
            log.warning("%s called from on_error on the worker thread: it would wait for itself; skipped", call)
            return True
        return False

    def _target(self) -> int:
        with self._cond:
            target = self._taken + len(self._pending)
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            return target

    def _wait_for(self, target: int, deadline: Optional[float]) -> bool:
        owed = self._aside  # entries put aside so far: waited for once read back
        while True:
            with self._cond:
                if owed and not self._refilling and self._aside_back >= owed:
                    owed = 0  # each is queued, before _fed_end
                    target = max(target, self._fed_end)
                if self._unread or owed:  # what the feed's backlog adds to the queue is waited for too
                    queued = self._taken + len(self._pending)
                    if queued > target:
                        target = queued
                        if queued > self._flush_to:
                            self._flush_to = queued
                            self._cond.notify_all()
                else:
                    target = max(target, self._unread_end)  # the backlog ended while this flush waited for it
                    if target > self._flush_to:
                        self._flush_to = target
                        self._cond.notify_all()
                    if self._done(target):
                        return True
                remaining = _LIVENESS_CHECK if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                batch = None
                if not any(thread.is_alive() for thread in self._threads) and not self._start_locked():
                    # No thread can run (interpreter shutdown): deliver on this thread, unlocked.
                    self._unread = False  # nothing reads the feed's backlog now: it stays where it is
                    owed = 0
                    self._flush_to = max(self._flush_to, self._taken + len(self._pending))
                    batch = self._take()
                if batch is None:
                    self._cond.wait(min(remaining, _LIVENESS_CHECK))
                    continue
                start = self._taken - len(batch)
            self._send(batch, start)

    # The threads' side. -------------------------------------------------------------

    def start(self) -> None:
        """Start the threads now, not at the first entry (a feed's backlog needs no call)."""
        self._start()

    def _start(self) -> None:
        self._refresh_locks()
        with self._cond:
            if not self._threads:
                self._start_locked()

    def _refresh_locks(self) -> None:
        """Make the lock again if gevent or eventlet patched ``threading`` since it was made (and no
        thread uses it yet): a green thread waiting on an OS lock would block the whole hub."""
        if lifecycle.patched_since(self._made_with) and not self._threads:
            self._cond = threading.Condition(threading.RLock())
            self._local = threading.local()
            self._made_with = lifecycle.threading_kind()

    def _start_locked(self, extra: int = 0) -> bool:
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        if not self._threads:
            lifecycle.hold(self)  # from now on the queue is delivered whether or not the client lives on
        if len(self._threads) < self._thread_count:
            warn_if_threads_cannot_run()  # uWSGI without threads, or its master before the fork: once each
        try:
            while len(self._threads) < self._thread_count + extra:
                thread = threading.Thread(target=self._run, name="analytics_vitally", daemon=True)
                thread.start()
                self._threads.append(thread)
        except RuntimeError:  # at interpreter shutdown no new thread may start
            return bool(self._threads)
        return True

    def _done(self, target: int) -> bool:
        return self._taken >= target and all(start >= target for start in self._in_flight)

    def _take(self) -> Optional[List[Any]]:
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
            or self._aside > self._aside_back  # more is waiting on disk: no batch waits for the interval
        )
        if not due:
            self._nudged = False  # so the caller wakes us again when a full batch is waiting
            return None
        batch: List[Any] = []
        size = 2
        while pending and len(batch) < self._size:
            entry = pending[0]
            size += (len(entry) if entry.__class__ is str else len(entry[0])) + 1
            if batch and size > self._max_bytes:
                break
            batch.append(pending.popleft())
        self._in_flight[self._taken] = len(batch)
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
        try:
            try:
                self._delivery.get_ready()
            except Exception:
                log.exception("getting a worker thread ready raised")
            self._loop()
        finally:
            try:
                self._delivery.release()
            except Exception:
                log.exception("closing a worker thread's connection raised")

    def _loop(self) -> None:
        feed = self._feed
        while True:
            if feed is not None:
                self._refill(feed)
            with self._cond:
                batch = self._take()
                while batch is None:
                    owed = self._set_aside() > 0
                    if self._stopping and not self._pending and not self._unread and not owed:
                        self._leave()
                        return
                    wait = self._wait_time()
                    if feed is not None and not self._refilling and (self._unread or owed or not self._stopping):
                        wait = min(wait, feed.due_in())  # (while another thread reads it, wait for its notify)
                        if wait <= 0:
                            break  # time to read the feed again
                    self._cond.wait(wait)
                    batch = self._take()
                if batch is None:
                    continue
                start = self._taken - len(batch)
            self._send(batch, start)

    def _leave(self) -> None:
        """This thread ends: the queue is drained (lock held). The last one lets the worker go."""
        me = threading.current_thread()
        if me in self._threads:
            self._threads.remove(me)
        self._cond.notify_all()
        if self._threads:
            return
        self._stopping = False  # drained: the next message starts threads afresh
        lifecycle.let_go(self)
        if self._retired:
            self._delivery.retire()  # the client is gone: its connections and files are let go

    def _refill(self, feed: Feed) -> None:
        """Queue what the feed has (retries that are due, what dead processes left, what calls put aside).

        Runs on a worker thread, outside the lock (a feed reads files), when the feed is due and
        only while the queue has room, so a backlog never crowds out new messages: it is read as
        the queue empties, ten batches ahead. A backlog (and what calls put aside) is read without
        pause, and before the threads stop. One thread at a time, so the queue keeps the feed's order.
        """
        backlog = self._unread or self._set_aside() > 0
        if not backlog and (self._stopping or feed.due_in() > 0):
            return
        with self._cond:
            if self._refilling:
                return
            self._refilling = True
            pending = len(self._pending)
        room = min(self._capacity - pending, 10 * self._size - (pending if backlog else 0))
        found: List[Any] = []
        try:
            found = feed.read(max(0, room))
        except Exception:  # a bug must not kill the thread; what the feed holds stays there
            log.exception("reading more messages to send raised")
        finally:
            with self._cond:
                self._refilling = False
                self._pending.extend(found)
                self._fed_end = self._taken + len(self._pending)
                if self._unread and len(found) < room:
                    self._unread = False  # all read: flush() now waits only for the queue, up to here
                    self._unread_end = self._fed_end
                self._cond.notify_all()

    def _set_aside(self) -> int:
        """Entries calls put aside (in the feed) that it has not read back yet."""
        return self._aside - self._aside_back

    def _send(self, batch: List[Any], start: int) -> None:
        outcome = Outcome(failed=len(batch))
        try:
            outcome = self._delivery.deliver(batch)
        except Exception:  # a bug must not kill the thread or hang flush(); the ERROR log says what is lost
            log.exception("%d message(s) not delivered: delivering their batch raised", len(batch))
        finally:
            with self._cond:
                del self._in_flight[start]
                self._record(outcome)
                if self._kept_elsewhere and any(not failure.refused for failure in outcome.failures):
                    self._give_up()
                self._cond.notify_all()

    def _give_up(self) -> None:
        """A dropped client's batch failed and all its entries are kept elsewhere (lock held): forget the
        queue and the feed's backlog, refuse new entries, and let the threads end (each leaves after
        its batch in flight), so the client holds no thread, connection or file through an outage."""
        self._closed = True
        self._capacity = 0
        self._pending.clear()
        self._unread = False
        self._aside_back = self._aside
        log.info(
            "a dropped client's delivery failed: its undelivered messages stay in its spool for a later process"
        )

    def _record(self, outcome: Outcome) -> None:
        totals.get().add(sent=outcome.sent, failed=outcome.failed, retried=outcome.retried)
        stats = self._stats
        self._stats = replace(
            stats,
            sent=stats.sent + outcome.sent,
            failed=stats.failed + outcome.failed,
            retried=stats.retried + outcome.retried,
            batches=stats.batches + outcome.batches,
        )


__all__ = ["Outcome", "Stats", "Worker"]
