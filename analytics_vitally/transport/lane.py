"""What a lane is: one worker thread's way of posting a batch to Vitally (``direct``, ``proxied``).

``Transport`` picks a lane per thread and hands each request's armed ``Deadline`` to it; the lane
attaches the socket it sends on to that deadline and reads at most ``ANSWER_LIMIT`` bytes of the
answer's body.
"""

from __future__ import annotations

from typing import Any, Protocol, Tuple

from .deadline import Deadline

ANSWER_LIMIT = 4096
"""Bytes of an answer's body read at most; the connection of a longer answer is closed instead."""


class Lane(Protocol):
    """How one worker thread posts a batch: ``post`` returns the answer with its body unread."""

    def post(self, body: bytes, deadline: Deadline) -> Response:
        """Send ``body`` and read the answer's status line and headers, within ``deadline``.

        The socket used is attached to ``deadline`` (its watchdog shuts it down when it passes);
        ``deadline.seconds`` is also the socket's per-operation timeout.
        """
        ...

    def read_answer(self, response: Any) -> Tuple[bytes, bool]:
        """The first ``ANSWER_LIMIT`` bytes of the body as sent (not decompressed), and whether there was more.

        A body read whole leaves its connection open for the next batch; the connection of a longer
        one is closed rather than read on. A body cut short raises ``IncompleteRead``.
        """
        ...

    def close(self) -> None: ...


class ClosedWhenDropped:
    """A lane base: a lane nobody holds any more (its thread ended, its client was dropped) is
    closed then, its sockets not left to the collector to warn "unclosed socket" (urllib3 2 closes
    its pools' connections itself when collected; 1.x and the direct lane's sockets do not)."""

    def close(self) -> None:
        raise NotImplementedError

    def __del__(self) -> None:
        try:  # noqa: SIM105 - no global looked up in a finalizer that may run at interpreter exit
            self.close()
        except Exception:  # pragma: no cover - a finalizer must not raise (interpreter exit)
            pass


class Response(Protocol):
    status: int

    @property
    def headers(self) -> Any: ...

    def close(self) -> None: ...


__all__ = ["ANSWER_LIMIT", "ClosedWhenDropped", "Lane", "Response"]
