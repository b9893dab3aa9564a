"""The process the client lives in (uWSGI, gevent or eventlet, a fork, SIGTERM), and its ``stats()``.

Only ``doctor()`` called inside the app sees the app's process; the command sees its own.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import asdict
from typing import Any, Optional

from .. import lifecycle
from ..delivery import Stats
from ..servers import uwsgi_master_without_fork_hooks, uwsgi_threads_disabled
from ..settings import Settings
from .report import NOTE, OK, PROBLEM, WARNING, Findings

TOPIC = "process"


def outside_the_app(found: Findings) -> None:
    found.add(
        TOPIC,
        NOTE,
        "not checked: this command runs in a process of its own, not the app's",
        "to see the app's process (uWSGI threads, gevent or eventlet, forks, SIGTERM) and its client's stats(), "
        "run print(analytics_vitally.doctor()) inside the app, for example in a shell or a debug view",
    )


def check(settings: Optional[Settings], found: Findings) -> None:
    """The process shape as the client sees it."""
    found.add(TOPIC, NOTE, f"pid {os.getpid()}, parent {os.getppid()}, {threading.active_count()} thread(s)")
    if uwsgi_threads_disabled():
        found.add(
            TOPIC,
            PROBLEM,
            "uWSGI runs this process with Python threads disabled: the client's thread sends only while a request "
            "is served, so messages wait for the next request and the last ones are lost at exit",
            "start uWSGI with --enable-threads (enable-threads = true in uwsgi.ini), or use sync_mode=True",
        )
    if uwsgi_master_without_fork_hooks():
        found.add(
            TOPIC,
            WARNING,
            "this is a uWSGI master that forks its workers without Python's after-fork code: a client thread "
            "started here can leave the workers hung",
            "send no message before the fork (not at import), or set lazy-apps = true (or py-call-osafterfork = "
            "true) in uwsgi.ini",
        )
    _green(found)
    _forked(found)
    _sigterm(settings, found)


def _green(found: Findings) -> None:
    gevent = sys.modules.get("gevent.monkey")
    eventlet = sys.modules.get("eventlet.patcher")
    if gevent is not None:
        patched = {name: bool(gevent.is_module_patched(name)) for name in ("threading", "socket")}
        _green_state("gevent", patched, "from gevent import monkey; monkey.patch_all()", found)
    if eventlet is not None:
        modules = {"threading": "thread", "socket": "socket"}  # eventlet's names for them
        patched = {name: bool(eventlet.is_monkey_patched(module)) for name, module in modules.items()}
        _green_state("eventlet", patched, "import eventlet; eventlet.monkey_patch()", found)
    if gevent is None and eventlet is None:
        found.add(TOPIC, OK, "no gevent or eventlet: the client sends from an OS thread")


def _green_state(name: str, patched: Any, call: str, found: Findings) -> None:
    if patched["threading"] and patched["socket"]:
        found.add(TOPIC, OK, f"{name} has patched threading and socket: the client sends from a green thread")
    elif patched["socket"]:
        found.add(
            TOPIC,
            WARNING,
            f"{name} has patched socket but not threading: the client's OS thread uses green sockets, which "
            "can block or fail",
            f"patch everything, first thing in the program: {call}",
        )
    else:
        found.add(
            TOPIC,
            NOTE,
            f"{name} is imported but has not patched threading or socket: the client sends from an OS thread "
            "(fine; patching later is handled too)",
        )


def _forked(found: Findings) -> None:
    if lifecycle.PROCESS.pid != os.getpid():
        found.add(
            TOPIC,
            NOTE,
            "this process was forked without Python's fork hooks (uWSGI does so): the client resets its queue, "
            "threads and connections at its next call",
        )
    process = sys.modules.get("multiprocessing.process")
    if process is not None and process.parent_process() is not None:
        found.add(
            TOPIC,
            NOTE,
            "a multiprocessing child: what is queued is delivered when it ends normally (multiprocessing's "
            "finalizers); a child killed, or ended by os._exit() in your code, loses it",
            "call analytics_vitally.flush() at the end of the child's work",
        )


def _sigterm(settings: Optional[Settings], found: Findings) -> None:
    if not hasattr(signal, "SIGTERM"):
        return
    handler = signal.getsignal(signal.SIGTERM)
    module = getattr(handler, "__module__", None) or type(handler).__module__
    if module == "analytics_vitally.sigterm":
        kind = "the library's (what is queued is delivered, then the process ends by SIGTERM)"
        if type(handler).__name__ == "_Chained":
            kind = "the server's, with the library delivering what is queued during its graceful stop"
        found.add(TOPIC, OK, f"SIGTERM handler: {kind}")
    elif handler in (signal.SIG_DFL, None):
        drains = settings is not None and settings.drain_on_sigterm and settings.send
        why = "no client was made on the main thread yet" if drains else "drain_on_sigterm=False, or send=False"
        found.add(
            TOPIC,
            WARNING,
            f"SIGTERM has its default action ({why}): docker stop, systemd or a deploy ends the process at once, "
            "without delivering what is queued",
            "make the client on the main thread with drain_on_sigterm=True (the default), or call "
            "analytics_vitally.shutdown() in your own SIGTERM handling",
        )
    elif handler == signal.SIG_IGN:
        found.add(TOPIC, NOTE, "SIGTERM is ignored by this process")
    else:
        name = getattr(handler, "__qualname__", type(handler).__name__)
        found.add(
            TOPIC,
            NOTE,
            f"SIGTERM handler: the program's or server's own ({module}.{name}), set before the client; what is "
            "queued is delivered if it then ends the process normally (so that atexit runs)",
        )


def stats(found: Findings, counters: Stats, which: str) -> None:
    """``which`` client's counters, and what they say."""
    shown = ", ".join(f"{name} {value}" for name, value in asdict(counters).items())
    found.add("stats", NOTE, f"{which}: {shown}")
    if counters.enqueued == 0:
        found.add(
            "stats",
            NOTE,
            "no message was accepted by this client yet",
            "check that the code calling track() (identify(), group()...) runs in this process, with this client",
        )
    if counters.failed:
        found.add(
            "stats",
            WARNING,
            f"{counters.failed} message(s) failed for good (each went to on_error, or to the log at ERROR)",
            "read those errors: 400 names the message's problem; 401 is the write key",
        )
    if counters.dropped:
        found.add(
            "stats",
            WARNING,
            f"{counters.dropped} message(s) were refused by a call: the queue was full (max_queue_size) or the "
            "spool refused them",
            "look at the findings above for why Vitally is slow or unreachable; set spool to buffer on disk",
        )
    if counters.filtered:
        found.add("stats", NOTE, f"{counters.filtered} message(s) were dropped by before_send (or failed in it)")


__all__ = ["check", "outside_the_app", "stats"]
