"""What the server process we run in lets our threads do: uWSGI's two pitfalls.

- Threads disabled. uWSGI before 2.0.27 starts Python with threads disabled unless
  ``enable-threads`` (or ``threads``) is set: a thread the app starts runs only while a
  request is being served, so a batch queued by one request waits for the next request
  (segmentio/analytics-python #170). uWSGI says so in its own start-up log, where nobody
  looks.
- Forks that skip Python's fork handling. Without ``lazy-apps``, uWSGI loads the app in
  the master and forks the workers from C, and without ``py-call-osafterfork`` it does
  not run Python's after-fork code (``os.register_at_fork`` hooks, the GIL's reset). A
  thread started in the master before that (a message sent at import) can leave the
  workers hung on the GIL.

The worker calls ``warn_if_threads_cannot_run()`` when it starts its threads: one
warning per pitfall per process. The checks read only ``sys.modules`` (uWSGI puts its
``uwsgi`` module there before loading the app), so outside uWSGI they cost a dictionary
look-up.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Mapping, Set

log = logging.getLogger("analytics_vitally")

_warned: Set[str] = set()


def uwsgi_threads_disabled() -> bool:
    """True when this is a uWSGI process whose Python threads cannot run between requests."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return False
    has_threads = getattr(uwsgi, "has_threads", None)  # uWSGI's own flag, whatever set it
    if has_threads is not None:
        return not has_threads
    options = _options(uwsgi)
    return not (_flag(options.get("enable-threads")) or _number(options.get("threads")) > 1)


def uwsgi_master_without_fork_hooks() -> bool:
    """True in a uWSGI master that will fork workers without running Python's after-fork code."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return False
    worker_id = getattr(uwsgi, "worker_id", None)
    if worker_id is None or worker_id() != 0:  # 0: the master (or a single process) before the fork
        return False
    options = _options(uwsgi)
    return not any(_flag(options.get(name)) for name in ("lazy-apps", "lazy", "py-call-osafterfork"))


def warn_if_threads_cannot_run() -> None:
    """Log each pitfall that applies to this process, once per process."""
    if "threads" not in _warned and uwsgi_threads_disabled():
        _warned.add("threads")
        log.warning(
            "uWSGI runs this process with Python threads disabled, so analytics_vitally's worker thread "
            "can only send while a request is being served: messages wait for the next request and those "
            "queued last are lost at exit. Start uWSGI with --enable-threads (enable-threads = true in "
            "uwsgi.ini), or use sync_mode=True"
        )
    if "fork" not in _warned and uwsgi_master_without_fork_hooks():
        _warned.add("fork")
        log.warning(
            "analytics_vitally's worker thread started in the uWSGI master, which forks the workers without "
            "Python's after-fork code: the workers can hang. Send no message before the fork (not at "
            "import), or set lazy-apps = true (or py-call-osafterfork = true) in uwsgi.ini"
        )


def _options(uwsgi: Any) -> Mapping[str, Any]:
    options = getattr(uwsgi, "opt", None)
    return options if isinstance(options, Mapping) else {}


def _flag(value: Any) -> bool:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):  # as uWSGI reads a flag's value: only these turn it off
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def _number(value: Any) -> int:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


__all__ = ["uwsgi_master_without_fork_hooks", "uwsgi_threads_disabled", "warn_if_threads_cannot_run"]
