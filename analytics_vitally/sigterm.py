"""SIGTERM, the host's signal: deliver what is queued before it ends the process, never later or otherwise.

A SIGTERM with its default action ends a process at once, without ``atexit``. ``drain_on_sigterm``
(called when a client is made on the main thread) sets a handler that drains first and then ends
the process by SIGTERM, and a watcher thread that does so when the main thread cannot run Python
(a long C call); a server's handler found in place runs at once as ever, while what is queued
leaves during its graceful stop. SIGTERM is never blocked. The exit drain itself is
``lifecycle.drain_at_exit``; a forked child watches anew (``lifecycle.on_fork``).
"""

from __future__ import annotations

import _socket
import _thread
import contextlib
import importlib
import logging
import math
import os
import signal
import struct
import sys
import threading
import time
from types import FrameType, SimpleNamespace
from typing import Any, Callable, NamedTuple, Optional, Set, Tuple

from .lifecycle import PROCESS, drain_at_exit, green, on_fork, workers
from .servers import uwsgi_master_without_fork_hooks, uwsgi_threads_disabled

log = logging.getLogger("analytics_vitally")

#
# Python runs a signal handler on the main thread, between two bytecodes. So a SIGTERM handler
# here must never wait for the main thread (a C call may hold it for minutes), never block SIGTERM
# (the program's own handler, its signal-waiting thread and its subprocesses would get it late or
# never), and never wait at all under gevent or eventlet (it may run in the hub).

_GRACE = 0.25
"""Seconds the watcher leaves the main thread to run the SIGTERM handler before acting for it."""
_SLACK = 0.5
"""A SIGTERM the library drains for ends the process at most the largest exit_timeout and this later."""
_SEND_EVERY = 0.05
"""Seconds between two "send what is queued now" during a server's graceful stop."""
_BOUNCE = 0.5
"""A SIGTERM handed on to the program's threads that comes back within this many seconds reached one
that neither blocks nor waits for it: it is then taken as SIGTERM's default action takes it."""


def drain_on_sigterm() -> None:
    """On the main thread: make a SIGTERM deliver what is queued before the process ends, and change nothing else.

    SIGTERM with its default action ends the process at once, without ``atexit`` (``docker
    stop``, systemd, and uvicorn, which raises the SIGTERM it caught again after its graceful
    stop). There, ``_drain_then_end`` becomes the handler, and a watcher thread reads the wakeup
    fd (taken only if nobody has set one, an event loop say) to act when the main thread cannot
    run the handler. A Python handler found in place (a server's, set before it imported the
    app, as uvicorn's and gunicorn's workers do) is wrapped in ``_Chained``.
    """
    if not hasattr(signal, "SIGTERM") or not _on_main_thread():
        return
    try:
        found = signal.getsignal(signal.SIGTERM)
        if found is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _drain_then_end)
        elif callable(found) and found is not _drain_then_end and not isinstance(found, _Chained):
            signal.signal(signal.SIGTERM, _Chained(found))
        _arrange(_sigterm())
    except (ValueError, OSError):  # not the main interpreter, or signals unavailable here
        pass


def _arrange(state: _Sigterm) -> None:
    """On the main thread, our handler set: what it needs before any SIGTERM comes."""
    handler = signal.getsignal(signal.SIGTERM)
    if handler is _drain_then_end:
        _watch(state)
    if (handler is _drain_then_end or isinstance(handler, _Chained)) and _green_kind() == "eventlet":
        _eventlet_waker(state)


class _Chained:
    """A server's SIGTERM handler, run at once on every SIGTERM as without the library, while what is
    queued leaves now, and what is queued during the graceful stop it starts as it comes. The
    workers stay open (requests and tasks still running may send more): a server that exits
    normally (gunicorn, Celery) runs the exit drain as ever; one that ends by raising SIGTERM again
    with its default action (uvicorn's workers) has given the delivery the time of its stop."""

    def __init__(self, handler: Callable[[int, Optional[FrameType]], Any]) -> None:
        self._handler = handler

    def __call__(self, signum: int, frame: Optional[FrameType]) -> Any:
        state = _sigterm()
        if state.sending.acquire(False):
            with contextlib.suppress(RuntimeError):  # the interpreter is shutting down: the exit drain runs
                _start(state, _send_as_queued)
        return self._handler(signum, frame)


def _send_as_queued() -> None:
    """Until the exit drain begins: make what every worker holds due now, every ``_SEND_EVERY`` seconds."""
    pid = os.getpid()
    while not PROCESS.exiting and os.getpid() == pid:
        try:
            for worker in workers():
                worker.send_now()
        except Exception:  # the next round tries again
            log.debug("sending what was queued during a graceful stop raised", exc_info=True)
        time.sleep(_SEND_EVERY)


def _drain_then_end(signum: int, frame: Optional[FrameType]) -> None:
    """SIGTERM's handler where it had its default action: the exit drain, then the end by SIGTERM.

    The default action is back at once (a second SIGTERM ends the process there and then); the
    drain runs on a thread of its own, so that a lock held by the interrupted code cannot stop
    it, or as a greenlet under gevent or eventlet (this handler then returns at once and the
    greenlet ends the process). A program that blocks SIGTERM on its main thread takes SIGTERM
    itself: the one a library thread was given is handed on (``_hand_on``).
    """
    state = _sigterm()
    now = time.monotonic()
    if state.ending is None and _program_takes_it(state, now, _blocked(None)):
        if state.sockets is not None:
            state.blocked_seen_at = now  # the watcher hands it on: it sees each SIGTERM, this handler one per burst
        else:
            _hand_on(state)
        return
    ending = _begin_end(state, now)  # before the default action is back: the watcher reads them in that order
    signal.signal(signum, signal.SIG_DFL)  # from here a second SIGTERM ends the process, never re-enters this
    _start_drain(state)
    if green():
        return
    try:
        if not _wait(state.drained, ending.deadline - time.monotonic()):
            log.warning("SIGTERM: the exit drain did not end within %.1fs; the process ends without it", ending.timeout)
    finally:
        signal.raise_signal(signum)


class _Ending(NamedTuple):
    """The SIGTERM that ends the process: when it came, and when the process ends, drained or not."""

    since: float
    deadline: float
    by_watcher: bool
    """The watcher began the end: the main thread could not run the handler."""

    @property
    def timeout(self) -> float:
        return self.deadline - self.since


class _Sigterm:
    """This process's SIGTERM handling (made again in a forked child). A handler may run again inside
    itself (a second SIGTERM) and races the watcher: nothing here waits for a lock. The locks are
    OS locks even under gevent or eventlet (the watcher is an OS thread), taken only without waiting."""

    def __init__(self) -> None:
        threads = _os_threads()
        self.pid = os.getpid()
        self.ending: Optional[_Ending] = None
        self.draining = threads.allocate_lock()
        """Taken by whoever starts the exit drain."""
        self.drained = threads.allocate_lock()
        """Held until the exit drain begun at SIGTERM is over."""
        self.drained.acquire()
        self.blocked_seen_at = -math.inf
        """When the handler last found SIGTERM blocked on the main thread and left it to the watcher to hand on."""
        self.handed_on_at = -math.inf
        self.sending = threads.allocate_lock()
        """Taken once a server's graceful stop began: what is queued is sent as it comes (``_send_as_queued``)."""
        self.watching = False
        """A watcher was set up, or found impossible, in this process."""
        self.sockets: Optional[Tuple[_socket.socket, _socket.socket]] = None
        """The watcher's end and the wakeup fd's, while the watcher runs."""
        self.ours: Set[int] = set()
        """The native ids of the OS threads started here (the watcher's, the drain's): never handed a SIGTERM."""
        self.wake: Optional[Callable[[bytes], Any]] = None
        """Under eventlet: writes to a pipe whose reading greenlet wakes the hub (``_eventlet_waker``)."""


_state: Optional[_Sigterm] = None


def _sigterm() -> _Sigterm:
    global _state
    state = _state
    if state is None or state.pid != os.getpid():
        state = _state = _Sigterm()
    return state


def _begin_end(state: _Sigterm, now: float, by_watcher: bool = False) -> _Ending:
    """The process ends by the SIGTERM that came ``now``, unless one did already: published in one assignment."""
    ending = state.ending
    if ending is None:
        timeout = max((worker.exit_timeout for worker in workers()), default=0.0) + _SLACK
        ending = state.ending = _Ending(now, now + timeout, by_watcher)
    return ending


def _start_drain(state: _Sigterm) -> None:
    """Start the exit drain, unless it was started already."""
    if state.draining.acquire(False):
        try:
            _start(state, lambda: _drain(state))
        except RuntimeError:  # no new thread at interpreter shutdown: the exit drain runs there anyway
            state.drained.release()


def _drain(state: _Sigterm) -> None:
    try:
        drain_at_exit()
    except Exception:
        log.exception("the exit drain at SIGTERM raised")
    finally:
        state.drained.release()
    if green():  # the handler returned at once: this greenlet, on the main thread, ends the process
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


def _start(state: _Sigterm, run: Callable[[], None]) -> None:
    """Run ``run`` apart, without waiting for it to start (a signal handler calls this): as a greenlet under
    gevent or eventlet (the hub must never wait), else on an OS thread made without ``threading``'s locks
    (the handler may have interrupted the main thread while it held them)."""
    kind = _green_kind()
    if kind is not None:
        importlib.import_module(kind).spawn(run)
        if state.wake is not None:
            with contextlib.suppress(OSError):  # full: the hub has a wake-up waiting already
                state.wake(b"\0")
        return

    def ours() -> None:
        state.ours.add(_thread.get_native_id())
        run()

    _thread.start_new_thread(ours, ())


def _eventlet_waker(state: _Sigterm) -> None:
    """A greenlet that waits to read a pipe, so that a signal handler can wake eventlet's hub: without
    it, a greenlet the handler spawns waits for the hub's next timer (a minute, say), as the hub's
    poll or sleep goes on after a handler returns (PEP 475). gevent needs none: its spawn wakes its loop."""
    if state.wake is not None:
        return
    readable, writable = os.pipe()
    os.set_blocking(writable, False)
    write = importlib.import_module("eventlet.patcher").original("os").write  # eventlet's would wait in the hub
    hubs = importlib.import_module("eventlet.hubs")

    def read() -> None:
        while True:
            hubs.trampoline(readable, read=True)
            os.read(readable, 512)

    importlib.import_module("eventlet").spawn(read)
    state.wake = lambda data: write(writable, data)


def _on_main_thread() -> bool:
    """Whether the caller runs on the main thread, where signal handlers are set (under eventlet,
    ``current_thread()`` there is not ``main_thread()``)."""
    main = threading.main_thread()
    return threading.current_thread() is main or _os_threads().get_ident() == main.ident


def _green_kind() -> Optional[str]:
    """``"gevent"`` or ``"eventlet"`` once either patched ``threading``."""
    return threading.Lock.__module__.partition(".")[0] if green() else None


def _os_threads() -> Any:
    """``_thread`` as it was before gevent or eventlet monkey-patched it."""
    kind = _green_kind()
    if kind == "gevent":
        names = ["allocate_lock", "get_ident", "get_native_id", "start_new_thread"]
        originals = importlib.import_module("gevent.monkey").get_original("_thread", names)
        return SimpleNamespace(**dict(zip(names, originals)))
    if kind == "eventlet":
        return importlib.import_module("eventlet.patcher").original("_thread")
    return _thread


def _wait(lock: Any, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``lock`` to be released (it is left free); False if it was not."""
    if lock.acquire(timeout=max(0.0, seconds)):
        lock.release()
        return True
    return False


def _pause(seconds: float) -> None:
    """Sleep on an OS lock: ``time.sleep`` may be gevent's or eventlet's, and the watcher is an OS thread."""
    lock = _os_threads().allocate_lock()
    lock.acquire()
    lock.acquire(timeout=seconds)


def _blocked(thread: Optional[int]) -> Optional[bool]:
    """Whether SIGTERM is blocked on the calling thread (``thread`` None), or on the thread with that
    native id, read from /proc (None where it cannot be read)."""
    if thread is None:
        return hasattr(signal, "pthread_sigmask") and signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        with open(f"/proc/self/task/{thread}/status") as status:
            for line in status:
                if line.startswith("SigBlk:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _program_takes_it(state: _Sigterm, now: float, blocked_on_main: Optional[bool]) -> bool:
    """Whether this SIGTERM is the program's to take: it blocks SIGTERM on its main thread (and waits for it
    elsewhere), and this is not one handed on that came back (it reached a thread that does neither)."""
    return bool(blocked_on_main) and not green() and now - state.handed_on_at > _BOUNCE


def _hand_on(state: _Sigterm) -> None:
    """Send a SIGTERM that one of the library's threads was given (they started before the program blocked
    SIGTERM) to a thread the kernel could have given it to without them: one of the program's that does
    not block it (a thread waiting in ``sigwait`` shows it unblocked), else one of the program's (it
    waits there), else the main thread."""
    state.handed_on_at = time.monotonic()
    main = threading.main_thread()
    theirs = [
        thread
        for thread in threading.enumerate()
        if thread is not main
        and thread.ident
        and thread.native_id not in state.ours
        and not thread.name.startswith("analytics_vitally")
    ]
    waiting = [thread for thread in theirs if _blocked(thread.native_id) is False]
    target = (waiting or theirs or [main])[0]
    with contextlib.suppress(OSError, ValueError):  # it ended meanwhile
        signal.pthread_kill(target.ident or 0, signal.SIGTERM)


# The watcher: the thread that learns of each SIGTERM at once, whatever the main thread is doing,
# from the byte that Python's C-level handler writes to the wakeup fd on whichever thread the
# kernel picked. A datagram socket: on Linux each byte carries the pid of the process that wrote
# it, so a child forked without Python's fork hooks (uWSGI) that still writes to it is told apart.

_CREDENTIALS = struct.Struct("i")
"""The start of ``struct ucred``: the sender's pid."""
_CREDENTIALS_SPACE = _socket.CMSG_SPACE(12) if hasattr(_socket, "SO_PASSCRED") else 0


def _watch(state: _Sigterm) -> None:
    """Make a socket of ours the wakeup fd and start the watcher, once per process. Not where a wakeup fd is
    set (an event loop's: it is put back) or will be (trio's), nor where a thread must not run now
    (``servers``: a uWSGI master that forks from C, or threads disabled): the handler then works alone."""
    if state.watching or os.name != "posix" or not hasattr(signal, "set_wakeup_fd"):
        return
    if uwsgi_master_without_fork_hooks() or uwsgi_threads_disabled() or "trio" in sys.modules:
        return  # (trio warns when it finds a wakeup fd set)
    state.watching = True
    reader, writer = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    try:
        if _CREDENTIALS_SPACE:
            reader.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        if previous != -1:
            signal.set_wakeup_fd(previous)
        else:
            state.sockets = (reader, writer)
            _os_threads().start_new_thread(_watcher, (state, reader))
            return
    except (OSError, RuntimeError, ValueError):
        if state.sockets is not None:
            signal.set_wakeup_fd(-1)
            state.sockets = None
    reader.close()
    writer.close()


def _watcher(state: _Sigterm, reader: _socket.socket) -> None:
    state.ours.add(_os_threads().get_native_id())
    try:
        while True:
            _next_sigterm(reader, None)
            _act(state, reader, time.monotonic())
    except Exception:  # a bug: the handler still works alone
        log.exception("the SIGTERM watcher thread failed")


def _act(state: _Sigterm, reader: _socket.socket, came: float) -> None:
    """A SIGTERM came: leave the handler ``_GRACE`` to run on the main thread, and if it did not (a C call
    holds the main thread), act for it: hand the SIGTERM on, or drain (not under gevent or eventlet:
    the hub is held too) and end the process. One the handler took to end the process is ended here
    too by its deadline, should the drain's greenlet never run."""
    if signal.getsignal(signal.SIGTERM) is not _drain_then_end and state.ending is None:  # in the handler's order
        return  # the program's own handler took our place: its SIGTERM to handle
    while state.ending is None and state.blocked_seen_at < came - _GRACE and time.monotonic() < came + _GRACE:
        _pause(0.01)
    ending = state.ending
    if ending is None:
        blocked = state.blocked_seen_at >= came - _GRACE or _blocked(state.pid)  # the main thread's id is the pid
        if _program_takes_it(state, came, blocked):
            _hand_on(state)
            return
        ending = _begin_end(state, came, by_watcher=True)
        if not green():
            _start_drain(state)
    again = False
    while state.drained.locked() and time.monotonic() < ending.deadline and not again:
        again = _next_sigterm(reader, min(0.05, ending.deadline - time.monotonic())) and ending.by_watcher
    if again:
        log.warning("SIGTERM again: the process ends at once, without waiting for the exit drain")
    elif not state.draining.locked():
        log.warning(
            "SIGTERM: the main thread ran no Python code for %.1fs (a C call held it): the process ends "
            "without the exit drain",
            ending.timeout,
        )
    elif state.drained.locked():
        log.warning("SIGTERM: the exit drain did not end within %.1fs; the process ends without it", ending.timeout)
    _end_by_sigterm()


def _next_sigterm(reader: _socket.socket, timeout: Optional[float]) -> bool:
    """Wait up to ``timeout`` seconds (None: for ever) for a SIGTERM this process got; False if none came."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        reader.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
        try:
            data, ancillary, _, _ = reader.recvmsg(64, _CREDENTIALS_SPACE)
        except _socket.timeout:
            return False
        pid = [_CREDENTIALS.unpack_from(item[2])[0] for item in ancillary if item[1] == _socket.SCM_CREDENTIALS]
        if signal.SIGTERM in data and pid in ([], [os.getpid()]):
            return True


def _end_by_sigterm() -> None:
    """End the process by SIGTERM from the watcher. ``signal.signal`` works only on the main thread, which
    cannot run Python now: the default action is put back through the C library."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
        libc.signal.restype = ctypes.c_void_p
        libc.signal(signal.SIGTERM, None)  # SIG_DFL
        os.kill(os.getpid(), signal.SIGTERM)
        _pause(1.0)
    finally:
        os._exit(128 + signal.SIGTERM)


def _sigterm_after_fork() -> None:
    """In a forked child: the parent's watcher is not here and its socket is the parent's; watch anew."""
    global _state
    state, _state = _state, None
    if state is not None and state.sockets is not None:
        reader, writer = state.sockets
        try:
            previous = signal.set_wakeup_fd(-1)
        except (ValueError, OSError):  # left as it is: what the child's signals write goes to the parent's
            return  # watcher, which tells them apart by pid (closed, its fd's number could name another file)
        if previous != writer.fileno():  # set by someone else since
            signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
    with contextlib.suppress(ValueError, OSError):
        _arrange(_sigterm())


on_fork(_sigterm_after_fork)

__all__ = ["drain_on_sigterm"]
