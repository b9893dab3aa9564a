"""The spool-backed queue (``durable.Durable``) driven through its interface, with a real spool and a
scripted sender in place of the transport: what leaves the spool, what stays, what is dead-lettered."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from analytics_vitally.delivery import Failure, Outcome
from analytics_vitally.durable import READ_INTERVAL, Durable
from analytics_vitally.errors import DeliveryError
from analytics_vitally.settings import Settings
from analytics_vitally.spool import DEAD_LETTER, Spool, inspect

Reported = List[Tuple[Exception, List[Any]]]


class ScriptedSender:
    """A transport stand-in: answers each batch with ``script(messages)``; records what it was given."""

    def __init__(self) -> None:
        self.batches: List[List[str]] = []
        self.script: Callable[[List[str]], Outcome] = lambda messages: Outcome(sent=len(messages), batches=1)
        self.aborted = False

    def deliver(self, items: List[str]) -> Outcome:
        self.batches.append([str(item) for item in items])  # copies: nothing may hang on identity
        return self.script(items)

    def get_ready(self) -> None:
        pass

    def release(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def stop_retrying(self, why: str) -> None:
        pass


def message(i: int) -> str:
    return json.dumps({"type": "track", "userId": "u", "event": "e", "messageId": f"m-{i}"})


@pytest.fixture
def sender() -> ScriptedSender:
    return ScriptedSender()


@pytest.fixture
def make_durable(tmp_path: Path, sender: ScriptedSender) -> Iterator[Callable[..., Tuple[Durable, Reported]]]:
    made: List[Durable] = []

    def make(**settings: Any) -> Tuple[Durable, Reported]:
        reported: Reported = []
        settings.setdefault("upload_interval", 60)
        on_error = lambda error, messages: reported.append((error, messages))  # noqa: E731
        chosen = Settings(write_key="k", on_error=on_error, **settings)
        spool = Spool(tmp_path / "spool", retry_delay=0, scan_interval=3600)
        durable = Durable(spool, sender, chosen)
        made.append(durable)
        return durable, reported

    yield make
    for durable in made:
        durable.worker.close(5)


def entries(spool: Spool, texts: List[str]) -> List[Tuple[str, int]]:
    batch = []
    for text in texts:
        token = spool.append(text.encode())
        assert token is not None
        batch.append((text, token))
    return batch


def dead_letters(spool: Spool) -> List[str]:
    path = Path(spool.directory) / DEAD_LETTER
    return path.read_text().splitlines() if path.exists() else []


def test_each_message_is_settled_by_its_position(
    make_durable: Callable[..., Tuple[Durable, Reported]], sender: ScriptedSender
) -> None:
    durable, reported = make_durable()
    batch = entries(durable.spool, [message(0), message(0), message(2), message(3)])  # two equal: positions tell
    sender.script = lambda messages: Outcome(
        sent=2,
        batches=2,
        failures=[Failure(DeliveryError("no answer"), 1, 2), Failure(DeliveryError("bad", 422), 3, 4)],
    )
    outcome = durable.deliver(batch)
    assert outcome.failed == 1  # the refused one is reported; the kept one is not
    assert [(str(error), [m["messageId"] for m in messages]) for error, messages in reported] == [("bad", ["m-3"])]
    assert dead_letters(durable.spool) == [message(3)]
    assert durable.spool.recover() == [(batch[1][1], message(0).encode())]  # position 1 stays, nothing else


def test_a_sender_that_raises_keeps_the_whole_batch(
    make_durable: Callable[..., Tuple[Durable, Reported]], sender: ScriptedSender
) -> None:
    durable, reported = make_durable()
    batch = entries(durable.spool, [message(i) for i in range(3)])

    def broken(messages: List[str]) -> Outcome:
        raise RuntimeError("a bug")

    sender.script = broken
    outcome = durable.deliver(batch)
    assert (outcome.sent, outcome.failed, reported) == (0, 0, [])
    assert sorted(durable.spool.recover()) == sorted((token, text.encode()) for text, token in batch)
    assert dead_letters(durable.spool) == []


def test_put_keeps_on_disk_only_what_the_full_queue_has_no_room_for(
    make_durable: Callable[..., Tuple[Durable, Reported]], sender: ScriptedSender
) -> None:
    gate = threading.Event()

    def held(messages: List[str]) -> Outcome:
        gate.wait(30)
        return Outcome(sent=len(messages), batches=1)

    sender.script = held
    durable, _ = make_durable(max_queue_size=2, upload_interval=60)
    assert [durable.put(message(i)) for i in range(3)] == [True, True, True]  # the third waits on disk only
    assert durable.worker.stats().dropped == 0
    assert inspect(durable.spool.directory).pending == 3
    gate.set()
    assert durable.worker.flush(timeout=10)  # waits for the one on disk only, too
    assert [m for batch in sender.batches for m in batch] == [message(0), message(1), message(2)]


def test_what_earlier_processes_left_is_read_back_and_flush_waits_for_it(
    tmp_path: Path, make_durable: Callable[..., Tuple[Durable, Reported]], sender: ScriptedSender
) -> None:
    earlier = Spool(tmp_path / "spool")
    for i in range(25):
        assert earlier.append(message(i).encode()) is not None
    earlier.close()  # a process that ended with 25 messages undelivered
    durable, _ = make_durable(upload_size=10)
    durable.worker.start()
    assert durable.worker.flush(timeout=10)  # waits for the backlog, not only for what was queued (nothing)
    assert sorted(m for batch in sender.batches for m in batch) == sorted(message(i) for i in range(25))
    assert inspect(durable.spool.directory).pending == 0  # each left the spool as it was delivered


def test_a_read_with_no_room_puts_the_next_one_off(make_durable: Callable[..., Tuple[Durable, Reported]]) -> None:
    durable, _ = make_durable()
    assert durable.due_in() <= 0  # the first read is at once
    assert durable.read(0) == []
    assert READ_INTERVAL - 0.5 < durable.due_in() <= READ_INTERVAL
    token: Optional[int] = durable.spool.append(message(0).encode())
    assert token is not None
    durable.spool.retry_later([token], delay=0)
    assert durable.read(10) == [(message(0), token)]
    assert durable.due_in() <= 0  # found something: there may be more


def test_retire_closes_the_spool_and_says_what_is_left_is_kept(
    make_durable: Callable[..., Tuple[Durable, Reported]],
) -> None:
    durable, _ = make_durable()
    assert durable.put(message(0))
    assert durable.retire() is True
    assert durable.spool.append(b"{}") is None  # closed
