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
logger.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import logging
import os
import re
import stat
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from threading import Lock
from typing import IO, Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast
from uuid import NAMESPACE_URL, uuid5

from .client import Client, Message
from .errors import AnalyticsError, ConfigurationError, DeliveryError, InvalidMessageError
from .messages import MAX_BATCH_MESSAGES
from .settings import MAX_THREADS, Settings

__all__ = [
    "ConsoleOutput",
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

log = logging.getLogger("analytics_vitally.importer")

DEFAULT_STATE = "analytics-vitally-state.json"
DEFAULT_REJECTS = "analytics-vitally-rejects.jsonl"
MAX_WORKERS = MAX_THREADS
"""``workers`` at most (the client's ``thread`` limit): at 200 ms per request, 64 requests in
flight carry about 32,000 messages/s, more than the importer parses; more only loads Vitally."""
RATE_LIMITS = (0.01, 1000.0)
"""``rate`` bounds: one request per 100 s at least; 1000 requests/s (100,000 messages/s) is
already more than the importer can read, so a higher cap would be no cap."""
MAX_CHECKPOINT_EVERY = 100_000
"""``checkpoint_every`` at most: the lines since the last checkpoint are held in memory (to
name a line Vitally refuses) and resent after a kill."""
PROGRESS_EVERY = 100
"""Lines between two calls of ``on_progress``."""
REFUSED_STATUSES = frozenset({400, 413})
"""Vitally refused the message itself: reject the line and go on (anything else stops the import)."""
STOPPING = "stopping: delivering what was queued and saving progress"
"""What the log says when ``Importer.stop()`` is noticed."""

_MESSAGE_IDS = uuid5(NAMESPACE_URL, "urn:analytics-vitally:import")
"""Never change it: derived messageIds must stay the same from one version to the next."""


class ImportFilesError(AnalyticsError):
    """A file the import needs cannot be used; nothing was sent, or (for the state file) progress is not saved.

    ``option`` names the option at fault (``state``, ``rejects``), or is None for the input files.
    """

    def __init__(self, problem: str, option: Optional[str] = None) -> None:
        super().__init__(problem)
        self.option = option


@dataclass
class ImportOptions:
    """What to import and how; only ``files`` is required. Checked when the import runs."""

    files: Sequence[Union[str, os.PathLike[str]]]
    """JSON Lines files, one Vitally message per line; ``-`` reads standard input (never resumed)."""
    write_key: Optional[str] = None
    """As the client's setting (default: ``VITALLY_WRITE_KEY``); not needed for a dry run."""
    subdomain: Optional[str] = None
    """As the client's setting (default: ``VITALLY_SUBDOMAIN``)."""
    host: Optional[str] = None
    """As the client's setting (default: ``VITALLY_HOST``)."""
    client_settings: Mapping[str, Any] = field(default_factory=dict)
    """Any other ``Client`` settings (``timeout``, ``proxies``, ``gzip``, ``debug``, ``on_error``...).
    The import builds its own client: ``send``, ``thread`` and ``max_queue_size`` are its own, and
    an ``on_error`` given here is called after the importer's."""
    workers: int = 4
    """Batch requests in flight at once, 1 to 64 (the client's ``thread``)."""
    rate: Optional[float] = None
    """At most this many batch requests per second, 0.01 to 1000; None: no cap."""
    checkpoint_every: int = 1000
    """Save progress every N lines, 1 to 100,000."""
    state: Optional[str] = DEFAULT_STATE
    """Where progress is saved; None: progress is neither read nor saved."""
    rejects: Optional[str] = DEFAULT_REJECTS
    """Where rejected lines are written (rewritten by each run); None: nowhere."""
    restart: bool = False
    """Ignore the saved progress of these files: send them from the start."""
    dry_run: bool = False
    """Check every line and send nothing; the state is neither read nor written."""
    on_progress: Optional[Callable[[ImportProgress], None]] = None
    """Called on the importing thread before the first line, every 100 lines, and at the end."""
    on_reject: Optional[Callable[[Rejection], None]] = None
    """Called for each rejected line, from any thread, one call at a time; None: each is logged."""


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


@dataclass(frozen=True)
class ImportProgress:
    """How far an import got, for ``on_progress``."""

    lines: int
    """Lines gone through, blank ones and those an earlier run dealt with included."""
    total: Optional[int]
    """Lines in all the files; None when one of them is standard input."""
    started_at: int
    """``lines`` when this run began (the lines skipped), to compute a rate."""
    sent: int
    """Messages Vitally accepted so far."""


@dataclass(frozen=True)
class ImportReport:
    """What an import did."""

    read: int
    """Non-blank lines read by this run."""
    sent: int
    """Messages Vitally accepted (0 in a dry run)."""
    valid: int
    """Lines that passed the rules and were queued (in a dry run, the lines that would be sent)."""
    rejected: int
    """Lines rejected, including those rejected by an earlier run of a resumed file."""
    rejected_earlier: int
    """Of ``rejected``, those rejected by an earlier run."""
    skipped: int
    """Lines an earlier run had already dealt with."""
    undelivered: int
    """Messages not delivered for a reason that is not the lines' fault (see ``failure``)."""
    failure: Optional[str]
    """Why delivery failed (401, no answer, retries used up); the import stopped there."""
    delivered: bool
    """Every line this run read was delivered (in a dry run: valid) or rejected, and delivery did not fail."""
    stopped: bool
    """``Importer.stop()`` was called before the import ended."""
    dry_run: bool
    seconds: float
    positions: Tuple[Tuple[str, int], ...]
    """``(file, line)``: every line of the file up to ``line`` was delivered or rejected (progress
    is saved there, unless a dry run or standard input)."""

    @property
    def exit_code(self) -> int:
        """What the command exits with: 0 only when delivered, nothing rejected and not stopped; else 1.

        (After a signal, ``analytics-vitally import`` exits with 128 + the signal's number instead.)
        """
        return 0 if self.delivered and not self.rejected and not self.stopped else 1


def run_import(options: ImportOptions) -> ImportReport:
    """Run an import to its end: ``Importer(options).run()``."""
    return Importer(options).run()


class Importer:
    """One import; ``run()`` it once, ``stop()`` it from any thread or a signal handler.

        importer = Importer(ImportOptions(["events.jsonl"], write_key=token, subdomain="acme"))
        threading.Timer(60, importer.stop).start()   # stop after a minute, progress saved
        report = importer.run()

    Raises ``ConfigurationError`` for a bad option or client setting and ``ImportFilesError``
    for a file it cannot use, before anything is sent (or when progress cannot be saved).
    """

    def __init__(self, options: ImportOptions) -> None:
        self.options = options
        self._stop_requested = False
        self._ran = False
        self._lock = Lock()  # the counters of rejected lines, the rejects file and the failure
        self._pending: Dict[str, Tuple[_Source, int, str]] = {}
        """Where each message queued since the last checkpoint came from, by messageId."""
        self._failure: Optional[str] = None
        self._undelivered = 0
        self._refused = 0
        """Messages Vitally refused (their lines are rejected)."""
        self._valid = 0

    def stop(self) -> None:
        """Deliver what is queued, save the exact position, and end ``run()`` early.

        Only sets a flag, so it is safe from another thread or a signal handler.
        """
        self._stop_requested = True

    def run(self) -> ImportReport:
        """Import every file, then report; it can run only once."""
        if self._ran:
            raise RuntimeError("an Importer runs once: make a new one")
        self._ran = True
        started = time.monotonic()
        self._start()
        try:
            for source in self._sources:
                self._send_file(source)
        except _Stop:
            pass
        finally:
            self._client.shutdown(timeout=5.0 if self._failure or self._stop_requested else None)
            self._rejects.close()
            self._show_progress()
        return self._report(time.monotonic() - started)

    def _start(self) -> None:
        """Check the options, open the files, find where earlier runs stopped: nothing is sent yet."""
        options = self.options
        _check(options)
        self._dry_run = options.dry_run
        self._every = options.checkpoint_every
        self._sources = _sources([os.fspath(name) for name in options.files])
        self._client = self._make_client()
        self._line_limit = max(_LINE_FLOOR, 4 * self._client.settings.max_batch_bytes)
        self._state = _ResumeState(
            None if self._dry_run else options.state, options.restart, _destination(self._client.settings)
        )
        for source in self._sources:
            self._state.prepare(source)
        self._rejects = _Rejects(options.rejects)
        self._rejects.keep_resumed({source.name: source.line for source in self._sources if source.line})
        self._state.save()  # fail now, not after the first thousand lines, if it cannot be written
        self._rate: Optional[_RateLimiter] = None
        if options.rate is not None and not self._dry_run:
            size = self._client.settings.upload_size
            self._rate = _RateLimiter(options.rate, size, self._client.send_now, self._stopping)
        counts = [source.total_lines for source in self._sources]
        self._total = None if None in counts else sum(count or 0 for count in counts)
        self._lines = self._lines_at_start = sum(source.line for source in self._sources)
        self._show_progress()

    def _make_client(self) -> Client:
        options = self.options
        settings = dict(options.client_settings)
        theirs = settings.pop("on_error", None)
        if theirs is not None and not callable(theirs):
            raise ConfigurationError("on_error", "must be a function on_error(exception, messages), or None")

        def on_error(error: Exception, messages: List[Message]) -> None:
            self._on_error(error, messages)
            if theirs is not None:
                theirs(error, messages)

        for name in ("write_key", "subdomain", "host"):
            if getattr(options, name) is not None:
                settings[name] = getattr(options, name)
        least = max(10_000, options.checkpoint_every + MAX_BATCH_MESSAGES)  # a checkpoint's lines fit
        if type(settings.get("max_queue_size", 0)) is int and settings.get("max_queue_size", 0) < least:
            settings["max_queue_size"] = least
        settings.update(send=not options.dry_run, sync_mode=False, thread=options.workers, on_error=on_error)
        # No spool, not even VITALLY_SPOOL's: it would keep what Vitally refused for a later process,
        # and the import would save its progress past lines that were never delivered.
        if settings.get("spool"):
            raise ConfigurationError(
                "spool", "is not for imports: their saved progress resumes them, and a spool would let it pass "
                "lines that were never delivered"
            )
        settings["spool"] = ""
        return Client(**settings)

    def _stopping(self) -> bool:
        return self._stop_requested

    def _show_progress(self) -> None:
        if self.options.on_progress is not None:
            sent = self._client.stats().sent
            self.options.on_progress(ImportProgress(self._lines, self._total, self._lines_at_start, sent))

    # Sending. ------------------------------------------------------------------------

    def _send_file(self, source: _Source) -> None:
        stream: BinaryIO = sys.stdin.buffer if source.path is None else _open_input(source.path)
        try:
            if source.offset:
                stream.seek(source.offset)
            unfinished: Optional[bytes] = None
            limit = self._line_limit
            while raw := stream.readline(limit + 1):  # never more than the limit in memory
                if len(raw) > limit and not raw.endswith(b"\n"):
                    self._reject_long_line(source, stream, raw)
                elif source.path is not None and not raw.endswith(b"\n"):
                    unfinished = raw  # the file's writer may not have finished this line yet
                    break
                else:
                    source.line += 1
                    source.offset += len(raw)
                    source.digest.update(raw)
                    self._send_line(source, raw, source.line)
                self._advance()
                if self._failure is not None:
                    raise _Stop
                if self._stop_requested:
                    log.info(STOPPING)
                    self._checkpoint(source, done=False)
                    raise _Stop
                if source.since_checkpoint >= self._every:
                    self._checkpoint(source, done=False)
            self._checkpoint(source, done=unfinished is None)
            if unfinished is not None:
                # Sent if it reads as JSON (it may be complete), but never checkpointed past:
                # the next run reads it again as the same line number, so its messageId is the same.
                self._send_line(source, unfinished, source.line + 1, unfinished=True)
                self._advance()
                self._client.flush()
                if self._failure is not None:
                    raise _Stop
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()

    def _reject_long_line(self, source: _Source, stream: BinaryIO, head: bytes) -> None:
        """Reject a line longer than any message can be, reading the rest of it in pieces: only its
        start is kept (for the rejects file), so memory stays bounded whatever the file."""
        source.line += 1
        length = len(head)
        source.offset += length
        source.digest.update(head)
        while piece := stream.readline(1 << 20):
            length += len(piece)
            source.offset += len(piece)
            source.digest.update(piece)
            if piece.endswith(b"\n"):
                break
        source.read += 1
        source.since_checkpoint += 1
        start = head[:_SHOWN_START].decode("utf-8", "replace")
        reason = f"line is {length:,} bytes, longer than any message can be ({self._line_limit:,}); its start is kept"
        self._reject(source, source.line, reason, start)

    def _advance(self) -> None:
        self._lines += 1
        if self._lines % PROGRESS_EVERY == 0:
            self._show_progress()

    def _send_line(self, source: _Source, raw: bytes, number: int, unfinished: bool = False) -> None:
        """Check line ``number`` and queue it, or reject it. Any problem of one line rejects only that line.

        An ``unfinished`` line (the last one, without a newline) that is not UTF-8 JSON yet is
        neither sent nor rejected: the next run reads it again.
        """
        try:
            text = raw.decode("utf-8").strip().lstrip("\ufeff")
            if not text:
                return
            value = _read_json(text)
        except (UnicodeDecodeError, InvalidMessageError) as error:
            if unfinished:
                log.warning(
                    "%s:%d: incomplete last line (no newline at the end, not JSON yet), will be read again by the "
                    "next run",
                    source.name,
                    number,
                )
                return
            source.read += 1
            source.since_checkpoint += 1
            if isinstance(error, UnicodeDecodeError):
                reason = f"line is not UTF-8 text ({error.reason} at byte {error.start})"
                self._reject(source, number, reason, raw.decode("utf-8", "replace").strip())
            else:
                self._reject(source, number, str(error), text)
            return
        source.read += 1
        source.since_checkpoint += 1
        if not isinstance(value, dict):
            kind = type(value).__name__
            self._reject(source, number, f"line must be a JSON object (one message per line), not {kind}", text)
            return
        message_id = None
        try:
            if value.get("messageId") is None:
                value["messageId"] = str(uuid5(_MESSAGE_IDS, f"{source.key}\n{number}\n{text}"))
            message_id = str(value["messageId"])
            self._pending[message_id] = (source, number, text)  # before a worker can report on it
            if self._rate is not None:
                self._rate.wait()
            queued, _ = self._client.enqueue(value)
            if not queued:  # the queue is full: let it drain, then queue again
                self._client.flush()
                queued, _ = self._client.enqueue(value)
        except Exception as error:  # the rules, or a value the encoder cannot take: this line only
            if message_id is not None:
                self._pending.pop(message_id, None)
            self._reject(source, number, _problem(error), text)
            return
        self._valid += 1
        if self._rate is not None:
            self._rate.queued()
        if not queued:
            self._reject(source, number, "not queued: the client's queue stayed full", text)

    def _checkpoint(self, source: _Source, done: bool) -> None:
        """Wait for what was queued, then record that every line up to here is delivered or rejected."""
        self._client.flush()
        if self._rate is not None:
            self._rate.restart()
        if self._failure is not None:
            raise _Stop
        self._pending.clear()
        source.since_checkpoint = 0
        source.checkpoint_line = source.line
        if self._dry_run or source.path is None:
            return
        with self._lock:
            self._rejects.flush()
        self._state.record(source, done)

    # Failures (from the client's threads too). -------------------------------------------

    def _on_error(self, error: Exception, messages: List[Message]) -> None:
        status = error.status if isinstance(error, DeliveryError) else None
        origins = [self._pending.get(str(message.get("messageId"))) for message in messages]
        if status in REFUSED_STATUSES:
            with self._lock:
                self._refused += len(messages)
            reason = f"refused by Vitally: {_one_line(str(error))}"
            for origin in origins:
                if origin is not None:
                    source, line, text = origin
                    self._reject(source, line, reason, text)
            return
        first = next((f"{origin[0].name}:{origin[1]}" for origin in origins if origin is not None), "?")
        with self._lock:
            self._undelivered += len(messages)
            if self._failure is None:  # the next batches would fail alike: say it once
                self._failure = _one_line(str(error))
                log.error("%s: not delivered: %s", first, self._failure)

    def _reject(self, source: _Source, line: int, reason: str, text: str) -> None:
        rejection = Rejection(source.name, line, reason, text)
        with self._lock:
            source.rejected += 1
            self._rejects.write(rejection)
            if self.options.on_reject is not None:
                self.options.on_reject(rejection)
            else:
                log.warning("%s", rejection)

    def _report(self, seconds: float) -> ImportReport:
        sources = self._sources
        read = sum(source.read for source in sources)
        rejected = sum(source.rejected for source in sources)
        earlier = sum(source.earlier_rejected for source in sources)
        stats = self._client.stats()
        sent_all = stats.sent == read - (rejected - earlier) and stats.failed == self._refused and not stats.dropped
        delivered = self._failure is None and (self._dry_run or sent_all)
        return ImportReport(
            read=read,
            sent=stats.sent,
            valid=self._valid,
            rejected=rejected,
            rejected_earlier=earlier,
            skipped=sum(source.skipped for source in sources),
            undelivered=self._undelivered,
            failure=self._failure,
            delivered=delivered,
            stopped=self._stop_requested,
            dry_run=self._dry_run,
            seconds=seconds,
            positions=tuple((source.name, source.checkpoint_line) for source in sources),
        )


class _Stop(Exception):
    """The import cannot go on (delivery failed, or stop() was called)."""


def _check(options: ImportOptions) -> None:
    """ConfigurationError, naming the option, for a value out of its range."""
    bounds: Dict[str, Tuple[float, float]] = {
        "workers": (1, MAX_WORKERS),
        "checkpoint_every": (1, MAX_CHECKPOINT_EVERY),
    }
    for name, (low, high) in bounds.items():
        value = getattr(options, name)
        if type(value) is not int or not low <= value <= high:
            raise ConfigurationError(name, f"must be a whole number from {low:,} to {high:,}, not {value!r}")
    rate = options.rate
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not _in(rate)):
        low, high = RATE_LIMITS
        raise ConfigurationError("rate", f"must be from {low:g} to {high:g} requests per second or None, not {rate!r}")
    if isinstance(options.files, (str, bytes)) or not options.files:
        raise ConfigurationError("files", "must be a non-empty list of file names ('-' is standard input)")


def _in(rate: float) -> bool:
    low, high = RATE_LIMITS
    return low <= rate <= high  # also false for nan


def _sources(names: Sequence[str]) -> List[_Source]:
    if list(names).count("-") > 1:
        raise ImportFilesError("- (standard input) can be given once")
    sources = []
    for name in names:
        if name == "-":
            sources.append(_Source(name, None))
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
        sources.append(_Source(name, os.path.realpath(name)))
    return sources


# Reading a line. -----------------------------------------------------------------------


def _read_json(text: str) -> Any:
    """``json.loads(text)``, or InvalidMessageError saying why the line cannot be read."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidMessageError("line", f"is not valid JSON at column {error.colno}: {error.msg}") from None
    except RecursionError:
        raise InvalidMessageError("line", _TOO_DEEP) from None
    except ValueError as error:  # such as a number longer than Python's digit limit
        raise InvalidMessageError("line", f"is not valid JSON: {_one_line(str(error))}") from None
    except Exception as error:  # whatever one line holds, it rejects only that line
        raise InvalidMessageError("line", f"cannot be read: {type(error).__name__}: {_one_line(str(error))}") from None


_TOO_DEEP = f"is nested too deeply (arrays and objects about {sys.getrecursionlimit()} levels deep or more)"


def _problem(error: Exception) -> str:
    """What a rejection says for ``error`` from checking or queueing a line."""
    if isinstance(error, InvalidMessageError):
        return str(error)
    if isinstance(error, RecursionError):
        return f"line {_TOO_DEEP}"
    return f"line cannot be sent: {type(error).__name__}: {_one_line(str(error))}"


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The parts: one input, the resume state, the rejects file, the rate limiter. ------------------


@dataclass
class _Source:
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


class _ResumeState:
    """How far earlier runs got in each file, kept in the state file by real path.

    With no ``path`` (a dry run, or ``state=None``) nothing is read or saved.
    """

    def __init__(self, path: Optional[str], restart: bool, destination: Dict[str, str]) -> None:
        self._path = path
        self._restart = restart
        self._destination = destination
        self._files: Dict[str, Any] = {} if path is None else _load_state(path)

    def prepare(self, source: _Source) -> None:
        """Count the file's lines and skip what an earlier run did, if the file still starts the same."""
        if source.path is None:
            return
        saved = None if self._path is None or self._restart else self._files.get(source.path)
        elsewhere = saved.get("destination") if isinstance(saved, dict) else None
        if elsewhere is not None and elsewhere != self._destination:
            # Skipping what went to another Vitally account (or host) would leave it out of this one.
            raise ImportFilesError(
                f"the progress of {source.name} saved in {self._path} is for another destination "
                f"({_shown(elsewhere)}), not {_shown(self._destination)}: give another --state file, "
                "or --restart to send the whole file here",
                "state",
            )
        problem = None if saved is None else _state_problem(saved)
        if problem is not None:
            log.warning(
                "ignoring the saved progress of %s in %s (%s): sending it from the start",
                source.name,
                self._path,
                problem,
            )
            saved = None
        with _open_input(source.path) as stream:
            if saved is not None and saved["offset"] > 0:
                offset: int = saved["offset"]
                digest = _digest_of(stream, offset)
                if digest is not None and digest.hexdigest() == saved["sha256"]:
                    source.offset, source.digest = offset, digest
                    source.line = source.checkpoint_line = saved["line"]
                    source.skipped = saved["read"]
                    source.rejected = source.earlier_rejected = saved["rejected"]
                else:
                    log.warning("%s changed since the saved progress: sending it from the start", source.name)
                stream.seek(0)
            source.total_lines = _count_lines(stream)

    def record(self, source: _Source, done: bool) -> None:
        """Save that every line of ``source`` up to where it is now was delivered or rejected."""
        if self._path is not None and source.path is not None:
            self._files[source.path] = {**source.state(done), "destination": self._destination}
            self.save()

    def save(self) -> None:
        if self._path is None:
            return
        try:
            _write_atomically(self._path, json.dumps({"version": 1, "files": self._files}, indent=1) + "\n")
        except OSError as error:
            raise ImportFilesError(
                f"cannot save progress to {self._path} ({error}); choose another place for it", "state"
            ) from None


_GZIP_MAGIC = b"\x1f\x8b"
_LINE_FLOOR = 1 << 16
"""Lines up to four times max_batch_bytes (at least this) are read whole; a longer one cannot hold
one message however it is spaced, and is rejected without being held."""
_SHOWN_START = 1000
"""Characters of an over-long line kept in the rejects file."""


def _open_input(path: str) -> BinaryIO:
    """An input file to read lines from; a gzip-compressed one (known by its first two bytes, whatever its
    name) is decompressed as it is read, and its offsets and line numbers are those of the text inside."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    stream = _Gunzipped(path) if compressed else open(path, "rb")  # noqa: SIM115  (the caller closes it)
    return cast(BinaryIO, stream)  # both read bytes by lines, seek and close: BinaryIO enough for this module


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


def _destination(settings: Settings) -> Dict[str, str]:
    """Where an import sends: the endpoint, and a fingerprint of the write key (never the key)."""
    return {"url": settings.url, "key": settings.fingerprint}


def _shown(destination: Any) -> str:
    if not isinstance(destination, dict):
        return _one_line(repr(destination), 80)
    url, key = _one_line(str(destination.get("url")), 120), _one_line(str(destination.get("key")), 20)
    return f"{url}, write key fingerprint {key}"


def _digest_of(stream: BinaryIO, size: int) -> Optional[hashlib._Hash]:
    """SHA-256 of the first ``size`` bytes of ``stream``; None if it is shorter."""
    digest = hashlib.sha256()
    while size > 0:
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            return None
        digest.update(chunk)
        size -= len(chunk)
    return digest


def _count_lines(stream: BinaryIO) -> int:
    count, last = 0, b"\n"
    while chunk := stream.read(1 << 20):
        count += chunk.count(b"\n")
        last = chunk[-1:]
    return count + (last != b"\n")


def _load_state(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            files = json.load(stream).get("files")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError, RecursionError) as error:
        # A half-written state (power loss) only costs resending: message IDs make that safe.
        log.warning("ignoring the unreadable progress file %s: %s", path, _one_line(str(error)))
        return {}
    return files if isinstance(files, dict) else {}


_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def _state_problem(entry: Any) -> Optional[str]:
    """What is wrong with one file's saved progress (``_Source.state``), or None if it can be used."""
    if not isinstance(entry, dict):
        return f"an entry must be an object, not {type(entry).__name__}"
    for name in ("line", "offset", "read", "rejected"):
        value = entry.get(name)
        if type(value) is not int or value < 0:  # bool is an int, but not a count
            return f"{name} must be a whole number of at least 0, not {_one_line(repr(value), 40)}"
    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        return f"sha256 must be 64 hex digits, not {_one_line(repr(sha256), 40)}"
    if "done" in entry and not isinstance(entry["done"], bool):
        return f"done must be true or false, not {_one_line(repr(entry['done']), 40)}"
    if not entry["rejected"] <= entry["read"] <= entry["line"] <= entry["offset"]:
        return "its counts do not fit together (rejected <= read <= line <= offset)"
    return None


def _write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8", opener=_private) as stream:
        stream.write(text)
    os.replace(temporary, path)


def _private(path: str, flags: int) -> int:
    """``open()``'s opener for files that hold personal data (state, rejects): made 0600, as the spool's."""
    return os.open(path, flags, 0o600)


class _Rejects:
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
            _write_atomically(self._path, "".join(kept))
        else:
            os.remove(self._path)

    def write(self, rejection: Rejection) -> None:
        if self._path is None:
            return
        if self._stream is None:
            self._stream = open(self._path, "a", encoding="utf-8", opener=_private)  # noqa: SIM115
        record = {"file": rejection.file, "line": rejection.line, "error": rejection.error, "text": rejection.text}
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class _RateLimiter:
    """At most ``rate`` batch requests per second: messages are queued in bursts of one batch,
    each burst sent at once, one burst per 1/rate seconds."""

    def __init__(self, rate: float, size: int, send_now: Callable[[], None], stopping: Callable[[], bool]) -> None:
        self._interval = 1.0 / rate
        self._size = size
        self._send_now = send_now
        self._stopping = stopping
        self._next = 0.0
        """When (time.monotonic()) the next burst may begin."""
        self._count = 0
        """Messages queued in the burst under way."""
        self._open = False
        """A burst is under way: its time slot is taken."""

    def wait(self) -> None:
        """Before queueing a message: wait for the next slot, unless a burst is under way."""
        if self._open:
            return
        now = time.monotonic()
        while self._next > now and not self._stopping():  # a stop ends the wait (rate 0.01: 100 s)
            time.sleep(min(self._next - now, 0.25))
            now = time.monotonic()
        self._next = max(now, self._next) + self._interval
        self._open = True

    def queued(self) -> None:
        """After queueing a message: a full burst is sent now, as one batch."""
        self._count += 1
        if self._count == self._size:
            self._count = 0
            self._open = False
            self._send_now()

    def restart(self) -> None:
        """The queue was flushed (a checkpoint): the next message begins a new burst."""
        self._count = 0
        self._open = False


PROGRESS_INTERVAL = 5.0
"""Seconds between two progress lines when standard error is not a terminal."""


class ConsoleOutput(logging.Handler):
    """An import's output on standard error, as ``analytics-vitally import`` shows it: rejected lines,
    the importer's log, and progress (a tqdm bar on a terminal, else a line every PROGRESS_INTERVAL
    seconds). Pass ``output.progress`` and ``output.reject`` as the options' callbacks and add it to
    the ``analytics_vitally.importer`` logger. Written from the client's threads too.
    """

    def __init__(self, stopping_hint: str = "") -> None:
        super().__init__(logging.INFO)
        self._stopping_hint = stopping_hint
        self._writing = threading.Lock()
        self._bar: Any = None
        self._begun = False
        self._started = self._shown = time.monotonic()

    def write(self, text: str) -> None:
        with self._writing:
            if self._bar is not None:
                self._bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr, flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        suffix = self._stopping_hint if record.msg == STOPPING else ""
        self.write(record.getMessage() + suffix)

    def reject(self, rejection: Rejection) -> None:
        self.write(str(rejection))  # FILE:LINE: reason

    def progress(self, progress: ImportProgress) -> None:
        if not self._begun:
            self._begun = True
            self._started = self._shown = time.monotonic()
            self._bar = _progress_bar(progress)
        if self._bar is not None:
            self._bar.update(progress.lines - self._bar.n)
        elif time.monotonic() - self._shown >= PROGRESS_INTERVAL:
            self.write(self._line(progress))

    def _line(self, progress: ImportProgress) -> str:
        self._shown = now = time.monotonic()
        done, total = progress.lines, progress.total
        rate = (done - progress.started_at) / max(now - self._started, 1e-9)
        line = f"{done} of {total} lines ({100 * done // total}%)" if total else f"{done} lines"
        line += f", {progress.sent} sent, {rate:.0f} lines/s"
        if total and rate > 0:
            line += f", {(total - done) / rate:.0f}s left"
        return line

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        super().close()


def _progress_bar(progress: ImportProgress) -> Any:
    """A tqdm bar (count, rate, time left) when standard error is a terminal and tqdm is installed; else None."""
    try:
        if not sys.stderr.isatty() or os.get_terminal_size(sys.stderr.fileno()).columns <= 0:
            return None
        tqdm = importlib.import_module("tqdm").tqdm
    except (OSError, ValueError):  # no terminal after all
        return None
    except ImportError:
        print("(pip install 'analytics-vitally[cli]' for a progress bar)", file=sys.stderr)
        return None
    total, initial = progress.total, progress.lines
    return tqdm(total=total, initial=initial, unit=" lines", file=sys.stderr, dynamic_ncols=True, smoothing=0.05)
