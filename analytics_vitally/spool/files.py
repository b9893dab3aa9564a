"""The spool's files on the file system: one segment file open (``Segment``), made, adopted, synced
and deleted, and the dead-letter file. ``Spool`` (store.py) decides when; this module does it.

``allocate`` is the one place a segment file gets its blocks, and a deliberate seam: tests replace
it to fake a full disk (``make_file`` calls it through this module's global on every call).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import sys
import time
from typing import Callable, List, Optional, Set, Tuple

from ..errors import ConfigurationError
from .format import (
    ANYONE,
    DEAD_LETTER,
    DONE,
    FILE_HEADER,
    HEADER,
    RECORD,
    RECORDS_START,
    pack_file_header,
    shown_owner,
    unpack_file_header,
)

if sys.platform != "win32":
    import fcntl

log = logging.getLogger("analytics_vitally")

_STALE_TEMPORARY = 60.0
_ZEROS = bytes(1 << 18)


class Segment:
    """One open spool file: its descriptor (which holds the lock) and its map."""

    __slots__ = ("acked", "base", "cursor", "fd", "key", "map", "owned", "path", "records", "sealed", "size")

    def __init__(self, path: str, fd: int, memory: mmap.mmap, key: int, owned: bool) -> None:
        self.path = path
        self.fd = fd
        self.map = memory
        self.size = len(memory)
        self.key = key
        self.base = key << 32
        self.owned = owned
        self.records = 0
        """Own: records appended. Adopted: pending records handed out by recover()."""
        self.acked = 0
        self.sealed = False
        """Own: no more appends. Adopted: read to its end."""
        self.cursor = RECORDS_START
        """Adopted: where reading resumes."""

    def record(self, offset: int) -> Optional[bytes]:
        """The data of the record at ``offset``, unless it is acknowledged."""
        _, state, _, length, _ = RECORD.unpack_from(self.map, offset)
        if state == DONE:
            return None
        return self.map[offset + HEADER : offset + HEADER + length]

    def delete(self) -> None:
        try:
            unlink(self.path)  # before closing: nobody can adopt a file between our unlock and its removal
        except OSError as error:  # its records are all marked done: whoever adopts it finds nothing to send
            log.warning("spool file %s could not be deleted: %s", self.path, error)
        self.close()

    def close(self, keep: Optional[int] = None, durable: bool = False) -> None:
        """Unmap and close; ``keep`` cuts the file to that many bytes first. Releases the lock
        once no other process (a forked child) holds a copy of the descriptor. Idempotent: a
        descriptor number is never closed twice (it may name another file by then)."""
        if self.fd < 0:
            return
        try:
            self.map.close()
            if keep is not None:
                os.ftruncate(self.fd, keep)
                if durable:
                    sync_file(self.fd)
        except (OSError, ValueError) as error:
            log.warning("spool file %s could not be closed cleanly: %s", self.path, error)
        finally:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def require_flock() -> None:
    if sys.platform == "win32":
        raise ConfigurationError(
            "spool",
            "is not supported on Windows (it needs fcntl.flock and shared memory maps): leave spool unset",
        )


def page_multiple(length: int) -> int:
    return -(-length // mmap.PAGESIZE) * mmap.PAGESIZE


def allocate(handle: int, length: int, prefill: bool) -> None:
    """Give the file ``length`` bytes of real blocks (never a sparse file: a write fault on a full
    disk would kill the process with SIGBUS). ``prefill`` writes zeros, which costs a few ms per
    MiB but makes the later first write to each page cheap (about 0.3 µs instead of 7 µs on ext4).

    OSError (``ENOSPC`` on a full disk) if the blocks cannot be had. The seam tests replace to fake a
    full disk: ``from analytics_vitally.spool import files``, then ``monkeypatch.setattr(files,
    "allocate", ...)`` (not by dotted name: the attribute ``analytics_vitally.spool`` is a setting)."""
    if not prefill and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(handle, 0, length)
            return
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise
    written = 0
    zeros = memoryview(_ZEROS)
    while written < length:
        written += os.pwrite(handle, zeros[: min(len(zeros), length - written)], written)


def make_file(
    directory: str, path: str, length: int, prefill: bool, writer: int, number: int, owner: bytes, fsync: bool
) -> Tuple[int, mmap.mmap]:
    """A new segment file at ``path`` in ``directory``, of ``length`` bytes: allocated, locked, its
    header written, mapped. Its descriptor (which holds the lock) and map; OSError if not, and then
    nothing is left behind.

    Made under a temporary name and renamed once locked, so no process can take a file that its
    writer has not locked yet.
    """
    temporary = path + ".tmp"
    handle = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        allocate(handle, length, prefill)
        os.pwrite(handle, pack_file_header(writer, number, time.time(), owner), 0)
        memory = mmap.mmap(handle, length)
        try:
            os.rename(temporary, path)
            if fsync:
                sync_file(handle)
                sync_directory(directory)
        except BaseException:
            memory.close()
            raise
    except BaseException:
        os.close(handle)
        with contextlib.suppress(OSError):
            unlink(temporary)
        raise
    return handle, memory


def lock_orphan(directory: str, path: str, owner: bytes, passed_over: Set[str]) -> Optional[Tuple[int, mmap.mmap, int]]:
    """Lock and map the file at ``path`` if no process holds it and it holds messages for ``owner``:
    its descriptor (which holds the lock), map and writer's PID. None if not; a file to leave alone
    for good (unreadable, not a spool file, another destination's) is logged and added to
    ``passed_over``."""
    try:
        handle = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # deleted meanwhile by whoever had it
    except OSError as error:  # another user's file, say: processes sharing a spool must run as one user
        log.warning("spool %s: %s cannot be opened to adopt it: %s", directory, path, error)
        passed_over.add(path)  # said once: not tried again every scan
        return None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            return None  # its writer (or another adopter) is alive
        status = os.fstat(handle)
        if status.st_nlink == 0:  # deleted by the process that held the lock before us
            os.close(handle)
            return None
        head = os.pread(handle, FILE_HEADER.size, 0)
        header = unpack_file_header(head) if status.st_size >= RECORDS_START else None
        if header is None:
            log.warning("spool %s: %s is not a spool file (or it was cut short): left alone", directory, path)
            passed_over.add(path)
            os.close(handle)
            return None
        if ANYONE not in (header.owner, owner) and header.owner != owner:
            # Another app's messages, for another Vitally account or host: never sent with our key.
            log.info(
                "spool %s: %s holds messages for another destination (fingerprint %s): left for it",
                directory,
                path,
                shown_owner(header.owner),
            )
            passed_over.add(path)
            os.close(handle)
            return None
        memory = mmap.mmap(handle, status.st_size)
    except OSError as error:
        log.warning("spool %s: %s could not be adopted: %s", directory, path, error)
        os.close(handle)
        return None
    return handle, memory, header.writer


def write_dead_letters(directory: str, lines: List[bytes], max_bytes: int, fsync: bool) -> int:
    """Append ``lines`` (each ending with a newline) to ``directory``'s dead-letter file, all or none:
    none if the file would pass ``max_bytes``. How many were written; each outcome is logged."""
    data = b"".join(lines)
    path = os.path.join(directory, DEAD_LETTER)
    try:
        # Never through a symbolic link planted in its place: the lines are personal data.
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)  # processes append whole lines, one at a time
            status = os.fstat(handle)
            if status.st_mode & 0o077:  # made by someone else, readable by others: for its owner only
                os.fchmod(handle, 0o600)
                log.warning("spool %s: %s was readable by others: now 0600", directory, path)
            if status.st_size + len(data) > max_bytes:
                log.error(
                    "%d message(s) rejected by Vitally not written to %s: it is larger than max_bytes=%d",
                    len(lines),
                    path,
                    max_bytes,
                )
                return 0
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view) :]
            if fsync:
                os.fsync(handle)
        finally:
            os.close(handle)
    except OSError as error:
        log.error("%d message(s) rejected by Vitally not written to %s: %s", len(lines), path, error)
        return 0
    log.warning(
        "%d message(s) rejected by Vitally written to %s: resend them with `analytics-vitally import %s` "
        "after fixing them",
        len(lines),
        path,
        path,
    )
    return len(lines)


def log_skipped(path: str) -> Callable[[int, int], None]:
    """A ``read_records`` callback: what it skipped in the file at ``path``, logged."""

    def report(offset: int, length: int) -> None:
        log.warning(
            "spool: skipped %d byte(s) at offset %d of %s: a torn or corrupt record (cut by a kill in the "
            "middle of a write, or damaged on disk); the records before and after it are kept",
            length,
            offset,
            path,
        )

    return report


def sync_range(segment: Segment, start: int, end: int) -> None:
    """Make a record survive a power cut. Linux: fdatasync, which writes mapped pages too and
    releases the GIL (mmap.flush holds it for the whole msync). Elsewhere msync, then on macOS
    F_FULLFSYNC, since fsync there does not flush the drive's cache."""
    if sys.platform.startswith("linux"):
        os.fdatasync(segment.fd)
        return
    first = start - start % mmap.PAGESIZE
    segment.map.flush(first, end - first)
    sync_file(segment.fd)


def sync_file(handle: int) -> None:
    full = getattr(fcntl, "F_FULLFSYNC", None)
    if full is not None:
        fcntl.fcntl(handle, full)
    else:
        os.fsync(handle)


def sync_directory(directory: str) -> None:
    handle = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_stale_temporary(path: str) -> None:
    """A file still under its temporary name long after it was made: its maker died making it."""
    try:
        if time.time() - os.stat(path).st_mtime < _STALE_TEMPORARY:
            return
        handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(handle).st_nlink:
            unlink(path)
    except OSError:
        pass
    finally:
        os.close(handle)
