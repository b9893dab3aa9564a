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
from typing import Callable, Dict, List, Optional, Protocol, Tuple

from ..errors import ConfigurationError
from .format import (
    DEAD_LETTER,
    DONE,
    HEADER,
    RECORD,
    RECORDS_START,
    STATE,
    WINDOW,
    pack_file_header,
)

if sys.platform != "win32":
    import fcntl

log = logging.getLogger("analytics_vitally")

_STALE_TEMPORARY = 60.0
_ZEROS = bytes(1 << 18)
_READ_AHEAD = 1 << 18


class Segment:
    """One open spool file: its descriptor (which holds the lock), where its state bytes are, and counts.

    ``Own`` (a file this process writes) and ``Adopted`` (one a process that is gone left) say how
    its bytes are reached. ``states[offset + STATE]`` is a record's state byte.
    """

    __slots__ = ("acked", "base", "fd", "key", "moved", "path", "records", "sealed", "size", "states")

    owned = False
    states: States

    def __init__(self, path: str, fd: int, size: int, key: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.key = key
        self.base = key << 32
        self.records = 0
        """Own: records appended. Adopted: pending records handed out by recover()."""
        self.acked = 0
        self.sealed = False
        """Own: no more appends. Adopted: read to its end."""
        self.moved: Optional[Dict[int, int]] = None
        """Once its file was found deleted: the token of each pending record's copy in a new file, by offset."""

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def data_from(self, offset: int) -> int:
        return offset

    def record(self, offset: int) -> Optional[bytes]:
        """The data of the record at ``offset``, unless it is acknowledged."""
        if self.states[offset + STATE] == DONE:
            return None
        _, _, _, length, _ = RECORD.unpack(self.read(offset, HEADER))
        return self.read(offset + HEADER, length)

    def unlinked(self) -> bool:
        """Whether its file has no name any more (deleted, or its directory removed)."""
        try:
            return self.fd >= 0 and os.fstat(self.fd).st_nlink == 0
        except OSError:
            return False

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
            self._unmap()
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

    def _unmap(self) -> None:
        raise NotImplementedError


class Own(Segment):
    """A file this process writes, mapped whole (it is never larger than one record or a segment)."""

    __slots__ = ("map",)
    owned = True

    def __init__(self, path: str, fd: int, memory: mmap.mmap, key: int) -> None:
        super().__init__(path, fd, len(memory), key)
        self.map = memory
        self.states = memory

    def read(self, offset: int, length: int) -> bytes:
        return self.map[offset : offset + length]

    def _unmap(self) -> None:
        self.map.close()


class Adopted(Segment):
    """A file a process that is gone left, of any size: read through ``FileView``, never mapped whole."""

    __slots__ = ("cursor", "view")

    def __init__(self, path: str, fd: int, view: FileView, key: int) -> None:
        super().__init__(path, fd, len(view), key)
        self.view = view
        self.states = view
        self.cursor = RECORDS_START
        """Where reading resumes."""

    def read(self, offset: int, length: int) -> bytes:
        return self.view.read(offset, length)

    def data_from(self, offset: int) -> int:
        return self.view.data_from(offset)

    def _unmap(self) -> None:
        self.view.close()


class States(Protocol):
    """Where ``acknowledge`` reads and writes state bytes: a map, or a ``FileView``."""

    def __getitem__(self, offset: int) -> int: ...

    def __setitem__(self, offset: int, value: int) -> None: ...


class FileView:
    """A file of any size, with no more than ``WINDOW`` bytes of it mapped or read at once.

    Bytes are read with ``pread`` (from a read-ahead buffer), which any thread may do; state bytes
    are read and written through a map of the ``WINDOW`` around them, moved as needed, by one
    thread at a time (the spool's ``_ack_lock``). The page cache keeps both views the same.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._ahead: Tuple[int, bytes] = (0, b"")
        self._window: Optional[mmap.mmap] = None
        self._window_start = 0

    def __len__(self) -> int:
        return self.size

    def read(self, offset: int, length: int) -> bytes:
        start, ahead = self._ahead  # one tuple: another thread may replace it meanwhile
        if start <= offset and offset + length <= start + len(ahead):
            return ahead[offset - start : offset - start + length]
        if length >= _READ_AHEAD:
            return _pread(self.fd, min(length, self.size - offset), offset)
        ahead = _pread(self.fd, min(_READ_AHEAD, self.size - offset), offset)
        self._ahead = (offset, ahead)
        return ahead[:length]

    def data_from(self, offset: int) -> int:
        """The next offset that may not be a hole (``SEEK_DATA``); the file's size if none is."""
        seek_data = getattr(os, "SEEK_DATA", None)
        if seek_data is None:
            return offset
        try:
            return os.lseek(self.fd, offset, seek_data)
        except OSError as error:
            return self.size if error.errno == errno.ENXIO else offset  # ENXIO: only a hole is left

    def __getitem__(self, offset: int) -> int:
        return self._map(offset)[offset - self._window_start]

    def __setitem__(self, offset: int, value: int) -> None:
        self._map(offset)[offset - self._window_start] = value

    def _map(self, offset: int) -> mmap.mmap:
        window = self._window
        if window is not None and 0 <= offset - self._window_start < len(window):
            return window
        if window is not None:
            self._window = None
            window.close()
        start = offset - offset % WINDOW
        self._window = window = mmap.mmap(self.fd, min(WINDOW, self.size - start), offset=start)
        self._window_start = start
        return window

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None
        self._ahead = (0, b"")


def _pread(fd: int, length: int, offset: int) -> bytes:
    if length <= 0:
        return b""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


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
    directory: str,
    path: str,
    length: int,
    prefill: bool,
    writer: int,
    number: int,
    owner: bytes,
    endpoint: bytes,
    fsync: bool,
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
        os.pwrite(handle, pack_file_header(writer, number, time.time(), owner, endpoint), 0)
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
    if isinstance(segment, Own):
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
