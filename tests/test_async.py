"""AsyncClient against the local receiver: same results as Client, and the event loop never waits.

The loop's responsiveness is measured by a ticker task that sleeps 1 ms at a time and
records how late each wake-up was; the bound asserted (100 ms) is generous next to the
0.5 to 1 s the receiver is made to take, so a blocked loop fails clearly.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, Awaitable, Callable, Iterator, List, Optional, Tuple, TypeVar

import pytest

from analytics_vitally import AsyncClient, InvalidMessageError
from analytics_vitally.testing import Receiver, Reply, Request

from .conftest import TOKEN

T = TypeVar("T")
LOOP_DELAY_BOUND = 0.1


def slow(seconds: float) -> Callable[[Request], Optional[Reply]]:
    """A respond hook: Vitally taking ``seconds`` to answer, then answering as usual."""

    def respond(request: Request) -> Optional[Reply]:
        time.sleep(seconds)
        return None

    return respond


async def measure_loop(work: Awaitable[T]) -> Tuple[T, float, float]:
    """Await ``work`` while a ticker runs; return its result, the loop's worst delay and the time taken."""
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - started - 0.001)

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)  # the ticker is running
    started = time.perf_counter()
    try:
        result = await work
    finally:
        elapsed = time.perf_counter() - started
        done = True
        await ticking
    return result, worst, elapsed


@pytest.fixture
def make_async(receiver: Receiver) -> Iterator[Callable[..., AsyncClient]]:
    clients: List[AsyncClient] = []

    def make(**settings: Any) -> AsyncClient:
        settings.setdefault("host", receiver.url)
        client = AsyncClient(TOKEN, **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        asyncio.run(client.shutdown(timeout=2))


def test_methods_return_what_client_returns_and_deliver(
    make_async: Callable[..., AsyncClient], receiver: Receiver
) -> None:
    async def main() -> List[Tuple[bool, Any]]:
        client = make_async()
        results = [
            await client.organization("org-1", {"name": "World Cup"}),
            await client.group("acct-1", {"name": "Argentina"}, organization_id="org-1"),
            await client.identify("32", {"name": "Lionel Messi"}, account_id="acct-1"),
            await client.track("32", "scored-goal", {"minute": 14}),
            await client.unlink("32", "acct-1"),
            await client.custom_object_instance("deal-9", "co-123", {"stage": "won"}, account_id="acct-1"),
            await client.enqueue({"type": "track", "userId": "32", "event": "assisted"}),
        ]
        assert await client.flush(timeout=10)
        return results

    results = asyncio.run(main())
    assert all(queued for queued, _ in results)
    assert receiver.message_ids() == [message["messageId"] for _, message in results]
    assert [message["type"] for message in receiver.messages] == [
        "organization",
        "account",
        "user",
        "track",
        "unlink",
        "customobjectinstance",
        "track",
    ]


def test_bad_message_raises_at_the_await(make_async: Callable[..., AsyncClient], receiver: Receiver) -> None:
    async def main() -> None:
        client = make_async()
        with pytest.raises(InvalidMessageError) as raised:
            await client.track("32", None)
        assert raised.value.field == "event"
        assert await client.flush(timeout=5)

    asyncio.run(main())
    assert receiver.messages == []


def test_flush_waits_for_a_slow_receiver_without_blocking_the_loop(
    make_async: Callable[..., AsyncClient], receiver: Receiver
) -> None:
    receiver.respond = slow(1.0)

    async def main() -> Tuple[bool, float, float]:
        client = make_async(upload_interval=60)
        for n in range(150):  # two batches, one after the other: about 2 s
            await client.track("32", "scored-goal", {"n": n})
        return await measure_loop(client.flush(timeout=30))

    flushed, worst, elapsed = asyncio.run(main())
    print(f"flush on a receiver taking 1 s per batch: {elapsed:.2f} s, loop's worst delay {worst * 1000:.1f} ms")
    assert flushed and len(receiver.messages) == 150
    assert elapsed >= 1.5  # it really waited for both slow answers
    assert worst < LOOP_DELAY_BOUND


def test_sync_mode_awaits_delivery_off_the_loop(make_async: Callable[..., AsyncClient], receiver: Receiver) -> None:
    receiver.respond = slow(0.5)

    async def main() -> Tuple[Tuple[bool, Any], float, float]:
        client = make_async(sync_mode=True)
        return await measure_loop(client.track("32", "scored-goal"))

    (queued, message), worst, elapsed = asyncio.run(main())
    assert queued and receiver.message_ids() == [message["messageId"]]  # delivered when the await returned
    assert elapsed >= 0.4
    assert worst < LOOP_DELAY_BOUND


def test_flush_timeout_and_cancellation_return_control(receiver: Receiver) -> None:
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)  # takes connections, never answers
    client = AsyncClient(TOKEN, host=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=30, max_retries=0)

    async def main() -> Tuple[bool, float, float]:
        await client.track("32", "scored-goal")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.flush(), 0.3)  # cancelling the wait, not the delivery
        return await measure_loop(client.flush(timeout=0.5))

    try:
        flushed, worst, elapsed = asyncio.run(main())
    finally:
        silent.close()  # resets the connection: the request fails at once
        asyncio.run(client.shutdown(timeout=5))
    assert not flushed
    assert 0.4 <= elapsed < 3
    assert worst < LOOP_DELAY_BOUND


def test_async_with_delivers_and_stops_the_threads(receiver: Receiver) -> None:
    before = set(threading.enumerate())

    async def main() -> List[str]:
        async with AsyncClient(TOKEN, host=receiver.url, upload_interval=60) as client:
            ids = [(await client.track("32", "e", {"n": n}))[1]["messageId"] for n in range(120)]
        return ids

    ids = asyncio.run(main())
    assert receiver.message_ids() == ids  # no waiting: the block's end delivered them
    assert [thread for thread in set(threading.enumerate()) - before if thread.name == "analytics_vitally"] == []


def test_stats_and_settings_are_the_clients(make_async: Callable[..., AsyncClient], receiver: Receiver) -> None:
    client = make_async(upload_interval=60)

    async def main() -> None:
        await client.track("32", "e")
        await client.flush(timeout=10)

    asyncio.run(main())
    assert (client.stats().enqueued, client.stats().sent) == (1, 1)
    assert client.settings.upload_interval == 60
    assert repr(client) == f"<analytics_vitally.AsyncClient sending to {receiver.url}/analytics/v1/batch>"
