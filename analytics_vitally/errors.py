"""Exceptions raised or reported by analytics_vitally.

Catch ``AnalyticsError`` to catch every one of them::

    AnalyticsError                        base class
    +-- ConfigurationError (ValueError)   a setting is missing or unsafe
    +-- InvalidMessageError (ValueError)  a call breaks one of Vitally's rules
    |   +-- InvalidTypeError (TypeError)  ... because a value has the wrong type
    +-- DeliveryError                     messages Vitally did not accept (on_error)
        +-- AuthenticationError           401: the write_key was refused

Invalid input raises at the call site; delivery failures happen on the worker
thread and are reported to ``on_error(exception, messages)`` and the log.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "AnalyticsError",
    "AuthenticationError",
    "ConfigurationError",
    "DeliveryError",
    "InvalidMessageError",
    "InvalidTypeError",
]


class AnalyticsError(Exception):
    """Base class of every exception of this library."""


class ConfigurationError(AnalyticsError, ValueError):
    """A setting is missing or unsafe; ``setting`` names it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting} {problem}")
        self.setting = setting


class InvalidMessageError(AnalyticsError, ValueError):
    """A message breaks one of Vitally's rules; ``field`` names the culprit.

    At the call site ``field`` is the parameter's name (``user_id``); in the
    importer and the local receiver it is the wire name (``userId``).
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


class InvalidTypeError(InvalidMessageError, TypeError):
    """A value in a message has a type Vitally (or JSON) cannot take."""


class DeliveryError(AnalyticsError):
    """Messages were not accepted by Vitally.

    ``status`` is the HTTP status (``None`` when no complete response came back),
    ``body`` the server's response text when there was one (at most 4 KB, the write
    key removed), and ``retry_after`` the seconds Vitally asked to wait (its
    ``Retry-After``), when it did.
    """

    def __init__(
        self, reason: str, status: Optional[int] = None, body: Optional[str] = None, retry_after: Optional[float] = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class AuthenticationError(DeliveryError):
    """Vitally answered 401: the write_key is wrong or revoked."""
