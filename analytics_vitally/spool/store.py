"""``Spool``: the records one process has accepted, in files that outlive it.

    spool = Spool("/var/spool/vitally")
    token = spool.append(data)          # the caller's thread: a memory copy, no system call
    ...                                 # a worker thread delivers data, then:
    spool.acknowledge([token])          # its space is reclaimed once its whole file is done
    for token, data in spool.recover(1000):   # what dead processes left, and retry_later() records
        ...

Writing. Each process writes its own segment files (format.py describes them). A segment is
allocated in full when it is made (zeros written, or ``posix_fallocate``), so a full disk fails the
making of a file (append returns None), never a write into the map (which would be SIGBUS), and
mapped ``MAP_SHARED``: an append is a memory copy into the page cache. Once ``append`` returns, the
record is the kernel's: it survives SIGKILL, OOM kills and crashes of the process (not a power cut,
unless ``fsync=True``). ``acknowledge`` flips the record's state byte (also a memory copy), so a
process that adopts the file later skips what was delivered; a file whose records are all
acknowledged is deleted once it is full.

Ownership. A process holds an exclusive ``flock`` on each of its files for as long as it has
them open; the kernel drops it when the process dies, however it dies. ``recover`` takes
(``LOCK_NB``) the files whose lock is free, so each dead process's file is adopted by exactly
one live process, whatever PIDs have been reused. Locks are never released with ``LOCK_UN``,
only by closing every descriptor: a flock belongs to the open file description, which a
forked child shares, so an unlock in the child would unlock the parent's file. After
``os.fork()`` the child (``reset_after_fork``, run by the package's fork handling) closes its copies of the
parent's descriptors and maps, which leaves the parent's locks in place, and writes files of
its own. Adopted files are read a window at a time (``FileView``), never mapped whole. A file
whose messages are not ours (another write key or endpoint), or whose header is damaged beyond
repair, is left alone and said at WARNING (adopt.py).

Deletion. A file deleted under us (the directory removed by a clean-up job, say) still holds its
records in our map, but they would not survive a crash: ``append`` looks at least every
``LOOK_INTERVAL`` (and ``recover`` at each call) and the records are written again into new files
(relocate.py says how).

Needs ``fcntl.flock`` and ``mmap``: Linux and macOS (and other Unixes). On Windows ``Spool()``
and ``inspect()`` raise ``ConfigurationError``. The directory must be on a local file system:
flock over NFS is emulated with POSIX locks, which closing any descriptor of the file drops.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import mmap
import os
import threading
import time
from typing import Dict, Iterable, List, Optional, Tuple, Union

from .. import lifecycle
from ..errors import ConfigurationError
from .adopt import Orphans
from .files import (
    Adopted,
    Own,
    Segment,
    log_skipped,
    make_file,
    page_multiple,
    require_flock,
    sync_range,
    write_dead_letters,
)
from .format import (
    DONE,
    HEADER,
    MARK,
    PENDING,
    RECORDS_START,
    STATE,
    SUFFIX,
    crc32,
    endpoint_bytes,
    owner_bytes,
    pack_record_header,
    read_records,
)
from .relocate import LOOK_INTERVAL, Relocation

log = logging.getLogger("analytics_vitally")

DEFAULT_MAX_BYTES = 100_000_000
"""The default bound on the apparent size of one process's spool files."""
SEGMENT_BYTES = 1 << 20
"""The size of a segment file (1 MiB), unless ``max_bytes`` is small or a record needs more."""
MIN_MAX_BYTES = 1 << 16
RETRY_DELAY = 30.0
"""Seconds before a record handed back with ``retry_later()`` is offered again by ``recover()``."""
SCAN_INTERVAL = 5.0
"""Seconds between two looks for files of dead processes (the first ``recover()`` looks at once)."""

Token = int
"""Names one record of one ``Spool``: ``(file key << 32) | offset``. Meaningless to other processes."""

_OFFSET = (1 << 32) - 1
_LOG_INTERVAL = 10.0
_MAKE_RETRY = 1.0
_monotonic = time.monotonic
_NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
"""A full file system, or the user's quota: a state that passes, not a wrong setting."""


class Spool(Relocation):
    """The records one process has accepted and not yet seen delivered, in files in ``directory``.

    ``append`` runs on the caller's thread; ``acknowledge``, ``retry_later``, ``recover`` and
    ``dead_letter`` on worker threads. ``max_bytes`` bounds the apparent size of the files this
    process writes (a segment counts in full from when it is made); beyond it ``append`` returns
    None. Files adopted from dead processes do not count: they only shrink.

    How the threads agree (CPython, with the GIL):

    - ``_lock`` guards the write position: the active segment, ``_end``, the spare segment,
      ``_bytes_made``, ``_closed`` and the looks for a deletion; ``_relocate`` runs under
      it. ``_ack_lock`` guards the registry (``_segments``, ``_sealed``), every segment's
      ``acked`` and ``moved``, the state bytes of adopted files (their ``FileView``'s window),
      ``_acks``, ``_bytes_freed`` and ``_retry``. When both are needed, ``_lock`` is taken first.
    - A segment's ``records`` is written only by its writer (own segments: ``append`` under
      ``_lock``; adopted ones: ``recover`` under ``_ack_lock``), and always before the tokens it
      counts are handed out, so ``acked`` never passes it. ``sealed`` is set after the last
      ``records`` increment: whoever sees ``sealed and acked >= records`` may delete the file.
    - ``append`` writes bytes past ``_end`` of the active map; ``acknowledge`` writes the state
      byte of records before it. Each slice assignment holds the GIL, and the two never touch
      the same byte.
    - The space in use is ``_bytes_made - _bytes_freed``: two counters, each written under its
      own lock, so neither thread does a read-modify-write of the other's field.
    - ``_lock`` is re-entrant, and ``_busy`` marks an append in progress: a signal handler (or a
      log handler) that appends while this thread is inside ``append`` gets None at once,
      instead of a deadlock or two records at one offset. ``_ack_lock`` is not re-entrant:
      call ``acknowledge``, ``retry_later`` and ``recover`` on worker threads (Python runs
      signal handlers on the main thread only), or from a main thread whose handlers do not append.
    """

    _active: Optional[Own]
    """Where ``append`` writes, at ``_end``."""
    _spare: Optional[Own]
    """The next segment, made ahead of need by a worker thread."""

    def __init__(
        self,
        directory: Union[str, os.PathLike[str]],
        max_bytes: int = DEFAULT_MAX_BYTES,
        fsync: bool = False,
        *,
        segment_bytes: Optional[int] = None,
        retry_delay: float = RETRY_DELAY,
        scan_interval: float = SCAN_INTERVAL,
        owner: str = "",
        endpoint: str = "",
    ) -> None:
        require_flock()
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES:,}, not {max_bytes:,}")
        if segment_bytes is None:
            segment_bytes = min(SEGMENT_BYTES, max_bytes // 4)
        segment_bytes = max(mmap.PAGESIZE, -(-segment_bytes // mmap.PAGESIZE) * mmap.PAGESIZE)
        if segment_bytes * 2 > max_bytes:
            raise ValueError(f"segment_bytes ({segment_bytes:,}) must be at most half of max_bytes ({max_bytes:,})")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._retry_delay = retry_delay
        self.owner = owner
        """Where the records go (``Settings.fingerprint``): written in each file; only files of the same
        owner (or of none) are adopted. Empty: files of any owner are adopted."""
        self.endpoint = endpoint
        """Where the records go, without the key (``Settings.url``): a hash of it is written in each file,
        so that files of this endpoint under another write key (a rotated key) are told from another
        account's. Empty: not recorded."""
        self._owner = owner_bytes(owner)
        self._endpoint = endpoint_bytes(endpoint)
        self._orphans = Orphans(self.directory, self._owner, self._endpoint, scan_interval)
        self._keys = itertools.count(1)  # never reset: a token from before a fork names no segment after it
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as error:
            raise ConfigurationError("spool", f"directory {self.directory!r} cannot be made: {error}") from None
        self._start()
        try:
            self._active = self._make(self.segment_bytes, prefill=True)
            self._bytes_made += self.segment_bytes
        except OSError as error:
            if error.errno not in _NO_SPACE:
                raise ConfigurationError("spool", f"directory {self.directory!r} cannot be written: {error}") from None
            # A full disk must not stop the app from starting: calls are refused (and counted) until
            # space returns, when the next one makes the file; what others left is sent meanwhile.
            self._make_failed_at = time.monotonic()
            self._refusal = f"a spool file could not be made: {error}"
            log.warning(
                "spool %s: no space for a spool file (%s): calls are refused until there is; "
                "leftovers in the spool are still sent",
                self.directory,
                error,
            )
        lifecycle.track_spool(self)

    def _start(self) -> None:
        """A fresh state: no files (they are made on demand), new locks, a new writer name."""
        self._pid = os.getpid()
        self._writer = f"{self._pid}-{os.urandom(4).hex()}"
        self._sequence = itertools.count(1)
        self._lock = threading.RLock()
        self._ack_lock = threading.Lock()
        self._recover_lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._active = None
        self._end = RECORDS_START
        self._spare = None
        self._preparing = False
        self._bytes_made = 0
        self._bytes_freed = 0
        self._make_failed_at = -_MAKE_RETRY
        self._refused = 0
        self._refused_logged_at = -_LOG_INTERVAL
        self._refusal = ""
        self._full = (
            f"the spool is full (max_bytes={self.max_bytes:,}): Vitally is slow or unreachable, "
            "or messages are made faster than they can be sent"
        )
        self._acks = 0
        self._acks_seen = 0
        self._segments: Dict[int, Segment] = {}
        self._sealed: List[Segment] = []
        self._retry: List[Tuple[float, Token]] = []  # a heap: the record due first on top
        self._look_at = 0.0  # when append looks next at whether the active file was deleted
        self._deleted_at: Optional[float] = None  # when a deletion was seen and not yet moved (see _relocate)
        self._orphans.reset()

    def __repr__(self) -> str:
        return f"<analytics_vitally.Spool {self.directory!r}>"

    # The caller's side. --------------------------------------------------------------

    def append(self, data: bytes) -> Optional[Token]:
        """Write one record; its token, or None if it was refused (spool full, closed, disk error).

        Never raises. Once it returns a token the record survives the death of the process
        (and a power cut with ``fsync=True``).
        """
        size = HEADER + len(data)
        with self._lock:
            if self._busy:  # re-entered by a signal handler on this thread: see the class docstring
                return None
            self._busy = True
            try:
                segment = self._active
                start = self._end
                if segment is None or start + size > segment.size or _monotonic() >= self._look_at:
                    segment = self._advance(size)
                    start = self._end
                if segment is not None:
                    end = start + size
                    self._end = end
                    memory = segment.map
                    pack_record_header(memory, start, MARK, PENDING, 0, size - HEADER, crc32(data))
                    memory[start + HEADER : end] = data
                    segment.records += 1
                else:
                    self._refused += 1
            finally:
                self._busy = False
        if segment is None:
            self._log_refusal()
            return None
        if self.fsync and not self._make_durable(segment, start, end):
            return None
        return segment.base | start

    def _advance(self, size: int) -> Optional[Own]:
        """``append``'s way when a look at whether its files were deleted is due, or the active one is
        full: the segment for ``size`` more bytes, a new one if need be (``_lock`` held)."""
        now = _monotonic()
        active = self._active
        if now >= self._look_at or active is None or self._end + size > active.size:
            self._look_at = now + LOOK_INTERVAL
            if self._deleted_at is not None or (active is not None and active.unlinked()):
                self._relocate()
        segment = self._active
        if segment is not None and self._end + size <= segment.size:
            return segment
        return self._rotate(size)

    def _rotate(self, size: int) -> Optional[Own]:
        """A fresh active segment with room for a record of ``size`` bytes; None if refused (``_lock`` held).

        Takes the spare that a worker thread made ahead of time, or makes one here.
        """
        if self._closed:
            self._refusal = "the spool is closed (the process is exiting)"
            return None
        old = self._active
        if old is not None:
            self._seal(old)
            self._active = None
        needed = RECORDS_START + size
        spare = self._spare
        if spare is not None and needed <= spare.size:
            self._spare = None
            new = spare
        else:
            length = self.segment_bytes if needed <= self.segment_bytes else page_multiple(needed)
            if length > self._room():
                if old is not None or self._acks != self._acks_seen:  # else nothing can have become free
                    self._acks_seen = self._acks
                    self._reclaim()
                if length > self._room():
                    self._refusal = self._full
                    return None
            if time.monotonic() - self._make_failed_at < _MAKE_RETRY:
                return None  # _refusal still says why the last try failed
            try:
                new = self._make(length, prefill=False)
            except OSError as error:
                self._make_failed_at = time.monotonic()
                self._refusal = f"a spool file could not be made: {error}"
                return None
            self._bytes_made += length
        self._active = new
        self._end = RECORDS_START
        return new

    def _room(self) -> int:
        return self.max_bytes - (self._bytes_made - self._bytes_freed)

    def _log_refusal(self) -> None:
        now = time.monotonic()
        if now - self._refused_logged_at < _LOG_INTERVAL:
            return
        count, self._refused, self._refused_logged_at = self._refused, 0, now
        log.warning("spool %s refused %d message(s): %s", self.directory, count, self._refusal)

    def _make_durable(self, segment: Segment, start: int, end: int) -> bool:
        """``fsync``: sync the record just written; False if that failed, and the record is then marked
        done, so that neither this process nor one adopting the file sends it: the call is refused, and
        a caller that tries again must not have it sent twice."""
        try:
            sync_range(segment, start, end)
            return True
        except (OSError, ValueError) as error:
            if isinstance(error, ValueError) or segment.fd < 0:  # closed meanwhile (exit, on another thread):
                return True  # the record stays for a later process; refusing the call would not stop that
            self.acknowledge([segment.base | start])
            with self._lock:
                self._refused += 1
                self._refusal = f"a record could not be synced to disk (fsync): {error}"
            self._log_refusal()
            return False

    # The worker's side. --------------------------------------------------------------

    def acknowledge(self, tokens: Iterable[Token]) -> None:
        """Mark records delivered (or dead-lettered), in any order; delete files that are all done."""
        with self._ack_lock:
            segments = self._segments
            for token in tokens:
                segment = segments.get(token >> 32)
                if segment is None:
                    continue  # already deleted, or a token from before a fork
                state = (token & _OFFSET) + STATE
                states = segment.states
                if states[state] != DONE:
                    states[state] = DONE
                    segment.acked += 1
                    self._acks += 1
                    if segment.moved:
                        self._acknowledge_copy(segment.moved.pop(state - STATE, None))
            self._reclaim_locked()
        self._prepare_spare()

    def retry_later(self, tokens: Iterable[Token], delay: Optional[float] = None) -> None:
        """Records whose delivery failed in a way that may pass: ``recover()`` offers them again
        ``delay`` seconds from now, at most ``retry_delay`` (its default; 0 also suits a record that
        was spooled but found no room in a full queue)."""
        due = time.monotonic() + (self._retry_delay if delay is None else min(delay, self._retry_delay))
        with self._ack_lock:
            for token in tokens:
                heapq.heappush(self._retry, (due, token))

    def recover(self, limit: int = 1000) -> List[Tuple[Token, bytes]]:
        """Up to ``limit`` records to deliver that no queue holds: ``(token, data)``.

        First records handed back with ``retry_later()`` whose delay has passed, then the
        records of files left by dead processes, which this process adopts (locks) one file
        at a time, in the order they were last written. Acknowledge each token once its
        record is delivered; the adopted file is deleted when all of its records are.
        """
        self._check_files()
        found: List[Tuple[Token, bytes]] = []
        now = time.monotonic()
        with self._ack_lock:
            retry = self._retry
            while retry and len(found) < limit and retry[0][0] <= now:
                _, token = heapq.heappop(retry)
                segment = self._segments.get(token >> 32)
                if segment is not None:
                    record = segment.record(token & _OFFSET)
                    if record is not None:
                        found.append((token, record))
        if len(found) < limit:
            with self._recover_lock:
                found.extend(self._read_adopted(limit - len(found)))
        self._prepare_spare()
        return found

    def dead_letter(self, messages: Iterable[Union[bytes, str]]) -> int:
        """Append messages Vitally rejected for good to ``dead-letter.jsonl``, one per line.

        The lines are the importer's input, so ``analytics-vitally import`` resends them after
        a fix. The file may grow up to ``max_bytes``; past that, messages are not written (and
        the log says so). Returns how many were written. Acknowledge their tokens afterwards.
        """
        lines = [
            (message.encode() if isinstance(message, str) else message).rstrip(b"\n") + b"\n" for message in messages
        ]
        if not lines:
            return 0
        return write_dead_letters(self.directory, lines, self.max_bytes, self.fsync)

    @property
    def pending(self) -> int:
        """Records written or adopted by this process and not acknowledged yet."""
        with self._ack_lock:
            return sum(_left(segment) for segment in self._segments.values())

    @property
    def disk_bytes(self) -> int:
        """The apparent size of the files this process made and has not deleted (what ``max_bytes`` bounds)."""
        return self._bytes_made - self._bytes_freed

    # Lifecycle. -----------------------------------------------------------------------

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's files (they stay locked by it); new files on demand.

        Run by the package's fork handling for every spool; calling it again, or in the parent, does nothing.
        """
        if self._pid == os.getpid():
            return
        inherited = list(self._segments.values())  # every file made or adopted, the spare included
        self._start()
        for segment in inherited:
            segment.close()  # our copies only, never LOCK_UN: the lock belongs to the parent too

    def close(self) -> int:
        """Stop writing and let other processes adopt what is left; how many records are left.

        Files whose records are all acknowledged are deleted; the active file is cut to the
        records it holds. Later ``append`` calls return None.
        """
        with self._recover_lock, self._lock:
            self._closed = True
            active, end, spare = self._active, self._end, self._spare
            self._active = self._spare = None
            for segment in (active, spare):
                if segment is not None:
                    self._seal(segment)
            with self._ack_lock:
                self._reclaim_locked()
                left = list(self._segments.values())
                self._segments.clear()
                self._sealed.clear()
        pending = 0
        for held in left:
            pending += _left(held)
            held.close(keep=end if held is active else None, durable=self.fsync)
        if pending:
            log.warning("spool %s: %d message(s) left for a later process to send", self.directory, pending)
        return pending

    # Inside. --------------------------------------------------------------------------

    def _make(self, length: int, prefill: bool) -> Own:
        """A new segment file of ``length`` bytes, allocated, locked, mapped and registered; OSError if not.

        ``make_file`` makes it (under a temporary name, renamed once locked); the directory too, if it
        was removed (``_relocate`` takes care of the files that were in it). The caller counts it in
        ``_bytes_made``.
        """
        number = next(self._sequence)
        path = os.path.join(self.directory, f"{self._writer}-{number:06d}{SUFFIX}")
        made = (self.directory, path, length, prefill, self._pid, number, self._owner, self._endpoint, self.fsync)
        try:
            handle, memory = make_file(*made)
        except FileNotFoundError:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            # The files that were in it are moved at the next look, without waiting. Set without _lock when
            # the spare is made: at worst one look more or less, and that look finds the deleted files anyway.
            if self._deleted_at is None:
                self._deleted_at = _monotonic() - LOOK_INTERVAL
            self._look_at = 0.0
            handle, memory = make_file(*made)
        segment = Own(path, handle, memory, next(self._keys))
        with self._ack_lock:
            self._segments[segment.key] = segment
        return segment

    def _prepare_spare(self) -> None:
        """On a worker thread: make the next segment ahead of need, zero-filled, so that an append
        never waits for a new file and the first write to each of its pages is cheap. Made once the
        active one is half full: a process that writes little holds one file, and makes none while
        its directory is being removed (an ``rm -rf`` fails on a file made in it meanwhile)."""
        with self._lock:
            if self._spare is not None or self._preparing or self._closed or self._active is None:
                return  # no active segment: a forked child that has not written yet
            if self._end < self._active.size // 2:
                return
            if self.segment_bytes > self._room():
                return
            self._preparing = True
            self._bytes_made += self.segment_bytes  # reserved now, so an append meanwhile sees the room left
        try:
            segment: Optional[Own] = self._make(self.segment_bytes, prefill=True)
        except OSError as error:
            log.debug("spool %s: the next file could not be made ahead of time: %s", self.directory, error)
            segment = None
        with self._lock:
            self._preparing = False
            if segment is None:
                self._bytes_made -= self.segment_bytes
                return
            if self._spare is None and not self._closed:
                self._spare = segment
                return
            self._seal(segment)  # closed meanwhile: nothing will be written to it
        self._reclaim()

    def _seal(self, segment: Segment) -> None:
        with self._ack_lock:
            segment.sealed = True
            self._sealed.append(segment)

    def _reclaim(self) -> None:
        with self._ack_lock:
            self._reclaim_locked()

    def _reclaim_locked(self) -> None:
        """Delete the sealed files whose records are all acknowledged (``_ack_lock`` held)."""
        if not self._sealed:
            return
        keep: List[Segment] = []
        for segment in self._sealed:
            if segment.acked < segment.records:
                keep.append(segment)
                continue
            del self._segments[segment.key]
            segment.delete()
            if segment.owned:
                self._bytes_freed += segment.size
        self._sealed = keep

    def _read_adopted(self, limit: int) -> List[Tuple[Token, bytes]]:
        """Up to ``limit`` records from adopted files, adopting more as needed (``_recover_lock`` held)."""
        found: List[Tuple[Token, bytes]] = []
        with self._ack_lock:
            reading = [
                segment for segment in self._segments.values() if isinstance(segment, Adopted) and not segment.sealed
            ]
        may_scan = True  # once per call: a file that cannot be deleted must not be adopted again and again
        while len(found) < limit:
            if not reading:
                scanned_at = self._orphans.scanned_at
                adopted = self._adopt_next(may_scan)
                may_scan = may_scan and self._orphans.scanned_at == scanned_at
                if adopted is None:
                    break
                reading.append(adopted)
            segment = reading[0]
            records, segment.cursor, finished = read_records(
                segment.read,
                segment.size,
                segment.cursor,
                limit - len(found),
                log_skipped(segment.path),
                segment.data_from,
            )
            new = [(segment.base | offset, data) for offset, state, data in records if state != DONE]
            with self._ack_lock:
                segment.records += len(new)
                if finished:
                    reading.pop(0)
                    segment.sealed = True
                    self._sealed.append(segment)
                    self._reclaim_locked()
            found.extend(new)
        return found

    def _adopt_next(self, may_scan: bool) -> Optional[Adopted]:
        """Lock the next file whose writer is gone and whose messages are ours; None if there is none (for now)."""
        with self._ack_lock:
            open_paths = {segment.path for segment in self._segments.values()}
        taken = self._orphans.take(may_scan, self._writer, open_paths)
        if taken is None:
            return None
        segment = Adopted(taken.path, taken.fd, taken.view, next(self._keys))
        with self._ack_lock:
            self._segments[segment.key] = segment
        writer = f"process {taken.header.writer}" if taken.header is not None else "a process (its header is damaged)"
        log.info("spool %s: adopted %s, written by %s, which ended or closed it", self.directory, taken.path, writer)
        return segment


def _left(segment: Segment) -> int:
    """Records of ``segment`` not acknowledged, but those that have a copy in another file."""
    return max(0, segment.records - segment.acked - len(segment.moved or ()))
