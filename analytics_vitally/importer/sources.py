"""The importer's inputs: which files it reads, opening them (gzip or not), and how far each one got."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, cast

from .common import ImportFilesError


@dataclass
class Source:
    """One input and how far it got."""

    name: str
    """As given; used in FILE:LINE."""
    path: Optional[str]
    """Its real path, the key of its saved progress; None for standard input."""
    line: int = 0
    offset: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    """SHA-256 of the bytes before ``offset``."""
    total_lines: Optional[int] = None
    read: int = 0
    """Non-blank lines read by this run."""
    skipped: int = 0
    """Non-blank lines an earlier run delivered."""
    rejected: int = 0
    """Lines rejected so far, earlier runs included."""
    earlier_rejected: int = 0
    since_checkpoint: int = 0
    checkpoint_line: int = 0
    """The line up to which progress is saved."""

    def __post_init__(self) -> None:
        self.key = "-" if self.path is None else os.path.basename(self.path)
        """What message IDs are derived from: the file's name, so a moved or copied file keeps them."""

    def state(self, done: bool) -> Dict[str, Any]:
        return {
            "line": self.line,
            "offset": self.offset,
            "sha256": self.digest.hexdigest(),
            "read": self.skipped + self.read,
            "rejected": self.rejected,
            "done": done,
        }


def sources_from(names: Sequence[str]) -> List[Source]:
    """The inputs named in ``files``, each checked to be readable and a regular file (or ``-``)."""
    if list(names).count("-") > 1:
        raise ImportFilesError("- (standard input) can be given once")
    sources = []
    for name in names:
        if name == "-":
            sources.append(Source(name, None))
            continue
        try:
            regular = stat.S_ISREG(os.stat(name).st_mode)  # before opening: opening a FIFO waits for a writer
            if regular:
                with open(name, "rb"):
                    pass
        except OSError as error:
            raise ImportFilesError(f"cannot read {name}: {error.strerror}") from None
        if not regular:  # a pipe (<(...), a FIFO) or a device: it can be read once, never measured or resumed
            raise ImportFilesError(
                f"{name} is not a regular file (a pipe or a device): it cannot be counted or resumed; "
                f"send it through standard input instead: cat {name} | analytics-vitally import -"
            )
        sources.append(Source(name, os.path.realpath(name)))
    return sources


_GZIP_MAGIC = b"\x1f\x8b"


def open_input(path: str) -> BinaryIO:
    """An input file to read lines from; a gzip-compressed one (known by its first two bytes, whatever its
    name) is decompressed as it is read, and its offsets and line numbers are those of the text inside."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    stream = _Gunzipped(path) if compressed else open(path, "rb")  # noqa: SIM115  (the caller closes it)
    return cast(BinaryIO, stream)  # both read bytes by lines, seek and close: BinaryIO enough for the importer


class _Gunzipped(gzip.GzipFile):
    """A gzip input whose damage (cut short, corrupt) is an ``ImportFilesError`` naming the file."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "rb")
        self._path = path

    def _damaged(self, error: Exception) -> ImportFilesError:
        return ImportFilesError(f"{self._path} is a damaged or incomplete gzip file: {error}")

    def read(self, size: Optional[int] = -1) -> bytes:
        try:
            return super().read(size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise self._damaged(error) from None

    def readline(self, size: Optional[int] = -1) -> bytes:
        try:
            return super().readline(size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise self._damaged(error) from None

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return super().seek(offset, whence)
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise self._damaged(error) from None


def digest_of(stream: BinaryIO, size: int) -> Optional[hashlib._Hash]:
    """SHA-256 of the first ``size`` bytes of ``stream``; None if it is shorter."""
    digest = hashlib.sha256()
    while size > 0:
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            return None
        digest.update(chunk)
        size -= len(chunk)
    return digest


def count_lines(stream: BinaryIO) -> int:
    count, last = 0, b"\n"
    while chunk := stream.read(1 << 20):
        count += chunk.count(b"\n")
        last = chunk[-1:]
    return count + (last != b"\n")
