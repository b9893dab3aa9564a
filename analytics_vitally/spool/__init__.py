"""The on-disk spool: accepted messages survive the death of the process.

- ``store``: ``Spool``, what one process writes, adopts, acknowledges and retries; ownership and locking.
- ``adopt``: the files processes that are gone left: taken, or left alone and said why; ``rekey``.
- ``relocate``: when a process's files are deleted under it: their records written again into new files.
- ``files``: the files on the file system: a segment file made, adopted, synced and deleted; the dead letters.
- ``format``: the bytes in the files: file and record headers, reading records back; no file system.
- ``report``: ``inspect``, what a spool directory holds (``analytics-vitally spool DIR``).
"""

from __future__ import annotations

from .adopt import rekey
from .format import DEAD_LETTER, SUFFIX
from .report import Left, SpoolFile, SpoolReport, inspect
from .store import DEFAULT_MAX_BYTES, MIN_MAX_BYTES, RETRY_DELAY, SCAN_INTERVAL, SEGMENT_BYTES, Spool, Token

__all__ = [
    "DEAD_LETTER",
    "DEFAULT_MAX_BYTES",
    "Left",
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
    "rekey",
]
