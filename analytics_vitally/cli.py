"""The ``analytics-vitally`` command (``python -m analytics_vitally`` does the same).

    analytics-vitally import --subdomain acme events.jsonl     # the token in VITALLY_WRITE_KEY
    analytics-vitally import --dry-run events.jsonl            # check every line, send nothing
    analytics-vitally serve --save received.jsonl              # a local stand-in for Vitally
    analytics-vitally doctor                                   # why is nothing arriving?

``import`` is a shell around ``analytics_vitally.importer`` (the engine, and its
Python API): it parses the options, shows progress and rejected lines on standard
error, turns Ctrl-C and SIGTERM into ``Importer.stop()``, and prints the summary.
``serve`` runs ``analytics_vitally.testing.Receiver`` until Ctrl-C. ``doctor`` prints
``analytics_vitally.diagnosis``'s report and exits 0 only when a message would be delivered.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Sequence

from .console import ConsoleOutput
from .diagnosis import TEST_EVENT, TEST_USER, from_command_line
from .durable import send_leftovers
from .errors import ConfigurationError
from .importer import (
    DEFAULT_REJECTS,
    DEFAULT_STATE,
    MAX_CHECKPOINT_EVERY,
    MAX_WORKERS,
    RATE_LIMITS,
    Importer,
    ImportFilesError,
    ImportOptions,
    ImportReport,
)
from .settings import Settings
from .spool import DEAD_LETTER
from .spool import inspect as inspect_spool
from .spool import rekey as rekey_spool
from .spool.report import LEFT_ORDER, left_text
from .version import VERSION

DEFAULT_PORT = 8765
_USAGE_ERROR = 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "spool":
            return _spool(args)
        if args.command == "doctor":
            return _doctor(args)
        return _import(args)
    except ConfigurationError as error:
        option = "workers" if error.setting == "thread" else error.setting.replace("_", "-")
        return _fail(f"{str(error).replace(', or set send=False', '')} (option --{option})")  # no such option here
    except ImportFilesError as error:
        return _fail(f"{error} (option --{error.option})" if error.option else str(error))


def _fail(problem: str) -> int:
    print(f"analytics-vitally: error: {problem}", file=sys.stderr)
    return _USAGE_ERROR


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
        description="Import JSON Lines into Vitally's Analytics API, check why nothing arrives, or run a local "
        "stand-in for it.",
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
    _target_options(command)
    command.add_argument(
        "--workers",
        type=_int_from(1, MAX_WORKERS),
        default=ImportOptions.workers,
        metavar="N",
        help=f"requests in flight at once, 1 to {MAX_WORKERS} (default: {ImportOptions.workers})",
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
        default=ImportOptions.checkpoint_every,
        metavar="N",
        help=f"save progress every N lines, up to {MAX_CHECKPOINT_EVERY:,}; at most N lines are sent again after "
        f"a kill (default: {ImportOptions.checkpoint_every})",
    )
    command.add_argument(
        "--before-send",
        type=_function,
        metavar="MODULE:FUNCTION",
        help="pass each message through this function first, as the client's before_send setting: it returns the "
        "message to send, or None to leave it out (the current directory is searched for MODULE)",
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

    command = commands.add_parser(
        "spool",
        help="show what a spool directory holds, or send what dead processes left in it",
        description="Without --send: print what DIR holds (its first line is 'N messages pending'). With --send: "
        "deliver what processes that are gone left in DIR for this write key and endpoint, and exit 0 only when "
        "no message is left in DIR; 1 names what is left and why.",
    )
    command.add_argument("directory", metavar="DIR", help="the spool directory (the client's spool setting)")
    command.add_argument("--send", action="store_true", help="deliver what dead processes left")
    command.add_argument(
        "--rekey",
        action="store_true",
        help="with --send: also send, with this write key, what was written for this same endpoint under another "
        "write key (after a key rotation); their files become this key's. Files for another endpoint are never sent",
    )
    _target_options(command)
    command.add_argument("-v", "--verbose", action="store_true", help="log every request to standard error")

    command = commands.add_parser(
        "doctor",
        help="check end to end that a message would reach Vitally, and say what stops it",
        description="Check the settings (and where each came from), the endpoint, the proxy, DNS, TCP, TLS, "
        "whether Vitally accepts the write key (one empty batch, which creates no data) and the spool; print "
        "plain text to paste into a support ticket (never the write key). Exit code 0 only when a message would "
        "be delivered; 1 otherwise; 2 on a usage error.",
    )
    _target_options(command)
    command.add_argument("--spool", metavar="DIR", help="the spool directory to check (default: $VITALLY_SPOOL)")
    command.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="for each connection and request (default: 10)"
    )
    command.add_argument(
        "--send-test",
        action="store_true",
        help=f"also send one real track event, {TEST_EVENT!r}, and say whether Vitally accepted it",
    )
    command.add_argument(
        "--test-user", default=TEST_USER, metavar="ID", help=f"the test event's userId (default: {TEST_USER})"
    )
    return parser


def _target_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--write-key", help="the Analytics API token from Vitally (default: $VITALLY_WRITE_KEY)")
    command.add_argument("--subdomain", help="acme for https://acme.vitally.io (default: $VITALLY_SUBDOMAIN)")
    command.add_argument(
        "--host", help="send to this base URL instead, e.g. http://127.0.0.1:8765 (default: $VITALLY_HOST)"
    )


# import -------------------------------------------------------------------------------


_OPTION_NAMES = frozenset(field.name for field in dataclasses.fields(ImportOptions))
"""The options of ``import`` whose argparse names are fields of ImportOptions (files, workers...)."""


def _import(args: argparse.Namespace) -> int:
    output = ConsoleOutput()
    named = {name: value for name, value in vars(args).items() if name in _OPTION_NAMES}
    settings: Dict[str, Any] = {"debug": args.verbose}
    if args.before_send is not None:
        settings["before_send"] = args.before_send
    options = ImportOptions(**named, client_settings=settings, on_progress=output.progress, on_reject=output.reject)
    importer = Importer(options)
    received = _stop_on_signals(importer, time.monotonic())
    if not args.verbose:  # every failure is reported here, by line
        logging.getLogger("analytics_vitally").setLevel(logging.CRITICAL)
    notices = logging.getLogger("analytics_vitally.importer")  # saved progress ignored, delivery failed...
    notices.addHandler(output)
    notices.setLevel(logging.INFO)
    notices.propagate = False  # -v logs the library to standard error already
    try:
        report = importer.run()
    finally:
        notices.removeHandler(output)
        output.close()
    return _summary(args, report, received[0] if received else 0)


def _stop_on_signals(importer: Importer, started: float) -> List[int]:
    """Ctrl-C and SIGTERM stop the import (progress saved); a second one quits at once, after the
    summary line. Returns the signals seen."""
    received: List[int] = []

    def on_signal(number: int, frame: Optional[FrameType]) -> None:
        if received:
            try:
                print(_counts(importer.report(time.monotonic() - started)), flush=True)
                print(
                    "quit at once by a second signal: lines after the last saved progress are sent again "
                    "by the next run",
                    file=sys.stderr,
                    flush=True,
                )
            finally:
                os._exit(128 + number)  # the next run resends the lines since the last checkpoint
        received.append(number)
        # Said at once, even while the import waits on the network (os.write: safe inside a handler).
        os.write(sys.stderr.fileno(), b"interrupted: stopping once what is queued is delivered (again: quit now)\n")
        importer.stop()  # only sets a flag: safe here

    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, on_signal)
    return received


def _function(text: str) -> Callable[..., Any]:
    """``module:function`` as the function, for ``--before-send`` (the current directory is searched first)."""
    module_name, _, name = text.partition(":")
    if not module_name or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not MODULE:FUNCTION (for example scrub:before_send)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as python -m does: a module beside the data is found
    try:
        found = getattr(importlib.import_module(module_name), name)
    except Exception as error:  # the module's own import errors too: say which, as a usage error
        raise argparse.ArgumentTypeError(f"cannot load {text}: {type(error).__name__}: {error}") from None
    if not callable(found):
        raise argparse.ArgumentTypeError(f"{text} is not a function")
    return found  # type: ignore[no-any-return]


def _counts(report: ImportReport) -> str:
    """The summary line: ``read N, sent N, rejected N, skipped N in S s``."""
    sent = f"sent 0 (dry run: {report.valid} valid)" if report.dry_run else f"sent {report.sent}"
    rejected = f"rejected {report.rejected}"
    if report.rejected_earlier:
        rejected += f" ({report.rejected_earlier} by an earlier run)"
    counts = f"read {report.read}, {sent}, {rejected}, skipped {report.skipped}"
    if report.filtered:
        counts += f", filtered {report.filtered} (before_send)"
    rate = f", {report.read / report.seconds:.0f} lines/s" if report.seconds > 0 and report.read else ""
    return f"{counts} in {report.seconds:.1f}s{rate}"


def _summary(args: argparse.Namespace, report: ImportReport, signal_number: int) -> int:
    print(_counts(report), flush=True)
    if report.rejected:
        print(f"rejected lines are in {args.rejects}", file=sys.stderr)
    if report.failure is not None or signal_number:
        why = f"{report.undelivered} message(s) not delivered" if report.failure else "stopped by a signal"
        files = [(name, line) for name, line in report.positions if name != "-"]
        where = ", ".join(f"{name}:{line}" for name, line in files)
        if report.dry_run:
            saved = "nothing saved (dry run)"
        elif files:
            saved = f"progress saved in {args.state} up to {where}; run the same command again to go on"
        else:
            saved = ""
        piped = [line for name, line in report.positions if name == "-"]
        if piped:  # a stream cannot be read again: say what to feed it, not to run the same command
            stdin = f"standard input cannot be resumed: feed it again from line {piped[0] + 1}"
            saved = f"{saved}; {stdin}" if saved else stdin
        print(f"{why}; {saved}", file=sys.stderr)
    if signal_number and report.failure is None:
        return 128 + signal_number
    return report.exit_code


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
        return _fail(str(error))
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


# doctor -------------------------------------------------------------------------------


def _doctor(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in ("write_key", "subdomain", "host", "spool", "timeout")}
    logging.getLogger("analytics_vitally").setLevel(logging.CRITICAL)  # every finding is in the report
    given = {name: value for name, value in given.items() if value is not None}
    report = from_command_line(given, args.send_test, args.test_user)
    print(report.text(), end="", flush=True)
    return report.exit_code


# spool --------------------------------------------------------------------------------


def _spool(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.directory):
        return _fail(f"{args.directory} is not a directory")
    if args.rekey and not args.send:
        return _fail("--rekey goes with --send")
    given = {"write_key": args.write_key, "subdomain": args.subdomain, "host": args.host}
    if not args.send:
        print(inspect_spool(args.directory).text())
        with contextlib.suppress(ConfigurationError):  # without a write key and host: nothing to compare
            print(f"the destination given here: {Settings(**given).resolved().fingerprint}")
        return 0
    if args.verbose:
        logging.getLogger("analytics_vitally").setLevel(logging.DEBUG)
    chosen = Settings(**given).resolved()
    if args.rekey:
        messages, files = rekey_spool(args.directory, chosen.fingerprint, chosen.url)
        print(f"rekeyed {messages} message(s) in {files} file(s) written for this endpoint under another write key")
    said_here = _NotLeftAlone()  # what it leaves is said below, by reason, with this destination's endpoint
    logging.getLogger("analytics_vitally").addFilter(said_here)
    try:
        sent, refused, kept = send_leftovers(args.directory, **given)
    finally:
        logging.getLogger("analytics_vitally").removeFilter(said_here)
    if kept:
        print(f"not delivered: {kept} message(s) stay in {args.directory}", file=sys.stderr)
        return 1
    print(f"sent {sent}, refused {refused} (written to {os.path.join(args.directory, DEAD_LETTER)})")
    left = inspect_spool(args.directory).left(chosen.fingerprint, chosen.url)
    for why in sorted(left, key=LEFT_ORDER.index):  # one line each: `spool --send DIR && rm -rf DIR` loses none
        said = left_text(args.directory, why, left[why], chosen.fingerprint)
        print(f"left in {args.directory}: {said}", file=sys.stderr)
    return 1 if refused or left else 0


class _NotLeftAlone(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "spool_left_alone", False)


__all__ = ["main"]
