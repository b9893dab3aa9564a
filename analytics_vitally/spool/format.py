"""The spool's on-disk format: the names of its files and the bytes in them. Pure functions on
bytes; nothing here touches the file system (readers are handed a ``read(offset, length)``).

The directory. Each process writes its own segment files, ``<pid>-<nonce>-<seq>.seg`` (made as
``<name>.seg.tmp`` and renamed once locked), and processes append the messages Vitally rejected
for good to ``dead-letter.jsonl``, one per line.

A segment file. A 64-byte file header, then records from ``RECORDS_START`` on, each a 12-byte
header (``RECORD``: mark, state, an unused byte, length of the data, CRC-32 of the data) and the
data, one after the other. The rest of the file is zeros: the first invalid header followed by
nothing but zeros is the end. The state is ``PENDING`` when written and ``DONE`` once delivered (or
dead-lettered), so a process that adopts the file later skips what was delivered.

The file header (``FILE_HEADER``, version 2): magic, writer pid, segment number, creation time,
owner (``Settings.fingerprint``: the endpoint and the write key), endpoint (a hash of the endpoint
alone, so that a file of a rotated write key can be told from another account's), the version, and
a CRC-32 of the 60 bytes before it. A header whose checksum fails is repaired when one flipped bit
explains it (CRC-32 tells any single-bit error in 512 bits from every other error of up to four
bits), and is otherwise damaged: its records are still found by their own marks and checksums, but
whose they are is unknown. Version 1 wrote the same fields up to the owner and zeros after it (no
endpoint, no checksum): such headers are still read, and version 1 reads version 2's (it reads no
further than the owner), so processes of both versions can share a directory.

Torn records (the process killed in the middle of a copy, a damaged disk) fail the length or
checksum test; reading skips to the next valid record header (``MARK`` is in no JSON text, so a
search for it finds headers only) and reports what it skipped. Reading looks at no more than
``WINDOW`` bytes at a time, and skips holes, so a huge or sparse file costs no more memory than a
small one.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

DEAD_LETTER = "dead-letter.jsonl"
"""Messages Vitally rejected for good, one per line: ``analytics-vitally import`` reads this file."""
SUFFIX = ".seg"
"""The ending of a segment file's name."""

FILE_MAGIC = b"VTLYSPL1"
FILE_HEADER = struct.Struct("<8sIId16s16sII")  # magic, pid, number, created, owner, endpoint, version, CRC
VERSION = 2
HEADER_V1 = struct.Struct("<8sIId16s")  # magic, pid, number, created, owner; zeros to RECORDS_START
_CHECKED = FILE_HEADER.size - 4
ANYONE = bytes(16)
"""The owner of files written before owners were recorded (adopted by any spool), and of a spool made
without one (which adopts any file); as an endpoint: not recorded."""
RECORDS_START = 64
RECORD = struct.Struct("<2sBBII")  # mark, state, unused, length of the data, CRC-32 of the data
HEADER = RECORD.size
STATE = 2
"""Where a record's state byte is, from the start of its header."""
MARK = b"\xf5\xa9"  # bytes no JSON text (ASCII) contains, so a search for the next record finds headers only
PENDING = 0x50
DONE = 0x44
WINDOW = 1 << 20
"""The most bytes a reader asks for at once (but for a record that is larger)."""

pack_record_header = RECORD.pack_into
"""``pack_record_header(buffer, offset, MARK, PENDING, 0, len(data), crc32(data))``: a bound method,
called directly by the append path (one call, no lookups)."""
crc32 = zlib.crc32
"""The checksum of a record's data, and of a file header."""

Read = Callable[[int, int], bytes]
"""``read(offset, length)``: up to ``length`` bytes of a file from ``offset`` (fewer at its end)."""
DataFrom = Callable[[int], int]
"""``data_from(offset)``: the first offset at or after ``offset`` that may hold a byte other than zero
(the end of a hole in a sparse file); ``offset`` itself when that is not known."""


def no_holes(offset: int) -> int:
    return offset


# Where a file's messages go. ----------------------------------------------------------------

MINE = "mine"
"""A file this spool adopts: its own destination's, or one written without an owner."""
OTHER_KEY = "another write key"
"""The same endpoint, another write key: after a key rotation, say (``spool --send --rekey`` sends them)."""
OTHER_ENDPOINT = "another endpoint"
OTHER_DESTINATION = "another destination"
"""Another owner, and one of the two endpoints is not known: another key, or another endpoint."""


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
    endpoint: bytes = ANYONE
    """``endpoint_bytes`` of where it sends; ``ANYONE`` when not recorded (version 1, or a spool made without it)."""
    repaired: bool = False
    """A flipped bit in the header was found by its checksum and put back."""


def pack_file_header(writer: int, number: int, created: float, owner: bytes, endpoint: bytes = ANYONE) -> bytes:
    head = FILE_HEADER.pack(FILE_MAGIC, writer, number, created, owner, endpoint, VERSION, 0)
    return head[:_CHECKED] + struct.pack("<I", crc32(head[:_CHECKED]))


def unpack_file_header(buffer: bytes) -> Optional[FileHeader]:
    """The header ``buffer`` starts with (at least ``RECORDS_START`` bytes); None if there is none to trust:
    not a spool file, or a header damaged beyond a flipped bit (its records may still be whole)."""
    head = bytes(buffer[:RECORDS_START])
    if len(head) < RECORDS_START:
        return None
    if head[HEADER_V1.size :] == bytes(RECORDS_START - HEADER_V1.size):  # version 1: nothing to check
        return _header_v1(head)
    repaired = False
    if not _sound(head):
        fixed = _repair(head)
        if fixed is None:
            return None
        head, repaired = fixed, True
    _, writer, number, created, owner, endpoint, _, _ = FILE_HEADER.unpack(head)
    return FileHeader(writer, number, created, owner, endpoint, repaired)


def with_owner(header: FileHeader, owner: bytes) -> bytes:
    """The header of a file as ``header`` says, but for ``owner`` (``spool --send --rekey``)."""
    return pack_file_header(header.writer, header.number, header.created, owner, header.endpoint)


def _sound(head: Union[bytes, bytearray]) -> bool:
    checksum = int.from_bytes(head[_CHECKED:], "little")
    return (
        head.startswith(FILE_MAGIC) and head[_CHECKED - 4 : _CHECKED] != bytes(4) and crc32(head[:_CHECKED]) == checksum
    )


def _repair(head: bytes) -> Optional[bytes]:
    """``head`` with the one bit that makes it a sound header flipped back; None if no single bit does."""
    flipped = bytearray(head)
    for bit in range(len(head) * 8):
        flipped[bit >> 3] ^= 1 << (bit & 7)
        if _sound(flipped):
            return bytes(flipped)
        flipped[bit >> 3] ^= 1 << (bit & 7)
    return None


def _header_v1(head: bytes) -> Optional[FileHeader]:
    """A version 1 header (no checksum): its magic, or its magic with one bit flipped."""
    magic = head[: len(FILE_MAGIC)]
    if sum(bin(a ^ b).count("1") for a, b in zip(magic, FILE_MAGIC)) > 1:
        return None
    _, writer, number, created, owner = HEADER_V1.unpack_from(head)
    return FileHeader(writer, number, created, owner, ANYONE, magic != FILE_MAGIC)


def owner_bytes(owner: str) -> bytes:
    """An owner (``Settings.fingerprint``) as a file header holds it; ``ANYONE`` for none."""
    return owner.encode("ascii").ljust(16, b"\0")[:16] if owner else ANYONE


def endpoint_bytes(url: str) -> bytes:
    """An endpoint (``Settings.url``) as a file header holds it: 16 hex digits of its SHA-256, no key
    involved, so that any write key can tell its own endpoint's files; ``ANYONE`` for none."""
    return hashlib.sha256(url.encode()).hexdigest()[:16].encode("ascii") if url else ANYONE


def shown_owner(owner: bytes) -> str:
    """An owner as ``analytics-vitally spool`` shows it: its fingerprint, or "none" for older files."""
    if owner == ANYONE:
        return "none (written before owners were recorded)"
    return owner.rstrip(b"\0").decode("ascii", "replace")


def destination(header: FileHeader, owner: bytes, endpoint: bytes) -> str:
    """Whose messages a file holds, for a spool of ``owner`` sending to ``endpoint``: ``MINE`` or why not."""
    if owner == ANYONE or header.owner in (ANYONE, owner):
        return MINE
    if ANYONE in (header.endpoint, endpoint):
        return OTHER_DESTINATION
    return OTHER_KEY if header.endpoint == endpoint else OTHER_ENDPOINT


# Records. -----------------------------------------------------------------------------------

Found = Tuple[int, int, bytes]
"""A record read: its offset, its state and its data."""


def read_records(
    read: Read,
    stop: int,
    cursor: int,
    limit: int,
    skipped: Callable[[int, int], None],
    data_from: DataFrom = no_holes,
    resync: bool = True,
) -> Tuple[List[Found], int, bool]:
    """Up to ``limit`` records from ``cursor`` of a file of ``stop`` bytes: ``[(offset, state, data)]``,
    the next cursor, and whether the end was reached. A torn or corrupt stretch is skipped up to the
    next valid record and reported to ``skipped(offset, length)``; zeros after the last record are
    the end. ``resync=False``: the first record that does not check is the end (a file whose writer
    is this process, which tears no record)."""
    found: List[Found] = []
    while len(found) < limit:
        record = _record_at(read, cursor, stop)
        if record is not None:
            found.append((cursor, record[0], record[1]))
            cursor += HEADER + len(record[1])
            continue
        if not resync:
            return found, stop, True
        following = _next_record(read, cursor + 1, stop, data_from)
        if following is None:
            if not _only_zeros(read, cursor, stop, data_from):  # not just the unwritten rest of the file
                skipped(cursor, stop - cursor)
            return found, stop, True
        skipped(cursor, following - cursor)
        cursor = following
    return found, cursor, False


def count_pending(read: Read, stop: int, data_from: DataFrom = no_holes) -> int:
    """How many whole records from ``RECORDS_START`` on are not ``DONE``; a window at a time."""
    cursor, pending, finished = RECORDS_START, 0, False
    while not finished:
        records, cursor, finished = read_records(read, stop, cursor, 1000, _ignore, data_from)
        pending += sum(state != DONE for _, state, _ in records)
    return pending


def _ignore(offset: int, length: int) -> None:
    pass


def _record_at(read: Read, offset: int, stop: int) -> Optional[Tuple[int, bytes]]:
    """``(state, data)`` of the record at ``offset`` if it is whole and its checksum matches."""
    head = read(offset, HEADER) if offset + HEADER <= stop else b""
    if len(head) < HEADER:  # past the end, or the file was cut meanwhile (its writer closed it)
        return None
    mark, state, _, length, checksum = RECORD.unpack(head)
    body = offset + HEADER
    if mark != MARK or not 0 < length <= stop - body:
        return None
    if length > WINDOW:  # checked a window at a time: a damaged length must not cost its size in memory
        running = 0
        for at in range(body, body + length, WINDOW):
            running = crc32(read(at, min(WINDOW, body + length - at)), running)
        if running != checksum:
            return None
    data = read(body, length)
    if len(data) != length or crc32(data) != checksum:
        return None
    return state, data


def _next_record(read: Read, start: int, stop: int, data_from: DataFrom) -> Optional[int]:
    at = start
    while at < stop:
        at = data_from(at)
        if at >= stop:
            return None
        chunk = read(at, min(WINDOW, stop - at))
        found = chunk.find(MARK)
        while found >= 0:
            if _record_at(read, at + found, stop) is not None:
                return at + found
            found = chunk.find(MARK, found + 1)
        if at + len(chunk) >= stop or len(chunk) < len(MARK):
            return None
        at += len(chunk) - (len(MARK) - 1)  # a mark cut by the window's end is found in the next
    return None


def _only_zeros(read: Read, start: int, stop: int, data_from: DataFrom) -> bool:
    """Whether the file is all zero bytes from ``start`` to ``stop``, looked at a window at a time."""
    at = start
    while at < stop:
        at = data_from(at)
        if at >= stop:
            return True
        chunk = read(at, min(WINDOW, stop - at))
        if not chunk or chunk.count(0) != len(chunk):
            return not chunk
        at += len(chunk)
    return True
