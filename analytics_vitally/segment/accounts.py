"""What a Segment face remembers between calls: the account each user was last seen in, and the
identify() traits waiting for one. Both bounded."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Tuple

from ..lifecycle import PerProcess
from .arguments import Message, log

MAX_USERS = 10_000
"""Users whose account this client remembers, and users whose identify() traits it holds."""
MAX_HELD_BYTES = 16_000_000
"""identify() traits held for users with no account yet, in bytes of JSON, at most."""


class Accounts:
    """The account each user was last seen in, and the identify() traits waiting for one (bounded)."""

    def __init__(self) -> None:
        self._lock = PerProcess(threading.Lock)
        self._of: OrderedDict[str, Any] = OrderedDict()
        self._held: OrderedDict[str, Tuple[Message, int]] = OrderedDict()
        self._held_bytes = 0
        self.let_go = 0
        """Users whose held traits were let go to keep within the bounds."""

    def account_of(self, user_id: str) -> Any:
        with self._lock.get():
            return self._of.get(user_id)

    def held(self, user_id: str) -> Message:
        with self._lock.get():
            found = self._held.get(user_id)
        return {} if found is None else found[0]

    def link(self, user_id: str, account_id: Any) -> None:
        """``user_id`` is in ``account_id`` now; what was held for them went out with that link."""
        with self._lock.get():
            self._of[user_id] = account_id
            self._of.move_to_end(user_id)
            if len(self._of) > MAX_USERS:
                self._of.popitem(last=False)
            found = self._held.pop(user_id, None)
            if found is not None:
                self._held_bytes -= found[1]

    def hold(self, user_id: str, traits: Message, size: int) -> int:
        """Hold ``traits`` (``size`` bytes as JSON) for ``user_id``; returns how many users' were let go for room."""
        with self._lock.get():
            earlier = self._held.pop(user_id, None)
            if earlier is not None:
                self._held_bytes -= earlier[1]
                traits, size = {**earlier[0], **traits}, earlier[1] + size
            self._held[user_id] = (traits, size)
            self._held_bytes += size
            let_go = 0
            while len(self._held) > MAX_USERS or self._held_bytes > MAX_HELD_BYTES:
                _, (_, freed) = self._held.popitem(last=False)
                self._held_bytes -= freed
                let_go += 1
            self.let_go += let_go
        return let_go

    def count(self) -> int:
        with self._lock.get():
            return len(self._held)


def report_held(accounts: Accounts) -> None:
    """At the end of a client (dropped, or the process exits): say what was never sent."""
    count = accounts.count()
    if count:
        log.warning(
            "identify() traits of %d user(s) were never sent: no group() call named their account; pass "
            "context={'groupId': ...} to identify() to send them at once",
            count,
        )
