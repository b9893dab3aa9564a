"""The ``analytics-vitally`` command, run as installed (a subprocess) against a local receiver.

The ``receiver`` fixture (conftest.py) is a started ``Receiver`` taking the token ``test-token``.
"""

from __future__ import annotations

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
from typing import Any, Dict, List, Optional

import pytest
import requests
from dateutil.parser import isoparse

from analytics_vitally.encoding import format_timestamp
from analytics_vitally.testing import Receiver, Reply, Request

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "events.jsonl"
COMMAND = str(Path(sys.executable).with_name("analytics-vitally"))
TOKEN = "test-token"
SUMMARY = re.compile(r"read (\d+), sent (\d+).*, rejected (\d+).*, skipped (\d+)")


def environment() -> Dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("VITALLY_")}


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COMMAND, *args], cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout)


def importing(receiver: Receiver, *args: str) -> List[str]:
    return [COMMAND, "import", "--host", receiver.url, "--write-key", TOKEN, *args]


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
        process = subprocess.Popen(
            importing(receiver, "--checkpoint-every", "500", str(SAMPLE)),
            cwd=tmp_path,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert receiver.wait_for(1200, timeout=30)
            process.send_signal(signal.SIGINT)
        finally:
            gate.set()
            _, stderr = process.communicate(timeout=30)
        assert process.returncode == 128 + signal.SIGINT, stderr
        assert "progress saved" in stderr

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
    process = subprocess.Popen(command, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=terminal)
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
    every_line = "import sys, analytics_vitally.cli as cli; cli.PROGRESS_INTERVAL = 0; sys.exit(cli.main())"
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
