"""The importer's Python API (``analytics_vitally.importer``), in this process, against a local receiver.

The ``receiver`` fixture (conftest.py) is a started ``Receiver`` taking the token ``test-token``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from analytics_vitally import ConfigurationError, DeliveryError
from analytics_vitally.importer import Importer, ImportFilesError, ImportOptions, ImportProgress, Rejection, run_import
from analytics_vitally.testing import Receiver, Reply, Request

TOKEN = "test-token"


@pytest.fixture(autouse=True)
def no_vitally_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings come from the options only."""
    for name in ("VITALLY_WRITE_KEY", "VITALLY_SUBDOMAIN", "VITALLY_HOST"):
        monkeypatch.delenv(name, raising=False)
    yield


def track_lines(count: int, start: int = 0, **extra: Any) -> List[str]:
    return [
        json.dumps(
            {"type": "track", "userId": f"u{number % 7}", "event": "viewed", "properties": {"n": number}, **extra}
        )
        for number in range(start, start + count)
    ]


def write(path: Path, lines: List[str], mode: str = "w") -> Path:
    with path.open(mode, encoding="utf-8") as stream:
        stream.write("".join(line + "\n" for line in lines))
    return path


def options(receiver: Receiver, tmp_path: Path, *files: Path, **more: Any) -> ImportOptions:
    """Options sending ``files`` to ``receiver``, with the state and rejects files in ``tmp_path``."""
    places = {"state": str(tmp_path / "state.json"), "rejects": str(tmp_path / "rejects.jsonl")}
    return ImportOptions(list(files), **{"write_key": TOKEN, "host": receiver.url, **places, **more})


def test_an_import_reports_what_it_did(receiver: Receiver, tmp_path: Path) -> None:
    source = write(tmp_path / "events.jsonl", track_lines(250))
    seen: List[ImportProgress] = []

    report = run_import(options(receiver, tmp_path, source, on_progress=seen.append))

    assert (report.read, report.sent, report.valid, report.rejected, report.skipped) == (250, 250, 250, 0, 0)
    assert report.delivered and report.exit_code == 0 and report.failure is None and not report.stopped
    assert report.positions == ((str(source), 250),)
    assert report.seconds > 0
    assert sorted(message["properties"]["n"] for message in receiver.messages) == list(range(250))
    assert [progress.lines for progress in seen] == [0, 100, 200, 250]  # before, every 100 lines, at the end
    assert seen[0].total == 250 and seen[0].started_at == 0
    assert seen[-1].sent == 250


def test_a_second_run_resumes_from_the_state(receiver: Receiver, tmp_path: Path) -> None:
    source = write(tmp_path / "events.jsonl", track_lines(5))
    first = run_import(options(receiver, tmp_path, source))
    write(source, track_lines(3, start=5), mode="a")  # the export grew

    second = run_import(options(receiver, tmp_path, source))

    assert (first.read, first.sent) == (5, 5)
    assert (second.read, second.sent, second.skipped) == (3, 3, 5)
    assert second.exit_code == 0
    ids = receiver.message_ids()
    assert len(ids) == len(set(ids)) == 8

    restarted = run_import(options(receiver, tmp_path, source, restart=True))

    assert (restarted.read, restarted.sent, restarted.skipped) == (8, 8, 0)
    assert sorted(receiver.message_ids()[8:]) == sorted(ids)  # the same derived messageIds


def test_rejected_lines_go_to_the_callback_the_rejects_file_and_the_report(tmp_path: Path) -> None:
    def respond(request: Request) -> Optional[Reply]:
        if any(message["properties"].get("poison") for message in request.messages or []):
            return Reply(400, {"message": "Bad Request", "errors": [{"error": "poisoned"}]})
        return None

    lines = track_lines(4)
    lines[1] = '{"type":"track","userId":"1"'  # line 2: not JSON
    lines[2] = track_lines(1, properties={"poison": True})[0]  # line 3: refused by Vitally
    source = write(tmp_path / "events.jsonl", [*lines, '{"type":"unlink","userId":"1"}'])  # line 5: no accountId
    rejections: List[Rejection] = []
    refused: List[Exception] = []

    with Receiver(TOKEN, respond=respond) as receiver:
        report = run_import(
            options(
                receiver,
                tmp_path,
                source,
                on_reject=rejections.append,
                client_settings={"on_error": lambda error, messages: refused.append(error)},
            )
        )

    assert (report.read, report.sent, report.rejected) == (5, 2, 3)
    assert report.delivered  # every line was delivered or rejected
    assert report.exit_code == 1  # ... but some were rejected
    assert sorted((rejection.file, rejection.line) for rejection in rejections) == [(str(source), n) for n in (2, 3, 5)]
    reasons = {rejection.line: rejection.error for rejection in rejections}
    assert reasons[2].startswith("line is not valid JSON")
    assert reasons[3].startswith("refused by Vitally") and "poisoned" in reasons[3]
    assert reasons[5].startswith("accountId is required")
    assert str(next(r for r in rejections if r.line == 5)) == f"{source}:5: {reasons[5]}"
    written = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted((entry["line"], entry["error"], entry["text"]) for entry in written) == sorted(
        (r.line, r.error, r.text) for r in rejections
    )
    assert refused and all(isinstance(error, DeliveryError) and error.status == 400 for error in refused)


def test_without_on_reject_rejections_are_logged(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write(tmp_path / "events.jsonl", ["[1]", *track_lines(1)])

    with caplog.at_level(logging.INFO, logger="analytics_vitally.importer"):
        report = run_import(options(receiver, tmp_path, source))

    assert report.rejected == 1
    assert f"{source}:1: line must be a JSON object (one message per line), not list" in caplog.messages


def test_a_dry_run_sends_nothing_and_saves_nothing(receiver: Receiver, tmp_path: Path) -> None:
    source = write(tmp_path / "events.jsonl", [*track_lines(3), '{"type":"page"}'])

    state, rejects = str(tmp_path / "state.json"), str(tmp_path / "rejects.jsonl")
    report = run_import(ImportOptions([source], dry_run=True, state=state, rejects=rejects))  # no key needed

    assert (report.read, report.sent, report.valid, report.rejected) == (4, 0, 3, 1)
    assert report.dry_run and report.delivered and report.exit_code == 1
    assert receiver.requests == []
    assert not (tmp_path / "state.json").exists()


def test_stop_from_another_thread_saves_the_exact_position(tmp_path: Path) -> None:
    total, held_after = 1000, 200
    gate = threading.Event()

    def respond(request: Request) -> None:
        if len(receiver.messages) >= held_after:
            gate.wait(30)

    source = write(tmp_path / "events.jsonl", track_lines(total))
    with Receiver(TOKEN, respond=respond) as receiver:
        importer = Importer(options(receiver, tmp_path, source, checkpoint_every=100))

        def stop_when_held() -> None:
            try:
                if receiver.wait_for(held_after, timeout=30):  # the import cannot get past its next checkpoint
                    importer.stop()
            finally:
                gate.set()

        stopper = threading.Thread(target=stop_when_held)
        stopper.start()
        try:
            stopped = importer.run()
        finally:
            gate.set()
            stopper.join(30)

        assert stopped.stopped and stopped.exit_code == 1 and stopped.failure is None
        assert held_after <= stopped.read < total
        assert stopped.positions == ((str(source), stopped.read),)  # everything read was delivered
        assert stopped.sent == stopped.read

        resumed = run_import(options(receiver, tmp_path, source))

    assert (resumed.skipped, resumed.read, resumed.exit_code) == (stopped.read, total - stopped.read, 0)
    ids = receiver.message_ids()
    assert len(ids) == len(set(ids)) == total  # nothing sent twice


def test_the_api_neither_prints_nor_exits(
    receiver: Receiver, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    source = write(tmp_path / "events.jsonl", ["{", *track_lines(2)])
    (tmp_path / "state.json").write_text("{not json", encoding="utf-8")

    with caplog.at_level(logging.INFO, logger="analytics_vitally"):
        refused = run_import(options(receiver, tmp_path, source, write_key="wrong"))  # 401: delivery fails
        rejected = run_import(options(receiver, tmp_path, source))
        with pytest.raises(ConfigurationError) as bad_option:
            run_import(options(receiver, tmp_path, source, workers=0))
        with pytest.raises(ImportFilesError):
            run_import(options(receiver, tmp_path, tmp_path / "missing.jsonl"))

    assert capfd.readouterr() == ("", "")
    assert refused.failure is not None and "401" in refused.failure
    assert refused.exit_code == rejected.exit_code == 1
    assert bad_option.value.setting == "workers"
    logged = "\n".join(caplog.messages)
    assert "ignoring the unreadable progress file" in logged and "not delivered" in logged


def test_rejected_lines_do_not_use_up_the_rate(receiver: Receiver, tmp_path: Path) -> None:
    invalid = ['{"type":"track","userId":"1"}'] * 100  # no event: rejected by the rules, after waiting for the rate
    source = write(tmp_path / "events.jsonl", [*invalid, *track_lines(3)])

    report = run_import(options(receiver, tmp_path, source, rate=10))  # one batch every 0.1 s

    assert (report.rejected, report.sent) == (100, 3)
    assert report.seconds < 5  # a slot of 0.1 s for each rejected line would take 10 s


def test_an_import_refuses_a_spool_given_in_its_client_settings(tmp_path: Path) -> None:
    # A spool keeps batches Vitally refused (401, 5xx) "for later": the import would save its progress
    # past lines that were never delivered.
    source = tmp_path / "events.jsonl"
    source.write_text('{"type": "track", "userId": "u", "event": "e"}\n')
    options = ImportOptions([str(source)], write_key="k", host="http://127.0.0.1:9", state=None, rejects=None)
    with pytest.raises(ConfigurationError, match="spool is not for imports"):
        Importer(dataclasses.replace(options, client_settings={"spool": str(tmp_path / "spool")})).run()
