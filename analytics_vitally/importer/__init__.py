"""Import JSON Lines files of Vitally messages: the engine behind ``analytics-vitally import``.

    from analytics_vitally.importer import ImportOptions, run_import

    report = run_import(ImportOptions(["events.jsonl"], write_key=token, subdomain="acme"))
    print(report.read, report.sent, report.rejected, report.skipped, report.delivered)

Each line is one message in Vitally's wire form, sent with ``Client.enqueue`` (the same
rules, the same completion: ``{}`` for an absent traits/properties, any ISO 8601
timestamp written in Vitally's form). How it stays correct when stopped and run again:

- A line without ``messageId`` gets one derived from the file's name, the line's number
  and its text, so a line sent twice is one message to Vitally.
- Every ``checkpoint_every`` lines it waits until the client has delivered what it
  queued (``Client.flush``), then records in the ``state`` file how far it got: line,
  byte offset and the SHA-256 of the bytes before it. A later run skips those bytes if
  they are unchanged, so after a kill at most the lines since the last checkpoint are
  sent again (and Vitally drops them as duplicates).
- Only lines that break the rules, cannot be read (not JSON, nested too deeply...) or
  that Vitally refuses (400, 413) are rejected: passed to ``on_reject``, written to the
  ``rejects`` file, and checkpointed past. When delivery itself fails (401, no answer,
  retries used up) it stops without checkpointing, so the next run sends those lines again.
- A file's last line without a newline may still be being written: it is sent if it
  reads as JSON, but progress is never saved past it, so the next run reads it again
  (with the same line number, so the same derived messageId).

Nothing here prints or exits: results come back in an ``ImportReport``, progress goes
to ``on_progress``, rejected lines to ``on_reject``, and everything else (ignored saved
progress, a failed delivery, an incomplete last line) to the ``analytics_vitally.importer``
logger. (``analytics_vitally.console.ConsoleOutput`` shows all three on standard error, as the
command does.)
"""

from __future__ import annotations

# The parts, each importing only those above it: common (the logger, ImportFilesError), sources (the
# input files), state (the resume state), rejects, rate (pacing); run (the Importer) puts them together.
from .common import ImportFilesError
from .rate import RATE_LIMITS as RATE_LIMITS
from .rejects import Rejection
from .run import (
    DEFAULT_REJECTS,
    DEFAULT_STATE,
    Importer,
    ImportOptions,
    ImportProgress,
    ImportReport,
    run_import,
)
from .run import MAX_CHECKPOINT_EVERY as MAX_CHECKPOINT_EVERY
from .run import MAX_WORKERS as MAX_WORKERS
from .run import PROGRESS_EVERY as PROGRESS_EVERY
from .run import REFUSED_STATUSES as REFUSED_STATUSES
from .run import STOPPING as STOPPING

__all__ = [
    "DEFAULT_REJECTS",
    "DEFAULT_STATE",
    "ImportFilesError",
    "ImportOptions",
    "ImportProgress",
    "ImportReport",
    "Importer",
    "Rejection",
    "run_import",
]
