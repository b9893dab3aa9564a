"""One ``context()`` object shared by concurrent threads and tasks, ``@context`` on generators, and
``testing.capture()`` against ``configure()``, module settings and overlapping blocks: each checked
against what reached a real receiver on 127.0.0.1 (or, under capture, that nothing did)."""

from __future__ import annotations

import asyncio
import inspect
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional

import pytest

import analytics_vitally
from analytics_vitally import context
from analytics_vitally.testing import Captured, Receiver, capture

from .conftest import TOKEN, MakeClient

Message = Dict[str, Any]
DEADLINE = 30.0
"""Seconds any wait below may take before the test fails: generous, never a pace."""


class Handled(Exception):
    """An error a request handler raises inside the context and catches outside it."""


def events(messages: List[Message]) -> List[Any]:
    return [(m["event"], m.get("accountId")) for m in messages]


# One context object, many requests at once. ------------------------------------------------------


def test_one_context_shared_by_8_threads_neither_raises_nor_leaks(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(max_queue_size=10_000)
    PRO = context(account_id="acct-pro")
    together = threading.Barrier(8)
    raised: List[BaseException] = []

    def request(i: int) -> None:
        try:
            with PRO:
                client.track(f"u{i}", "inside", {"i": i})
                together.wait(DEADLINE)  # the 8 threads are inside the one instance at once
                if i % 5 == 0:
                    raise Handled
        except Handled:
            pass
        except ValueError as error:
            raised.append(error)
        client.track(f"u{i}", "outside", {"i": i})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(request, range(200)))
    assert client.flush(timeout=DEADLINE)
    assert raised == []
    by_event: Dict[str, List[Any]] = {"inside": [], "outside": []}
    for message in receiver.messages:
        by_event[message["event"]].append(message.get("accountId"))
    assert by_event == {"inside": ["acct-pro"] * 200, "outside": [None] * 200}


def test_one_context_shared_by_50_asyncio_tasks_neither_raises_nor_leaks(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = make_client()
    shared = context(account_id="acct-pro", properties={"plan": "pro"})
    raised: List[BaseException] = []

    async def main() -> None:
        inside = 0
        all_inside = asyncio.Event()

        async def task(i: int) -> None:
            nonlocal inside
            try:
                with shared:
                    inside += 1
                    if inside == 50:
                        all_inside.set()
                    await asyncio.wait_for(all_inside.wait(), DEADLINE)  # the 50 tasks are inside at once
                    client.track(f"u{i}", "inside")
            except ValueError as error:
                raised.append(error)
            client.track(f"u{i}", "outside")

        await asyncio.gather(*(task(i) for i in range(50)))

    asyncio.run(main())
    assert client.flush(timeout=DEADLINE)
    assert raised == []
    assert sorted(events(receiver.messages)) == [("inside", "acct-pro")] * 50 + [("outside", None)] * 50
    assert all(m["properties"] == ({"plan": "pro"} if m["event"] == "inside" else {}) for m in receiver.messages)


def test_a_context_a_generator_left_set_ends_with_the_block_around_it(
    make_client: MakeClient, receiver: Receiver
) -> None:
    """Each exit takes off its own scope and what was left set above it, and an exit whose scope is
    gone already does nothing (the code before put PRO back at ``close()``, for every later call)."""
    client = make_client()
    PRO, OTHER = context(account_id="acct-pro"), context(account_id="acct-other")

    def leaky() -> Iterator[None]:
        with OTHER:  # around a yield, undecorated: contextvars leave it set for the caller
            yield

    steps = leaky()
    with PRO:
        next(steps)
        client.track("u", "inside")
    client.track("u", "after")
    steps.close()
    client.track("u", "after-close")
    assert client.flush(timeout=DEADLINE)
    assert events(receiver.messages) == [("inside", "acct-other"), ("after", None), ("after-close", None)]


# @context on generators. ----------------------------------------------------------------------------


def test_a_decorated_generator_runs_each_step_inside_and_its_caller_outside(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = make_client()

    @context(account_id="acct-gen")
    def steps(count: int) -> Iterator[int]:
        """Its docstring is kept."""
        try:
            for i in range(count):
                try:
                    got = yield i
                except Handled:
                    client.track("u", "thrown")
                    got = "after-throw"
                client.track("u", f"step-{i}", {"got": got})
        finally:
            client.track("u", "finally")

    assert steps.__doc__ == "Its docstring is kept." and steps.__name__ == "steps"
    assert inspect.isgeneratorfunction(steps)  # as frameworks that look expect (pytest fixtures, FastAPI)
    running = steps(3)
    assert next(running) == 0
    client.track("u", "caller-0")
    assert running.send("sent") == 1
    client.track("u", "caller-1")
    assert running.throw(Handled()) == 2
    client.track("u", "caller-2")
    running.close()
    client.track("u", "after")

    def returns() -> Iterator[int]:
        result = yield from returning()
        client.track("u", "returned", {"result": result})

    @context(account_id="acct-ret")
    def returning() -> Iterator[int]:
        yield 1
        return 42

    assert list(returns()) == [1]
    assert client.flush(timeout=DEADLINE)
    by_event = {m["event"]: m for m in receiver.messages}
    assert events(receiver.messages) == [
        ("caller-0", None),
        ("step-0", "acct-gen"),
        ("caller-1", None),
        ("thrown", "acct-gen"),
        ("step-1", "acct-gen"),
        ("caller-2", None),
        ("finally", "acct-gen"),  # close() ran the body's finally inside the context
        ("after", None),
        ("returned", None),
    ]
    assert by_event["step-0"]["properties"] == {"got": "sent"}
    assert by_event["step-1"]["properties"] == {"got": "after-throw"}
    assert by_event["returned"]["properties"] == {"result": 42}


def test_a_decorated_async_generator_runs_each_step_inside_and_its_caller_outside(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = make_client()

    @context(account_id="acct-agen", properties={"plan": "pro"})
    async def steps() -> AsyncIterator[int]:
        try:
            for i in range(3):
                await asyncio.sleep(0)
                try:
                    yield i
                except Handled:
                    client.track("u", "thrown")
                client.track("u", f"step-{i}")
        finally:
            await asyncio.sleep(0)
            client.track("u", "finally")

    assert inspect.isasyncgenfunction(steps)

    async def main() -> None:
        running = steps()
        async for i in running:
            client.track("u", f"caller-{i}")
            if i == 0:
                assert await running.athrow(Handled()) == 1
                client.track("u", "caller-after-throw")
            if i == 2:
                break
        # closed from another task (as a server closes a streamed response): no ValueError, same account
        await asyncio.wait_for(asyncio.ensure_future(running.aclose()), DEADLINE)
        client.track("u", "after")

    asyncio.run(main())
    assert client.flush(timeout=DEADLINE)
    assert events(receiver.messages) == [
        ("caller-0", None),
        ("thrown", "acct-agen"),
        ("step-0", "acct-agen"),
        ("caller-after-throw", None),
        ("step-1", "acct-agen"),
        ("caller-2", None),
        ("finally", "acct-agen"),
        ("after", None),
    ]
    assert all(("plan" in m["properties"]) == (m.get("accountId") is not None) for m in receiver.messages)


# capture() and configure(), module settings, overlapping blocks. --------------------------------


def module_settings() -> Dict[str, Any]:
    return {name: getattr(analytics_vitally, name) for name in analytics_vitally.settings.SETTING_NAMES}


def test_configure_inside_capture_is_captured_and_the_module_is_put_back(
    module_api: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITALLY_WRITE_KEY", TOKEN)  # a CI's key, and a host that is listening
    monkeypatch.setenv("VITALLY_HOST", receiver.url)
    monkeypatch.setattr(module_api, "write_key", None)
    monkeypatch.setattr(module_api, "host", None)
    original = module_api.configure()
    before = module_settings()
    with capture() as sent:
        made = [module_api.configure()]  # the FastAPI recipe's lifespan (docs/guides/frameworks.md)
        module_api.track("32", "from-lifespan")
        made.append(module_api.configure(write_key=TOKEN, host=receiver.url, upload_size=7, sync_mode=True))
        module_api.track("32", "explicitly-configured")
        assert module_api.upload_size == 7
    for client in made:
        assert client.flush(timeout=DEADLINE)
    assert [m["event"] for m in sent.messages] == ["from-lifespan", "explicitly-configured"]
    assert receiver.requests == []
    assert module_settings() == before
    assert analytics_vitally.default.client is original and analytics_vitally.default.capturing is None
    module_api.track("32", "after")
    assert module_api.flush(timeout=DEADLINE)
    assert [m["event"] for m in receiver.messages] == ["after"]


def test_module_settings_set_inside_capture_apply_to_it_and_are_put_back(module_api: Any, receiver: Receiver) -> None:
    def tag(message: Message) -> Message:
        return {**message, "properties": {**message.get("properties", {}), "tagged": True}}

    before = module_settings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "changed after the default client was made"
        with capture() as sent:
            module_api.before_send = tag
            module_api.host = "http://127.0.0.1:9"  # nothing listens there
            module_api.track("32", "in-block")
    sent.assert_tracked("in-block", properties={"tagged": True})
    assert module_settings() == before
    module_api.track("32", "after")
    assert module_api.flush(timeout=DEADLINE)
    assert [(m["event"], m["properties"]) for m in receiver.messages] == [("after", {})]


def test_captures_nest_in_one_thread(module_api: Any, receiver: Receiver) -> None:
    original = module_api.default_client()
    with capture() as outer:
        module_api.track("32", "outer-1")
        with capture() as inner:
            module_api.track("32", "inner-1")
            module_api.configure(upload_size=3)
            module_api.track("32", "inner-2")
        module_api.track("32", "outer-2")
    assert [m["event"] for m in outer.messages] == ["outer-1", "outer-2"]
    assert [m["event"] for m in inner.messages] == ["inner-1", "inner-2"]
    assert analytics_vitally.default.client is original and module_api.upload_size != 3
    module_api.track("32", "after")
    assert module_api.flush(timeout=DEADLINE)
    assert [m["event"] for m in receiver.messages] == ["after"]


def overlap_in_two_threads(open_capture: Any) -> List[BaseException]:
    """Thread A opens a capture; B opens one while A's is open; A's ends, then B's (if it opened).
    Returns what B's opening raised."""
    a_in, b_tried, a_out = threading.Event(), threading.Event(), threading.Event()
    refused: List[BaseException] = []

    def a() -> None:
        with open_capture():
            a_in.set()
            assert b_tried.wait(DEADLINE)
        a_out.set()

    def b() -> None:
        assert a_in.wait(DEADLINE)
        try:
            with open_capture():
                b_tried.set()
                assert a_out.wait(DEADLINE)
        except RuntimeError as error:
            refused.append(error)
        finally:
            b_tried.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive()
    return refused


def test_two_threads_capturing_the_module_at_once_are_refused_and_nothing_stays_captured(
    module_api: Any, receiver: Receiver
) -> None:
    original = module_api.default_client()
    refused = overlap_in_two_threads(capture)
    assert [str(error) for error in refused] == [
        "capture() of the module-level API is already open in another thread, and its messages would mix with this "
        "one's: capture in one thread at a time, or give each thread its own Client and capture(client)"
    ]
    assert analytics_vitally.default.client is original
    module_api.track("32", "after")
    assert module_api.flush(timeout=DEADLINE)
    assert [m["event"] for m in receiver.messages] == ["after"]


def test_two_threads_capturing_one_client_at_once_are_refused_and_it_sends_again(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = make_client()
    refused = overlap_in_two_threads(lambda: capture(client))
    assert len(refused) == 1 and "already open in another thread" in str(refused[0])
    client.track("32", "after")
    assert client.flush(timeout=DEADLINE)
    assert [m["event"] for m in receiver.messages] == ["after"]


def test_two_tasks_captures_overlapping_out_of_order_leave_nothing_captured(
    module_api: Any, receiver: Receiver
) -> None:
    original = module_api.default_client()
    got: Dict[str, Optional[Captured]] = {}

    async def main() -> None:
        a_in, b_in, a_out = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def a() -> None:
            with capture() as got["a"]:
                a_in.set()
                await asyncio.wait_for(b_in.wait(), DEADLINE)
            a_out.set()  # A's block ended while B's, opened inside it, is still open

        async def b() -> None:
            await asyncio.wait_for(a_in.wait(), DEADLINE)
            with capture() as got["b"]:
                b_in.set()
                await asyncio.wait_for(a_out.wait(), DEADLINE)
                module_api.track("32", "in-b")

        await asyncio.gather(a(), b())

    asyncio.run(main())
    assert got["b"] is not None and [m["event"] for m in got["b"].messages] == ["in-b"]
    assert analytics_vitally.default.client is original
    module_api.track("32", "after")
    assert module_api.flush(timeout=DEADLINE)
    assert [m["event"] for m in receiver.messages] == ["after"]
