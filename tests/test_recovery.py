"""Delivery resumes within about a second of Vitally's return after an outage, without using up the
retries while it was away, and a pause Vitally asks for (429/503 with Retry-After) is still waited out.

The outages are real: a server on 127.0.0.1 that refuses connections (it stops listening, then listens
again on the same port) or accepts them and resets them, while a thread tracks 1,000 calls a second.
What the retry budget means for a failure with no answer is checked on a fake clock: a closed port
refuses each try at once, the clock jumps over each wait.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

import analytics_vitally.transport as transport_module
from analytics_vitally import Client
from analytics_vitally.delivery import request_observers
from analytics_vitally.settings import Settings
from analytics_vitally.testing import Receiver, Reply, Request
from analytics_vitally.transport import NO_ANSWER_WAIT, Transport

from .conftest import TOKEN

RATE = 1_000
"""Calls a second while the outages come and go."""
OUTAGES = 3
OUTAGE = 3.0
"""Seconds each outage lasts."""
UP = 2.5
"""Seconds the server answers between two outages (at least)."""
RECOVERY_BOUND = 2.0
"""Seconds from the server's return to its first accepted batch, at most (NO_ANSWER_WAIT is 1 s)."""
IDLE_BOUND = 1.5
"""Seconds between the end of one request and the start of the next, at most, whatever the server does."""

Errors = List[Tuple[Exception, List[Any]]]


class Outages:
    """A Vitally on 127.0.0.1 that can go away (``down``) and come back (``up``); the kinds below say how."""

    def __init__(self) -> None:
        self.receivers = [Receiver(token=TOKEN).start()]
        self.port = self.receivers[0].port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def receiver(self) -> Receiver:
        return self.receivers[-1]

    def down(self) -> None:
        raise NotImplementedError

    def up(self) -> None:
        raise NotImplementedError

    def message_ids(self) -> List[str]:
        return [message_id for receiver in self.receivers for message_id in receiver.message_ids()]

    def stop(self) -> None:
        self.receiver.stop()


def reset(request: Request) -> Optional[Reply]:
    return Reply(reset=True)


class Refusing(Outages):
    """Down: the process is gone. Connections it held are reset, new ones refused (nothing listens)."""

    def down(self) -> None:
        self.receiver.respond = reset  # a kept-alive connection dies with the server, as it would
        self.receiver.stop()

    def up(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            try:
                self.receivers.append(Receiver(token=TOKEN, port=self.port).start())
                return
            except OSError:  # the port is briefly taken (a client's connect picked it as its own port)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


class Resetting(Outages):
    """Down: the server accepts each connection, reads the request and resets the connection unanswered."""

    def down(self) -> None:
        self.receiver.respond = reset

    def up(self) -> None:
        self.receiver.respond = None


class Tracker:
    """A thread making ``RATE`` track calls a second until stopped; keeps the messageId of each accepted call."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.accepted: List[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        made = 0
        while not self._stop.is_set():
            ahead = started + made / RATE - time.monotonic()
            if ahead > 0.005:
                self._stop.wait(ahead)
                continue
            queued, message = self.client.track("u", "e", {"i": made})
            if queued:
                self.accepted.append(message["messageId"])
            else:
                self.refused += 1
            made += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def requests_timed() -> Iterator[List[Tuple[float, float]]]:
    """(start, end) of every request any transport makes, in the order they end."""
    made: List[Tuple[float, float]] = []

    def observe(url: str, duration: float, status: Optional[int], failure: Optional[str]) -> None:
        ended = time.monotonic()
        made.append((ended - duration, ended))

    request_observers.append(observe)
    yield made
    request_observers.remove(observe)


def longest_idle(made: List[Tuple[float, float]]) -> float:
    return max((start - previous_end for (_, previous_end), (start, _) in zip(made, made[1:])), default=0.0)


@pytest.mark.parametrize("kind", [Refusing, Resetting], ids=["refused", "reset"])
def test_delivery_resumes_within_two_seconds_of_each_return(
    kind: Callable[[], Outages], requests_timed: List[Tuple[float, float]]
) -> None:
    server = kind()
    errors: Errors = []
    client = Client(TOKEN, host=server.url, on_error=lambda error, messages: errors.append((error, messages)))
    tracker = Tracker(client)
    recoveries: List[float] = []
    try:
        time.sleep(1.0)  # steady traffic first
        for _ in range(OUTAGES):
            server.down()
            time.sleep(OUTAGE)
            server.up()
            returned = time.monotonic()
            receiver = server.receiver
            if not receiver.wait_for(len(receiver.messages) + 1, timeout=40):
                pytest.fail(f"nothing accepted within 40 s of the server's return (recoveries so far: {recoveries})")
            recoveries.append(time.monotonic() - returned)
            assert recoveries[-1] <= RECOVERY_BOUND, f"delivery resumed {recoveries[-1]:.1f}s after the server's return"
            time.sleep(max(0.0, returned + UP - time.monotonic()))
    finally:
        tracker.stop()
        flushed = client.flush(timeout=30)
        client.shutdown(timeout=2)
        server.stop()
    assert flushed
    assert errors == [], f"reported to on_error during outages shorter than max_retry_time: {errors[0][0]}"
    assert tracker.refused == 0
    assert len(tracker.accepted) >= RATE * OUTAGES * OUTAGE  # the calls went on through the outages
    delivered = Counter(server.message_ids())
    assert set(delivered) == set(tracker.accepted), "a call was lost"
    assert max(delivered.values()) == 1, "a call was delivered twice"
    idle = longest_idle(requests_timed)
    assert idle <= IDLE_BOUND, f"the client waited {idle:.1f}s between two tries (recoveries: {recoveries})"
    assert statistics.median(recoveries) <= NO_ANSWER_WAIT + 0.5


@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_is_still_waited_out_whole(status: int) -> None:
    arrived: List[float] = []

    def respond(request: Request) -> Optional[Reply]:
        arrived.append(time.monotonic())
        return Reply(status, {"message": "slow down"}, {"Retry-After": "2"}) if len(arrived) == 1 else None

    errors: Errors = []
    with Receiver(token=TOKEN, respond=respond) as receiver:
        client = Client(TOKEN, host=receiver.url, on_error=lambda error, messages: errors.append((error, messages)))
        try:
            client.track("u", "e")
            assert client.flush(timeout=15)
        finally:
            client.shutdown(timeout=2)
        assert len(receiver.messages) == 1 and errors == []
    assert len(arrived) == 2
    assert 1.9 <= arrived[1] - arrived[0] <= 6, f"Retry-After: 2 was waited {arrived[1] - arrived[0]:.2f}s"


# What the retry budget means when nothing answers, on a fake clock. -----------------------------------


class FakeTime:
    """The transport's clock and its waits: a wait passes at once and moves the clock on by as much."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.waits: List[float] = []
        self._set = False

    def monotonic(self) -> float:
        return self.now

    # The transport's wake-up flag (a threading.Event): what the waits between tries call.
    def wait(self, timeout: Optional[float] = None) -> bool:
        assert timeout is not None and timeout >= 0
        self.waits.append(timeout)
        self.now += timeout
        return self._set

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses every connection at once (bound, never listening)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def deliver_on_fake_time(port: int, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Tuple[FakeTime, str]:
    """One batch to a closed port, its waits on a fake clock: the clock, and why the batch was given up."""
    clock = FakeTime()
    monkeypatch.setattr(transport_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    transport = Transport(Settings(write_key=TOKEN, host=f"http://127.0.0.1:{port}", **settings).resolved())
    transport._wake = clock  # type: ignore[assignment]
    message = json.dumps({"type": "track", "userId": "u", "event": "e", "properties": {}, "messageId": "m-0"})
    try:
        outcome = transport.deliver([message])
    finally:
        transport.release()
    assert outcome.sent == 0 and [failure.count for failure in outcome.failures] == [1]
    return clock, str(outcome.failures[0].error)


def test_a_refused_connection_is_retried_every_second_until_max_retry_time(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The defaults: max_retries=10, retry_wait=0.5, max_retry_time=60. Ten tries a second apart must not
    # end the batch after ten seconds of an outage: it is given up when max_retry_time has passed.
    clock, why = deliver_on_fake_time(closed_port, monkeypatch)
    spent = clock.now - 1_000.0
    assert max(clock.waits) <= NO_ANSWER_WAIT
    assert 59 <= spent <= 60.5, why
    assert 60 <= len(clock.waits) <= 130  # mostly 0.5 to 1 s apart: no spinning on an instant refusal
    assert "max_retry_time=60.0s" in why


def test_max_retries_still_bounds_the_schedule_of_a_refused_connection(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three steps of the schedule, 0.5 + 1 + 2 s, each jittered to half or more of its length: tried
    # again within each at most a second apart, given up as the fourth would begin.
    clock, why = deliver_on_fake_time(closed_port, monkeypatch, max_retries=3, retry_wait=0.5)
    assert max(clock.waits) <= NO_ANSWER_WAIT
    assert 1.7 <= clock.now - 1_000.0 <= 3.5, why
    assert len(clock.waits) <= 3 + 3.5 / (NO_ANSWER_WAIT / 2)
    assert "gave up after" in why


def test_max_retries_zero_still_means_one_try(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, why = deliver_on_fake_time(closed_port, monkeypatch, max_retries=0)
    assert clock.waits == [] and "gave up after 1 tries" in why


def test_the_spool_read_back_resumes_within_two_seconds_after_batches_gave_up(tmp_path: Any) -> None:
    """An outage longer than ``max_retry_time``: the batches go back to the spool, and are read back
    and sent within two seconds of the server's return (was the spool's retry_delay: 30 s)."""
    server = Refusing()
    client = Client(TOKEN, host=server.url, spool=str(tmp_path / "spool"), max_retry_time=0.5, upload_interval=0.1)
    try:
        server.down()
        for i in range(300):
            assert client.track("u", "e", {"i": i})[0]
        time.sleep(OUTAGE)  # six times max_retry_time: every batch gave up and went back to the spool
        server.up()
        returned = time.monotonic()
        assert server.receiver.wait_for(1, timeout=40)
        recovered = time.monotonic() - returned
        assert recovered <= RECOVERY_BOUND, f"the spool's messages left {recovered:.1f}s after the server's return"
        assert server.receiver.wait_for(300, timeout=30)
        assert sorted(m["properties"]["i"] for m in server.receiver.messages) == list(range(300))
    finally:
        client.shutdown(timeout=2)
        server.stop()
