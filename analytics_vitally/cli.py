"""The ``analytics-vitally`` command (``python -m analytics_vitally`` does the same).

    analytics-vitally import --subdomain acme events.jsonl     # the token in VITALLY_WRITE_KEY
    analytics-vitally import --dry-run events.jsonl            # check every line, send nothing
    analytics-vitally serve --save received.jsonl              # a local stand-in for Vitally

``import`` reads JSON Lines, one Vitally message per line, checks each with the
library's own rules (``Client._enqueue``) and sends them through a ``Client``'s
batching threads. A ``timestamp`` is parsed as ISO 8601 and sent in Vitally's
form, so history keeps its times; a line without one is sent without one (its
messageId satisfies the rules) and Vitally dates it on arrival. How it stays
correct when it is stopped and run again:

- A line without ``messageId`` gets one derived from the file's name, the line's
  number and its text, so a line sent twice is one message to Vitally.
- Every ``--checkpoint-every`` lines it waits until the client has delivered what
  it queued (``Client.flush``), then records in the ``--state`` file how far it
  got: line, byte offset and the SHA-256 of the bytes before it. A later run skips
  those bytes if they are unchanged, so after a kill at most the lines since the
  last checkpoint are sent again (and Vitally drops them as duplicates).
- Only lines that break the rules, cannot be read (not JSON, nested too deeply...)
  or that Vitally refuses (400, 413) are rejected: reported as FILE:LINE, written to
  the ``--rejects`` file, and checkpointed past. When delivery itself fails (401, no
  answer, retries used up) it stops without checkpointing, so the next run sends
  those lines again.
- A file's last line without a newline may still be being written: it is sent if it
  reads as JSON, but progress is never saved past it, so the next run reads it again
  (with the same line number, so the same derived messageId).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import IO, Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple
from uuid import NAMESPACE_URL, uuid5

from dateutil.parser import isoparse

from .client import Client, Message
from .encoding import format_timestamp
from .errors import ConfigurationError, DeliveryError, InvalidMessageError
from .messages import MAX_BATCH_MESSAGES, RULES
from .settings import MAX_THREADS
from .version import VERSION

DEFAULT_STATE = "analytics-vitally-state.json"
DEFAULT_REJECTS = "analytics-vitally-rejects.jsonl"
DEFAULT_PORT = 8765
PROGRESS_INTERVAL = 5.0
"""Seconds between two progress lines when standard error is not a terminal."""
REFUSED_STATUSES = frozenset({400, 413})
"""Vitally refused the message itself: reject the line and go on (anything else stops the import)."""

_MESSAGE_IDS = uuid5(NAMESPACE_URL, "urn:analytics-vitally:import")
"""Never change it: derived messageIds must stay the same from one version to the next."""
_USAGE_ERROR = 2

MAX_WORKERS = MAX_THREADS
"""``--workers`` at most (the client's ``thread`` limit): at 200 ms per request, 64 requests in
flight carry about 32,000 messages/s, more than the importer parses; more only loads Vitally."""
RATE_LIMITS = (0.01, 1000.0)
"""``--rate`` bounds: one request per 100 s at least; 1000 requests/s (100,000 messages/s) is
already more than the importer can read, so a higher cap would be no cap."""
MAX_CHECKPOINT_EVERY = 100_000
"""``--checkpoint-every`` at most: the lines since the last checkpoint are held in memory (to
name a line Vitally refuses) and resent after a kill."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        return _Import(args).run()
    except ConfigurationError as error:
        option = "workers" if error.setting == "thread" else error.setting.replace("_", "-")
        return _fail(f"{error} (option --{option})")
    except _UsageError as error:
        return _fail(str(error))


def _fail(problem: str) -> int:
    print(f"analytics-vitally: error: {problem}", file=sys.stderr)
    return _USAGE_ERROR


class _UsageError(Exception):
    """A problem with the command line or its files, found before anything was sent."""


def _int_from(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def integer(text: str) -> int:
        value = int(text)  # ValueError: argparse says "invalid integer value"
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, not {text}")
        return value

    return integer


def _rate(text: str) -> float:
    value = float(text)
    low, high = RATE_LIMITS
    if not low <= value <= high:  # also false for nan
        raise argparse.ArgumentTypeError(
            f"must be from {low:g} to {high:g} requests per second, not {text} (leave --rate out for no cap)"
        )
    return value


_rate.__name__ = "number"  # argparse names the type in "invalid number value"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analytics-vitally",
        description="Import JSON Lines into Vitally's Analytics API, or run a local stand-in for it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    command = commands.add_parser(
        "import",
        help="send JSON Lines files of Vitally messages",
        description="Send JSON Lines files, one Vitally message per line (camelCase fields and type as in "
        "Vitally's API). Exit code 0 only when every line was delivered; 1 when some were not; 2 on a usage error.",
    )
    command.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines file; - reads standard input")
    command.add_argument("--write-key", help="the Analytics API token from Vitally (default: $VITALLY_WRITE_KEY)")
    command.add_argument("--subdomain", help="acme for https://acme.vitally.io (default: $VITALLY_SUBDOMAIN)")
    command.add_argument(
        "--host", help="send to this base URL instead, such as http://127.0.0.1:8765 (default: $VITALLY_HOST)"
    )
    command.add_argument(
        "--workers",
        type=_int_from(1, MAX_WORKERS),
        default=4,
        metavar="N",
        help=f"requests in flight at once, 1 to {MAX_WORKERS} (default: 4)",
    )
    command.add_argument(
        "--rate",
        type=_rate,
        metavar="N",
        help=f"at most N batch requests per second, {RATE_LIMITS[0]:g} to {RATE_LIMITS[1]:g} (default: no cap; "
        "the Analytics API's limit is not documented; 429 answers are honoured either way)",
    )
    command.add_argument(
        "--rejects",
        default=DEFAULT_REJECTS,
        metavar="FILE",
        help=f"where rejected lines go (default: {DEFAULT_REJECTS})",
    )
    command.add_argument(
        "--state", default=DEFAULT_STATE, metavar="FILE", help=f"where progress is saved (default: {DEFAULT_STATE})"
    )
    command.add_argument(
        "--checkpoint-every",
        type=_int_from(1, MAX_CHECKPOINT_EVERY),
        default=1000,
        metavar="N",
        help=f"save progress every N lines, up to {MAX_CHECKPOINT_EVERY:,}; at most N lines are sent again after "
        "a kill (default: 1000)",
    )
    command.add_argument("--restart", action="store_true", help="ignore saved progress: send the files from the start")
    command.add_argument("--dry-run", action="store_true", help="check every line, send nothing, save no progress")
    command.add_argument("-v", "--verbose", action="store_true", help="log every request to standard error")

    command = commands.add_parser(
        "serve",
        help="run a local endpoint that answers like Vitally's batch API",
        description="Answer POST /analytics/v1/batch like Vitally (200, 400 naming the problems, 401); "
        "GET /messages lists what was accepted. Runs until Ctrl-C.",
    )
    command.add_argument(
        "--port", type=_int_from(0, 65535), default=DEFAULT_PORT, help=f"0 picks a free port (default: {DEFAULT_PORT})"
    )
    command.add_argument("--token", default="test-token", help="the write key to accept (default: test-token)")
    command.add_argument("--save", metavar="FILE", help="append every accepted message to FILE as JSON Lines")
    command.add_argument("-q", "--quiet", action="store_true", help="do not print each accepted message")
    return parser


# import -------------------------------------------------------------------------------


def _wire_name(field: str) -> str:
    return field


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


def _message(value: Any, text: str, source: str, number: int) -> Message:
    """The message that line ``number`` of ``source`` (a file's name) holds, ready for ``Client._enqueue``.

    ``value`` is the line's JSON and ``text`` the line. Top-level nulls are left out and an
    absent ``traits``/``properties`` becomes ``{}`` (as the client's methods do for None), an
    ISO 8601 ``timestamp`` is rewritten in Vitally's form, and a missing ``messageId`` is
    derived from ``source``, ``number`` and ``text``. Raises InvalidMessageError.
    """
    if not isinstance(value, dict):
        raise InvalidMessageError("line", f"must be a JSON object (one message per line), not {type(value).__name__}")
    message = {key: item for key, item in value.items() if item is not None}
    kind = message.get("type")
    rule = RULES.get(kind) if isinstance(kind, str) else None
    if rule is not None:
        for key in rule.object_fields:
            if key not in message:
                message[key] = {}
    timestamp = message.get("timestamp")
    if isinstance(timestamp, str):
        message["timestamp"] = _timestamp(timestamp)
    if "messageId" not in message:
        message["messageId"] = str(uuid5(_MESSAGE_IDS, f"{source}\n{number}\n{text}"))
    return message


_VITALLY_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.\d{3}Z\Z")


def _timestamp(text: str) -> str:
    """An ISO 8601 time as Vitally takes it (``encoding.format_timestamp``); InvalidMessageError if it is none."""
    try:
        exact = _VITALLY_TIME.match(text)
        if exact:  # already in Vitally's form: only check that the date exists (isoparse is the slow part)
            year, month, day, hour, minute, second = map(int, exact.groups())
            datetime(year, month, day, hour, minute, second)
            return text
        return format_timestamp(isoparse(text))
    except (ValueError, OverflowError):
        raise InvalidMessageError(
            "timestamp", f"is not a valid ISO 8601 time (such as 2018-05-15T12:31:12.123Z): {text!r}"
        ) from None


@dataclass
class _Source:
    """One input and how far it got."""

    name: str
    """As given on the command line; used in FILE:LINE."""
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


class _Stop(Exception):
    """The import cannot go on (delivery failed, or a signal came)."""


class _Import:
    """One run of ``analytics-vitally import``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry_run: bool = args.dry_run
        self.every: int = args.checkpoint_every
        self.sources = _sources(args.files)
        self.client = Client(
            args.write_key,
            subdomain=args.subdomain,
            host=args.host,
            send=not self.dry_run,
            thread=args.workers,
            on_error=self._on_error,
            max_queue_size=max(10_000, self.every + MAX_BATCH_MESSAGES),
            debug=args.verbose,
        )
        if not args.verbose:  # every failure is reported here, by line
            logging.getLogger("analytics_vitally").setLevel(logging.CRITICAL)
        self.saved: Dict[str, Any] = {} if self.dry_run else _load_state(args.state)
        self.pending: Dict[str, Tuple[_Source, int, str]] = {}
        """Where each message queued since the last checkpoint came from, by messageId."""
        self.lock = threading.Lock()
        self.rejects: Optional[IO[str]] = None
        self.failure: Optional[str] = None
        """Why delivery failed (not a line's fault): the import stops without saving progress past it."""
        self.undelivered = 0
        self.signal = 0
        self.valid = 0
        self.rate_interval = None if args.rate is None else 1.0 / args.rate
        self.next_request = 0.0
        self.burst = 0
        self.progress = _Progress()

    def run(self) -> int:
        started = time.monotonic()
        self._handle_signals()
        for source in self.sources:
            self._prepare(source)
        self._prepare_rejects()
        if not self.dry_run:
            self._save_state()  # fail now, not after the first thousand lines, if it cannot be written
        self.progress = _progress(self._total_lines(), sum(source.line for source in self.sources), self._sent)
        try:
            for source in self.sources:
                self._send_file(source)
        except _Stop:
            pass
        finally:
            self.client.shutdown(timeout=5.0 if self.failure or self.signal else None)
            self.progress.close()
            if self.rejects is not None:
                self.rejects.close()
        return self._summary(time.monotonic() - started)

    # Before sending. ---------------------------------------------------------------------

    def _prepare(self, source: _Source) -> None:
        """Count the file's lines and find where an earlier run stopped, if it still starts the same."""
        if source.path is None:
            return
        saved = None if self.dry_run or self.args.restart else self.saved.get(source.path)
        problem = None if saved is None else _state_problem(saved)
        if problem is not None:
            print(
                f"ignoring the saved progress of {source.name} in {self.args.state} ({problem}): "
                "sending it from the start",
                file=sys.stderr,
            )
            saved = None
        with open(source.path, "rb") as stream:
            if saved is not None and saved["offset"] > 0:
                offset: int = saved["offset"]
                digest = hashlib.sha256()
                remaining = offset
                while remaining > 0:
                    chunk = stream.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    digest.update(chunk)
                    remaining -= len(chunk)
                if remaining == 0 and digest.hexdigest() == saved["sha256"]:
                    source.offset, source.digest = offset, digest
                    source.line = source.checkpoint_line = saved["line"]
                    source.skipped = saved["read"]
                    source.rejected = source.earlier_rejected = saved["rejected"]
                else:
                    print(f"{source.name} changed since the saved progress: sending it from the start", file=sys.stderr)
                stream.seek(0)
            source.total_lines = _count_lines(stream)

    def _prepare_rejects(self) -> None:
        """Keep the rejects of the lines being skipped; the lines sent now are judged again."""
        kept: List[str] = []
        resumed = {source.name: source.line for source in self.sources if source.line}
        try:
            with open(self.args.rejects, encoding="utf-8") as old:
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
            raise _UsageError(f"cannot read the rejects file {self.args.rejects}: {error}") from None
        if kept:
            _write_atomically(self.args.rejects, "".join(kept))
        else:
            os.remove(self.args.rejects)

    def _total_lines(self) -> Optional[int]:
        counts = [source.total_lines for source in self.sources]
        return None if None in counts else sum(count or 0 for count in counts)

    def _handle_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._on_signal)

    def _on_signal(self, number: int, frame: Optional[FrameType]) -> None:
        if self.signal:
            os._exit(128 + number)  # a second Ctrl-C: quit now; the next run resends since the checkpoint
        self.signal = number

    # Sending. --------------------------------------------------------------------------

    def _send_file(self, source: _Source) -> None:
        stream: BinaryIO = sys.stdin.buffer if source.path is None else open(source.path, "rb")  # noqa: SIM115
        try:
            if source.offset:
                stream.seek(source.offset)
            unfinished: Optional[bytes] = None
            for raw in stream:
                if source.path is not None and not raw.endswith(b"\n"):
                    unfinished = raw  # the file's writer may not have finished this line yet
                    break
                source.line += 1
                source.offset += len(raw)
                source.digest.update(raw)
                self._send_line(source, raw, source.line)
                self.progress.advance()
                if self.failure is not None:
                    raise _Stop
                if self.signal:
                    self.progress.write("stopping: delivering what was queued and saving progress (Ctrl-C again quits)")
                    self._checkpoint(source, done=False)
                    raise _Stop
                if source.since_checkpoint >= self.every:
                    self._checkpoint(source, done=False)
            self._checkpoint(source, done=unfinished is None)
            if unfinished is not None:
                # Sent if it reads as JSON (it may be complete), but never checkpointed past:
                # the next run reads it again as the same line number, so its messageId is the same.
                self._send_line(source, unfinished, source.line + 1, unfinished=True)
                self.progress.advance()
                self.client.flush()
                if self.failure is not None:
                    raise _Stop
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()

    def _send_line(self, source: _Source, raw: bytes, number: int, unfinished: bool = False) -> None:
        """Check line ``number`` and queue it, or reject it. Any problem of one line rejects only that line.

        An ``unfinished`` line (the last one, without a newline) that is not UTF-8 JSON yet is
        neither sent nor rejected: the next run reads it again.
        """
        try:
            text = raw.decode("utf-8").strip().lstrip("\ufeff")
        except UnicodeDecodeError as error:
            if unfinished:
                self._wait_for_rest(source, number)
                return
            source.read += 1
            source.since_checkpoint += 1
            reason = f"line is not UTF-8 text ({error.reason} at byte {error.start})"
            self._reject(source, number, reason, raw.decode("utf-8", "replace").strip())
            return
        if not text:
            return
        try:
            value = _read_json(text)
        except InvalidMessageError as error:
            if unfinished:
                self._wait_for_rest(source, number)
                return
            source.read += 1
            source.since_checkpoint += 1
            self._reject(source, number, str(error), text)
            return
        source.read += 1
        source.since_checkpoint += 1
        try:
            message = _message(value, text, source.key, number)
            message_id = str(message["messageId"])
        except Exception as error:  # InvalidMessageError, or OverflowError, RecursionError...
            self._reject(source, number, _problem(error), text)
            return
        self.pending[message_id] = (source, number, text)  # before a worker can report on it
        self._wait_for_rate()
        try:
            queued, _ = self.client._enqueue(message, _wire_name)
            if not queued:  # the queue is full: let it drain, then queue again
                self.client.flush()
                queued, _ = self.client._enqueue(message, _wire_name)
        except Exception as error:  # as above: the rules, or a value the encoder cannot take
            self.pending.pop(message_id, None)
            self._reject(source, number, _problem(error), text)
            return
        self.valid += 1
        self._count_for_rate()
        if not queued:
            self._reject(source, number, "not queued: the client's queue stayed full", text)

    def _wait_for_rest(self, source: _Source, number: int) -> None:
        self.progress.write(
            f"{source.name}:{number}: incomplete last line (no newline at the end, not JSON yet), "
            "will be read again by the next run"
        )

    # With --rate, messages are queued in bursts of one batch, one burst per 1/rate seconds.

    def _wait_for_rate(self) -> None:
        if self.rate_interval is None or self.dry_run or self.burst:
            return
        now = time.monotonic()
        while self.next_request > now and not self.signal:  # a signal ends the wait (--rate 0.01: 100 s)
            time.sleep(min(self.next_request - now, 0.25))
            now = time.monotonic()
        self.next_request = max(now, self.next_request) + self.rate_interval

    def _count_for_rate(self) -> None:
        if self.rate_interval is None or self.dry_run:
            return
        self.burst += 1
        if self.burst == self.client.settings.upload_size:
            self.burst = 0
            self.client.flush(timeout=0)  # send the burst now, as one batch, without waiting for it

    def _checkpoint(self, source: _Source, done: bool) -> None:
        """Wait for what was queued, then record that every line up to here is delivered or rejected."""
        self.client.flush()
        self.burst = 0
        if self.failure is not None:
            raise _Stop
        self.pending.clear()
        source.since_checkpoint = 0
        source.checkpoint_line = source.line
        if self.dry_run or source.path is None:
            return
        with self.lock:
            if self.rejects is not None:
                self.rejects.flush()
        self.saved[source.path] = source.state(done)
        self._save_state()

    def _save_state(self) -> None:
        try:
            _write_atomically(self.args.state, json.dumps({"version": 1, "files": self.saved}, indent=1) + "\n")
        except OSError as error:
            raise _UsageError(
                f"cannot save progress to {self.args.state} ({error}); choose another place with --state"
            ) from None

    def _sent(self) -> int:
        return self.client.stats().sent

    # Failures (from the client's threads too). -----------------------------------------

    def _on_error(self, error: Exception, messages: List[Message]) -> None:
        status = error.status if isinstance(error, DeliveryError) else None
        origins = [self.pending.get(str(message.get("messageId"))) for message in messages]
        if status in REFUSED_STATUSES:
            reason = f"refused by Vitally: {_one_line(str(error))}"
            for origin in origins:
                if origin is not None:
                    source, line, text = origin
                    self._reject(source, line, reason, text)
            return
        first = next((f"{origin[0].name}:{origin[1]}" for origin in origins if origin is not None), "?")
        with self.lock:
            self.undelivered += len(messages)
            if self.failure is None:  # the next batches would fail alike: say it once
                self.failure = _one_line(str(error))
                self.progress.write(f"{first}: not delivered: {self.failure}")

    def _reject(self, source: _Source, line: int, reason: str, text: str) -> None:
        with self.lock:
            source.rejected += 1
            self.progress.write(f"{source.name}:{line}: {reason}")
            if self.rejects is None:
                self.rejects = open(self.args.rejects, "a", encoding="utf-8")  # noqa: SIM115
            record = {"file": source.name, "line": line, "error": reason, "text": text}
            self.rejects.write(json.dumps(record, ensure_ascii=False) + "\n")

    # The end. ----------------------------------------------------------------------------

    def _summary(self, seconds: float) -> int:
        read = sum(source.read for source in self.sources)
        skipped = sum(source.skipped for source in self.sources)
        rejected = sum(source.rejected for source in self.sources)
        earlier = sum(source.earlier_rejected for source in self.sources)
        stats = self.client.stats()
        sent = f"sent 0 (dry run: {self.valid} valid)" if self.dry_run else f"sent {stats.sent}"
        rejected_text = f"rejected {rejected}" + (f" ({earlier} by an earlier run)" if earlier else "")
        rate = f", {read / seconds:.0f} lines/s" if seconds > 0 and read else ""
        print(f"read {read}, {sent}, {rejected_text}, skipped {skipped} in {seconds:.1f}s{rate}", flush=True)
        if rejected:
            print(f"rejected lines are in {self.args.rejects}", file=sys.stderr)
        if self.failure is not None or self.signal:
            where = ", ".join(f"{source.name}:{source.checkpoint_line}" for source in self.sources)
            why = f"{self.undelivered} message(s) not delivered" if self.failure else "stopped by a signal"
            saved = "nothing saved (dry run)" if self.dry_run else f"progress saved in {self.args.state} up to {where}"
            print(f"{why}; {saved}; run the same command again to go on", file=sys.stderr)
        if self.signal and not self.failure:
            return 128 + self.signal
        delivered = stats.sent == read - (rejected - earlier) and stats.failed == 0 and stats.dropped == 0
        complete = self.failure is None and rejected == 0 and (self.dry_run or delivered)
        return 0 if complete else 1


def _sources(names: Sequence[str]) -> List[_Source]:
    if list(names).count("-") > 1:
        raise _UsageError("- (standard input) can be given once")
    sources = []
    for name in names:
        if name == "-":
            sources.append(_Source(name, None))
            continue
        try:
            with open(name, "rb"):
                pass
        except OSError as error:
            raise _UsageError(f"cannot read {name}: {error.strerror}") from None
        sources.append(_Source(name, os.path.realpath(name)))
    return sources


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
        print(f"ignoring the unreadable progress file {path}: {_one_line(str(error))}", file=sys.stderr)
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
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, path)


def _problem(error: Exception) -> str:
    """What FILE:LINE says for ``error`` from checking or queueing a line."""
    if isinstance(error, InvalidMessageError):
        return str(error)
    if isinstance(error, RecursionError):
        return f"line {_TOO_DEEP}"
    return f"line cannot be sent: {type(error).__name__}: {_one_line(str(error))}"


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Progress. ----------------------------------------------------------------------------


class _Progress:
    """Progress on standard error."""

    def advance(self) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _LineProgress(_Progress):
    """A line every PROGRESS_INTERVAL seconds, for logs and pipes."""

    def __init__(self, total: Optional[int], done: int, sent: Callable[[], int]) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.sent = sent
        self.started = self.last = time.monotonic()

    def advance(self) -> None:
        self.done += 1
        if time.monotonic() - self.last >= PROGRESS_INTERVAL:
            self.report()

    def report(self) -> None:
        self.last = now = time.monotonic()
        rate = (self.done - self.start_done) / max(now - self.started, 1e-9)
        line = f"{self.done} lines"
        if self.total:
            line = f"{self.done} of {self.total} lines ({100 * self.done // self.total}%)"
        line += f", {self.sent()} sent, {rate:.0f} lines/s"
        if self.total and rate > 0:
            line += f", {(self.total - self.done) / rate:.0f}s left"
        self.write(line)


class _BarProgress(_Progress):
    """A tqdm bar: count, rate and ETA."""

    def __init__(self, tqdm: Any, total: Optional[int], done: int) -> None:
        self.bar = tqdm(total=total, initial=done, unit=" lines", file=sys.stderr, dynamic_ncols=True, smoothing=0.05)

    def advance(self) -> None:
        self.bar.update(1)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _progress(total: Optional[int], done: int, sent: Callable[[], int]) -> _Progress:
    if _terminal_width() > 0:
        try:
            return _BarProgress(importlib.import_module("tqdm").tqdm, total, done)
        except ImportError:
            print("(pip install 'analytics-vitally[cli]' for a progress bar)", file=sys.stderr)
    return _LineProgress(total, done, sent)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns if sys.stderr.isatty() else 0
    except (OSError, ValueError):
        return 0


# serve --------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from .testing import Receiver

    printing = threading.Lock()

    def echo(message: Dict[str, Any]) -> None:
        if not args.quiet:
            with printing:
                print(json.dumps(message, ensure_ascii=False, separators=(",", ":")), flush=True)

    try:
        save = open(args.save, "a", encoding="utf-8") if args.save else None  # noqa: SIM115
        receiver = Receiver(args.token, port=args.port, save=save, echo=echo)
    except OSError as error:
        raise _UsageError(str(error)) from None
    stop = threading.Event()

    def on_signal(number: int, frame: Optional[FrameType]) -> None:
        stop.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, on_signal)
    receiver.start()
    print(
        f"serving Vitally's batch API on {receiver.url} (token {args.token}); Ctrl-C stops\n"
        f"try: analytics-vitally import --host {receiver.url} --write-key {args.token} FILE",
        flush=True,
    )
    while not stop.wait(1.0):
        pass
    receiver.stop()
    if save is not None:
        save.close()
    print(f"stopped after accepting {len(receiver.messages)} message(s)", flush=True)
    return 0


__all__ = ["main"]
