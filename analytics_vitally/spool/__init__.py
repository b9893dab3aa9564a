"""The on-disk spool: accepted messages survive the death of the process.

- ``store``: ``Spool``, what one process writes, adopts, acknowledges and retries; ownership and locking.
- ``files``: the files on the file system: a segment file made, adopted, synced and deleted; the dead letters.
- ``format``: the bytes in the files: file and record headers, reading records back; no file system.
- ``report``: ``inspect``, what a spool directory holds (``analytics-vitally spool DIR``).
"""

from __future__ import annotations

from .format import DEAD_LETTER, SUFFIX
from .report import SpoolFile, SpoolReport, inspect
from .store import DEFAULT_MAX_BYTES, MIN_MAX_BYTES, RETRY_DELAY, SCAN_INTERVAL, SEGMENT_BYTES, Spool, Token

__all__ = [
    "DEAD_LETTER",
    "DEFAULT_MAX_BYTES",
    "MIN_MAX_BYTES",
    "RETRY_DELAY",
    "SCAN_INTERVAL",
    "SEGMENT_BYTES",
    "SUFFIX",
    "Spool",
    "SpoolFile",
    "SpoolReport",
    "Token",
    "inspect",
]
