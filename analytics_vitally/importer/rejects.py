"""Rejected lines: what the importer says about each one, and the rejects file it writes them to."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import IO, Dict, List, Optional

from .common import ImportFilesError, private, write_atomically


@dataclass(frozen=True)
class Rejection:
    """A rejected line, as the rejects file records it."""

    file: str
    """The file's name as given in ``files``."""
    line: int
    error: str
    """Why: ``userId is required for a unlink message``, ``refused by Vitally: ...``."""
    text: str
    """The line itself."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.error}"


class Rejects:
    """The rejects file: one ``{"file", "line", "error", "text"}`` object per line, made at the first rejection.

    Not thread-safe: the importer calls it under its lock. With no ``path`` it writes nothing.
    """

    def __init__(self, path: Optional[str]) -> None:
        self._path = path
        self._stream: Optional[IO[str]] = None

    def keep_resumed(self, resumed: Dict[str, int]) -> None:
        """Keep the entries of the lines being skipped (``resumed``: line reached, by file); drop the rest."""
        if self._path is None:
            return
        kept: List[str] = []
        try:
            with open(self._path, encoding="utf-8") as old:
                for entry in old:
                    try:
                        record = json.loads(entry)
                        if 0 < int(record["line"]) <= resumed.get(record["file"], 0):
                            kept.append(entry)
                    except (ValueError, KeyError, TypeError, RecursionError):
                        continue
        except FileNotFoundError:
            return
        except OSError as error:
            raise ImportFilesError(f"cannot read the rejects file {self._path}: {error}", "rejects") from None
        if kept:
            write_atomically(self._path, "".join(kept))
        else:
            os.remove(self._path)

    def write(self, rejection: Rejection) -> None:
        if self._path is None:
            return
        if self._stream is None:
            self._stream = open(self._path, "a", encoding="utf-8", opener=private)  # noqa: SIM115
        record = {"file": rejection.file, "line": rejection.line, "error": rejection.error, "text": rejection.text}
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
