"""The on-disk spool, driven through its interface, with real processes killed by real signals."""

from __future__ import annotations

import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from analytics_vitally.errors import ConfigurationError
from analytics_vitally.spool import DEAD_LETTER, Spool, inspect
from analytics_vitally.testing import Receiver

from .conftest import TOKEN

SMALL = {"max_bytes": 1 << 20, "segment_bytes": 4096}
"""Segments of one page, so a few hundred records span many files."""

CHILD_PRELUDE = """
import json, os, signal, sys, threading, time
from analytics_vitally.spool import Spool
directory = sys.argv[1]
def say(*words):
    sys.stdout.write(" ".join(str(word) for word in words) + "\\n")
    sys.stdout.flush()
"""


class Child:
    """A Python process running ``code`` with the spool directory (and ``arguments``) as its arguments."""

    def __init__(self, code: str, directory: Path, *arguments: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code), str(directory), *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self._buffer = b""

    def line(self, timeout: float = 30.0) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self.process.stdout], [], [], max(0.0, remaining))
            if not readable:
                raise AssertionError(f"no line from the child within {timeout} s; stderr: {self._stderr()}")
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the child ended (code {self.process.wait()}); stderr: {self._stderr()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no atexit, no finally, no close()
        self.process.wait(30)
        self._close_pipes()

    def finish(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait(30)
        assert code == 0, self._stderr()
        self._close_pipes()

    def _stderr(self) -> str:
        assert self.process.stderr is not None
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read().decode(errors="replace")[-3000:]

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()


@pytest.fixture
def children() -> Iterator[List[Child]]:
    started: List[Child] = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.kill()


def recover_all(directory: Path, **options: int) -> List[Tuple[int, bytes]]:
    """Everything a new spool in this process adopts from processes that are gone, acknowledged."""
    spool = Spool(directory, scan_interval=0, **options)
    found: List[Tuple[int, bytes]] = []
    while True:
        batch = spool.recover(100)
        if not batch:
            break
        found.extend(batch)
        spool.acknowledge(token for token, _ in batch)
    spool.close()
    return found


def datas(records: List[Tuple[int, bytes]]) -> List[bytes]:
    return [data for _, data in records]


def message(i: int, who: str = "w") -> bytes:
    return json.dumps(
        {"type": "track", "userId": who, "event": "e", "messageId": f"{who}-{i}", "timestamp": "2024-01-01T00:00:00Z"},
        separators=(",", ":"),
    ).encode()


def apparent_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir() if path.name != DEAD_LETTER)


# Crash safety. --------------------------------------------------------------------------


def test_every_record_whose_append_returned_survives_sigkill(tmp_path: Path, children: List[Child]) -> None:
    child = Child(
        """
        spool = Spool(directory, max_bytes=1 << 20, segment_bytes=4096)
        for i in range(500):
            assert spool.append(b"record-%d" % i) is not None
        say("appended")
        sys.stdin.readline()
        """,
        tmp_path,
    )
    children.append(child)
    assert child.line() == "appended"
    child.kill()

    recovered = datas(recover_all(tmp_path, **SMALL))

    assert sorted(recovered) == sorted(b"record-%d" % i for i in range(500))
    assert inspect(tmp_path).pending == 0  # adopted files are deleted once acknowledged


def test_sigkill_at_random_points_loses_no_returned_record(tmp_path: Path, children: List[Child]) -> None:
    """A thread acknowledges the even records as they are written (files get sealed, deleted and
    made ahead meanwhile); the odd ones must all be recovered, up to the last one reported."""
    rounds = 3
    for round_number in range(rounds):
        directory = tmp_path / str(round_number)
        child = Child(
            """
            spool = Spool(directory, max_bytes=1 << 20, segment_bytes=4096)
            acknowledged = []
            def acknowledge():
                while True:
                    time.sleep(0.001)
                    batch, acknowledged[:] = acknowledged[:], []
                    spool.acknowledge(batch)
            threading.Thread(target=acknowledge, daemon=True).start()
            i = 0
            while True:
                token = spool.append(b"record-%d" % i)
                assert token is not None
                if i % 2 == 0:
                    acknowledged.append(token)
                if i % 25 == 0:
                    say(i)
                i += 1
            """,
            directory,
        )
        children.append(child)
        stop_after = random.randint(5, 400)
        reported = 0
        for _ in range(stop_after):
            reported = int(child.line())
        child.kill()

        recovered = datas(recover_all(directory, **SMALL))

        numbers = [int(data.split(b"-")[1]) for data in recovered]
        assert len(numbers) == len(set(numbers)), "a record was recovered twice"
        missing = [i for i in range(1, reported + 1, 2) if i not in set(numbers)]
        assert not missing, f"killed after record {reported}: odd records lost: {missing[:10]}"


def test_an_adopter_skips_records_acknowledged_before_their_writer_died(tmp_path: Path) -> None:
    spool = Spool(tmp_path, **SMALL)
    tokens = [spool.append(message(i)) for i in range(400)]
    spool.acknowledge(token for i, token in enumerate(tokens) if i % 3 and token is not None)
    spool.close()

    recovered = datas(recover_all(tmp_path, **SMALL))

    assert recovered == [message(i) for i in range(0, 400, 3)]


def torn_spool(directory: Path, count: int = 20) -> List[bytes]:
    """``count`` records left by a spool that closed (so other spools may adopt its file)."""
    spool = Spool(directory, max_bytes=1 << 20, segment_bytes=64 << 10)
    records = [message(i) for i in range(count)]
    for record in records:
        assert spool.append(record) is not None
    spool.close()
    return records


def damage(directory: Path, record: bytes, how: str) -> None:
    (path,) = directory.glob("*.seg")
    content = bytearray(path.read_bytes())
    data = content.find(record)
    header = data - 12  # mark (2), state, unused, length (4), checksum (4)
    if how == "cut":
        content = content[: data + len(record) // 2]
    elif how == "unwritten end":  # a kill in the middle of the copy: the rest of the page is still zero
        content[data + len(record) // 2 :] = bytes(len(content) - data - len(record) // 2)
    elif how == "data byte":
        content[data + 5] ^= 0x01
    elif how == "length":
        content[header + 4] ^= 0x40
    elif how == "mark":
        content[header] = 0
    path.write_bytes(bytes(content))


@pytest.mark.parametrize(
    ("how", "which"),
    [("cut", 19), ("unwritten end", 19), ("data byte", 7), ("length", 7), ("mark", 7), ("data byte", 0)],
)
def test_a_torn_or_corrupt_record_is_skipped_and_logged_the_others_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str, which: int
) -> None:
    records = torn_spool(tmp_path)
    damage(tmp_path, records[which], how)

    with caplog.at_level(logging.WARNING, logger="analytics_vitally"):
        recovered = datas(recover_all(tmp_path))

    assert recovered == records[:which] + records[which + 1 :]
    assert [record.getMessage() for record in caplog.records if "torn or corrupt" in record.getMessage()]


# Several processes. ---------------------------------------------------------------------


def test_three_writers_killed_together_are_all_recovered_by_one_new_process(
    tmp_path: Path, children: List[Child]
) -> None:
    writers = [
        Child(
            """
            spool = Spool(directory, max_bytes=1 << 20, segment_bytes=4096)
            me = sys.argv[2]
            for i in range(300):
                assert spool.append(b"%s-%d" % (me.encode(), i)) is not None
            say("appended")
            sys.stdin.readline()
            """,
            tmp_path,
            name,
        )
        for name in ("x", "y", "z")
    ]
    children.extend(writers)
    for writer in writers:
        assert writer.line() == "appended"
    for writer in writers:
        writer.process.send_signal(signal.SIGKILL)
    for writer in writers:
        writer.kill()

    recovered = datas(recover_all(tmp_path, **SMALL))

    assert sorted(recovered) == sorted(b"%s-%d" % (name, i) for name in (b"x", b"y", b"z") for i in range(300))
    assert not list(tmp_path.glob("*.seg"))  # adopted, delivered, deleted


LIVE_ADOPTER = """
spool = Spool(directory, max_bytes=1 << 20, segment_bytes=4096, scan_interval=0)
me = sys.argv[2]
for i in range(5):
    spool.append(b"%s-own-%d" % (me.encode(), i))
say("ready")
sys.stdin.readline()
found = []
while True:
    batch = spool.recover(10)
    if not batch:
        break
    found += [data.decode() for _, data in batch]
    spool.acknowledge(token for token, _ in batch)
say(json.dumps(found))
sys.stdin.readline()
"""


def test_files_of_a_dead_process_are_adopted_by_exactly_one_of_two_live_ones(
    tmp_path: Path, children: List[Child]
) -> None:
    dead = Child(
        """
        spool = Spool(directory, max_bytes=1 << 20, segment_bytes=4096)
        for i in range(600):
            spool.append(b"dead-%d" % i)
        say("appended")
        sys.stdin.readline()
        """,
        tmp_path,
    )
    children.append(dead)
    assert dead.line() == "appended"
    dead.kill()
    adopters = [Child(LIVE_ADOPTER, tmp_path, name) for name in ("b", "c")]
    children.extend(adopters)
    for child in adopters:
        assert child.line() == "ready"
    for child in adopters:
        child.send("go")
    found = [set(json.loads(child.line())) for child in adopters]
    for child in adopters:
        child.finish()

    assert found[0].isdisjoint(found[1])
    assert found[0] | found[1] == {f"dead-{i}" for i in range(600)}


def test_a_forked_child_writes_its_own_files_and_leaves_the_parents_locked(
    tmp_path: Path, children: List[Child]
) -> None:
    parent = Child(
        """
        spool = Spool(directory, max_bytes=1 << 20, segment_bytes=4096)
        for i in range(3):
            spool.append(b"parent-%d" % i)
        pid = os.fork()
        if pid == 0:  # no explicit reset: the spool's own at-fork hook must do it
            for i in range(3):
                spool.append(b"child-%d" % i)
            os._exit(0)  # ends without closing anything, like a kill
        for i in range(3, 6):
            spool.append(b"parent-%d" % i)
        os.waitpid(pid, 0)
        say("ready")
        sys.stdin.readline()
        """,
        tmp_path,
    )
    children.append(parent)
    assert parent.line() == "ready"

    while_parent_lives = datas(recover_all(tmp_path, **SMALL))
    parent.kill()
    after_parent = datas(recover_all(tmp_path, **SMALL))

    assert sorted(while_parent_lives) == [b"child-0", b"child-1", b"child-2"]
    assert sorted(after_parent) == [b"parent-%d" % i for i in range(6)]


def test_an_append_from_a_signal_handler_during_an_append_neither_deadlocks_nor_loses_track(
    tmp_path: Path, children: List[Child]
) -> None:
    """Signals land on the appending thread every 0.2 ms, often inside append (while a new file is
    made, say); the handler appends too. No deadlock; every record whose append returned is
    recovered once; and once all are acknowledged no file is left behind (none was lost track of)."""
    child = Child(
        """
        def hammer(spool, calls):
            returned = []
            def on_signal(number, frame):
                data = b"signal-%d" % len(returned)
                token = spool.append(data)
                if token is not None:
                    returned.append((token, data))
            signal.signal(signal.SIGUSR1, on_signal)
            main = threading.get_ident()
            done = threading.Event()
            def send():
                while not done.is_set():
                    signal.pthread_kill(main, signal.SIGUSR1)
                    time.sleep(0.0002)
            sender = threading.Thread(target=send)
            sender.start()
            for i in range(calls):
                data = b"main-%d" % i
                token = spool.append(data)
                if token is not None:
                    returned.append((token, data))
            done.set()
            sender.join()
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            return returned

        kept = os.path.join(directory, "kept")
        spool = Spool(kept, max_bytes=1 << 24, segment_bytes=4096)
        returned = hammer(spool, 15000)
        spool.close()
        found = [data for _, data in Spool(kept, scan_interval=0).recover(10**6)]
        signals = sum(data.startswith(b"signal") for _, data in returned)
        say(len(returned), signals, sorted(found) == sorted(data for _, data in returned))

        acknowledged = os.path.join(directory, "acknowledged")
        spool = Spool(acknowledged, max_bytes=1 << 24, segment_bytes=4096)
        returned = hammer(spool, 15000)
        spool.acknowledge(token for token, _ in returned)
        say(spool.pending, len([name for name in os.listdir(acknowledged) if name.endswith(".seg")]))
        """,
        tmp_path,
    )
    children.append(child)
    returned, signals, same = child.line(timeout=60).split()
    pending, files = child.line(timeout=60).split()
    child.finish()

    assert same == "True", f"{returned} appends returned a token, not all of them were recovered once"
    assert int(signals) > 0
    assert (pending, files) == ("0", "1") or (pending, files) == ("0", "2"), "a file was lost track of"


# The bound and reclaiming space. -------------------------------------------------------


def test_append_refuses_past_max_bytes_and_accepts_again_once_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 1 << 16
    spool = Spool(tmp_path, max_bytes=limit, segment_bytes=4096)
    tokens = []
    with caplog.at_level(logging.WARNING, logger="analytics_vitally"):
        for i in range(5000):
            token = spool.append(message(i))
            assert apparent_size(tmp_path) <= limit
            if token is None:
                break
            tokens.append(token)
    assert 0 < len(tokens) < 5000
    assert spool.append(message(0)) is None
    assert any("spool is full" in record.getMessage() for record in caplog.records)

    spool.acknowledge(tokens)

    assert apparent_size(tmp_path) <= 2 * 4096
    assert spool.append(message(0)) is not None
    spool.close()


def test_space_is_reclaimed_after_out_of_order_acknowledgements_from_several_threads(tmp_path: Path) -> None:
    spool = Spool(tmp_path, **SMALL)
    tokens = [spool.append(message(i)) for i in range(3000)]
    assert None not in tokens
    assert apparent_size(tmp_path) > 50 * 4096
    random.shuffle(tokens)
    slices = [tokens[i::4] for i in range(4)]
    threads = [threading.Thread(target=spool.acknowledge, args=(part,)) for part in slices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert spool.pending == 0
    assert apparent_size(tmp_path) <= 2 * 4096  # the active file, and perhaps the next one made ahead
    assert spool.disk_bytes == apparent_size(tmp_path)
    assert spool.close() == 0
    assert apparent_size(tmp_path) == 0


def test_records_handed_back_are_offered_again_after_the_delay(tmp_path: Path) -> None:
    waits = Spool(tmp_path / "waits", retry_delay=3600, scan_interval=3600)
    token = waits.append(b"later")
    assert token is not None
    waits.retry_later([token])
    assert waits.recover() == []
    waits.retry_later([token], delay=0)
    assert waits.recover() == [(token, b"later")]
    waits.close()

    spool = Spool(tmp_path / "now", retry_delay=0, scan_interval=3600)
    token = spool.append(b"again")
    assert token is not None
    spool.retry_later([token])
    assert spool.recover() == [(token, b"again")]
    spool.acknowledge([token])
    spool.retry_later([token])
    assert spool.recover() == []  # acknowledged meanwhile: not offered again
    spool.close()


def test_fsync_mode_syncs_each_record_before_append_returns(tmp_path: Path, children: List[Child]) -> None:
    child = Child(
        """
        synced = []
        real = os.fdatasync if hasattr(os, "fdatasync") else None
        def counting(handle):
            synced.append(handle)
            real(handle)
        if real is not None:
            os.fdatasync = counting
        spool = Spool(directory, max_bytes=1 << 20, segment_bytes=4096, fsync=True)
        before = len(synced)
        for i in range(20):
            assert spool.append(b"durable-%d" % i) is not None
        say(len(synced) - before)
        sys.stdin.readline()
        """,
        tmp_path,
    )
    children.append(child)
    syncs = int(child.line())
    child.kill()

    assert sorted(datas(recover_all(tmp_path, **SMALL))) == sorted(b"durable-%d" % i for i in range(20))
    if sys.platform.startswith("linux"):
        assert syncs >= 20


# Dead letters and the report. -----------------------------------------------------------


def test_dead_letters_are_importer_input(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    rejected = [message(i, "dead") for i in range(3)]
    assert spool.dead_letter(rejected[:2]) == 2
    assert spool.dead_letter([rejected[2].decode()]) == 1
    spool.close()
    path = tmp_path / DEAD_LETTER
    assert path.read_bytes() == b"".join(line + b"\n" for line in rejected)

    with Receiver(token=TOKEN) as receiver:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "analytics_vitally", "import", "--host", receiver.url, "--write-key", TOKEN),
                *("--state", str(tmp_path / "state.json"), "--rejects", str(tmp_path / "rejects.jsonl"), str(path)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        arrived = {sent["messageId"] for sent in receiver.messages}
    assert arrived == {f"dead-{i}" for i in range(3)}


def test_dead_letters_never_follow_a_planted_link_and_are_for_their_owner_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    umask = os.umask(0o022)  # the usual umask, whatever the test runner's
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_bytes(b"")
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    (spool_dir / DEAD_LETTER).symlink_to(elsewhere)
    assert spool.dead_letter([message(0, "dead")]) == 0  # refused, and said at ERROR
    assert elsewhere.read_bytes() == b""
    assert "not written" in caplog.text
    (spool_dir / DEAD_LETTER).unlink()
    assert spool.dead_letter([message(1, "dead")]) == 1
    assert (spool_dir / DEAD_LETTER).stat().st_mode & 0o777 == 0o600
    (spool_dir / DEAD_LETTER).chmod(0o644)  # made looser by someone else: tightened at the next write
    assert spool.dead_letter([message(2, "dead")]) == 1
    assert (spool_dir / DEAD_LETTER).stat().st_mode & 0o777 == 0o600
    spool.close()
    os.umask(umask)


def test_inspect_reports_pending_messages_owners_and_dead_letters(tmp_path: Path) -> None:
    closed = Spool(tmp_path)
    closed.append(message(1))
    closed.append(message(2))
    acknowledged = closed.append(message(3))
    assert acknowledged is not None
    closed.acknowledge([acknowledged])
    closed.dead_letter([message(4)])
    closed.close()
    live = Spool(tmp_path, scan_interval=3600)
    live.append(json.dumps({"type": "track", "messageId": "x", "timestamp": "2023-05-15T12:31:12.123Z"}).encode())

    report = inspect(tmp_path)

    assert report.pending == 3
    assert report.orphaned == 2
    assert report.oldest == "2023-05-15T12:31:12.123Z"
    assert report.dead_letters == 1
    owners: Dict[bool, int] = {}
    for file in report.files:
        owners[file.live] = owners.get(file.live, 0) + file.pending
        assert file.writer == os.getpid()
    assert owners == {True: 1, False: 2}
    assert report.text().splitlines()[0] == "3 messages pending"
    live.close()


def test_windows_is_refused_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(ConfigurationError, match="Windows"):
        Spool(tmp_path)
    assert not list(tmp_path.iterdir())


def test_an_unusable_directory_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="spool"):
        Spool(blocker / "spool")


def test_adopting_a_huge_sparse_file_copies_no_more_than_a_window(tmp_path: Path) -> None:
    # Looking past the last record for anything but zeros used to copy the rest of the file:
    # 2 GB more peak RSS for a 1 GB sparse file. Python's own allocations are what tracemalloc counts.
    writer = Spool(tmp_path)
    writer.append(message(0))
    writer.close()
    [left] = [path for path in tmp_path.iterdir() if path.name.endswith(".seg")]
    with left.open("r+b") as stream:
        stream.truncate(256 << 20)  # a hole of zeros after the records
    adopter = Spool(tmp_path)
    tracemalloc.start()
    try:
        found = adopter.recover(10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [data for _, data in found] == [message(0)]
    assert peak < 8 << 20, f"{peak:,} bytes allocated to read a 256 MiB file"
    adopter.close()


def test_a_file_that_cannot_be_adopted_is_warned_about_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # It used to be warned about at every scan (every 5 s), for ever.
    (tmp_path / "not-a-spool-file.seg").write_bytes(b"hello" * 100)
    spool = Spool(tmp_path, scan_interval=0)
    with caplog.at_level(logging.WARNING, logger="analytics_vitally"):
        for _ in range(5):
            assert spool.recover(10) == []
    assert caplog.text.count("is not a spool file") == 1
    spool.close()
