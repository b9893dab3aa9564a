"""``AsyncClient``: the client for asyncio code, never blocking the event loop.

    async with AsyncClient("my-token", subdomain="acme") as client:
        await client.track("32", "scored-goal", {"minute": 14})

It is a ``Client`` (the same queue, worker threads, rules and settings) whose methods
are coroutines. A message call only checks, encodes and appends to the queue, which
takes microseconds and never waits (a full queue drops), so it runs on the loop.
What can wait runs on a thread of its own and the loop awaits its result:
``flush()``, ``shutdown()``, and every call in ``sync_mode`` (which sends before it
returns). Not on ``asyncio.to_thread``: that shares the loop's default executor, a few
threads that also resolve host names for the whole app, and a flush waiting a minute
for a slow Vitally would hold one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from .client import Client, Result
from .delivery import Stats
from .settings import Settings, check_names

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Concatenate, Coroutine, ParamSpec

    P = ParamSpec("P")

T = TypeVar("T")


def _coroutine(
    method: Callable[Concatenate[Client, P], Result],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, Result]]:
    """``method`` of ``Client`` as a coroutine method of ``AsyncClient`` (``await client.track(...)``)."""

    @functools.wraps(method)
    async def call(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> Result:
        return await self._call(functools.partial(method, self._client, *args, **kwargs))

    return call


class AsyncClient:
    """Sends messages to Vitally from asyncio code; every method is a coroutine except ``stats()``.

        client = AsyncClient("my-token", subdomain="acme")
        queued, message = await client.track("32", "scored-goal", {"minute": 14})
        await client.flush(timeout=5)

    Takes the same settings as ``Client`` and raises the same errors at the call.
    ``async with`` shuts it down when the block ends (within ``exit_timeout``).
    """

    def __init__(self, write_key: Optional[str] = None, **settings: Any) -> None:
        check_names("AsyncClient()", settings)
        self._client = Client(write_key, **settings)
        self._sync_mode = self._client.settings.sync_mode and self._client.settings.send

    @property
    def settings(self) -> Settings:
        """The settings in force (as ``Client.settings``), environment fallbacks resolved."""
        return self._client.settings

    @property
    def client(self) -> Client:
        """The ``Client`` underneath, for code running outside the event loop (a worker thread)."""
        return self._client

    def __repr__(self) -> str:
        return repr(self._client).replace("analytics_vitally.Client", "analytics_vitally.AsyncClient", 1)

    # The message methods: Client's, as coroutines, with Client's signatures and docstrings.
    organization = _coroutine(Client.organization)
    group = _coroutine(Client.group)
    identify = _coroutine(Client.identify)
    track = _coroutine(Client.track)
    unlink = _coroutine(Client.unlink)
    custom_object_instance = _coroutine(Client.custom_object_instance)
    enqueue = _coroutine(Client.enqueue)

    async def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait, off the loop, until every message queued before the call was sent or failed.

        False if ``timeout`` seconds passed first. Cancelling the awaiting task stops the wait,
        not the delivery.

            await client.flush(timeout=5)
        """
        return await in_thread(lambda: self._client.flush(timeout))

    async def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Deliver what is queued and stop the worker threads, waiting off the loop; as ``Client.shutdown``.

            await client.shutdown(timeout=5)
        """
        return await in_thread(lambda: self._client.shutdown(timeout))

    def stats(self) -> Stats:
        """The counters, as ``Client.stats()`` (a snapshot taken without waiting)."""
        return self._client.stats()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.shutdown(timeout=self.settings.exit_timeout)

    async def _call(self, call: Callable[[], Result]) -> Result:
        if self._sync_mode:  # sends before returning: wait off the loop
            return await in_thread(call)
        return call()  # checks, encodes and appends to the queue: microseconds, never waits


async def in_thread(function: Callable[[], T]) -> T:
    """Run ``function`` on a new daemon thread, in a copy of the caller's context, and await its result
    without blocking the loop.

    The thread hands the result back with ``call_soon_threadsafe``. If the awaiting task
    is cancelled, or the loop closed, the thread still finishes and its result is dropped.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    carried = contextvars.copy_context()  # analytics_vitally.context() applies on that thread too

    def run() -> None:
        try:
            outcome = functools.partial(future.set_result, carried.run(function))
        except BaseException as error:  # handed to the awaiting task, which raises it
            outcome = functools.partial(future.set_exception, error)
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, future, outcome)

    threading.Thread(target=run, name="analytics_vitally-wait", daemon=True).start()
    return await future


def _settle(future: asyncio.Future[Any], outcome: Callable[[], None]) -> None:
    if not future.done():  # not cancelled meanwhile
        outcome()


__all__ = ["AsyncClient"]
