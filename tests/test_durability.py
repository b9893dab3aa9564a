"""The spool setting end to end: a call that returned (True, message) survives the death of its process.

Real processes are killed (SIGKILL, SIGTERM with its default action) at random points; a later
process with the same spool delivers what they had accepted, with the original messageIds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from analytics_vitally import Client
from analytics_vitally.durable import send_leftovers
from analytics_vitally.settings import Settings
from analytics_vitally.spool import DEAD_LETTER, Spool, inspect
from analytics_vitally.spool import files as spool_files
from analytics_vitally.testing import Receiver, Reply

from .conftest import COMMAND, TOKEN, MakeClient

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the spool needs flock and shared maps")

WRITER = """
    import os, signal, sys, time
    from analytics_vitally import Client

    client = Client({token!r}, host={host!r}, spool={spool!r}, upload_interval={interval}, exit_timeout=0.5)
    ids = open({ids!r}, "a")
    for i in range({count}):
        queued, message = client.track("u", "e", {{"i": i}})
        if queued:
            ids.write(message["messageId"] + "\\n")
            ids.flush()
    {ending}
"""


def write_and_die(spool: Path, ids: Path, host: str, count: int, ending: str, interval: float = 60) -> str:
    code = WRITER.format(
        token=TOKEN, host=host, spool=str(spool), interval=interval, ids=str(ids), count=count, ending=ending
    )
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, -signal.SIGKILL, -signal.SIGTERM), done.stderr[-2000:]
    return done.stderr


def accepted(ids: Path) -> List[str]:
    return ids.read_text().split() if ids.exists() else []


def delivered_by_a_new_process(
    receiver: Receiver, spool: Path, expected: List[str], make: MakeClient, unrecorded: int = 0
) -> None:
    """Every accepted call arrives (before the kill, or from the spool after it) under its original messageId."""
    make(spool=str(spool))  # no call: leftovers are sent as soon as the client is made
    deadline = time.monotonic() + 30
    while not set(expected) <= set(receiver.message_ids()):
        missing = len(set(expected) - set(receiver.message_ids()))
        assert time.monotonic() < deadline, f"{missing} of {len(expected)} accepted messages never arrived"
        time.sleep(0.02)
    # Nothing under a new ID. A writer killed between a call's return and writing its ID down leaves
    # one accepted message whose ID the test never saw: ``unrecorded`` allows one per random kill.
    assert len(set(receiver.message_ids()) - set(expected)) <= unrecorded


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_accepted_calls_survive_a_kill_right_after_them(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient, how: str
) -> None:
    spool, ids = tmp_path / "spool", tmp_path / "ids"
    write_and_die(spool, ids, receiver.url, 500, f"os.kill(os.getpid(), signal.{how})")
    assert len(accepted(ids)) == 500
    delivered_by_a_new_process(receiver, spool, accepted(ids), make_client)


def test_sigkill_at_random_moments_loses_no_accepted_call(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient
) -> None:
    spool, ids = tmp_path / "spool", tmp_path / "ids"
    code = WRITER.format(
        token=TOKEN, host=receiver.url, spool=str(spool), interval=0.01, ids=str(ids), count=100_000, ending=""
    )
    for _ in range(3):  # each writer delivers some, and is killed mid-stream
        writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while len(accepted(ids)) < random.randint(200, 3000):
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.005)
        writer.kill()
        writer.wait(10)
    expected = accepted(ids)
    # A call that returned wrote its ID after the spool held the message: every ID written must arrive.
    delivered_by_a_new_process(receiver, spool, expected, make_client, unrecorded=3)


@pytest.mark.parametrize(("writers", "count"), [(3, 300), (20, 60)], ids=["3 writers", "20 writers"])
def test_writers_killed_together_one_new_process_sends_all(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient, writers: int, count: int
) -> None:
    spool = tmp_path / "spool"
    code = [
        textwrap.dedent(
            WRITER.format(
                token=TOKEN,
                host=receiver.url,
                spool=str(spool),
                interval=60,
                ids=str(tmp_path / f"ids{n}"),
                count=count,
                ending="time.sleep(60)",
            )
        )
        for n in range(writers)
    ]
    processes = [subprocess.Popen([sys.executable, "-c", c]) for c in code]
    deadline = time.monotonic() + 60
    while sum(len(accepted(tmp_path / f"ids{n}")) for n in range(writers)) < writers * count:
        assert time.monotonic() < deadline and all(process.poll() is None for process in processes)
        time.sleep(0.01)
    for process in processes:
        process.send_signal(signal.SIGKILL)
    for process in processes:
        assert process.wait(10) == -signal.SIGKILL
    expected = [i for n in range(writers) for i in accepted(tmp_path / f"ids{n}")]
    assert len(expected) == writers * count
    delivered_by_a_new_process(receiver, spool, expected, make_client)


def test_at_exit_with_vitally_down_what_is_left_stays_for_the_next_process(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient
) -> None:
    spool, ids = tmp_path / "spool", tmp_path / "ids"
    receiver.respond = lambda request: Reply(503, {"message": "down"})  # Vitally down: the same destination
    log = write_and_die(spool, ids, receiver.url, 200, "", interval=0.01)
    assert inspect(spool).pending == 200 and receiver.messages == []
    assert "200 message(s) left for a later process to send" in log and "lost" not in log
    receiver.respond = None  # up again
    delivered_by_a_new_process(receiver, spool, accepted(ids), make_client)


def test_refused_messages_go_to_on_error_and_the_dead_letters_not_again(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient
) -> None:
    receiver.respond = lambda request: (
        Reply(400, {"message": "bad"}) if any(m["properties"].get("bad") for m in request.messages or []) else None
    )
    errors: List[Any] = []
    client = make_client(spool=str(tmp_path), on_error=lambda error, messages: errors.extend(messages))
    client.track("u", "e", {"bad": False})
    _, bad = client.track("u", "e", {"bad": True})
    assert client.flush(timeout=10)
    assert [m["messageId"] for m in errors] == [bad["messageId"]]
    lines = (tmp_path / DEAD_LETTER).read_text().splitlines()
    assert [json.loads(line)["messageId"] for line in lines] == [bad["messageId"]]
    assert inspect(tmp_path).pending == 0  # delivered and refused alike left the spool


def test_the_dead_letters_import_again(tmp_path: Path, receiver: Receiver, make_client: MakeClient) -> None:
    receiver.respond = lambda request: Reply(400, {"message": "blocked"})
    client = make_client(spool=str(tmp_path / "spool"))
    _, message = client.track("u", "e")
    assert client.flush(timeout=10)
    receiver.respond = None
    done = subprocess.run(
        [
            COMMAND,
            "import",
            "--host",
            receiver.url,
            "--write-key",
            TOKEN,
            str(tmp_path / "spool" / DEAD_LETTER),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert receiver.message_ids() == [message["messageId"]]


def test_a_full_spool_refuses_and_counts(tmp_path: Path, make_client: MakeClient) -> None:
    client = make_client(spool=str(tmp_path), max_spool_bytes=1 << 16, upload_interval=60, host="http://127.0.0.1:9")
    results = [client.track("u", "e", {"pad": "x" * 200})[0] for _ in range(1000)]
    assert True in results and False in results
    assert results.index(False) > 50  # it took messages up to its bound
    assert client.stats().dropped == results.count(False)
    assert sum(f.stat().st_size for f in tmp_path.glob("*.seg")) <= 1 << 16


def test_failures_that_may_pass_stay_in_the_spool_not_in_on_error(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.respond = lambda request: Reply(503, {"message": "busy"})
    errors: List[Any] = []
    client = make_client(spool=str(tmp_path), retry_wait=0.01, max_retries=1, on_error=lambda e, m: errors.append(m))
    for i in range(5):
        client.track("u", "e", {"i": i})
    assert client.flush(timeout=10)
    assert errors == []
    assert "kept in the spool for a later try" in caplog.text
    assert inspect(tmp_path).pending == 5


def test_the_spool_command(tmp_path: Path, receiver: Receiver) -> None:
    spool, ids = tmp_path / "spool", tmp_path / "ids"
    write_and_die(spool, ids, receiver.url, 50, "os.kill(os.getpid(), signal.SIGKILL)")
    shown = subprocess.run([COMMAND, "spool", str(spool)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "50 messages pending"
    sent = subprocess.run(
        [COMMAND, "spool", "--send", "--host", receiver.url, "--write-key", TOKEN, str(spool)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert sorted(receiver.message_ids()) == sorted(accepted(ids))
    assert inspect(spool).pending == 0


def test_spool_with_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="spool"):
        Client(TOKEN, host="http://127.0.0.1:9", spool=str(tmp_path), sync_mode=True)


def test_spool_comes_from_the_environment(
    tmp_path: Path, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITALLY_SPOOL", str(tmp_path))
    client = make_client(upload_interval=60)
    client.track("u", "e")
    assert inspect(tmp_path).pending == 1


def test_a_call_the_spool_refuses_is_logged_as_the_spool_s_refusal(
    tmp_path: Path, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    # The worker used to log it as "queue full (max_queue_size=50000)", which it was not.
    caplog.set_level(logging.WARNING, logger="analytics_vitally")
    client = make_client(host="http://127.0.0.1:9", spool=str(tmp_path), max_spool_bytes=1 << 16, upload_interval=60)
    results = [client.track("u", "e", {"pad": "x" * 500})[0] for _ in range(200)]
    assert False in results and client.stats().dropped == results.count(False)
    assert "spool" in caplog.text and "is full (max_bytes=65,536)" in caplog.text
    assert "max_queue_size" not in caplog.text


def test_a_record_that_is_not_a_json_message_goes_to_the_dead_letters(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient
) -> None:
    # Its checksum is right, its bytes are not UTF-8: the worker thread used to die on it, and the
    # good records after it were never sent.
    writer = Spool(tmp_path)
    writer.append(b"\xff\xfe not a message")
    good = [f"good-{i}" for i in range(3)]
    for message_id in good:
        track = {"type": "track", "userId": "u", "event": "e", "properties": {}, "messageId": message_id}
        writer.append(json.dumps(track).encode())
    writer.close()  # left for a later process, as if its writer had died
    client = make_client(spool=str(tmp_path))
    assert client.flush(timeout=10)
    assert receiver.wait_for(3) and sorted(receiver.message_ids()) == good
    assert (tmp_path / DEAD_LETTER).read_bytes() == b"\xff\xfe not a message\n"
    client.track("u", "after")  # the worker thread lives on
    assert client.flush(timeout=10) and receiver.wait_for(4)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs filled to the last byte (needs root and mount; skipped, saying so, elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("a full file system needs a tmpfs mount: root on Linux only (the fake ENOSPC test covers the rest)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here: {made.stderr.decode(errors='replace').strip()}")
    try:
        with open(mount / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while filler.write(b"\0" * 65536):  # unbuffered: nothing left to write when it closes
                pass
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_does_not_stop_the_app_and_the_spool_drains_once_space_returns(
    full_disk: Path, receiver: Receiver, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="analytics_vitally")
    spool = full_disk / "spool"
    spool.mkdir()
    client = make_client(spool=str(spool), max_spool_bytes=1 << 16)  # used to raise ConfigurationError
    assert "no space for a spool file" in caplog.text
    assert client.track("u", "refused")[0] is False  # refused, counted, never blocks
    assert client.stats().dropped == 1
    (full_disk / "filler").unlink()
    deadline = time.monotonic() + 10
    while not client.track("u", "accepted")[0]:  # the next file is tried again at most once a second
        assert time.monotonic() < deadline, "calls still refused 10 s after space returned"
        time.sleep(0.05)
    assert client.flush(timeout=10)
    assert [message["event"] for message in receiver.messages] == ["accepted"]


def test_no_space_when_the_client_is_made_is_a_warning_not_an_error(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same logic without a tmpfs: the spool's allocation fails with ENOSPC until "space returns".
    allocate = spool_files.allocate
    full = [True]

    def allocate_on_a_full_disk(handle: int, length: int, prefill: bool) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        allocate(handle, length, prefill)

    monkeypatch.setattr(spool_files, "allocate", allocate_on_a_full_disk)
    client = make_client(spool=str(tmp_path))
    assert client.track("u", "refused")[0] is False
    full[0] = False
    deadline = time.monotonic() + 10
    while not client.track("u", "accepted")[0]:
        assert time.monotonic() < deadline, "calls still refused 10 s after space returned"
        time.sleep(0.05)
    assert client.flush(timeout=10) and receiver.wait_for(1)
    assert [message["event"] for message in receiver.messages] == ["accepted"]


def test_a_deleted_spool_directory_is_noticed_and_made_again(
    tmp_path: Path, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    # After `rm -rf` of the directory, calls used to return True with no word, into files that no
    # longer existed: a crash then lost every one of them.
    caplog.set_level(logging.ERROR, logger="analytics_vitally")
    spool = tmp_path / "spool"
    client = make_client(host="http://127.0.0.1:9", spool=str(spool), upload_interval=60)
    assert all(client.track("u", "before")[0] for _ in range(10))
    shutil.rmtree(spool)
    deadline = time.monotonic() + 10
    while "its files were deleted" not in caplog.text:  # the worker looks about once a second
        assert time.monotonic() < deadline, "a deleted spool directory went unnoticed for 10 s"
        time.sleep(0.05)
    assert spool.is_dir()
    while not client.track("u", "after")[0]:
        assert time.monotonic() < deadline, "calls still refused after the directory was made again"
        time.sleep(0.05)
    assert inspect(spool).pending >= 1  # what is accepted now is on disk again


def test_a_shared_spool_never_sends_one_apps_messages_with_another_apps_key(tmp_path: Path) -> None:
    # App A (key A, host A) died with 10 messages spooled; app B (key B, host B) on the same directory
    # used to send all 10 to host B with key B: personal data into another Vitally account.
    spool = tmp_path / "spool"
    with Receiver(token="key-a") as host_a, Receiver(token="key-b") as host_b:
        app_a = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(
                    f"""
                    import time
                    from analytics_vitally import Client
                    client = Client("key-a", host={host_a.url!r}, spool={str(spool)!r}, upload_interval=60)
                    for i in range(10):
                        client.track("u", "e", {{"i": i}})
                    print("spooled", flush=True)
                    time.sleep(60)
                    """
                ),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert app_a.stdout is not None and app_a.stdout.readline().strip() == "spooled"
        finally:
            app_a.kill()  # SIGKILL: its 10 messages stay in the spool
            app_a.communicate()  # waits, and closes its pipe
        with Client("key-b", host=host_b.url, spool=str(spool)) as app_b:
            app_b.track("u", "b's own")
            assert app_b.flush(timeout=10)
        assert [message["event"] for message in host_b.messages] == ["b's own"]

        a_fingerprint = Settings(write_key="key-a", host=host_a.url).resolved().fingerprint
        report = inspect(spool)
        assert {file.owner for file in report.files if file.pending} == {a_fingerprint}
        listed = subprocess.run([COMMAND, "spool", str(spool)], capture_output=True, text=True, timeout=60)
        assert f"destination {a_fingerprint}" in listed.stdout and "key-a" not in listed.stdout

        command = [COMMAND, "spool", "--send", str(spool)]
        as_b = subprocess.run(
            [*command, "--write-key", "key-b", "--host", host_b.url], capture_output=True, text=True, timeout=60
        )
        assert "sent 0" in as_b.stdout and f"10 for {a_fingerprint}" in as_b.stderr, as_b.stderr
        assert len(host_b.messages) == 1
        as_a = subprocess.run(
            [*command, "--write-key", "key-a", "--host", host_a.url], capture_output=True, text=True, timeout=60
        )
        assert as_a.returncode == 0, as_a.stderr
        assert host_a.wait_for(10) and len(set(host_a.message_ids())) == 10
        assert inspect(spool).pending == 0


def test_leftovers_are_sent_from_a_full_disk(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `analytics-vitally spool --send DIR` used to exit 2 on a full disk: nothing could drain the spool.
    writer = Spool(tmp_path)
    for i in range(3):
        track = {"type": "track", "userId": "u", "event": "e", "properties": {}, "messageId": f"left-{i}"}
        writer.append(json.dumps(track).encode())
    writer.close()

    def no_space(handle: int, length: int, prefill: bool) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_files, "allocate", no_space)
    assert send_leftovers(str(tmp_path), write_key=TOKEN, host=receiver.url) == (3, 0, 0)
    assert sorted(receiver.message_ids()) == ["left-0", "left-1", "left-2"]


def test_spool_send_moves_a_damaged_record_to_the_dead_letters(tmp_path: Path, receiver: Receiver) -> None:
    # send_leftovers decoded records itself: a non-UTF-8 one ended `spool --send` with a traceback.
    writer = Spool(tmp_path)
    writer.append(b"\xff\xfe not a message")
    track = {"type": "track", "userId": "u", "event": "e", "properties": {}, "messageId": "m"}
    writer.append(json.dumps(track).encode())
    writer.close()
    assert send_leftovers(str(tmp_path), write_key=TOKEN, host=receiver.url) == (1, 0, 0)
    assert (tmp_path / DEAD_LETTER).read_bytes() == b"\xff\xfe not a message\n"
