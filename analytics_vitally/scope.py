"""``analytics_vitally.context()``: the account, organization and track properties of the code running now.

A multi-tenant app knows the account per request; passing ``account_id=`` to every call is what
people forget. Inside ``with context(account_id="acct-1"):`` every client's calls that take an
``account_id`` or ``organization_id`` and were not given one get the context's, and ``track``
gets the context's properties under its own (the call's keys win). Contexts nest: the inner one's
values win, and properties merge.

It is a ``contextvars.ContextVar``: it follows the code through ``await`` and into the asyncio
tasks started inside it, and stays within its thread; a new thread starts without it (run the
thread's function through ``contextvars.copy_context().run`` to carry it).

A ``context`` object keeps nothing of its own once made, so one made at import can be entered by
any number of threads and tasks at once: each ``with`` pushes a ``Scope`` onto the stack that
``current`` holds (each scope links the one it covers), and leaving it puts back the scope it
covered, in the thread or task that entered it and there only.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from typing import Any, AsyncGenerator, Callable, Dict, Generator, Mapping, Optional, Tuple, TypeVar

from .errors import InvalidTypeError

F = TypeVar("F", bound=Callable[..., Any])


class Scope:
    """What a context adds to calls: made once per ``with``, read by every call inside it."""

    __slots__ = ("account_id", "entered", "organization_id", "outer", "properties")

    def __init__(
        self,
        account_id: Any,
        organization_id: Any,
        properties: Dict[str, Any],
        outer: Optional[Scope] = None,
        entered: Optional[context] = None,
    ) -> None:
        self.account_id = account_id
        self.organization_id = organization_id
        self.properties = properties
        self.outer = outer
        """The scope this one covers, current again when it is left."""
        self.entered = entered
        """The ``context`` whose ``with`` made it: the one whose exit takes it off."""

    def fill(self, fields: Dict[str, Any], ids: Tuple[str, ...]) -> None:
        """Give ``fields`` (a message under construction) the context's IDs among ``ids`` it lacks,
        and its properties under a track's own."""
        for name in ids:
            if fields.get(name) is None:
                value = self.account_id if name == "accountId" else self.organization_id
                if value is not None:
                    fields[name] = value
        if self.properties and "properties" in fields:
            own = fields["properties"]
            if isinstance(own, Mapping):  # anything else is left for the rules to refuse
                fields["properties"] = {**self.properties, **own}


current: contextvars.ContextVar[Optional[Scope]] = contextvars.ContextVar("analytics_vitally_context", default=None)
"""The scope of the code running now (None outside every context): the top of this thread's or task's stack."""


class context:
    """Calls made inside get this account, organization and these track properties where they lack them.

        PRO = analytics.context(account_id="acct-1")

        with PRO:                                            # from any thread or task, at once
            analytics.track("32", "report-exported")         # accountId "acct-1"

        @analytics.context(account_id="acct-1", properties={"plan": "pro"})
        async def handle(request): ...

    A context manager and a decorator (of plain and ``async def`` functions, and of generator and
    async generator functions, whose body runs inside it at each step and their caller's code between
    steps does not); it applies to every client. A call's own arguments win; an inner context's values
    win over an outer's.
    """

    def __init__(
        self,
        account_id: Any = None,
        organization_id: Any = None,
        properties: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if properties is not None and not isinstance(properties, Mapping):
            raise InvalidTypeError("properties", f"must be a dict or None, not {type(properties).__name__}")
        self.account_id = account_id
        self.organization_id = organization_id
        self.properties: Dict[str, Any] = dict(properties or {})

    def __enter__(self) -> context:
        outer = current.get()
        if outer is None:
            scope = Scope(self.account_id, self.organization_id, self.properties, None, self)
        else:
            scope = Scope(
                outer.account_id if self.account_id is None else self.account_id,
                outer.organization_id if self.organization_id is None else self.organization_id,
                {**outer.properties, **self.properties},
                outer,
                self,
            )
        current.set(scope)
        return self

    def __exit__(self, *exc_info: object) -> None:
        # The top scope is this with's own unless a generator entered a context around a yield and left
        # it set for its caller: then this exit takes that one off too, so nothing outlives the block.
        scope = current.get()
        while scope is not None and scope.entered is not self:
            scope = scope.outer
        if scope is not None:
            current.set(scope.outer)

    def __call__(self, function: F) -> F:
        if inspect.isasyncgenfunction(function):
            return self._async_generator(function)  # type: ignore[return-value]
        if inspect.isgeneratorfunction(function):
            return self._generator(function)  # type: ignore[return-value]
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await function(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self:
                return function(*args, **kwargs)

        return run  # type: ignore[return-value]

    # A generator's body runs at each step, not at the call: each step runs inside the context, and
    # the caller's code between two steps outside it. The wrappers are generator functions themselves,
    # as frameworks that look (FastAPI's dependencies, pytest's fixtures) expect.

    def _generator(self, function: Callable[..., Generator[Any, Any, Any]]) -> Callable[..., Generator[Any, Any, Any]]:
        @functools.wraps(function)
        def run_steps(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            generator = function(*args, **kwargs)
            advance: Callable[[Any], Any] = generator.send
            value: Any = None
            while True:
                try:
                    with self:
                        item = advance(value)
                except StopIteration as stop:
                    return stop.value
                try:
                    value = yield item
                    advance = generator.send
                except GeneratorExit:
                    with self:
                        generator.close()
                    raise
                except BaseException as error:  # thrown in by the caller: the body gets it, inside the context
                    advance, value = generator.throw, error

        return run_steps

    def _async_generator(
        self, function: Callable[..., AsyncGenerator[Any, Any]]
    ) -> Callable[..., AsyncGenerator[Any, Any]]:
        @functools.wraps(function)
        async def run_steps(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            generator = function(*args, **kwargs)
            advance: Callable[[Any], Any] = generator.asend
            value: Any = None
            while True:
                try:
                    with self:
                        item = await advance(value)
                except StopAsyncIteration:
                    return
                try:
                    value = yield item
                    advance = generator.asend
                except GeneratorExit:
                    with self:
                        await generator.aclose()
                    raise
                except BaseException as error:
                    advance, value = generator.athrow, error

        return run_steps


__all__ = ["Scope", "context", "current"]
