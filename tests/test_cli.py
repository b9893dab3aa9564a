"""The ``analytics-vitally`` command, run as installed (a subprocess) against a local receiver.

The ``receiver`` fixture (conftest.py) is a started ``Receiver`` taking the token ``test-token``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import requests
from dateutil.parser import isoparse

from analytics_vitally.encoding import format_timestamp
from analytics_vitally.testing import Receiver, Reply, Request

from .conftest import COMMAND

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "events.jsonl"
TOKEN = "test-token"
SUMMARY = re.compile(r"read (\d+), sent (\d+).*, rejected (\d+).*, skipped (\d+)")


def environment() -> Dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("VITALLY_")}


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COMMAND, *args], cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout)


def importing(receiver: Receiver, *args: str) -> List[str]:
    return [COMMAND, "import", "--host", receiver.url, "--write-key", TOKEN, *args]


def start_import(receiver: Receiver, *args: str, cwd: Path, stdin: Optional[Any] = None) -> subprocess.Popen[str]:
    """An import running in the background, its output captured as text."""
    return subprocess.Popen(
        importing(receiver, *args),
        cwd=cwd,
        env=environment(),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt(process: subprocess.Popen[str], receiver: Receiver, gate: threading.Event) -> str:
    """Ctrl-C once 1,200 messages arrived (the gated receiver holds what comes next until then): its stderr."""
    try:
        assert receiver.wait_for(1200, timeout=30)
        process.send_signal(signal.SIGINT)
    finally:
        gate.set()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGINT, stderr
    return stderr


def run_import(receiver: Receiver, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(*importing(receiver, *args)[1:], cwd=cwd)


def summary(result: subprocess.CompletedProcess[str]) -> Dict[str, int]:
    found = SUMMARY.search(result.stdout)
    assert found, (result.stdout, result.stderr)
    return dict(zip(("read", "sent", "rejected", "skipped"), map(int, found.groups())))


def track_lines(count: int, **extra: Any) -> List[str]:
    return [
        json.dumps(
            {
                "type": "track",
                "userId": f"u{number % 7}",
                "event": "report-viewed",
                "properties": {"n": number},
                "timestamp": "2023-03-04T05:06:07.890Z",
                **extra,
            }
        )
        for number in range(count)
    ]


def write(path: Path, lines: List[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def gated_receiver(after: int) -> tuple[Receiver, threading.Event]:
    """A receiver that holds every request once ``after`` messages arrived, until the event is set."""
    gate = threading.Event()

    def respond(request: Request) -> None:
        if len(held.messages) >= after:
            gate.wait(30)

    held = Receiver(TOKEN, respond=respond)
    return held, gate


# import ------------------------------------------------------------------------------


def test_sample_import_delivers_every_message_once_with_its_time(receiver: Receiver, tmp_path: Path) -> None:
    result = run_import(receiver, str(SAMPLE), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert summary(result) == {"read": 3000, "sent": 3000, "rejected": 0, "skipped": 0}
    print(result.stdout.strip())  # the import rate, for the curious (pytest -s)
    ids = receiver.message_ids()
    assert len(ids) == len(set(ids)) == 3000
    lines = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    expected = sorted(format_timestamp(isoparse(line["timestamp"])) for line in lines)
    assert sorted(message["timestamp"] for message in receiver.messages) == expected
    assert any(not line["timestamp"].endswith("Z") for line in lines)  # offsets were converted, not refused
    given = {line["messageId"] for line in lines if "messageId" in line}
    assert given and given <= set(ids)

    again = run_import(receiver, str(SAMPLE), cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert summary(again) == {"read": 0, "sent": 0, "rejected": 0, "skipped": 3000}
    assert len(receiver.messages) == 3000  # nothing new

    restarted = run_import(receiver, "--restart", str(SAMPLE), cwd=tmp_path)

    assert restarted.returncode == 0, restarted.stderr
    assert summary(restarted)["sent"] == 3000
    assert sorted(receiver.message_ids()) == sorted(ids * 2)  # derived messageIds are the same again


def test_lines_without_message_id_or_timestamp(receiver: Receiver, tmp_path: Path) -> None:
    bare = [
        '{"type":"user","userId":"1","accountId":"a","traits":{}}',
        '{"type":"account","accountId":"a","traits":{"name":"A"},"organizationId":null}',
    ]
    source = write(tmp_path / "bare.jsonl", bare)

    first = run_import(receiver, str(source), cwd=tmp_path)
    second = run_import(receiver, "--restart", str(source), cwd=tmp_path)

    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert all("timestamp" not in message and "organizationId" not in message for message in receiver.messages)
    ids = receiver.message_ids()
    assert len(set(ids[:2])) == 2 and sorted(ids[:2]) == sorted(ids[2:])


def test_dry_run_sends_nothing_and_saves_nothing(receiver: Receiver, tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "analytics_vitally", *importing(receiver, "--dry-run", str(SAMPLE))[1:]],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    bad = run("import", "--dry-run", str(write(tmp_path / "bad.jsonl", ["{", *track_lines(2)])), cwd=tmp_path)

    assert good.returncode == 0, good.stderr
    assert summary(good) == {"read": 3000, "sent": 0, "rejected": 0, "skipped": 0}
    assert "3000 valid" in good.stdout
    assert receiver.requests == []
    assert not (tmp_path / "analytics-vitally-state.json").exists()
    assert bad.returncode == 1
    assert "bad.jsonl:1: line is not valid JSON" in bad.stderr
    assert summary(bad) == {"read": 3, "sent": 0, "rejected": 1, "skipped": 0}


def test_malformed_lines_are_named_and_the_rest_delivered(receiver: Receiver, tmp_path: Path) -> None:
    good = track_lines(3)
    lines = [
        good[0],
        '{"type": "track", "userId": ',  # 2
        '{"type":"page","userId":"1","timestamp":"2023-01-01T00:00:00Z"}',  # 3
        '{"type":"track","userId":"1","properties":{},"timestamp":"2023-01-01T00:00:00Z"}',  # 4: no event
        good[1],
        "",
        "[1, 2]",  # 7
        '{"type":"track","userId":"1","event":"e","properties":{},"timestamp":"last tuesday"}',  # 8
        good[2],
    ]
    write(tmp_path / "bad.jsonl", lines)

    result = run_import(receiver, "--rejects", "rejected.jsonl", "bad.jsonl", cwd=tmp_path)

    assert result.returncode == 1
    reported = dict(re.findall(r"^bad\.jsonl:(\d+): (.*)$", result.stderr, re.MULTILINE))
    assert sorted(map(int, reported)) == [2, 3, 4, 7, 8]
    assert "not valid JSON" in reported["2"]
    assert "type must be one of" in reported["3"]
    assert reported["4"].startswith("event is required")
    assert "JSON object" in reported["7"]
    assert reported["8"].startswith("timestamp is not a valid ISO 8601 time")
    assert summary(result) == {"read": 8, "sent": 3, "rejected": 5, "skipped": 0}
    assert [message["properties"]["n"] for message in receiver.messages] == [0, 1, 2]
    rejects = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [(entry["file"], entry["line"], entry["text"]) for entry in rejects] == [
        ("bad.jsonl", number, lines[number - 1].strip()) for number in (2, 3, 4, 7, 8)
    ]


def test_message_refused_by_vitally_is_named_by_its_line(tmp_path: Path) -> None:
    def respond(request: Request) -> Optional[Reply]:
        if any(message.get("properties", {}).get("poison") for message in request.messages or []):
            return Reply(400, {"message": "Bad Request", "errors": [{"error": "this one is poisoned"}]})
        return None

    lines = track_lines(250)
    lines[136] = track_lines(1, properties={"poison": True})[0]
    source = write(tmp_path / "events.jsonl", lines)

    with Receiver(TOKEN, respond=respond) as receiver:
        result = run_import(receiver, str(source), cwd=tmp_path)

    assert result.returncode == 1
    assert re.findall(r"^(\S+:\d+): refused by Vitally", result.stderr, re.MULTILINE) == [f"{source}:137"]
    assert "poisoned" in result.stderr
    assert summary(result) == {"read": 250, "sent": 249, "rejected": 1, "skipped": 0}
    assert len(receiver.messages) == 249
    [entry] = [json.loads(line) for line in (tmp_path / "analytics-vitally-rejects.jsonl").read_text().splitlines()]
    assert entry["line"] == 137


def test_failed_delivery_stops_without_losing_lines(receiver: Receiver, tmp_path: Path) -> None:
    source = write(tmp_path / "events.jsonl", track_lines(300))

    refused = run("import", "--host", receiver.url, "--write-key", "wrong", str(source), cwd=tmp_path)

    assert refused.returncode == 1
    assert "401" in refused.stderr and "run the same command again" in refused.stderr
    assert not (tmp_path / "analytics-vitally-rejects.jsonl").exists()  # not the lines' fault

    retried = run_import(receiver, str(source), cwd=tmp_path)

    assert retried.returncode == 0, retried.stderr
    assert summary(retried) == {"read": 300, "sent": 300, "rejected": 0, "skipped": 0}


def test_killed_import_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    every, workers = 500, 4
    receiver, gate = gated_receiver(after=1200)
    with receiver:
        process = subprocess.Popen(
            importing(receiver, "--checkpoint-every", str(every), "--workers", str(workers), str(SAMPLE)),
            cwd=tmp_path,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert receiver.wait_for(1200, timeout=30)
            process.kill()
        finally:
            process.communicate(timeout=30)
            gate.set()
        assert process.returncode == -signal.SIGKILL
        first_run = len(receiver.messages)
        assert first_run < 3000

        resumed = run_import(receiver, "--checkpoint-every", str(every), str(SAMPLE), cwd=tmp_path)

        assert resumed.returncode == 0, resumed.stderr
        counts = summary(resumed)
        assert counts["skipped"] >= every and counts["skipped"] + counts["read"] == 3000
        ids = receiver.message_ids()
        resent = len(ids) - len(set(ids))
        print(f"killed at {first_run} arrived; resume skipped {counts['skipped']} lines; {resent} arrived twice")
        assert len(set(ids)) == 3000
        assert resent <= every + workers * 100

        again = run_import(receiver, str(SAMPLE), cwd=tmp_path)

        assert again.returncode == 0, again.stderr
        assert summary(again)["skipped"] == 3000
        assert len(receiver.messages) == len(ids)


def test_interrupted_import_saves_its_progress_and_resends_nothing(tmp_path: Path) -> None:
    receiver, gate = gated_receiver(after=1200)
    with receiver:
        process = start_import(receiver, "--checkpoint-every", "500", str(SAMPLE), cwd=tmp_path)
        assert "progress saved" in interrupt(process, receiver, gate)

        resumed = run_import(receiver, str(SAMPLE), cwd=tmp_path)

        assert resumed.returncode == 0, resumed.stderr
        assert summary(resumed)["skipped"] > 0
        ids = receiver.message_ids()
        assert len(ids) == len(set(ids)) == 3000


def test_rate_caps_batch_requests_per_second(tmp_path: Path) -> None:
    arrivals: List[float] = []

    def respond(request: Request) -> None:
        arrivals.append(time.monotonic())

    source = write(tmp_path / "events.jsonl", track_lines(600))
    with Receiver(TOKEN, respond=respond) as receiver:
        result = run_import(receiver, "--rate", "10", str(source), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] >= 0.4  # 5 gaps of 1/10 s; without --rate they come at once


def test_standard_input_is_read_and_not_resumed(receiver: Receiver, tmp_path: Path) -> None:
    lines = "\n".join(track_lines(3)) + "\n"

    first, second = (
        subprocess.run(
            importing(receiver, "-"),
            input=lines,
            cwd=tmp_path,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        for _ in range(2)
    )

    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert summary(second) == {"read": 3, "sent": 3, "rejected": 0, "skipped": 0}
    ids = receiver.message_ids()
    assert len(set(ids)) == 3 and sorted(ids[:3]) == sorted(ids[3:])  # sent again, as duplicates


def run_on_terminal(command: List[str], cwd: Path) -> tuple[int, str]:
    """Run ``command`` with standard error on a pseudo-terminal; its exit code and what it wrote there."""
    pty = pytest.importorskip("pty")
    controller, terminal = pty.openpty()
    fcntl = pytest.importorskip("fcntl")
    termios = pytest.importorskip("termios")
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # rows, columns
    process = subprocess.Popen(command, cwd=cwd, env=environment(), stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout=30), output.decode(errors="replace")


def test_progress_bar_on_a_terminal(receiver: Receiver, tmp_path: Path) -> None:
    pytest.importorskip("tqdm")

    code, shown = run_on_terminal(importing(receiver, str(SAMPLE)), tmp_path)

    assert code == 0, shown
    assert re.search(r"3000/3000 \[[0-9:]+<[0-9:]+, +[0-9.]+ lines/s\]", shown), shown


def test_plain_progress_without_tqdm_or_terminal(receiver: Receiver, tmp_path: Path) -> None:
    without_tqdm = "import sys; sys.modules['tqdm'] = None; from analytics_vitally.cli import main; sys.exit(main())"
    every_line = (
        "import sys, analytics_vitally.cli as cli, analytics_vitally.console as console; "
        "console.PROGRESS_INTERVAL = 0; sys.exit(cli.main())"
    )
    arguments = importing(receiver, "--restart", str(SAMPLE))[1:]

    code, shown = run_on_terminal([sys.executable, "-c", without_tqdm, *arguments], tmp_path)
    plain = subprocess.run(
        [sys.executable, "-c", every_line, *arguments],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert code == 0, shown
    assert "pip install 'analytics-vitally[cli]'" in shown
    assert plain.returncode == 0, plain.stderr
    assert "1500 of 3000 lines (50%)" in plain.stderr and "lines/s" in plain.stderr


def test_missing_settings_are_a_usage_error(tmp_path: Path) -> None:
    result = run("import", str(SAMPLE), cwd=tmp_path)

    assert result.returncode == 2
    assert "write_key is not set" in result.stderr and "--write-key" in result.stderr
    assert "send=False" not in result.stderr  # no such option on the command line


# serve -------------------------------------------------------------------------------


def test_serve_answers_like_vitally_and_saves_what_it_accepts(tmp_path: Path) -> None:
    saved = tmp_path / "saved.jsonl"
    process = subprocess.Popen(
        [COMMAND, "serve", "--port", "0", "--token", "s3cret", "--save", str(saved)],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        found = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline())
        assert found, process.stderr
        assert process.stdout.readline().startswith("try: analytics-vitally import")
        endpoint = found.group() + "/analytics/v1/batch"
        good = [json.loads(line) for line in track_lines(2)]

        def post(body: Any, token: str = "s3cret") -> requests.Response:
            return requests.post(endpoint, json=body, headers={"Authorization": f"Basic {token}"}, timeout=10)

        accepted = post(good)
        echoed = [json.loads(process.stdout.readline()) for _ in good]
        refused = post([good[0], {"type": "track", "userId": "1", "properties": {}, "messageId": "m"}])
        unauthorized = post(good, token="wrong")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)

    assert accepted.status_code == 200
    assert echoed == good
    assert refused.status_code == 400
    [problem] = refused.json()["errors"]
    assert (problem["index"], problem["field"]) == (1, "event")
    assert unauthorized.status_code == 401
    assert process.returncode == 0, err
    assert "accepting 2 message(s)" in out
    assert [json.loads(line) for line in saved.read_text().splitlines()] == good


# The quickstart -----------------------------------------------------------------------


def test_quickstart_sends_one_message_of_each_type() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "accepted 6 message(s)" in result.stdout
    shown = re.findall(r"^\s+(\w+)\s+\{", result.stdout, re.MULTILINE)
    assert sorted(shown) == sorted(["organization", "account", "user", "track", "customobjectinstance", "unlink"])


# Hostile input and growing files (issue 8) -------------------------------------------


def test_a_line_that_cannot_be_read_is_rejected_and_the_rest_delivered(receiver: Receiver, tmp_path: Path) -> None:
    good = track_lines(3)
    deep = "[" * 10_000 + "]" * 10_000
    lines = [
        good[0],
        '{"type":"track","userId":"1","event":"e","properties":{"a":' + deep + "}}",  # 2: RecursionError
        good[1],
        '{"type":"track","userId":"1","event":"e","properties":{"a":' + "9" * 5000 + "}}",  # 4: digit limit
        '{"type":"track","userId":"1","event":"e","properties":{},"timestamp":"0001-01-01T00:00:00+01:00"}',  # 5
        good[2],
    ]
    write(tmp_path / "hostile.jsonl", lines)

    result = run_import(receiver, "hostile.jsonl", cwd=tmp_path)

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    reported = dict(re.findall(r"^hostile\.jsonl:(\d+): (.*)$", result.stderr, re.MULTILINE))
    assert sorted(map(int, reported)) == [2, 4, 5]
    assert reported["2"].startswith("line is nested too deeply")
    assert reported["4"].startswith("line is not valid JSON") and "digits" in reported["4"]
    assert reported["5"].startswith("timestamp is not a valid ISO 8601 time")
    assert summary(result) == {"read": 6, "sent": 3, "rejected": 3, "skipped": 0}
    assert [message["properties"]["n"] for message in receiver.messages] == [0, 1, 2]
    rejects = [json.loads(line) for line in (tmp_path / "analytics-vitally-rejects.jsonl").read_text().splitlines()]
    assert [entry["line"] for entry in rejects] == [2, 4, 5]


def test_saved_progress_with_wrong_types_is_ignored_and_the_file_sent_again(receiver: Receiver, tmp_path: Path) -> None:
    broken: Dict[str, Callable[[Dict[str, Any]], Any]] = {
        "read-null": lambda entry: {**entry, "read": None},
        "offset-text": lambda entry: {**entry, "offset": str(entry["offset"])},
        "line-bool": lambda entry: {**entry, "line": True},
        "rejected-text": lambda entry: {**entry, "rejected": "x"},
        "sha-number": lambda entry: {**entry, "sha256": 7},
        "entry-list": lambda entry: [entry],
    }
    files, entries = [], {}
    for number, (name, breaking) in enumerate(broken.items()):
        lines = track_lines(4, event=f"e{number}")
        source = write(tmp_path / f"{name}.jsonl", lines)
        head = "".join(line + "\n" for line in lines[:2]).encode()
        saved = {"line": 2, "offset": len(head), "sha256": hashlib.sha256(head).hexdigest(), "read": 2, "rejected": 0}
        entries[os.path.realpath(source)] = breaking({**saved, "done": False})  # as if checkpointed after line 2
        files.append(source.name)
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "files": entries}), encoding="utf-8")

    result = run_import(receiver, "--state", "state.json", *files, cwd=tmp_path)

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    ignored = re.findall(r"^ignoring the saved progress of (\S+) in state\.json \((.*)\)", result.stderr, re.MULTILINE)
    assert sorted(name for name, _ in ignored) == sorted(files)
    assert summary(result) == {"read": 24, "sent": 24, "rejected": 0, "skipped": 0}

    again = run_import(receiver, "--state", "state.json", *files, cwd=tmp_path)  # the state was rewritten whole

    assert again.returncode == 0, again.stderr
    assert summary(again) == {"read": 0, "sent": 0, "rejected": 0, "skipped": 24}


def test_growing_file_loses_no_line_and_keeps_its_line_numbers(receiver: Receiver, tmp_path: Path) -> None:
    lines = track_lines(7)
    growing = tmp_path / "growing.jsonl"
    half = len(lines[3]) // 2
    growing.write_text("".join(line + "\n" for line in lines[:3]) + lines[3][:half], encoding="utf-8")

    first = run_import(receiver, "growing.jsonl", cwd=tmp_path)  # line 4 is half-written

    assert first.returncode == 0, first.stderr
    assert re.search(r"^growing\.jsonl:4: incomplete last line.*will be read again", first.stderr, re.MULTILINE)
    assert summary(first) == {"read": 3, "sent": 3, "rejected": 0, "skipped": 0}
    assert not (tmp_path / "analytics-vitally-rejects.jsonl").exists()

    with growing.open("a", encoding="utf-8") as stream:  # the writer finishes line 4, writes 5, and 6 but its newline
        stream.write(lines[3][half:] + "\n" + lines[4] + "\n" + lines[5])
    second = run_import(receiver, "growing.jsonl", cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    assert summary(second) == {"read": 3, "sent": 3, "rejected": 0, "skipped": 3}  # 6 is whole: sent already

    with growing.open("a", encoding="utf-8") as stream:
        stream.write("\n" + lines[6] + "\n")
    third = run_import(receiver, "growing.jsonl", cwd=tmp_path)

    assert third.returncode == 0, third.stderr
    assert summary(third) == {"read": 2, "sent": 2, "rejected": 0, "skipped": 5}  # 6 again, as a duplicate, and 7
    assert growing.read_text(encoding="utf-8") == "".join(line + "\n" for line in lines)
    assert sorted(message["properties"]["n"] for message in receiver.messages) == [0, 1, 2, 3, 4, 5, 5, 6]
    grown_ids = receiver.message_ids()

    whole = run_import(receiver, "--restart", "growing.jsonl", cwd=tmp_path)  # the finished file in one run

    assert whole.returncode == 0, whole.stderr
    assert set(receiver.message_ids()[len(grown_ids) :]) == set(grown_ids)  # same lines, same numbers, same IDs


def test_absent_traits_and_properties_are_empty_objects(receiver: Receiver, tmp_path: Path) -> None:
    lines = [
        '{"type":"track","userId":"1","event":"no-properties"}',
        '{"type":"track","userId":"1","event":"null-properties","properties":null}',
        '{"type":"user","userId":"1","accountId":"a"}',
        '{"type":"customobjectinstance","externalId":"d1","customObjectId":"deals","accountId":"a"}',
        '{"type":"account","accountId":"a","traits":null}',
        '{"type":"organization","organizationId":"o"}',
        '{"type":"unlink","userId":"1","accountId":"a"}',
    ]
    write(tmp_path / "sparse.jsonl", lines)

    result = run_import(receiver, "sparse.jsonl", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert summary(result) == {"read": 7, "sent": 7, "rejected": 0, "skipped": 0}
    by_type = {(message["type"], message.get("event")): message for message in receiver.messages}
    assert by_type["track", "no-properties"]["properties"] == {}
    assert by_type["track", "null-properties"]["properties"] == {}
    assert all(
        by_type[kind, None]["traits"] == {} for kind in ("user", "customobjectinstance", "account", "organization")
    )
    assert "traits" not in by_type["unlink", None] and "properties" not in by_type["unlink", None]


def test_absurd_option_values_are_usage_errors(receiver: Receiver, tmp_path: Path) -> None:
    source = str(write(tmp_path / "events.jsonl", track_lines(300)))
    refused = {
        ("--workers", "100000"): "must be from 1 to 64",
        ("--workers", "0"): "must be from 1 to 64",
        ("--rate", "nan"): "must be from 0.01 to 1000",
        ("--rate", "1e-300"): "must be from 0.01 to 1000",
        ("--rate", "inf"): "must be from 0.01 to 1000",
        ("--checkpoint-every", "1000000000"): "must be from 1 to 100,000",
    }
    started = time.monotonic()
    processes = {
        option: subprocess.Popen(
            importing(receiver, *option, source), cwd=tmp_path, env=environment(), stderr=subprocess.PIPE, text=True
        )
        for option in refused
    }
    port = subprocess.Popen([COMMAND, "serve", "--port", "99999"], env=environment(), stderr=subprocess.PIPE, text=True)
    try:
        results = {
            option: (process.wait(timeout=30), process.communicate()[1]) for option, process in processes.items()
        }
        port_code, port_error = port.wait(timeout=30), port.communicate()[1]
    finally:
        for process in [*processes.values(), port]:
            if process.poll() is None:  # accepted after all: it would crawl on after the test
                process.kill()
                process.communicate()

    for (option, value), (code, stderr) in results.items():
        assert code == 2, (option, value, stderr)
        assert stderr.startswith("usage: analytics-vitally import"), stderr
        assert f"error: argument {option}: {refused[option, value]}" in stderr, stderr
    assert port_code == 2 and "error: argument --port: must be from 0 to 65,535" in port_error, port_error
    assert time.monotonic() - started < 30  # refused before anything starts, not after crawling
    assert receiver.requests == []

    limits = run_import(
        receiver, "--workers", "64", "--rate", "1000", "--checkpoint-every", "100000", source, cwd=tmp_path
    )

    assert limits.returncode == 0, limits.stderr
    assert summary(limits) == {"read": 300, "sent": 300, "rejected": 0, "skipped": 0}


def test_a_signal_ends_the_wait_between_rate_bursts(receiver: Receiver, tmp_path: Path) -> None:
    source = write(tmp_path / "events.jsonl", track_lines(300))
    process = start_import(receiver, "--rate", "0.01", str(source), cwd=tmp_path)  # 100 s between bursts of 100
    try:
        assert receiver.wait_for(100, timeout=30)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "progress saved" in stderr
    assert len(receiver.messages) in (100, 101)  # the line read when the signal came may be queued too


def test_state_and_rejects_files_are_for_their_owner_only(receiver: Receiver, tmp_path: Path) -> None:
    # They hold personal data (the rejected lines themselves): 0600, as the spool's files, whatever the umask.
    source = write(tmp_path / "mixed.jsonl", ["{", *track_lines(2)])
    umask = os.umask(0o022)
    try:
        result = run_import(receiver, "--state", "state.json", "--rejects", "rejects.jsonl", str(source), cwd=tmp_path)
    finally:
        os.umask(umask)
    assert result.returncode == 1, result.stderr  # one line rejected
    assert summary(result) == {"read": 3, "sent": 2, "rejected": 1, "skipped": 0}
    for name in ("state.json", "rejects.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_the_importer_ignores_vitally_spool_and_reports_a_refused_key(receiver: Receiver, tmp_path: Path) -> None:
    # With VITALLY_SPOOL set, the refused batches used to stay in the spool "for later": nothing said
    # "not delivered", progress was saved to line 300, and the next run sent nothing.
    source = write(tmp_path / "events.jsonl", track_lines(300))
    env = {**environment(), "VITALLY_SPOOL": str(tmp_path / "spool")}
    first = subprocess.run(
        [COMMAND, "import", "--host", receiver.url, "--write-key", "wrong-key", "--state", "state.json", str(source)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode != 0
    assert "not delivered" in first.stderr
    assert summary(first)["sent"] == 0
    assert not (tmp_path / "spool").exists()
    again = run_import(receiver, "--state", "state.json", str(source), cwd=tmp_path)  # now with the right key
    assert again.returncode == 0, again.stderr
    assert summary(again) == {"read": 300, "sent": 300, "rejected": 0, "skipped": 0}


def test_a_second_signal_quits_at_once_after_the_summary_line(tmp_path: Path) -> None:
    # It used to quit without a word.
    receiver, gate = gated_receiver(after=1200)
    with receiver:
        process = start_import(receiver, "--checkpoint-every", "500", str(SAMPLE), cwd=tmp_path)
        try:
            assert receiver.wait_for(1200, timeout=30)
            process.send_signal(signal.SIGINT)  # stops after delivering what is queued: held by the gate
            assert process.stderr is not None
            for line in process.stderr:  # until the import says it is stopping
                if "again: quit now" in line:
                    break
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=30)
        finally:
            gate.set()
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert SUMMARY.search(stdout), (stdout, stderr)
    assert "second signal" in stderr


def test_an_interrupted_import_from_standard_input_does_not_promise_to_resume(tmp_path: Path) -> None:
    # "run the same command again to go on" is not true of a stream: standard input is never resumed.
    receiver, gate = gated_receiver(after=1200)
    with receiver:
        with SAMPLE.open("rb") as lines:
            process = start_import(receiver, "--checkpoint-every", "500", "-", cwd=tmp_path, stdin=lines)
        stderr = interrupt(process, receiver, gate)
    assert "standard input cannot be resumed: feed it again from line" in stderr
    assert "run the same command again" not in stderr


def test_saved_progress_for_another_destination_is_refused_by_name(receiver: Receiver, tmp_path: Path) -> None:
    # The same file and state file sent to host B after host A: B got "skipped 3000" and nothing else.
    source = write(tmp_path / "events.jsonl", track_lines(30))
    to_a = run_import(receiver, "--state", "state.json", str(source), cwd=tmp_path)
    assert to_a.returncode == 0, to_a.stderr
    assert "test-token" not in (tmp_path / "state.json").read_text()  # a fingerprint of the key, never the key
    with Receiver(token="other-token") as other:
        command = [COMMAND, "import", "--host", other.url, "--write-key", "other-token", "--state", "state.json"]
        to_b = subprocess.run(
            [*command, str(source)], cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60
        )
        assert to_b.returncode == 2, to_b.stderr
        assert "is for another destination" in to_b.stderr and receiver.url in to_b.stderr
        assert other.requests == []
        again = subprocess.run(
            [*command, "--restart", str(source)], cwd=tmp_path, env=environment(), capture_output=True, text=True
        )
        assert again.returncode == 0, again.stderr
        assert other.wait_for(30) and len(set(other.message_ids())) == 30


def test_gzip_input_is_read_as_its_text_resumably_and_a_cut_one_is_refused(receiver: Receiver, tmp_path: Path) -> None:
    # A .jsonl.gz used to give 2,693 "line is not UTF-8 text" rejects.
    lines = track_lines(300)
    packed = tmp_path / "events.jsonl.gz"
    packed.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode()))
    first = run_import(receiver, "--rejects", "rejects.jsonl", str(packed), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert summary(first) == {"read": 300, "sent": 300, "rejected": 0, "skipped": 0}
    assert not (tmp_path / "rejects.jsonl").exists()
    again = run_import(receiver, str(packed), cwd=tmp_path)  # resumed like a plain file: nothing left to send
    assert summary(again) == {"read": 0, "sent": 0, "rejected": 0, "skipped": 300}
    assert len(set(receiver.message_ids())) == len(receiver.messages) == 300

    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed.read_bytes()[: len(packed.read_bytes()) // 2])
    broken = run_import(receiver, str(cut), cwd=tmp_path)
    assert broken.returncode == 2, broken.stderr
    assert "is a damaged or incomplete gzip file" in broken.stderr and "Traceback" not in broken.stderr


def test_a_pipe_or_fifo_given_as_a_file_is_refused_with_a_clear_error(receiver: Receiver, tmp_path: Path) -> None:
    # <(cat f) used to end in a FileNotFoundError traceback; a FIFO was opened three times (the first
    # close lost the writer's data), then the run hung and ignored SIGTERM.
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    refused = run(*importing(receiver, str(fifo))[1:], cwd=tmp_path, timeout=30)  # no writer: must not wait for one
    assert refused.returncode == 2, refused.stderr
    assert "is not a regular file" in refused.stderr and "Traceback" not in refused.stderr
    source = write(tmp_path / "events.jsonl", track_lines(3))
    piped = subprocess.run(
        ["bash", "-c", f'exec "$0" import --host {receiver.url} --write-key {TOKEN} <(cat "$1")', COMMAND, source],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert piped.returncode == 2, piped.stderr
    assert "is not a regular file" in piped.stderr and "Traceback" not in piped.stderr
    assert receiver.requests == []


def test_a_huge_line_is_rejected_by_its_start_within_bounded_memory(receiver: Receiver, tmp_path: Path) -> None:
    # A 1 GB line (sparse: NUL bytes) in a process allowed 800 MB of address space. The whole line used
    # to be read at once: a MemoryError traceback and exit 1 (a 200 MB line took 1,235 MB of RSS).
    resource = pytest.importorskip("resource")
    good = track_lines(2)
    source = tmp_path / "huge.jsonl"
    with source.open("wb") as stream:
        stream.write((good[0] + "\n").encode())
        stream.write(b'{"type": "track", "pad": "')
        stream.seek(stream.tell() + (1 << 30))
        stream.write(b'"}\n' + (good[1] + "\n").encode())

    def small_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (800 << 20, 800 << 20))

    done = subprocess.run(
        importing(receiver, "--rejects", "rejects.jsonl", str(source)),
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_address_space,
    )
    assert done.returncode == 1, done.stderr[-2000:]  # one line rejected
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    assert summary(done) == {"read": 3, "sent": 2, "rejected": 1, "skipped": 0}
    [entry] = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert entry["line"] == 2 and "longer than any message can be" in entry["error"]
    assert entry["text"].startswith('{"type": "track", "pad": "') and len(entry["text"]) <= 1000


def test_import_passes_each_message_through_before_send(receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "scrub.py").write_text(
        "def before_send(message):\n"
        "    n = message['properties']['n']\n"
        "    if n % 10 == 0:\n"
        "        return None\n"
        "    if n % 10 == 1:\n"
        "        raise ValueError('cannot scrub')\n"
        "    message['properties']['scrubbed'] = True\n"
        "    return message\n"
    )
    source = write(tmp_path / "events.jsonl", track_lines(100))
    result = run_import(receiver, "--before-send", "scrub:before_send", str(source), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert summary(result) == {"read": 100, "sent": 80, "rejected": 0, "skipped": 0}
    assert "filtered 20 (before_send)" in result.stdout
    assert sorted(m["properties"]["n"] for m in receiver.messages) == [n for n in range(100) if n % 10 > 1]
    assert all(m["properties"]["scrubbed"] is True for m in receiver.messages)
    again = run_import(receiver, "--before-send", "scrub:before_send", str(source), cwd=tmp_path)
    assert summary(again) == {"read": 0, "sent": 0, "rejected": 0, "skipped": 100}  # progress went past them
    missing = run_import(receiver, "--before-send", "nowhere:before_send", str(source), cwd=tmp_path)
    assert missing.returncode == 2 and "cannot load nowhere:before_send: ModuleNotFoundError" in missing.stderr
