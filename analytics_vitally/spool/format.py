"""The spool's on-disk format: the names of its files and the bytes in them. Pure functions on
bytes and maps; nothing here touches the file system.

The directory. Each process writes its own segment files, ``<pid>-<nonce>-<seq>.seg`` (made as
``<name>.seg.tmp`` and renamed once locked), and processes append the messages Vitally rejected
for good to ``dead-letter.jsonl``, one per line.

A segment file. A 64-byte file header (``FILE_HEADER``: magic, writer pid, segment number, creation
time, owner, then zeros), then records from ``RECORDS_START`` on, each a 12-byte header (``RECORD``:
mark, state, an unused byte, length of the data, CRC-32 of the data) and the data, one after the
other. The rest of the file is zeros: the first invalid header followed by nothing but zeros is
the end. The state is ``PENDING`` when written and ``DONE`` once delivered (or dead-lettered), so a
process that adopts the file later skips what was delivered.

Torn records (the process killed in the middle of a copy, a damaged disk) fail the length or
checksum test; reading skips to the next valid record header (``MARK`` is in no JSON text, so a
search for it finds headers only) and reports what it skipped.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

DEAD_LETTER = "dead-letter.jsonl"
"""Messages Vitally rejected for good, one per line: ``analytics-vitally import`` reads this file."""
SUFFIX = ".seg"
"""The ending of a segment file's name."""

FILE_MAGIC = b"VTLYSPL1"
FILE_HEADER = struct.Struct("<8sIId16s")  # magic, writer pid, segment number, creation time (Unix), owner
ANYONE = bytes(16)
"""The owner of files written before owners were recorded (adopted by any spool), and of a spool made
without one (which adopts any file)."""
RECORDS_START = 64
RECORD = struct.Struct("<2sBBII")  # mark, state, unused, length of the data, CRC-32 of the data
HEADER = RECORD.size
MARK = b"\xf5\xa9"  # bytes no JSON text (ASCII) contains, so a search for the next record finds headers only
PENDING = 0x50
DONE = 0x44

pack_record_header = RECORD.pack_into
"""``pack_record_header(buffer, offset, MARK, PENDING, 0, len(data), crc32(data))``: a bound method,
called directly by the append path (one call, no lookups)."""
crc32 = zlib.crc32
"""The checksum of a record's data."""

Buffer = Union[bytes, mmap.mmap]


class FileHeader(NamedTuple):
    """A segment file's header, without its magic."""

    writer: int
    """The PID of the process that made the file."""
    number: int
    """The segment's number among its writer's files."""
    created: float
    """When it was made (Unix time)."""
    owner: bytes
    """``owner_bytes`` of the spool that made it; ``ANYONE`` for older files."""


def pack_file_header(writer: int, number: int, created: float, owner: bytes) -> bytes:
    return FILE_HEADER.pack(FILE_MAGIC, writer, number, created, owner)


def unpack_file_header(buffer: bytes) -> Optional[FileHeader]:
    """The header ``buffer`` starts with; None if it does not start with the magic of a spool file.
    ``struct.error`` if it starts with the magic but is shorter than a header."""
    if not buffer.startswith(FILE_MAGIC):
        return None
    _, writer, number, created, owner = FILE_HEADER.unpack_from(buffer)
    return FileHeader(writer, number, created, owner)


def owner_bytes(owner: str) -> bytes:
    """An owner (``Settings.fingerprint``) as a file header holds it; ``ANYONE`` for none."""
    return owner.encode("ascii").ljust(16, b"\0")[:16] if owner else ANYONE


def shown_owner(owner: bytes) -> str:
    """An owner as ``analytics-vitally spool`` shows it: its fingerprint, or "none" for older files."""
    if owner == ANYONE:
        return "none (written before owners were recorded)"
    return owner.rstrip(b"\0").decode("ascii", "replace")


def read_records(
    buffer: Buffer, cursor: int, limit: int, skipped: Callable[[int, int], None]
) -> Tuple[List[Tuple[int, int, int]], int, bool]:
    """Up to ``limit`` records from ``cursor``: ``[(offset, state, length)]``, the next cursor, and
    whether the end was reached. A torn or corrupt stretch is skipped up to the next valid
    record and reported to ``skipped(offset, length)``; zeros after the last record are the end."""
    stop = len(buffer)
    found: List[Tuple[int, int, int]] = []
    while len(found) < limit:
        valid = _valid(buffer, cursor, stop)
        if valid is not None:
            state, length = valid
            found.append((cursor, state, length))
            cursor += HEADER + length
            continue
        following = _next_record(buffer, cursor + 1, stop)
        if following is None:
            if not _only_zeros(buffer, cursor, stop):  # not just the unwritten rest of the file
                skipped(cursor, stop - cursor)
            return found, stop, True
        skipped(cursor, following - cursor)
        cursor = following
    return found, cursor, False


def _valid(buffer: Buffer, offset: int, stop: int) -> Optional[Tuple[int, int]]:
    """``(state, length)`` of the record at ``offset`` if it is whole and its checksum matches."""
    if offset + HEADER > stop:
        return None
    mark, state, _, length, checksum = RECORD.unpack_from(buffer, offset)
    body = offset + HEADER
    if mark != MARK or not 0 < length <= stop - body:
        return None
    if zlib.crc32(buffer[body : body + length]) != checksum:
        return None
    return state, length


def _only_zeros(buffer: Buffer, start: int, stop: int) -> bool:
    """Whether ``buffer[start:stop]`` is all zero bytes, looked at 1 MiB at a time (a huge sparse file
    must not be copied whole into memory)."""
    window = 1 << 20
    return not any(buffer[at : min(at + window, stop)].strip(b"\0") for at in range(start, stop, window))


def _next_record(buffer: Buffer, start: int, stop: int) -> Optional[int]:
    while True:
        offset = buffer.find(MARK, start, stop)
        if offset < 0:
            return None
        if _valid(buffer, offset, stop) is not None:
            return offset
        start = offset + 1
