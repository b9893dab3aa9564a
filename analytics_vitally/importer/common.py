"""What the parts of the importer share: its logger, its error for files, and writing private files."""

from __future__ import annotations

import logging
import os
from typing import Optional

from ..errors import AnalyticsError

log = logging.getLogger("analytics_vitally.importer")
"""Every part logs here (not to a logger per module): the CLI and users listen to this one name."""


class ImportFilesError(AnalyticsError):
    """A file the import needs cannot be used; nothing was sent, or (for the state file) progress is not saved.

    ``option`` names the option at fault (``state``, ``rejects``), or is None for the input files.
    """

    def __init__(self, problem: str, option: Optional[str] = None) -> None:
        super().__init__(problem)
        self.option = option


def one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8", opener=private) as stream:
        stream.write(text)
    os.replace(temporary, path)


def private(path: str, flags: int) -> int:
    """``open()``'s opener for files that hold personal data (state, rejects): made 0600, as the spool's."""
    return os.open(path, flags, 0o600)
