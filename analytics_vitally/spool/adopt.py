"""Files that processes which are gone left in a spool directory: taken one at a time, or left alone
and said so.

- ``Orphans``: one spool's look at its directory. A file whose lock is free is taken (locked, its
  header read, repaired if one bit flipped) when its messages are this spool's; any other is left
  alone, once, and what was left is said at WARNING with how many messages and files, and why:
  another write key for this endpoint (a rotated key, which ``spool --send --rekey`` sends),
  another endpoint, a damaged header (whose destination is unknown), not a spool file.
- ``rekey``: ``analytics-vitally spool --send --rekey``: this endpoint's files written under another
  write key become this key's (their header says so), so that this key sends them.

Nothing here reads more than a window of a file at once (``FileView``), whatever its size.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Dict, List, NamedTuple, Optional, Set, Tuple

from .files import FileView, remove_stale_temporary, sync_file
from .format import (
    ANYONE,
    MINE,
    OTHER_ENDPOINT,
    OTHER_KEY,
    RECORDS_START,
    SUFFIX,
    FileHeader,
    count_pending,
    destination,
    endpoint_bytes,
    owner_bytes,
    shown_owner,
    unpack_file_header,
    with_owner,
)

if sys.platform != "win32":
    import fcntl

log = logging.getLogger("analytics_vitally")

DAMAGED = "a damaged header"
NOT_SPOOL = "not a spool file"
LEFT_ALONE = {"spool_left_alone": True}
"""Marks the log records that say what a look at the directory left alone (``spool --send`` says it itself)."""


class Taken(NamedTuple):
    """A file adopted: its path, its descriptor (which holds the lock), its view and its header
    (None: damaged, taken by a spool without an owner)."""

    path: str
    fd: int
    view: FileView
    header: Optional[FileHeader]


class Orphans:
    """The files of a spool directory that no live process holds, taken one at a time for ``owner``.

    Used by one thread at a time (the spool's ``_recover_lock``).
    """

    def __init__(self, directory: str, owner: bytes, endpoint: bytes, scan_interval: float) -> None:
        self.directory = directory
        self.owner = owner
        self.endpoint = endpoint
        self.scan_interval = scan_interval
        self.passed_over: Set[str] = set()
        """Files seen and left alone: said once, not looked at again."""
        self.reset()

    def reset(self) -> None:
        self.scanned_at: Optional[float] = None
        self._queue: List[str] = []
        self._left: Dict[str, Tuple[int, int, Set[str]]] = {}  # why: messages, files, fingerprints

    def take(self, may_scan: bool, writer: str, open_paths: Set[str]) -> Optional[Taken]:
        """Lock the next file whose writer is gone and whose messages are ours; None if there is none
        (for now). ``writer`` names this process's own files; ``open_paths`` are open already."""
        now = time.monotonic()
        if not self._queue:
            if not may_scan or (self.scanned_at is not None and now - self.scanned_at < self.scan_interval):
                return None
            self.scanned_at = now
            self._queue = self._candidates(writer, open_paths)
        while self._queue:
            taken = self._take(self._queue.pop(0))
            if taken is not None:
                return taken
        self._say_left()
        return None

    def _candidates(self, writer: str, open_paths: Set[str]) -> List[str]:
        """Other writers' segment files, least recently written first; stale temporary files removed."""
        try:
            names = os.listdir(self.directory)
        except OSError as error:
            log.warning("spool %s cannot be read: %s", self.directory, error)
            return []
        candidates: List[Tuple[float, str]] = []
        for name in names:
            path = os.path.join(self.directory, name)
            if name.endswith(SUFFIX + ".tmp"):
                remove_stale_temporary(path)
            if not name.endswith(SUFFIX) or name.startswith(writer + "-") or path in open_paths:
                continue
            if path in self.passed_over:
                continue
            try:
                candidates.append((os.stat(path).st_mtime, path))
            except OSError:
                continue
        return [path for _, path in sorted(candidates)]

    def _take(self, path: str) -> Optional[Taken]:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # deleted meanwhile by whoever had it
        except OSError as error:  # another user's file, say: processes sharing a spool must run as one user
            log.warning("spool %s: %s cannot be opened to adopt it: %s", self.directory, path, error)
            self.passed_over.add(path)  # said once: not tried again every scan
            return None
        try:
            taken = self._look(path, handle)
        except OSError as error:
            log.warning("spool %s: %s could not be adopted: %s", self.directory, path, error)
            taken = None
        if taken is None:
            os.close(handle)
        return taken

    def _look(self, path: str, handle: int) -> Optional[Taken]:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its writer (or another adopter) is alive
        status = os.fstat(handle)
        if status.st_nlink == 0:  # deleted by the process that held the lock before us
            return None
        view = FileView(handle, status.st_size)
        header = unpack_file_header(view.read(0, RECORDS_START))
        if header is not None:
            why = destination(header, self.owner, self.endpoint)
            if why == MINE:
                if header.repaired:
                    log.warning(
                        "spool %s: a flipped bit in the header of %s (damaged on disk?) was found by its "
                        "checksum and put back",
                        self.directory,
                        path,
                    )
                return Taken(path, handle, view, header)
            self._leave(path, why, count_pending(view.read, len(view), view.data_from), shown_owner(header.owner))
            return None
        pending = count_pending(view.read, len(view), view.data_from) if len(view) > RECORDS_START else 0
        if pending and self.owner == ANYONE:  # a spool without an owner adopts any file
            return Taken(path, handle, view, None)
        self._leave(path, DAMAGED if pending else NOT_SPOOL, pending, "")
        return None

    def _leave(self, path: str, why: str, messages: int, fingerprint: str) -> None:
        self.passed_over.add(path)
        if why == NOT_SPOOL:
            log.warning("spool %s: %s is not a spool file (or it was cut short): left alone", self.directory, path)
            return
        count, files, fingerprints = self._left.get(why, (0, 0, set()))
        self._left[why] = (count + messages, files + 1, fingerprints | ({fingerprint} if fingerprint else set()))

    def _say_left(self) -> None:
        """What this scan left alone, at WARNING: one line per reason, with the messages and files."""
        left, self._left = self._left, {}
        for why, (messages, files, fingerprints) in sorted(left.items()):
            shown = f" (fingerprint {', '.join(sorted(fingerprints))})" if fingerprints else ""
            what = f"spool {self.directory}: {messages} message(s) in {files} file(s) left by ended processes"
            if why == OTHER_KEY:
                log.warning(
                    "%s were written under another write key for this endpoint%s (was the key rotated?): they are "
                    "not sent with this one. To send them with this key: analytics-vitally spool --send --rekey %s "
                    "(with this write key and host or subdomain)",
                    what,
                    shown,
                    self.directory,
                    extra=LEFT_ALONE,
                )
            elif why == DAMAGED:
                log.warning(
                    "%s have a damaged header: whose they are is unknown, so they are not sent with this write key; "
                    "analytics-vitally spool %s lists them",
                    what,
                    self.directory,
                    extra=LEFT_ALONE,
                )
            else:
                kind = OTHER_ENDPOINT if why == OTHER_ENDPOINT else "another write key or endpoint (not recorded which)"
                log.warning(
                    "%s are for %s%s: never sent with this write key; analytics-vitally spool --send %s with "
                    "their write key and host or subdomain sends them",
                    what,
                    kind,
                    shown,
                    self.directory,
                    extra=LEFT_ALONE,
                )


def rekey(directory: str, fingerprint: str, url: str) -> Tuple[int, int]:
    """Make the files for ``url`` written under another write key, which no live process holds, the
    files of ``fingerprint`` (``Settings``): ``(messages, files)`` so changed, for this key to send.
    Files whose endpoint was not recorded, or is another, are left as they are: they may be another
    Vitally account's."""
    owner, endpoint = owner_bytes(fingerprint), endpoint_bytes(url)
    messages = files = 0
    for name in sorted(os.listdir(directory)):
        if not name.endswith(SUFFIX):
            continue
        try:
            handle = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            view = FileView(handle, os.fstat(handle).st_size)
            header = unpack_file_header(view.read(0, RECORDS_START))
            if header is None or destination(header, owner, endpoint) != OTHER_KEY:
                continue
            os.pwrite(handle, with_owner(header, owner), 0)
            sync_file(handle)
            messages += count_pending(view.read, len(view), view.data_from)
            files += 1
        except OSError:  # BlockingIOError: a live process holds it, and sends it itself
            continue
        finally:
            os.close(handle)
    return messages, files
