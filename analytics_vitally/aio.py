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
import functools
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, TypeVar

from .client import Client, Message, Result
from .settings import Settings
from .worker import Stats

if TYPE_CHECKING:
    from types import TracebackType

T = TypeVar("T")


class AsyncClient:
    """Sends messages to Vitally from asyncio code; every method is a coroutine except ``stats()``.

        client = AsyncClient("my-token", subdomain="acme")
        queued, message = await client.track("32", "scored-goal", {"minute": 14})
        await client.flush(timeout=5)

    Takes the same settings as ``Client`` and raises the same errors at the call.
    ``async with`` shuts it down when the block ends (within ``exit_timeout``).
    """

    def __init__(self, write_key: Optional[str] = None, **settings: Any) -> None:
        self._client = Client(write_key, **settings)
        self._sync_mode = self._client.settings.sync_mode and self._client.settings.send

    @property
    def settings(self) -> Settings:
        return self._client.settings

    def __repr__(self) -> str:
        return repr(self._client).replace("analytics_vitally.Client", "analytics_vitally.AsyncClient", 1)

    async def organization(
        self,
        organization_id: Any,
        traits: Optional[Message] = None,
        *,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """As ``Client.organization``: ``await client.organization("org-1", {"name": "World Cup"})``."""
        return await self._call(
            lambda: self._client.organization(organization_id, traits, timestamp=timestamp, message_id=message_id)
        )

    async def group(
        self,
        account_id: Any,
        traits: Optional[Message] = None,
        *,
        organization_id: Any = None,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """As ``Client.group``: ``await client.group("acct-1", {"name": "Argentina"}, organization_id="org-1")``."""
        return await self._call(
            lambda: self._client.group(
                account_id, traits, organization_id=organization_id, timestamp=timestamp, message_id=message_id
            )
        )

    async def identify(
        self,
        user_id: Any,
        traits: Optional[Message] = None,
        *,
        account_id: Any = None,
        organization_id: Any = None,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """As ``Client.identify``: ``await client.identify("32", {"name": "Lionel Messi"}, account_id="acct-1")``."""
        return await self._call(
            lambda: self._client.identify(
                user_id,
                traits,
                account_id=account_id,
                organization_id=organization_id,
                timestamp=timestamp,
                message_id=message_id,
            )
        )

    async def track(
        self,
        user_id: Any = None,
        event: Optional[str] = None,
        properties: Optional[Message] = None,
        *,
        account_id: Any = None,
        organization_id: Any = None,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """As ``Client.track``: ``await client.track("32", "scored-goal", {"minute": 14})``."""
        return await self._call(
            lambda: self._client.track(
                user_id,
                event,
                properties,
                account_id=account_id,
                organization_id=organization_id,
                timestamp=timestamp,
                message_id=message_id,
            )
        )

    async def unlink(
        self,
        user_id: Any,
        account_id: Any,
        *,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """As ``Client.unlink``: ``await client.unlink("32", "acct-1")``."""
        return await self._call(
            lambda: self._client.unlink(user_id, account_id, timestamp=timestamp, message_id=message_id)
        )

    async def custom_object_instance(
        self,
        external_id: Any,
        custom_object_id: Any,
        traits: Optional[Message] = None,
        *,
        name: Optional[str] = None,
        account_id: Any = None,
        organization_id: Any = None,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """As ``Client.custom_object_instance``: ``await client.custom_object_instance("deal-9", "co-123")``."""
        return await self._call(
            lambda: self._client.custom_object_instance(
                external_id,
                custom_object_id,
                traits,
                name=name,
                account_id=account_id,
                organization_id=organization_id,
                timestamp=timestamp,
                message_id=message_id,
            )
        )

    async def enqueue(self, message: Mapping[str, Any]) -> Result:
        """As ``Client.enqueue``: ``await client.enqueue({"type": "track", "userId": "32", "event": "e"})``."""
        return await self._call(lambda: self._client.enqueue(message))

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
    """Run ``function`` on a new daemon thread and await its result without blocking the loop.

    The thread hands the result back with ``call_soon_threadsafe``. If the awaiting task
    is cancelled, or the loop closed, the thread still finishes and its result is dropped.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            outcome = functools.partial(future.set_result, function())
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
