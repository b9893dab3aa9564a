"""The default client: the one behind the module-level functions (``analytics_vitally.track``...)
and behind ``flush_after`` given no client. The package makes it from its module settings at the
first call (``default_client()``) or in ``configure()``, both through ``make``; this module only
keeps it, once per process."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional

from .client import Client
from .lifecycle import PerProcess

client: Optional[Client] = None
"""The default client once made (None before the first call)."""

told_late = False
"""A module setting was changed after this default client was made, and the program was told (once)."""

capturing: Optional[Callable[[Dict[str, Any]], Client]] = None
"""While ``testing.capture()`` is open: makes the default client from the module settings in place of
``Client(**settings)``, as one that keeps its messages in memory. The first call and ``configure()``
both make it through ``make``, so no default client made in the block can send."""

lock = PerProcess(threading.Lock)
"""Held while the default client is made or replaced (made at first use: after a fork, and after
gevent's ``patch_all()``)."""


def make(settings: Dict[str, Any]) -> Client:
    """A new default client from ``settings`` (``lock`` held by the caller, so a capture cannot open or
    close between the choice of the kind of client and its becoming the default)."""
    return Client(**settings) if capturing is None else capturing(settings)


def get(make: Callable[[], Client]) -> Client:
    """The default client, made by ``make()`` if there is none yet."""
    global client, told_late
    found = client
    if found is None:
        with lock.get():
            if client is None:
                client = make()
                told_late = False
            found = client
    return found


def swap(new: Client) -> Optional[Client]:
    """Make ``new`` the default client (``lock`` held by the caller); returns the one it replaces."""
    global client, told_late
    previous, client, told_late = client, new, False
    return previous


def flush(timeout: Optional[float] = None) -> bool:
    """Flush the default client (True at once if there is none yet)."""
    found = client
    return True if found is None else found.flush(timeout)


__all__ = ["capturing", "client", "flush", "get", "lock", "make", "swap", "told_late"]
