"""The spool as the buffer it exists to be: a full memory queue does not refuse calls, the disk does.

With ``spool=DIR`` a call is refused only when the spool refuses it (``max_spool_bytes`` reached, or
a disk error: with ``spool_fsync=True`` a failed ``fdatasync`` too). What the queue had no room for
stays on disk only and is read back in order as the queue drains; nothing is sent twice, and
``flush()`` waits for it. Each test runs against the local receiver.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from analytics_vitally.spool import inspect
from analytics_vitally.testing import Receiver, Reply, Request

from .conftest import TOKEN, MakeClient, run_script

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the spool needs flock and shared maps")

RIDE_OUT = {"retry_wait": 0.01, "max_retries": 100}
"""Retries fast and often enough to outlast a short outage: the batch in flight is delivered after it."""


def outage(receiver: Receiver) -> threading.Event:
    """Vitally answers 503 while the returned event is set (it starts set)."""
    down = threading.Event()
    down.set()
    receiver.respond = lambda request: Reply(503, {"message": "down"}) if down.is_set() else None
    return down


def delivered_once(receiver: Receiver) -> Dict[str, int]:
    counts = Counter(receiver.message_ids())
    assert max(counts.values(), default=1) == 1, f"sent twice: {[m for m, n in counts.items() if n > 1][:5]}"
    return counts


def test_an_outage_fills_the_disk_not_the_memory_queue(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient
) -> None:
    # With max_queue_size=50, calls 51 on used to return (False, message) although the spool had room.
    down = outage(receiver)
    client = make_client(spool=str(tmp_path / "spool"), max_queue_size=50, **RIDE_OUT)
    accepted: List[str] = []
    for i in range(2_000):
        queued, message = client.track(f"user-{i % 5}", "e", {"seq": i})
        assert queued, f"call {i} refused during the outage (the queue was full, the spool was not)"
        accepted.append(message["messageId"])
    stats = client.stats()
    assert stats.dropped == 0 and stats.queue_depth <= 50  # memory holds the queue; the rest is on disk only
    assert receiver.messages == []
    down.clear()
    assert client.flush(timeout=60)  # waits for what was on disk only, too
    assert sorted(delivered_once(receiver)) == sorted(accepted)
    sequences: Dict[str, List[int]] = defaultdict(list)
    for message in receiver.messages:  # one worker thread: read back in the order the calls came
        sequences[message["userId"]].append(message["properties"]["seq"])
    assert all(seq == sorted(seq) for seq in sequences.values())


def test_a_full_spool_refuses_exactly_then_and_every_accepted_call_is_delivered(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="analytics_vitally")
    spool = tmp_path / "spool"
    down = outage(receiver)
    client = make_client(spool=str(spool), max_queue_size=50, max_spool_bytes=1 << 16, **RIDE_OUT)
    results = [client.track("u", "e", {"seq": i, "pad": "x" * 200}) for i in range(1_000)]
    taken = [queued for queued, _ in results]
    first_refused = taken.index(False)
    assert first_refused > 100  # far past the queue's 50: the disk took them, up to its bound
    assert not any(taken[first_refused:])  # nothing is acknowledged during the outage: it stays full
    assert sum(path.stat().st_size for path in spool.glob("*.seg")) > 3 * (1 << 16) // 4
    assert client.stats().dropped == taken.count(False)
    assert "is full (max_bytes=65,536)" in caplog.text and "max_queue_size" not in caplog.text
    down.clear()
    assert client.flush(timeout=60)
    accepted = [message["messageId"] for queued, message in results if queued]
    assert sorted(delivered_once(receiver)) == sorted(accepted)  # and none of the refused
    assert inspect(spool).pending == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the spool syncs records with fdatasync on Linux")
def test_a_failed_fdatasync_refuses_the_call_and_its_message_is_never_sent(
    tmp_path: Path, receiver: Receiver, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With spool_fsync=True a failed fdatasync used to be logged while the call returned True: the
    # message then lived in the page cache only, which a power cut loses.
    fdatasync = os.fdatasync
    failing = threading.Event()

    def faulty_disk(fd: int) -> None:
        if failing.is_set():
            raise OSError(errno.EIO, "Input/output error")
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", faulty_disk)
    spool = tmp_path / "spool"
    client = make_client(spool=str(spool), spool_fsync=True)
    results: List[Any] = []
    for phase in ("before", "fault", "after"):
        if phase == "fault":
            failing.set()
        for i in range(3):
            results.append((phase, *client.track("u", phase, {"i": i})))
        failing.clear()
    assert [queued for _, queued, _ in results] == [True] * 3 + [False] * 3 + [True] * 3
    assert client.stats().dropped == 3
    assert client.flush(timeout=10)
    accepted = [message["messageId"] for phase, _, message in results if phase != "fault"]
    assert sorted(delivered_once(receiver)) == sorted(accepted)
    assert client.shutdown(timeout=10)
    assert inspect(spool).pending == 0  # the refused records are marked done: no later process sends them
    later = make_client(spool=str(spool))
    assert later.flush(timeout=10)
    assert sorted(receiver.message_ids()) == sorted(accepted)


def test_a_forked_child_does_not_read_back_what_its_parent_put_aside(tmp_path: Path, receiver: Receiver) -> None:
    # The parent's calls that found its queue full are on disk only, in the parent's files: the child
    # must neither wait for them nor count them as its own when it reads its own back.
    def respond(request: Request) -> Optional[Reply]:
        parents = any(m.get("properties", {}).get("who") == "parent" for m in request.messages or [])
        return Reply(503, {"message": "down"}) if parents else None

    receiver.respond = respond
    done = run_script(
        f"""
        import os, sys
        from analytics_vitally import Client
        client = Client({TOKEN!r}, host={receiver.url!r}, spool={str(tmp_path)!r}, max_queue_size=5,
                        retry_wait=0.01, exit_timeout=1)
        assert all(client.track("p", "e", {{"who": "parent", "i": i}})[0] for i in range(50))
        pid = os.fork()
        if pid == 0:
            results = [client.track("c", "e", {{"who": "child", "i": i}})[0] for i in range(100)]
            ok = all(results) and client.flush(timeout=20)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    children = [m["properties"]["i"] for m in receiver.messages if m["properties"]["who"] == "child"]
    assert sorted(children) == list(range(100))  # all of them, once, by the time the child's flush returned
