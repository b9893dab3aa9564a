"""The import itself: its options, progress and report, and the ``Importer`` that reads, checks,
sends and checkpoints (the package's docstring says how it stays correct when stopped)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from threading import Lock
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from uuid import NAMESPACE_URL, uuid5

from ..client import Client, Message
from ..errors import ConfigurationError, DeliveryError, InvalidMessageError
from ..messages import MAX_BATCH_MESSAGES
from ..settings import MAX_THREADS
from .common import log, one_line
from .rate import RATE_LIMITS, RateLimiter, within_limits
from .rejects import Rejection, Rejects
from .sources import Source, open_input, sources_from
from .state import ResumeState, destination_of

DEFAULT_STATE = "analytics-vitally-state.json"
"""Where progress is saved unless ``state`` (``--state``) says otherwise: in the current directory."""
DEFAULT_REJECTS = "analytics-vitally-rejects.jsonl"
"""Where rejected lines are written unless ``rejects`` (``--rejects``) says otherwise: in the current directory."""
MAX_WORKERS = MAX_THREADS
"""``workers`` at most (the client's ``thread`` limit): at 200 ms per request, 64 requests in
flight carry about 32,000 messages/s, more than the importer parses; more only loads Vitally."""
MAX_CHECKPOINT_EVERY = 100_000
"""``checkpoint_every`` at most: the lines since the last checkpoint are held in memory (to
name a line Vitally refuses) and resent after a kill."""
PROGRESS_EVERY = 100
"""Lines between two calls of ``on_progress``."""
REFUSED_STATUSES = frozenset({400, 413})
"""Vitally refused the message itself: reject the line and go on (anything else stops the import)."""
STOPPING = "stopping: delivering what was queued and saving progress"
"""What the log says when ``Importer.stop()`` is noticed."""

_LINE_FLOOR = 1 << 16
"""Lines up to four times max_batch_bytes (at least this) are read whole; a longer one cannot hold
one message however it is spaced, and is rejected without being held."""
_SHOWN_START = 1000
"""Characters of an over-long line kept in the rejects file."""
_MESSAGE_IDS = uuid5(NAMESPACE_URL, "urn:analytics-vitally:import")
"""Never change it: derived messageIds must stay the same from one version to the next."""


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
    filtered: int = 0
    """Lines the client's ``before_send`` dropped, or failed on (each logged at ERROR): not sent, not rejected."""

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
        self._pending: Dict[str, Tuple[Source, int, str]] = {}
        """Where each message queued since the last checkpoint came from, by messageId."""
        self._failure: Optional[str] = None
        self._undelivered = 0
        self._refused = 0
        self._filtered = 0  # lines before_send kept from being sent (the client's stats().filtered)
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
        return self.report(time.monotonic() - started)

    def _start(self) -> None:
        """Check the options, open the files, find where earlier runs stopped: nothing is sent yet."""
        options = self.options
        _check(options)
        self._dry_run = options.dry_run
        self._every = options.checkpoint_every
        self._sources = sources_from([os.fspath(name) for name in options.files])
        self._client = self._make_client()
        self._line_limit = max(_LINE_FLOOR, 4 * self._client.settings.max_batch_bytes)
        self._state = ResumeState(
            None if self._dry_run else options.state, options.restart, destination_of(self._client.settings)
        )
        for source in self._sources:
            self._state.prepare(source)
        self._rejects = Rejects(options.rejects)
        self._rejects.keep_resumed({source.name: source.line for source in self._sources if source.line})
        self._state.save()  # fail now, not after the first thousand lines, if it cannot be written
        self._rate: Optional[RateLimiter] = None
        if options.rate is not None and not self._dry_run:
            size = self._client.settings.upload_size
            self._rate = RateLimiter(options.rate, size, self._client.send_now, self._stopping)
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
                "spool",
                "is not for imports: their saved progress resumes them, and a spool would let it pass "
                "lines that were never delivered",
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

    def _send_file(self, source: Source) -> None:
        stream: BinaryIO = sys.stdin.buffer if source.path is None else open_input(source.path)
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

    def _reject_long_line(self, source: Source, stream: BinaryIO, head: bytes) -> None:
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

    def _send_line(self, source: Source, raw: bytes, number: int, unfinished: bool = False) -> None:
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
            filtered = not queued and self._filtered_out()
            if not queued and not filtered:  # the queue is full: let it drain, then queue again
                self._client.flush()
                queued, _ = self._client.enqueue(value)
                filtered = not queued and self._filtered_out()
            if filtered:  # before_send left it out (or failed on it, logged): neither sent nor rejected
                self._pending.pop(message_id, None)
                return
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

    def _filtered_out(self) -> bool:
        """Whether the call that just returned False was before_send's doing (this thread alone calls)."""
        filtered = self._client.stats().filtered
        if filtered == self._filtered:
            return False
        self._filtered = filtered
        return True

    def _checkpoint(self, source: Source, done: bool) -> None:
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
            reason = f"refused by Vitally: {one_line(str(error))}"
            for origin in origins:
                if origin is not None:
                    source, line, text = origin
                    self._reject(source, line, reason, text)
            return
        first = next((f"{origin[0].name}:{origin[1]}" for origin in origins if origin is not None), "?")
        with self._lock:
            self._undelivered += len(messages)
            if self._failure is None:  # the next batches would fail alike: say it once
                self._failure = one_line(str(error))
                log.error("%s: not delivered: %s", first, self._failure)

    def _reject(self, source: Source, line: int, reason: str, text: str) -> None:
        rejection = Rejection(source.name, line, reason, text)
        with self._lock:
            source.rejected += 1
            self._rejects.write(rejection)
            if self.options.on_reject is not None:
                self.options.on_reject(rejection)
            else:
                log.warning("%s", rejection)

    def report(self, seconds: float) -> ImportReport:
        """The counts so far, for a run that took ``seconds``: what ``run()`` returns at its end, and
        what a second Ctrl-C prints (it only reads counters, so a signal handler may call it)."""
        sources = self._sources
        read = sum(source.read for source in sources)
        rejected = sum(source.rejected for source in sources)
        earlier = sum(source.earlier_rejected for source in sources)
        stats = self._client.stats()
        expected = read - (rejected - earlier) - self._filtered
        sent_all = stats.sent == expected and stats.failed == self._refused and not stats.dropped
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
            filtered=self._filtered,
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
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not within_limits(rate)):
        low, high = RATE_LIMITS
        raise ConfigurationError("rate", f"must be from {low:g} to {high:g} requests per second or None, not {rate!r}")
    if isinstance(options.files, (str, bytes)) or not options.files:
        raise ConfigurationError("files", "must be a non-empty list of file names ('-' is standard input)")


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
        raise InvalidMessageError("line", f"is not valid JSON: {one_line(str(error))}") from None
    except Exception as error:  # whatever one line holds, it rejects only that line
        raise InvalidMessageError("line", f"cannot be read: {type(error).__name__}: {one_line(str(error))}") from None


_TOO_DEEP = f"is nested too deeply (arrays and objects about {sys.getrecursionlimit()} levels deep or more)"


def _problem(error: Exception) -> str:
    """What a rejection says for ``error`` from checking or queueing a line."""
    if isinstance(error, InvalidMessageError):
        return str(error)
    if isinstance(error, RecursionError):
        return f"line {_TOO_DEEP}"
    return f"line cannot be sent: {type(error).__name__}: {one_line(str(error))}"
