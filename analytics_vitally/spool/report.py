"""``inspect``: what a spool directory holds, for ``analytics-vitally spool DIR``, without changing it.

Each file is read a window at a time (``FileView``), so a huge or sparse one costs no more memory
than a small one; ``SpoolReport.left`` says what a ``spool --send`` for one destination leaves, and why.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

from .files import FileView, require_flock
from .format import (
    ANYONE,
    DEAD_LETTER,
    DONE,
    MINE,
    OTHER_DESTINATION,
    OTHER_ENDPOINT,
    OTHER_KEY,
    RECORDS_START,
    SUFFIX,
    FileHeader,
    destination,
    endpoint_bytes,
    owner_bytes,
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
    endpoint: str = ""
    """A hash of where its messages go without the key (``format.endpoint_bytes``); empty when not recorded."""
    header: str = "ok"
    """``ok``; ``repaired`` (a flipped bit put back by its checksum); ``damaged`` (whose messages it holds is
    unknown: its records were found by their own marks); ``not a spool file``."""


@dataclass
class Left:
    """Messages a ``spool --send`` leaves in the directory, for one reason (``SpoolReport.left``)."""

    messages: int = 0
    files: int = 0
    owners: Dict[str, int] = field(default_factory=dict)
    """Messages by the fingerprint of their destination, when their files record one."""


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

    def left(self, fingerprint: str, url: str) -> Dict[str, Left]:
        """What a ``spool --send`` for the destination of ``fingerprint`` and ``url`` (``Settings``) does not
        send, by why: ``running`` (held by a running process, which sends them), ``format.OTHER_KEY``,
        ``format.OTHER_ENDPOINT``, ``format.OTHER_DESTINATION``, ``damaged`` (a header damaged beyond
        repair: whose they are is unknown), ``dead letters`` (lines of ``dead-letter.jsonl``)."""
        owner, endpoint = owner_bytes(fingerprint), endpoint_bytes(url)
        left: Dict[str, Left] = {}
        for file in self.files:
            if not file.pending:
                continue
            if file.live:
                why = "running"
            elif file.header == "damaged":
                why = "damaged" if owner != ANYONE else MINE
            else:
                written = FileHeader(0, 0, 0.0, owner_bytes(file.owner), file.endpoint.encode() or ANYONE)
                why = destination(written, owner, endpoint)
            if why != MINE:
                reason = left.setdefault(why, Left())
                reason.messages += file.pending
                reason.files += 1
                if file.owner and why != "running":
                    reason.owners[file.owner] = reason.owners.get(file.owner, 0) + file.pending
        if self.dead_letters:
            left["dead letters"] = Left(self.dead_letters, 1)
        return left

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
            where = f", destination {file.owner}" if file.owner else ""
            where += f", endpoint {file.endpoint}" if file.endpoint else ""
            if file.header != "ok":
                where += {
                    "repaired": ", header repaired (a flipped bit put back)",
                    "damaged": ", header damaged: destination unknown",
                }.get(file.header, f", {file.header}")
            lines.append(
                f"  {file.name}: {file.pending} pending, {file.size:,} bytes, pid {file.writer}, {state}{where}{torn}"
            )
        return "\n".join(lines)


LEFT_ORDER = ("running", OTHER_KEY, OTHER_ENDPOINT, OTHER_DESTINATION, "damaged", "dead letters")
"""The reasons of ``SpoolReport.left``, in the order they are told."""


def left_text(directory: str, why: str, left: Left, mine: str) -> str:
    """Why ``spool --send`` leaves these messages (one of ``LEFT_ORDER``), and what sends them; ``mine`` is
    the fingerprint of the destination it sends for."""
    count = f"{left.messages} message(s) in {left.files} file(s)"
    listed = ", ".join(f"{messages} for {owner}" for owner, messages in sorted(left.owners.items()))
    if why == "dead letters":
        path = os.path.join(directory, DEAD_LETTER)
        return f"{left.messages} dead letter(s) in {path}, refused by Vitally: fix them, then analytics-vitally import"
    if why == "running":
        return f"{count} held by processes still running: they send them"
    if why == "damaged":
        return f"{count} whose header is damaged: whose they are is unknown, so they are not sent with this key"
    if why == OTHER_KEY:
        return (
            f"{count} written for this endpoint under another write key ({listed}; this one is {mine}): add "
            "--rekey to send them with this key"
        )
    other = "another endpoint" if why == OTHER_ENDPOINT else "another write key or endpoint (not recorded which)"
    return (
        f"{count} for {other} ({listed}; this one is {mine}): never sent with this key; run spool --send with "
        "their write key and host"
    )


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
            file, held_bytes, stamp = _inspect_file(os.path.join(path, name), name)
        except OSError:
            continue  # deleted meanwhile
        files.append(file)
        pending += file.pending
        pending_bytes += held_bytes
        total += file.size
        if stamp is not None and (oldest is None or stamp < oldest):
            oldest = stamp
    dead_letters = dead_letter_bytes = 0
    try:
        with open(os.path.join(path, DEAD_LETTER), "rb") as handle:
            for line in handle:
                dead_letters += bool(line.strip())
                dead_letter_bytes += len(line)
    except FileNotFoundError:
        pass
    return SpoolReport(path, pending, pending_bytes, total, oldest, tuple(files), dead_letters, dead_letter_bytes)


def _inspect_file(path: str, name: str) -> Tuple[SpoolFile, int, Optional[str]]:
    """One file as ``inspect`` shows it, the bytes of its pending messages and their oldest timestamp."""
    handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            live = False
        except BlockingIOError:
            live = True
        view = FileView(handle, os.fstat(handle).st_size)
        header = unpack_file_header(view.read(0, RECORDS_START))
        skips: List[int] = []
        records = pending = pending_bytes = 0
        oldest: Optional[str] = None
        cursor, finished = RECORDS_START, len(view) <= RECORDS_START
        while not finished:
            found, cursor, finished = read_records(view.read, len(view), cursor, 1000, _counter(skips), view.data_from)
            records += len(found)
            for _, state, data in found:
                if state == DONE:
                    continue
                pending += 1
                pending_bytes += len(data)
                stamp = _timestamp(data)
                if stamp is not None and (oldest is None or stamp < oldest):
                    oldest = stamp
        if header is None:
            file = SpoolFile(name, len(view), pending, 0, live, "", len(skips), "", "damaged")
            if not records:
                file = SpoolFile(name, len(view), 0, 0, live, "", 0, "", "not a spool file")
        else:
            owner = "" if header.owner == ANYONE else shown_owner(header.owner)
            endpoint = "" if header.endpoint == ANYONE else header.endpoint.decode("ascii", "replace")
            status = "repaired" if header.repaired else "ok"
            file = SpoolFile(name, len(view), pending, header.writer, live, owner, len(skips), endpoint, status)
        return file, pending_bytes, oldest
    finally:
        os.close(handle)  # drops our shared lock


def _counter(skips: List[int]) -> Callable[[int, int], None]:
    def count(offset: int, length: int) -> None:
        skips.append(length)

    return count


def _timestamp(data: bytes) -> Optional[str]:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    stamp = value.get("timestamp") if isinstance(value, dict) else None
    return stamp if isinstance(stamp, str) else None
