"""``inspect``: what a spool directory holds, for ``analytics-vitally spool DIR``, without changing it."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

from .files import require_flock
from .format import (
    ANYONE,
    DEAD_LETTER,
    DONE,
    HEADER,
    RECORDS_START,
    SUFFIX,
    read_records,
    shown_owner,
    unpack_file_header,
)

if sys.platform != "win32":
    import fcntl


@dataclass(frozen=True)
class SpoolFile:
    """One segment file, as ``inspect`` saw it."""

    name: str
    size: int
    """Apparent size on disk, in bytes."""
    pending: int
    """Records not acknowledged."""
    writer: int
    """The PID of the process that wrote it (it may have been reused since)."""
    live: bool
    """A running process holds its lock: its writer, or a process that adopted it."""
    owner: str
    """The fingerprint of where its messages go (``Settings.fingerprint``); empty for older files."""
    skipped: int
    """Torn or corrupt stretches skipped (a live file's last record may be mid-write)."""


@dataclass(frozen=True)
class SpoolReport:
    """What a spool directory holds (``inspect``)."""

    directory: str
    pending: int
    """Messages in the spool files, not acknowledged."""
    pending_bytes: int
    size: int
    """The apparent size of the spool files, in bytes."""
    oldest: Optional[str]
    """The oldest ``timestamp`` among pending messages (Vitally's UTC form), if any has one."""
    files: Tuple[SpoolFile, ...]
    dead_letters: int
    """Lines in ``dead-letter.jsonl``."""
    dead_letter_bytes: int

    @property
    def orphaned(self) -> int:
        """Pending messages in files no running process holds: the next process started with this
        spool (or ``analytics-vitally spool --send``) sends them."""
        return sum(file.pending for file in self.files if not file.live)

    def text(self) -> str:
        """The report as lines of text; the first reads ``N messages pending``."""
        live = [file for file in self.files if file.live]
        lines = [
            f"{self.pending} messages pending",
            f"{self.pending_bytes:,} bytes of messages in {len(self.files)} file(s), {self.size:,} bytes on disk",
            f"oldest pending message: {self.oldest or 'none (or none has a timestamp)'}",
            f"{len(live)} file(s) held by a running process, {len(self.files) - len(live)} left by processes "
            f"that ended ({self.orphaned} messages to send)",
            f"{self.dead_letters} dead letter(s) in {os.path.join(self.directory, DEAD_LETTER)}"
            + (" (resend with analytics-vitally import)" if self.dead_letters else ""),
        ]
        for file in self.files:
            state = "held by a running process" if file.live else "its process has ended"
            torn = f", {file.skipped} torn stretch(es) skipped" if file.skipped else ""
            destination = f", destination {file.owner}" if file.owner else ""
            lines.append(
                f"  {file.name}: {file.pending} pending, {file.size:,} bytes, pid {file.writer}, {state}"
                f"{destination}{torn}"
            )
        return "\n".join(lines)


def inspect(directory: Union[str, os.PathLike[str]]) -> SpoolReport:
    """What ``directory`` holds, without changing it (a shared lock is taken for an instant to see
    whether each file's writer lives; an adopter trying that instant waits for its next look)."""
    require_flock()
    path = os.path.abspath(os.fspath(directory))
    files: List[SpoolFile] = []
    pending = pending_bytes = total = 0
    oldest: Optional[str] = None
    names = sorted(name for name in os.listdir(path) if name.endswith(SUFFIX))
    for name in names:
        try:
            content, live = _read_for_report(os.path.join(path, name))
        except OSError:
            continue  # deleted meanwhile
        skips: List[int] = []
        writer, owner = 0, ANYONE
        records: List[Tuple[int, int, int]] = []
        header = unpack_file_header(content) if len(content) >= RECORDS_START else None
        if header is not None:
            writer, owner = header.writer, header.owner
            records, _, _ = read_records(content, RECORDS_START, len(content), _counter(skips))
        waiting = [(offset, length) for offset, state, length in records if state != DONE]
        for offset, length in waiting:
            stamp = _timestamp(content[offset + HEADER : offset + HEADER + length])
            if stamp is not None and (oldest is None or stamp < oldest):
                oldest = stamp
        shown = "" if owner == ANYONE else shown_owner(owner)
        files.append(SpoolFile(name, len(content), len(waiting), writer, live, shown, len(skips)))
        pending += len(waiting)
        pending_bytes += sum(length for _, length in waiting)
        total += len(content)
    dead_letters = dead_letter_bytes = 0
    try:
        with open(os.path.join(path, DEAD_LETTER), "rb") as handle:
            for line in handle:
                dead_letters += bool(line.strip())
                dead_letter_bytes += len(line)
    except FileNotFoundError:
        pass
    return SpoolReport(path, pending, pending_bytes, total, oldest, tuple(files), dead_letters, dead_letter_bytes)


def _counter(skips: List[int]) -> Callable[[int, int], None]:
    def count(offset: int, length: int) -> None:
        skips.append(length)

    return count


def _read_for_report(path: str) -> Tuple[bytes, bool]:
    handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            live = False
        except BlockingIOError:
            live = True
        chunks: List[bytes] = []
        while True:
            chunk = os.read(handle, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), live
    finally:
        os.close(handle)  # drops our shared lock


def _timestamp(data: bytes) -> Optional[str]:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    stamp = value.get("timestamp") if isinstance(value, dict) else None
    return stamp if isinstance(stamp, str) else None
