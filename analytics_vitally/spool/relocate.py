"""After a deletion: what ``Spool`` does when its files lose their names (the directory removed by a
clean-up job, say), as a part of ``Spool`` (``Relocation``, which it inherits; its locks and
fields are described there).

A deleted file's records are still in our map, and are still delivered from memory, but they would
not survive a crash: the kernel frees the file with its last descriptor. So the deletion is looked
for (one ``fstat`` of the file being written) by ``append`` at its first call ``LOOK_INTERVAL`` or
more after the last look (a clock read per call: 0.2 µs on the development VM) and before each new file, and by
``recover`` at each of its calls. Once it is seen, ``_relocate`` makes the directory again and
writes every record of the deleted files that is not acknowledged into new files there: a
message accepted into a deleted file is at risk for ``LOOK_INTERVAL`` while calls come, and until
the worker's next look (about a second) when none do.

A copy is acknowledged with its original: the worker holds the original's token, and
``Segment.moved`` maps it to the copy's (and a copy's copy, after a second deletion). When the
directory is still there as the deletion is seen, the move waits for the next look: an ``rm -rf``
under way would fail on a file made in it meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Dict, List, Optional, Set, Tuple

from .files import Own, Segment, sync_file
from .format import DONE, HEADER, MARK, PENDING, RECORDS_START, STATE, crc32, pack_record_header, read_records

log = logging.getLogger("analytics_vitally")

LOOK_INTERVAL = 0.01
"""Seconds between two looks, by ``append``, at whether the file being written was deleted."""

_OFFSET = (1 << 32) - 1
_monotonic = time.monotonic


class Relocation:
    """The part of ``Spool`` that moves the records of its deleted files into new ones."""

    directory: str
    fsync: bool
    _lock: threading.RLock
    _ack_lock: threading.Lock
    _segments: Dict[int, Segment]
    _active: Optional[Own]
    _spare: Optional[Own]
    _end: int
    _busy: bool
    _closed: bool
    _acks: int
    _refusal: str
    _deleted_at: Optional[float]
    """When a deletion was seen and its records are not moved yet."""

    def _rotate(self, size: int) -> Optional[Own]:
        raise NotImplementedError

    def _seal(self, segment: Segment) -> None:
        raise NotImplementedError

    def _check_files(self) -> None:
        """Notice that the file being written (or, with none, any file held) was deleted, and move
        what the deleted files hold to new ones (``_relocate``)."""
        for _ in range(2):  # twice, when the directory was still there: an rm -rf under way may end first
            with self._lock:
                if self._closed or self._busy:
                    return
                with self._ack_lock:
                    held = [self._active] if self._active is not None else list(self._segments.values())
                lost = any(segment.moved is None and segment.unlinked() for segment in held)
                if not lost and self._deleted_at is None:
                    return
                self._busy = True  # a signal handler's append on this thread meanwhile is refused
                try:
                    self._relocate()
                finally:
                    self._busy = False
                seen = self._deleted_at
            if seen is None:
                return
            time.sleep(max(0.0, seen + LOOK_INTERVAL - _monotonic()))  # a worker thread, not holding _lock

    def _relocate(self) -> None:
        """Files of ours were deleted (the directory removed, say): make the directory again, and write
        the records they hold that are not acknowledged into new files there; each copy is then
        acknowledged with its original (``moved``). ``_lock`` held.

        When the directory is still there, that is done at the next look, ``LOOK_INTERVAL`` later at
        the soonest: an ``rm -rf`` under way would fail on files made in it meanwhile."""
        if os.path.isdir(self.directory):
            now = _monotonic()
            if self._deleted_at is None:
                self._deleted_at = now
            if now - self._deleted_at < LOOK_INTERVAL:
                return  # and it is still to do: see _advance
        self._deleted_at = None
        with self._ack_lock:
            lost = [segment for segment in self._segments.values() if segment.moved is None and segment.unlinked()]
        if not lost:
            return
        moves: Dict[Segment, Dict[int, int]] = {}
        for segment in lost:
            segment.moved = moves[segment] = {}  # taken care of: never moved twice
            if segment is self._active:
                self._active = None  # the next record goes to a new file
                self._seal(segment)
            elif segment is self._spare:
                self._spare = None
                self._seal(segment)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as error:
            log.error("spool %s cannot be made again: %s; calls are refused until it can", self.directory, error)
        moved = failed = 0
        written: Set[Own] = set()
        for segment in lost:
            cursor, finished = RECORDS_START, False
            while not finished:
                records, cursor, finished = read_records(
                    segment.read, segment.size, cursor, 1000, _unreported, segment.data_from, resync=not segment.owned
                )
                copies: List[Tuple[int, int]] = []
                for offset, state, data in records:
                    if state == DONE:
                        continue
                    copy = self._put(data)
                    if copy is None:
                        failed += 1
                        continue
                    copies.append((offset, copy))
                    if self._active is not None:
                        written.add(self._active)
                with self._ack_lock:
                    for offset, copy in copies:
                        if segment.states[offset + STATE] == DONE:  # acknowledged since it was read
                            self._acknowledge_copy(copy)
                        else:
                            moves[segment][offset] = copy
                moved += len(copies)
        if self.fsync:
            for own in written:
                try:
                    sync_file(own.fd)
                except OSError as error:
                    log.error("spool %s: a file could not be synced to disk (fsync): %s", self.directory, error)
        log.error(
            "spool %s: its files were deleted (was the directory removed?): made again, and the %d message(s) "
            "not delivered yet written again to new files there",
            self.directory,
            moved,
        )
        if failed:
            log.error(
                "spool %s: %d message(s) could not be written again (%s): they are still sent from memory, but "
                "would not survive a crash",
                self.directory,
                failed,
                self._refusal,
            )

    def _put(self, data: bytes) -> Optional[int]:
        """``append`` without the looks and the count of refusals, for ``_relocate`` (``_lock`` held)."""
        size = HEADER + len(data)
        segment = self._active
        if segment is None or self._end + size > segment.size:
            segment = self._rotate(size)
            if segment is None:
                return None
        start = self._end
        self._end = start + size
        pack_record_header(segment.map, start, MARK, PENDING, 0, len(data), crc32(data))
        segment.map[start + HEADER : start + size] = data
        segment.records += 1
        return segment.base | start

    def _acknowledge_copy(self, token: Optional[int]) -> None:
        """The copy a record got when its file was found deleted, and the copy's copy (``_ack_lock`` held)."""
        while token is not None:
            segment = self._segments.get(token >> 32)
            offset = token & _OFFSET
            if segment is None or segment.states[offset + STATE] == DONE:
                return
            segment.states[offset + STATE] = DONE
            segment.acked += 1
            self._acks += 1
            token = segment.moved.pop(offset, None) if segment.moved else None


def _unreported(offset: int, length: int) -> None:
    """Skipped stretches of a deleted file being moved: said when the file was read (or it is ours)."""
