"""The life of the clients in a process, owned in one place: made, forked, monkey-patched, dropped, ended.

- The registry. Every worker, transport and spool is known here weakly; a worker with threads
  running is also held strongly, so messages queued in a client that nobody references any
  more are still delivered (the worker ends its threads and releases the client's connections
  and spool files once they are). ``hold`` and ``let_go`` mark that. A dropped client whose
  messages are all in a spool ends at its first failed try (a later process sends them); at most
  ``MAX_DROPPED_RETRYING`` dropped clients without one retry at once (``dropped``).
- Fork. One ``os.register_at_fork`` hook for the package, and a pid check (``check_fork``, on
  every message call) for forks that skip the hooks (uWSGI forks its workers from C). Both run
  ``after_fork``, which resets, in this order: the process's identity (its pid, and the source
  of message IDs, so the child never repeats the parent's); the workers (queues, locks, threads:
  what the parent queued is the parent's to send); the transports (connections, pauses,
  counts); the spools (the parent's files stay the parent's). Process-wide objects (the module
  lock, the request deadlines' watchdog) are ``PerProcess``: made again at first use in a new
  process, whether or not the hooks ran.
- Green threads. ``PerProcess`` objects are also made again once gevent or eventlet has
  patched ``threading`` (so importing this package before ``patch_all()`` is fine); workers and
  transports check ``patched_since`` where their threads start and make their locks again.
- The end. ``atexit`` runs the exit drain: every worker delivers within its ``exit_timeout``, all
  at once against one plan; what can be neither delivered nor reported is counted in an ERROR line.
  A child of ``multiprocessing`` (fork, spawn or forkserver; ``Process`` or ``Pool``) leaves
  through ``os._exit`` after multiprocessing's finalizers, so the same drain is registered there
  as a finalizer. A SIGTERM with its default action would skip both: ``drain_on_sigterm`` sets
  a handler that drains first and then ends the process by SIGTERM, and a watcher thread that
  does so when the main thread cannot run Python (a long C call); a server's handler found in
  place runs at once as ever, while what is queued leaves during its graceful stop. SIGTERM is
  never blocked. ``os._exit`` called by the program and SIGKILL skip everything.
"""

from __future__ import annotations

import _thread
import atexit
import logging
import os
import random
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, Generic, List, Optional, Protocol, Set, Tuple, TypeVar

log = logging.getLogger("analytics_vitally")

T = TypeVar("T")


class _Process:
    """Who this process is: its pid as last seen by the fork handling."""

    __slots__ = ("exiting", "pid")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.exiting = False
        """The exit drain has begun: no new OS thread may be started any more (Python 3.12 on)."""


PROCESS = _Process()
"""``PROCESS.pid != os.getpid()`` means this process was forked and ``after_fork`` has not run yet."""

message_ids = random.Random()
"""The source of message IDs: seeded from os.urandom, private (``random.seed()`` in the app cannot
repeat IDs), and seeded again in every forked child."""

_making_locks: Dict[int, _thread.RLock] = {}


def _making_lock() -> _thread.RLock:
    """This process's lock for making process-wide objects and for the fork check: an OS lock, held
    only while objects are made or reset (never across a wait, so it cannot block a gevent hub),
    re-entrant (the fork handling may make one), and one per pid, so a fork that happened while
    another thread held it leaves the child a free one."""
    pid = os.getpid()
    lock = _making_locks.get(pid)
    if lock is None:
        lock = _making_locks.setdefault(pid, _thread.RLock())
    return lock


def threading_kind() -> object:
    """What makes ``threading`` locks now: changes when gevent or eventlet patches ``threading``."""
    return threading.Lock


def exiting() -> bool:
    """True once the exit drain has begun."""
    return PROCESS.exiting


def green() -> bool:
    """True once gevent or eventlet patched ``threading``: threads are green threads."""
    return getattr(threading.Lock, "__module__", "_thread") != "_thread"


def patched_since(kind: object) -> bool:
    """True if ``threading`` was monkey-patched since objects were made when ``threading_kind()`` was ``kind``."""
    return threading.Lock is not kind


class PerProcess(Generic[T]):
    """A process-wide object made at first use, and made again in a forked child and once
    ``threading`` was monkey-patched (a lock made before ``gevent.monkey.patch_all()`` would
    block the whole hub).

        _lock = PerProcess(threading.Lock)
        with _lock.get(): ...
    """

    __slots__ = ("_key", "_make", "_value")

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: Optional[T] = None
        self._key: Optional[Tuple[int, object]] = None

    def get(self) -> T:
        key = (os.getpid(), threading.Lock)
        value = self._value
        if value is None or self._key != key:
            with _making_lock():
                value = self._value
                if value is None or self._key != key:
                    value = self._value = self._make()
                    self._key = key
        return value


# The registry. --------------------------------------------------------------------------


class Resettable(Protocol):
    """What a forked child must not inherit as it is (a transport, a spool): it can be reset."""

    def reset_after_fork(self) -> None: ...


class Worker(Resettable, Protocol):
    """A client's queue and threads (``worker.Worker``): reset in a child, closed at exit."""

    exit_timeout: float

    def stop(self) -> None: ...

    def drained(self, deadline: float) -> bool: ...

    def abort(self) -> None: ...

    def finish(self) -> int: ...

    def send_now(self) -> None: ...

    def hurry(self) -> None: ...

    def stats(self) -> Any: ...


class Spool(Resettable, Protocol):
    """A client's spool (``spool.Spool``): reset in a child; its files' size is a metric."""

    @property
    def disk_bytes(self) -> int: ...


_workers: weakref.WeakSet[Worker] = weakref.WeakSet()
_transports: weakref.WeakSet[Resettable] = weakref.WeakSet()
_spools: weakref.WeakSet[Spool] = weakref.WeakSet()
_held: Set[Worker] = set()
"""Workers with threads running: kept alive whether or not their client still is."""


def track_worker(worker: Worker) -> None:
    _workers.add(worker)


def track_transport(transport: Resettable) -> None:
    _transports.add(transport)


def track_spool(spool: Spool) -> None:
    _spools.add(spool)


def workers() -> List[Worker]:
    """Every client's worker alive in this process (for metrics)."""
    return list(_workers)


def spools() -> List[Spool]:
    """Every spool alive in this process (for metrics)."""
    return list(_spools)


def hold(worker: Worker) -> None:
    """``worker`` started threads: keep it (and what it has queued) until ``let_go``."""
    _held.add(worker)
    if _drain_arranged_in != os.getpid():
        arrange_child_drain()


def let_go(worker: Worker) -> None:
    """``worker``'s threads all ended: it lives on only as long as its client does."""
    _held.discard(worker)


MAX_DROPPED_RETRYING = 50
"""Dropped clients without a spool that may retry at once; past it the oldest one ``hurry()``s: its
batches get one more try each, then go to ``on_error``, and its thread ends."""
_dropped: Deque[Worker] = deque()


def dropped(worker: Worker) -> None:
    """``worker``'s client was dropped with messages only in memory: it retries them within its
    bounds, unless ``MAX_DROPPED_RETRYING`` others do already. (Runs in a garbage collection: no lock.)"""
    _dropped.append(worker)
    try:  # (another thread's collection may empty it meanwhile: popleft then raises IndexError)
        for _ in range(len(_dropped)):  # forget those whose threads ended
            oldest = _dropped.popleft()
            if oldest in _held:
                _dropped.append(oldest)
        while len(_dropped) > MAX_DROPPED_RETRYING:
            _dropped.popleft().hurry()
    except IndexError:
        pass


# Fork. ----------------------------------------------------------------------------------

_fork_hooks: List[Callable[[], None]] = []


def on_fork(reset: Callable[[], None]) -> None:
    """Run ``reset`` in every forked child, in ``after_fork`` (for a module above this one)."""
    _fork_hooks.append(reset)


def check_fork() -> None:
    """For a fork that skipped the at-fork hooks: run ``after_fork`` once, at the first call in the child."""
    if PROCESS.pid != os.getpid():
        with _making_lock():
            if PROCESS.pid != os.getpid():
                log.debug("forked without Python's fork hooks (uWSGI?): fresh queues, threads and message IDs")
                after_fork()


def after_fork() -> None:
    """In a forked child: forget everything that belongs to the parent, in the order the module docstring gives."""
    PROCESS.pid = os.getpid()
    PROCESS.exiting = False
    for reset in list(_fork_hooks):  # what lives above this module (the SIGTERM watcher)
        reset()
    message_ids.seed()
    _held.clear()  # the parent's threads do not exist here
    _dropped.clear()
    for worker in list(_workers):
        worker.reset_after_fork()
    for transport in list(_transports):
        transport.reset_after_fork()
    for spool in list(_spools):
        spool.reset_after_fork()
    arrange_child_drain()


# The end. -------------------------------------------------------------------------------


def drain_at_exit() -> None:
    """Deliver what every worker holds, each within its ``exit_timeout``; report or count the rest.

    The workers are planned together, so ten clients get what one would: all stop at once and
    deliver in parallel; when a quarter of a worker's ``exit_timeout`` (at most a second) is left
    and it is not done, its delivery is aborted (no more retries, requests in flight ended: each
    batch fails at once and goes to ``on_error``), and the rest of the time goes to reporting.
    Only then is what is still undelivered and unreported counted, once, in an ERROR line.

    Runs at exit, in a multiprocessing child as a finalizer, and wherever else a process ends
    normally; a second run finds nothing left.
    """
    PROCESS.exiting = True
    workers = list(_workers)
    if not workers:
        return
    lost = close_together([(worker, worker.exit_timeout) for worker in workers])
    if lost:
        log.error(
            "%d message(s) not delivered at exit and not reported to on_error within exit_timeout=%ss: "
            "they are lost",
            lost,
            max(worker.exit_timeout for worker in workers),
        )


def close_together(timeouts: List[Tuple[Worker, float]]) -> int:
    """Close each worker within its timeout, all at once (the plan ``drain_at_exit`` describes);
    how many entries were neither delivered, reported, nor kept elsewhere."""
    start = time.monotonic()
    plan = [(worker, start + timeout, start + timeout - min(1.0, timeout / 4)) for worker, timeout in timeouts]
    for worker, _, _ in plan:
        worker.stop()
    done: Dict[int, bool] = {}
    for worker, _, abort_at in sorted(plan, key=lambda planned: planned[2]):
        done[id(worker)] = worker.drained(abort_at)
        if not done[id(worker)]:
            worker.abort()
    for worker, deadline, _ in sorted(plan, key=lambda planned: planned[1]):
        if not done[id(worker)]:
            done[id(worker)] = worker.drained(deadline)
    lost = 0
    for worker, _, _ in plan:
        left = worker.finish()
        _held.discard(worker)
        lost += 0 if done[id(worker)] else left
    return lost


_EXIT_PRIORITY = 20
"""Runs before multiprocessing's own finalizers (a Pool's at 15, a Queue's at 10), while they still work."""
_drain_arranged_in = 0
"""The pid of the process whose multiprocessing finalizer runs the drain."""
_after_bootstrap_arranged_in = 0


def arrange_child_drain(at_bootstrap: bool = False) -> None:
    """Make the exit drain run when this process, a multiprocessing child, ends through ``os._exit``.

    A child whose bootstrap is done (it runs its target) gets a finalizer now. Every process
    that has imported multiprocessing also asks it to call back at the bootstrap of a child
    (the callback is inherited by fork children; a spawn or forkserver child that imports this
    package while unpickling its target registers it there), because the bootstrap clears the
    finalizers registered before it.
    """
    global _drain_arranged_in, _after_bootstrap_arranged_in
    util = sys.modules.get("multiprocessing.util")
    process = sys.modules.get("multiprocessing.process")
    if util is None or process is None:
        return
    pid = os.getpid()
    try:
        if _after_bootstrap_arranged_in != pid:
            util.register_after_fork(_bootstrap_marker, _at_bootstrap)
            _after_bootstrap_arranged_in = pid
        bootstrapped = process.parent_process() is not None and not getattr(
            process.current_process(), "_inheriting", False
        )
        if bootstrapped and (at_bootstrap or _drain_arranged_in != pid):
            util.Finalize(None, drain_at_exit, exitpriority=_EXIT_PRIORITY)
            _drain_arranged_in = pid
    except Exception:  # multiprocessing's internals changed: say what the program must do itself
        log.warning(
            "could not arrange the exit drain in this multiprocessing child: call flush() before it ends",
            exc_info=True,
        )


class _Marker:
    """An object for multiprocessing's after-fork registry, which holds what it is given weakly."""


_bootstrap_marker = _Marker()


def _at_bootstrap(_: object) -> None:
    arrange_child_drain(at_bootstrap=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork)
atexit.register(drain_at_exit)
arrange_child_drain()

__all__ = [
    "PROCESS",
    "PerProcess",
    "after_fork",
    "arrange_child_drain",
    "check_fork",
    "close_together",
    "drain_at_exit",
    "dropped",
    "exiting",
    "green",
    "hold",
    "let_go",
    "on_fork",
    "message_ids",
    "patched_since",
    "threading_kind",
    "track_spool",
    "track_transport",
    "track_worker",
    "spools",
    "workers",
]
