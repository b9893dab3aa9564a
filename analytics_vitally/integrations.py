"""``flush_after``: deliver before a serverless handler or a task function hands control back.

    @analytics_vitally.flush_after(timeout=2.0)
    def handler(event, context):
        analytics_vitally.track(event["user"], "invoked")
        return {"statusCode": 200}

AWS Lambda freezes the process as soon as the handler returns and may never thaw it,
so whatever the worker thread had not yet sent would be lost. The decorator flushes
when the function returns or raises, bounded by ``timeout``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, overload

from . import default
from .aio import AsyncClient, in_thread
from .client import Client
from .errors import ConfigurationError

if TYPE_CHECKING:
    from typing import ParamSpec, TypeVar

    P = ParamSpec("P")
    R = TypeVar("R")

log = logging.getLogger("analytics_vitally")

AnyClient = Union[Client, AsyncClient]


@overload
def flush_after(function: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def flush_after(
    *, timeout: Optional[float] = 2.0, client: Optional[AnyClient] = None
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def flush_after(
    function: Optional[Callable[..., Any]] = None,
    /,
    *,
    timeout: Optional[float] = 2.0,
    client: Optional[AnyClient] = None,
) -> Any:
    """Flush when the decorated function returns or raises, waiting at most ``timeout`` seconds.

        @flush_after                                  # the default client, 2 s at most
        def handler(event, context): ...

        @flush_after(timeout=5, client=my_client)     # a Client or an AsyncClient
        async def handle(job): ...

    Works on plain and ``async def`` functions; an async one awaits the flush off the
    event loop. ``timeout=None`` waits for as long as delivery takes. A flush that runs
    out of time is logged at WARNING; its messages stay queued and are sent later if the
    process lives on. The function's own result or exception is passed on unchanged.
    """
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < math.inf
    ):
        raise ConfigurationError("timeout", f"must be a number of seconds, 0 or more, or None; not {timeout!r}")
    if client is not None and not isinstance(client, (Client, AsyncClient)):
        raise ConfigurationError("client", f"must be a Client or an AsyncClient, not {type(client).__name__}")

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            raise TypeError(f"flush_after cannot wrap the generator function {function.__qualname__}")
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def call_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await function(*args, **kwargs)
                finally:
                    _report(function, await _flush_async(client, timeout), timeout)

            return call_async

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            finally:
                _report(function, _flush(client, timeout), timeout)

        return call

    return decorate if function is None else decorate(function)


def _flush(client: Optional[AnyClient], timeout: Optional[float]) -> bool:
    if client is None:
        return default.flush(timeout)
    if isinstance(client, AsyncClient):
        return client.client.flush(timeout)
    return client.flush(timeout)


async def _flush_async(client: Optional[AnyClient], timeout: Optional[float]) -> bool:
    if isinstance(client, AsyncClient):
        return await client.flush(timeout)
    return await in_thread(lambda: _flush(client, timeout))


def _report(function: Callable[..., Any], flushed: bool, timeout: Optional[float]) -> None:
    if not flushed:
        log.warning(
            "flush_after(timeout=%s): messages still undelivered when %s ended; they stay queued and are "
            "sent only if the process goes on running",
            timeout,
            function.__qualname__,
        )


__all__ = ["flush_after"]
