"""The spool at its edges: a rotated write key, damaged file headers, its directory deleted under a
running process, a huge sparse file. Each case once lost or stranded messages without a word."""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import List

import pytest

from analytics_vitally.settings import Settings
from analytics_vitally.spool import DEAD_LETTER, Spool, inspect
from analytics_vitally.testing import Receiver, Reply

from .conftest import COMMAND, TOKEN, MakeClient

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the spool needs flock and shared maps")

SMALL = {"max_bytes": 1 << 20, "segment_bytes": 4096}
"""Segments of one page, so a few dozen messages span several files."""


def message(i: int, who: str = "m") -> bytes:
    track = {"type": "track", "userId": "u", "event": "e", "properties": {"i": i}, "messageId": f"{who}-{i}"}
    return json.dumps(track, separators=(",", ":")).encode()


def destination(write_key: str, host: str) -> Settings:
    return Settings(write_key=write_key, host=host).resolved()


def written(directory: Path, write_key: str, host: str, count: int, who: str, endpoint: bool = True) -> List[bytes]:
    """``count`` messages left in ``directory`` by a process (now gone) that sent with this key to this host;
    ``endpoint=False``: as a spool that does not record its endpoint (older versions, or a client that
    does not pass it)."""
    chosen = destination(write_key, host)
    spool = Spool(directory, owner=chosen.fingerprint, endpoint=chosen.url if endpoint else "", **SMALL)
    records = [message(i, who) for i in range(count)]
    for record in records:
        assert spool.append(record) is not None
    spool.close()
    return records


def drain(spool: Spool) -> List[bytes]:
    """Everything ``spool`` adopts, acknowledged."""
    found: List[bytes] = []
    while True:
        batch = spool.recover(100)
        if not batch:
            return found
        found.extend(data for _, data in batch)
        spool.acknowledge(token for token, _ in batch)


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


def spool_command(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COMMAND, "spool", *arguments], capture_output=True, text=True, timeout=60)


# A rotated write key (issue case 4). ----------------------------------------------------------


def test_a_rotated_key_s_files_are_said_at_warning_with_their_count_and_the_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # They used to be left at INFO, for ever: flush() True, nothing on stderr, 0 of 50 ever sent.
    host = "http://127.0.0.1:9"
    written(tmp_path, "old-key", host, 50, "old")
    files = len(list(tmp_path.glob("*.seg")))
    assert files > 1
    new = destination("new-key", host)
    spool = Spool(tmp_path, owner=new.fingerprint, endpoint=new.url, scan_interval=0)
    with caplog.at_level(logging.WARNING, logger="analytics_vitally"):
        assert spool.recover() == []
        assert spool.recover() == []  # said once
    said = warnings(caplog, "another write key for this endpoint")
    assert len(said) == 1, caplog.text
    assert f"50 message(s) in {files} file(s)" in said[0]
    assert f"analytics-vitally spool --send --rekey {tmp_path}" in said[0]
    spool.close()


OLD_KEY_WRITER = """
import sys, time
from analytics_vitally import Client
client = Client("old-key", host=sys.argv[2], spool=sys.argv[1], upload_interval=60)
for i in range(50):
    assert client.track("u", "e", {"i": i})[0]
print("spooled", flush=True)
time.sleep(60)
"""


def test_a_client_with_a_rotated_key_warns_about_what_the_old_key_left(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    # After a rotation: the new key's client says at WARNING what the old key left, and how to send it.
    old = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OLD_KEY_WRITER), str(tmp_path), receiver.url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert old.stdout is not None and old.stdout.readline().strip() == "spooled"
    finally:
        old.kill()  # the deploy: its 50 messages stay in the spool
        old.communicate()
    assert inspect(tmp_path).pending == 50
    with caplog.at_level(logging.WARNING, logger="analytics_vitally"):
        new = make_client(spool=str(tmp_path))  # the rotated key
        assert new.flush(timeout=10)
    said = warnings(caplog, "50 message(s) in 1 file(s)")
    assert said and "another write key for this endpoint" in said[0], caplog.text
    assert f"analytics-vitally spool --send --rekey {tmp_path}" in said[0]
    assert receiver.messages == []
    environment = {**os.environ, "VITALLY_WRITE_KEY": TOKEN, "VITALLY_HOST": receiver.url}
    command = [COMMAND, "spool", "--send", "--rekey", str(tmp_path)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)
    assert len(receiver.messages) == 50, done.stdout + done.stderr
    assert sorted(m["properties"]["i"] for m in receiver.messages) == list(range(50))


def test_spool_send_names_all_it_leaves_and_rekey_sends_only_this_endpoint_s(
    tmp_path: Path, receiver: Receiver
) -> None:
    # `spool --send` with the new key used to exit 0 having sent nothing (so `&& rm -rf DIR` lost them).
    rotated = written(tmp_path, "old-key", receiver.url, 50, "rotated")
    written(tmp_path, "old-key", "http://127.0.0.1:9", 5, "elsewhere")  # another endpoint: never with this key
    written(tmp_path, "old-key", receiver.url, 3, "unrecorded", endpoint=False)  # endpoint not recorded
    mine = destination(TOKEN, receiver.url).fingerprint
    options = ("--host", receiver.url, "--write-key", TOKEN, str(tmp_path))

    plain = spool_command("--send", *options)
    assert plain.returncode == 1, plain.stderr
    assert "sent 0" in plain.stdout and receiver.messages == []
    said = plain.stderr.splitlines()
    assert len(said) == 3 and all(line.startswith(f"left in {tmp_path}: ") for line in said), plain.stderr
    assert "50 message(s) in 2 file(s) written for this endpoint under another write key" in said[0]
    assert "add --rekey" in said[0] and f"this one is {mine}" in said[0]
    assert "5 message(s) in 1 file(s) for another endpoint" in said[1]
    assert "3 message(s) in 1 file(s) for another write key or endpoint (not recorded which)" in said[2]

    rekeyed = spool_command("--send", "--rekey", *options)
    assert rekeyed.returncode == 1, rekeyed.stderr  # 8 are still left, and said
    assert "rekeyed 50 message(s)" in rekeyed.stdout and "sent 50" in rekeyed.stdout, rekeyed.stdout
    assert sorted(receiver.message_ids()) == sorted(json.loads(record)["messageId"] for record in rotated)
    assert [line.split(": ")[1].split(" for ")[0] for line in rekeyed.stderr.splitlines()] == [
        "5 message(s) in 1 file(s)",
        "3 message(s) in 1 file(s)",
    ]
    assert inspect(tmp_path).pending == 8  # another endpoint's, and one that did not record its endpoint: kept


def test_spool_send_exits_1_while_dead_letters_are_left(tmp_path: Path, receiver: Receiver) -> None:
    written(tmp_path, TOKEN, receiver.url, 2, "sent")
    (tmp_path / DEAD_LETTER).write_bytes(message(0, "dead") + b"\n")
    done = spool_command("--send", "--host", receiver.url, "--write-key", TOKEN, str(tmp_path))
    assert done.returncode == 1 and "sent 2" in done.stdout
    assert "1 dead letter(s)" in done.stderr and "analytics-vitally import" in done.stderr
    assert spool_command("--rekey", str(tmp_path)).returncode == 2  # --rekey goes with --send


# A damaged file header (issue case 5). ----------------------------------------------------------


def test_no_flipped_bit_of_a_file_header_costs_a_record(tmp_path: Path) -> None:
    # 72 of 192 flips used to leave every pending record of the file unsent. Owner only (no endpoint):
    # the same harness runs against versions without endpoints.
    owner = destination(TOKEN, "http://127.0.0.1:9").fingerprint
    source = tmp_path / "written"
    spool = Spool(source, owner=owner, **SMALL)
    records = [message(i) for i in range(20)]
    for record in records:
        spool.append(record)
    spool.close()
    (path,) = source.glob("*.seg")
    content = path.read_bytes()
    lost: List[int] = []
    for bit in range(64 * 8):
        directory = tmp_path / str(bit)
        directory.mkdir()
        damaged = bytearray(content)
        damaged[bit // 8] ^= 1 << (bit % 8)
        (directory / path.name).write_bytes(bytes(damaged))
        adopter = Spool(directory, owner=owner, scan_interval=0, **SMALL)
        if sorted(drain(adopter)) != sorted(records):
            lost.append(bit)
        adopter.close()
    assert lost == [], f"{len(lost)} of 512 single-bit flips lost records (bits {lost[:12]}...)"


@pytest.mark.parametrize("how", ["two bits of the owner", "owner zeroed", "all zeros"])
def test_a_header_damaged_beyond_repair_is_said_at_warning_and_sent_to_no_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    # A zeroed owner used to read as "written before owners were recorded": adopted and sent by any key.
    owner = destination(TOKEN, "http://127.0.0.1:9").fingerprint
    records = [message(i) for i in range(20)]
    spool = Spool(tmp_path, owner=owner, segment_bytes=64 << 10, max_bytes=1 << 20)
    for record in records:
        spool.append(record)
    spool.close()
    (path,) = tmp_path.glob("*.seg")
    content = bytearray(path.read_bytes())
    if how == "two bits of the owner":
        content[26] ^= 0x01
        content[31] ^= 0x10
    elif how == "owner zeroed":
        content[24:40] = bytes(16)
    else:
        content[:64] = bytes(64)
    path.write_bytes(bytes(content))

    with caplog.at_level(logging.WARNING, logger="analytics_vitally"):
        assert drain(Spool(tmp_path, owner=owner, scan_interval=0)) == []
        assert drain(Spool(tmp_path, owner="someone-else", scan_interval=0)) == []
    said = warnings(caplog, "damaged header")
    assert len(said) == 2 and "20 message(s) in 1 file(s)" in said[0], caplog.text
    [file] = [file for file in inspect(tmp_path).files if file.name == path.name]
    assert (file.header, file.pending) == ("damaged", 20)
    assert sorted(drain(Spool(tmp_path, scan_interval=0))) == sorted(records)  # a spool of no owner takes any file


def test_files_with_a_version_1_header_are_still_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Written by the release before the header had a checksum and an endpoint.
    from analytics_vitally.spool.format import FILE_MAGIC, HEADER_V1, owner_bytes

    owner = destination(TOKEN, "http://127.0.0.1:9").fingerprint
    records = [message(i) for i in range(5)]
    spool = Spool(tmp_path, owner=owner, **SMALL)
    for record in records:
        spool.append(record)
    spool.close()
    (path,) = tmp_path.glob("*.seg")
    content = bytearray(path.read_bytes())
    content[:64] = HEADER_V1.pack(FILE_MAGIC, 4242, 1, 1.7e9, owner_bytes(owner)).ljust(64, b"\0")
    path.write_bytes(bytes(content))
    with caplog.at_level(logging.WARNING, logger="analytics_vitally"):
        assert drain(Spool(tmp_path, owner="another-owner", scan_interval=0)) == []
    assert warnings(caplog, "5 message(s) in 1 file(s)")  # another destination's: said, not sent
    [file] = [file for file in inspect(tmp_path).files if file.name == path.name]
    assert (file.header, file.owner, file.writer, file.pending) == ("ok", owner, 4242, 5)
    assert sorted(drain(Spool(tmp_path, owner=owner, scan_interval=0))) == sorted(records)


# The directory deleted under a running process (issue case 6). -----------------------------------

WRITER = """
import json, shutil, sys, time
from analytics_vitally import Client
from analytics_vitally.spool.store import LOOK_INTERVAL

spool, host, token, out = sys.argv[1:5]
client = Client(token, host=host, spool=spool, upload_interval=60)
accepted = []
deleted_at = None
for i in range(100_000):
    if i == 1000:
        shutil.rmtree(spool)  # a clean-up job, mid-stream
        deleted_at = time.monotonic()
    before = time.monotonic()
    queued, message = client.track("u", "e", {"i": i})
    if queued:
        accepted.append((message["messageId"], time.monotonic()))
    if deleted_at is not None and time.monotonic() - deleted_at > 0.2:
        break
# A call is at risk until append's next look at the file: only those accepted within LOOK_INTERVAL
# before the last call began may be lost to a kill now.
safe = sum(1 for _, at in accepted if at <= before - LOOK_INTERVAL)
with open(out, "w") as stream:
    json.dump({"ids": [message_id for message_id, _ in accepted], "safe": safe}, stream)
print("written", flush=True)
sys.stdin.readline()
"""


def test_a_deleted_directory_loses_no_accepted_call_to_a_sigkill(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient
) -> None:
    # The calls accepted before a deletion was noticed (on rotation, or the worker's look about once a
    # second) went into files without a name: a kill in that second lost all of them.
    spool, out = tmp_path / "spool", tmp_path / "accepted.json"
    receiver.respond = lambda request: Reply(503, {"message": "down"})  # nothing leaves while it runs
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(spool), receiver.url, TOKEN, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None
        ready, _, _ = select.select([writer.stdout], [], [], 60)
        assert ready and writer.stdout.readline() == b"written\n", writer.stderr.read() if writer.stderr else ""
    finally:
        writer.kill()  # SIGKILL: no exit drain, no close
        writer.communicate()
    result = json.loads(out.read_text())
    ids, safe = result["ids"], result["safe"]
    assert len(ids) > 1000 and safe > 1000
    receiver.respond = None

    make_client(spool=str(spool))  # the restart: it sends what the killed one left
    deadline = time.monotonic() + 30
    while not set(ids[:safe]) <= set(receiver.message_ids()):
        missing = len(set(ids[:safe]) - set(receiver.message_ids()))
        assert time.monotonic() < deadline, f"{missing} of {safe} calls accepted before the kill never arrived"
        time.sleep(0.02)


def test_records_moved_after_a_deletion_leave_with_their_originals(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, **SMALL)
    tokens = [spool.append(message(i)) for i in range(100)]  # over several files
    spool.acknowledge(token for token in tokens[:30] if token is not None)
    shutil.rmtree(directory)
    after: List[int] = []
    deadline = time.monotonic() + 10
    while not directory.is_dir() or inspect(directory).pending < 70 + len(after):  # moved at the next look
        assert time.monotonic() < deadline, "the deleted records were not written again"
        token = spool.append(message(len(after), "after"))
        assert token is not None
        after.append(token)
    assert inspect(directory).pending == 70 + len(after)
    assert spool.pending == 70 + len(after)
    spool.acknowledge([token for token in tokens[30:] if token is not None] + after)  # the original tokens
    assert spool.pending == 0 and inspect(directory).pending == 0
    assert spool.close() == 0
    assert not list(directory.glob("*.seg"))


# A huge sparse file (issue case 7). --------------------------------------------------------------

PEAK = """
import json, sys
from analytics_vitally import Client
from analytics_vitally.spool import inspect

def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

spool, host, token = sys.argv[1:4]
start = peak_kb()
pending = inspect(spool).pending
after_report = peak_kb()
client = Client(token, host=host, spool=spool)
sent = client.flush(timeout=60)
print(json.dumps({"start": start, "report": after_report, "end": peak_kb(), "pending": pending, "flushed": sent}))
client.shutdown()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc/self/status")
def test_a_huge_sparse_file_is_adopted_in_a_bounded_window(tmp_path: Path, receiver: Receiver) -> None:
    # Adopting it mapped and scanned the whole file: +1,024 MB of peak RSS for 1 GB; `spool DIR` read it all.
    from analytics_vitally.spool.format import MARK, PENDING, RECORD, crc32

    records = written(tmp_path, TOKEN, receiver.url, 3, "start")
    (path,) = tmp_path.glob("*.seg")
    late = [message(i, "late") for i in range(2)]
    with path.open("r+b") as stream:
        stream.truncate(1 << 30)  # a hole of zeros, then two whole records in the middle of it
        stream.seek(700 << 20)
        for record in late:
            stream.write(RECORD.pack(MARK, PENDING, 0, len(record), crc32(record)) + record)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PEAK), str(tmp_path), receiver.url, TOKEN],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert figures["pending"] == 5 and figures["flushed"]
    assert sorted(receiver.message_ids()) == sorted(json.loads(record)["messageId"] for record in records + late)
    growth = (figures["end"] - figures["start"]) << 10
    assert growth < 64 << 20, f"peak RSS grew by {growth >> 20} MiB to adopt a 1 GiB sparse file"
    assert (figures["report"] - figures["start"]) << 10 < 64 << 20, "analytics-vitally spool DIR read it all"
