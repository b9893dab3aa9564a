"""The Worker alone, driven through its own interface with a recording ``Delivery`` (and ``Feed``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator, List, Optional

import pytest

from analytics_vitally.delivery import Outcome
from analytics_vitally.settings import Settings
from analytics_vitally.worker import Worker


class Recorder:
    """A ``Delivery`` that records each batch and can be held, or made to raise."""

    def __init__(self) -> None:
        self.batches: List[List[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_with: Optional[BaseException] = None
        self.threads: List[threading.Thread] = []
        self.aborted: List[bool] = []
        self.retired: List[bool] = []
        self.stopped_retrying: List[str] = []
        self.keeps = False
        """What ``retire()`` answers: whether undelivered entries are kept elsewhere."""
        self.ready: List[threading.Thread] = []
        self.released: List[threading.Thread] = []
        self.on_release: Callable[[], None] = lambda: None

    def deliver(self, items: List[str]) -> Outcome:
        self.threads.append(threading.current_thread())
        self.entered.set()
        self.gate.wait(30)
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        self.batches.append(items)
        return Outcome(sent=len(items), batches=1)

    def get_ready(self) -> None:
        self.ready.append(threading.current_thread())

    def release(self) -> None:
        self.on_release()
        self.released.append(threading.current_thread())

    def abort(self) -> None:
        self.aborted.append(True)

    def stop_retrying(self, why: str) -> None:
        self.stopped_retrying.append(why)

    def let_go(self) -> bool:
        return self.keeps

    def retire(self) -> bool:
        self.retired.append(True)
        return self.keeps

    @property
    def delivered(self) -> List[str]:
        return [item for batch in self.batches for item in batch]


@pytest.fixture
def deliver() -> Recorder:
    return Recorder()


@pytest.fixture
def make_worker(deliver: Recorder) -> Iterator[Callable[..., Worker]]:
    workers: List[Worker] = []

    def make(**settings: object) -> Worker:
        settings.setdefault("upload_interval", 60)
        worker = Worker(deliver, Settings(send=False, **settings))  # type: ignore[arg-type]
        workers.append(worker)
        return worker

    yield make
    deliver.gate.set()
    for worker in workers:
        worker.shutdown(timeout=5)


def live_worker_threads() -> List[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "analytics_vitally"]


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


def test_full_batches_leave_without_flush_and_the_rest_on_flush(
    make_worker: Callable[..., Worker], deliver: Recorder
) -> None:
    worker = make_worker(upload_size=10)
    for i in range(25):
        assert worker.put(f'"{i}"')
    wait_until(lambda: len(deliver.batches) == 2)
    assert worker.flush(timeout=10)
    assert [len(batch) for batch in deliver.batches] == [10, 10, 5]
    assert deliver.delivered == [f'"{i}"' for i in range(25)]


def test_a_batch_leaves_after_the_interval(make_worker: Callable[..., Worker], deliver: Recorder) -> None:
    worker = make_worker(upload_interval=0.05)
    worker.put('"a"')
    wait_until(lambda: deliver.delivered == ['"a"'])
    assert worker.stats().queue_depth == 0


def test_batches_stay_under_max_batch_bytes(make_worker: Callable[..., Worker], deliver: Recorder) -> None:
    worker = make_worker(max_batch_bytes=50)
    for _ in range(10):
        worker.put('"' + "x" * 18 + '"')  # 20 bytes: two per 50-byte body with brackets and comma
    assert worker.flush(timeout=10)
    assert all(len("[" + ",".join(batch) + "]") <= 50 for batch in deliver.batches)
    assert len(deliver.delivered) == 10


def test_flush_waits_for_the_batch_in_flight(make_worker: Callable[..., Worker], deliver: Recorder) -> None:
    worker = make_worker()
    deliver.gate.clear()
    worker.put('"a"')
    started = time.monotonic()
    assert worker.flush(timeout=0.2) is False
    assert time.monotonic() - started < 2
    deliver.gate.set()
    assert worker.flush(timeout=10) is True
    assert deliver.delivered == ['"a"']


def test_flush_and_shutdown_from_deliver_return_false(make_worker: Callable[..., Worker]) -> None:
    results: List[bool] = []
    worker: Worker

    class FlushingDelivery(Recorder):
        def deliver(self, items: List[str]) -> Outcome:
            results.append(worker.flush(timeout=5))
            results.append(worker.shutdown(timeout=5))
            return Outcome(sent=len(items))

    worker = Worker(FlushingDelivery(), Settings(send=False, upload_interval=60))
    worker.put('"a"')
    assert worker.flush(timeout=10)
    assert results == [False, False]
    worker.shutdown(timeout=5)


def test_a_full_queue_drops_and_counts(make_worker: Callable[..., Worker], deliver: Recorder) -> None:
    deliver.gate.clear()
    worker = make_worker(max_queue_size=3, upload_size=1)
    worker.put('"held"')
    deliver.entered.wait(10)  # one batch in flight, the queue is empty again
    results = [worker.put(f'"{i}"') for i in range(5)]
    assert results == [True, True, True, False, False]
    assert worker.stats().dropped == 2


def test_a_deliver_that_raises_counts_failed_and_the_thread_goes_on(
    make_worker: Callable[..., Worker], deliver: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker()
    deliver.fail_with = RuntimeError("bug")
    worker.put('"lost"')
    assert worker.flush(timeout=10)
    worker.put('"kept"')
    assert worker.flush(timeout=10)
    assert deliver.delivered == ['"kept"']
    assert worker.stats().failed == 1
    assert "1 message(s) not delivered" in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_flush_restarts_a_thread_that_died(make_worker: Callable[..., Worker], deliver: Recorder) -> None:
    worker = make_worker(upload_size=1)
    deliver.fail_with = SystemExit()  # not an Exception: it ends the thread
    deliver.gate.clear()
    worker.put('"first"')
    deliver.entered.wait(10)
    worker.put('"second"')  # waits in the queue of a thread that is about to die
    dying = deliver.threads[0]
    deliver.gate.set()
    dying.join(10)
    assert not dying.is_alive()
    assert worker.flush(timeout=10) is True
    assert deliver.delivered == ['"second"']


def test_shutdown_stops_the_threads_and_put_starts_them_again(
    make_worker: Callable[..., Worker], deliver: Recorder
) -> None:
    before = set(live_worker_threads())
    worker = make_worker(thread=3)
    worker.put('"a"')
    wait_until(lambda: len(set(live_worker_threads()) - before) == 3)
    assert worker.shutdown(timeout=10)
    wait_until(lambda: not (set(live_worker_threads()) - before))
    worker.put('"b"')
    assert worker.flush(timeout=10)
    assert deliver.delivered == ['"a"', '"b"']


def test_deliver_now_does_not_hold_up_flush(make_worker: Callable[..., Worker], deliver: Recorder) -> None:
    worker = make_worker()
    assert worker.deliver_now('"sync"')
    assert worker.flush(timeout=0) is True
    assert worker.stats().enqueued == 1 and worker.stats().sent == 1


def test_close_reports_what_it_could_not_deliver(make_worker: Callable[..., Worker], deliver: Recorder) -> None:
    worker = make_worker(upload_size=2)
    deliver.gate.clear()
    for i in range(5):
        worker.put(f'"{i}"')
    left = worker.close(0.4)
    assert deliver.aborted == [True] and deliver.retired == [True]
    assert left == 5  # one batch of 2 held in flight, 3 queued behind it
    assert worker.put('"late"') is False
    assert worker.stats().dropped == 1


def test_close_after_everything_was_delivered_abandons_nothing(
    make_worker: Callable[..., Worker], deliver: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="analytics_vitally")
    worker = make_worker()
    worker.put('"a"')
    assert worker.close(5) == 0
    assert deliver.aborted == [] and deliver.delivered == ['"a"']
    worker.put('"after"')
    assert "after the exit drain" in caplog.text


def test_a_full_batch_wakes_the_thread_that_saw_the_first_message(
    make_worker: Callable[..., Worker], deliver: Recorder
) -> None:
    worker = make_worker(upload_size=10, upload_interval=60)
    worker.put('"0"')
    time.sleep(0.05)  # let the thread see one message and go back to sleep for the interval
    for i in range(1, 10):
        worker.put(f'"{i}"')
    wait_until(lambda: len(deliver.delivered) == 10, timeout=5)  # long before the 60 s interval


def test_send_now_sends_what_is_queued_without_waiting(make_worker: Callable[..., Worker], deliver: Recorder) -> None:
    worker = make_worker(upload_interval=60)
    deliver.gate.clear()
    worker.put('"a"')
    started = time.monotonic()
    worker.send_now()
    assert time.monotonic() - started < 1  # returned at once, the batch is held in deliver
    deliver.entered.wait(10)
    deliver.gate.set()
    wait_until(lambda: deliver.delivered == ['"a"'], timeout=5)  # long before the 60 s interval


def test_shutdown_returns_once_the_threads_have_ended(deliver: Recorder) -> None:
    ended: List[threading.Thread] = []

    def thread_ended() -> None:
        time.sleep(0.1)  # a slow goodbye (closing a TLS connection), after the thread left the list
        ended.append(threading.current_thread())

    deliver.on_release = thread_ended
    worker = Worker(deliver, Settings(send=False, upload_interval=60))
    assert worker.put('"a"')
    assert worker.shutdown(timeout=10)
    # the worker thread's release, then the caller's (whose connection sync_mode may have opened)
    assert deliver.delivered == ['"a"'] and len(ended) == 2 and ended[1] is threading.current_thread()
    assert not ended[0].is_alive()


class ListFeed:
    """A ``Feed`` handing out entries from a list, as many as there is room for; can be made to raise."""

    def __init__(self, entries: List[object]) -> None:
        self.entries = list(entries)
        self.reads: List[int] = []
        self.fail_with: Optional[BaseException] = None

    def due_in(self) -> float:
        return 0.0 if self.entries else 3600.0

    def read(self, room: int) -> List[object]:
        self.reads.append(room)
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        found, self.entries = self.entries[:room], self.entries[room:]
        return found


def test_a_feed_s_backlog_is_delivered_and_flush_waits_for_all_of_it(deliver: Recorder) -> None:
    feed = ListFeed([f'"{i}"' for i in range(250)])  # more than one read's room (ten batches of 10)
    worker = Worker(deliver, Settings(send=False, upload_size=10, upload_interval=60), feed=feed)  # type: ignore[arg-type]
    worker.start()
    assert worker.flush(timeout=10)  # nothing was put: it waits for the backlog alone
    assert deliver.delivered == [f'"{i}"' for i in range(250)]
    assert len(feed.reads) >= 3
    worker.shutdown(timeout=5)


def test_a_feed_that_raises_does_not_kill_the_thread(deliver: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    feed = ListFeed(['"from the feed"'])
    feed.fail_with = RuntimeError("disk on fire")
    worker = Worker(deliver, Settings(send=False, upload_interval=60), feed=feed)  # type: ignore[arg-type]
    assert worker.put('"a"')
    assert worker.flush(timeout=10)
    wait_until(lambda: not feed.entries, timeout=10)  # the thread lives on and reads again on the next look
    assert worker.flush(timeout=10)
    assert '"from the feed"' in deliver.delivered and len(feed.reads) == 2
    assert '"a"' in deliver.delivered and "reading more messages to send raised" in caplog.text
    worker.shutdown(timeout=5)


def test_tagged_entries_are_handed_over_whole_and_sized_by_their_message(deliver: Recorder) -> None:
    worker = Worker(deliver, Settings(send=False, upload_interval=60, max_batch_bytes=30))  # type: ignore[arg-type]
    tagged = [(f'"{i:08}"', object()) for i in range(4)]  # 10 bytes each as JSON, whatever the tag
    for entry in tagged:
        assert worker.put(entry)
    assert worker.flush(timeout=10)
    assert [len(batch) for batch in deliver.batches] == [2, 2]  # 2 + 2 * (10 + 1) <= 30 < 2 + 3 * 11
    assert [entry for batch in deliver.batches for entry in batch] == tagged  # the very tags, untouched
    worker.shutdown(timeout=5)


def test_close_counts_nothing_lost_when_the_delivery_keeps_what_is_left(
    make_worker: Callable[..., Worker], deliver: Recorder
) -> None:
    worker = make_worker(upload_size=2)
    deliver.keeps = True
    deliver.gate.clear()
    for i in range(5):
        worker.put(f'"{i}"')
    assert worker.close(0.4) == 0  # kept elsewhere (on disk), not lost
    assert deliver.retired == [True]


def test_a_retired_worker_retires_its_delivery_once_its_threads_end(
    make_worker: Callable[..., Worker], deliver: Recorder
) -> None:
    idle = make_worker()
    idle.retire()
    assert deliver.retired == [True]  # no thread: at once
    busy = make_worker()
    deliver.gate.clear()
    busy.put('"a"')
    busy.send_now()
    deliver.entered.wait(10)
    busy.retire()
    assert deliver.retired == [True]  # a batch is in flight: not yet
    deliver.gate.set()
    wait_until(lambda: deliver.retired == [True, True], timeout=10)
    assert deliver.delivered == ['"a"']


def test_callers_yield_the_gil_only_once_the_queue_is_half_full(
    make_worker: Callable[..., Worker], deliver: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    yields: List[float] = []
    real_sleep = time.sleep

    def counting_sleep(seconds: float) -> None:
        if threading.current_thread() is threading.main_thread():
            yields.append(seconds)
        real_sleep(seconds)

    worker = make_worker(max_queue_size=4_000, upload_size=100)
    deliver.gate.clear()  # nothing leaves: the queue only grows
    monkeypatch.setattr(time, "sleep", counting_sleep)
    for i in range(2_000):  # up to half full: the watermark
        assert worker.put(f'"{i}"')
    assert yields == []
    for i in range(1_900):  # past it: now and then, more often as it fills
        assert worker.put(f'"{i}"')
    monkeypatch.undo()
    assert 30 <= len(yields) <= 1_900 and set(yields) <= {0.0, 1e-6}
    deliver.gate.set()


def test_a_client_shut_down_before_its_first_message_still_batches(make_client: Any, receiver: Any) -> None:
    client = make_client(upload_interval=60, upload_size=100)
    assert client.shutdown(timeout=5)  # no thread ever ran: nothing to stop
    client.track("u", "e")
    assert not receiver.wait_for(1, timeout=0.5)  # due after 60 s or a flush (was sent at once: "stopping")
    for i in range(49):
        client.track("u", "e", {"i": i})
    assert client.flush(timeout=10)
    assert receiver.wait_for(50)
    assert len(receiver.requests) == 1
