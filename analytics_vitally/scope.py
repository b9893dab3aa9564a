"""``analytics_vitally.context()``: the account, organization and track properties of the code running now.

A multi-tenant app knows the account per request; passing ``account_id=`` to every call is what
people forget. Inside ``with context(account_id="acct-1"):`` every client's calls that take an
``account_id`` or ``organization_id`` and were not given one get the context's, and ``track``
gets the context's properties under its own (the call's keys win). Contexts nest: the inner one's
values win, and properties merge.

It is a ``contextvars.ContextVar``: it follows the code through ``await`` and into the asyncio
tasks started inside it, and stays within its thread; a new thread starts without it (run the
thread's function through ``contextvars.copy_context().run`` to carry it).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar

from .errors import InvalidTypeError

F = TypeVar("F", bound=Callable[..., Any])


class Scope:
    """What a context adds to calls: made once per ``with``, read by every call inside it."""

    __slots__ = ("account_id", "organization_id", "properties")

    def __init__(self, account_id: Any, organization_id: Any, properties: Dict[str, Any]) -> None:
        self.account_id = account_id
        self.organization_id = organization_id
        self.properties = properties

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
"""The scope of the code running now (None outside every context)."""


class context:
    """Calls made inside get this account, organization and these track properties where they lack them.

        with analytics.context(account_id="acct-1"):
            analytics.track("32", "report-exported")            # accountId "acct-1"

        @analytics.context(account_id="acct-1", properties={"plan": "pro"})
        async def handle(request): ...

    A context manager and a decorator (of plain and ``async def`` functions); it applies to
    every client. A call's own arguments win; an inner context's values win over an outer's.
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
        self._tokens: List[contextvars.Token[Optional[Scope]]] = []

    def __enter__(self) -> context:
        outer = current.get()
        if outer is None:
            scope = Scope(self.account_id, self.organization_id, self.properties)
        else:
            scope = Scope(
                outer.account_id if self.account_id is None else self.account_id,
                outer.organization_id if self.organization_id is None else self.organization_id,
                {**outer.properties, **self.properties},
            )
        self._tokens.append(current.set(scope))
        return self

    def __exit__(self, *exc_info: object) -> None:
        current.reset(self._tokens.pop())

    def _again(self) -> context:
        return context(self.account_id, self.organization_id, self.properties)

    def __call__(self, function: F) -> F:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self._again():  # one per call: concurrent calls each enter their own
                    return await function(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._again():
                return function(*args, **kwargs)

        return run  # type: ignore[return-value]


__all__ = ["Scope", "context", "current"]
