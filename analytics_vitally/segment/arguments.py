"""How a Segment call's arguments are read: IDs, dicts, timestamps, values to clean, settings."""

from __future__ import annotations

import logging
import math
import numbers
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Callable, Dict, Optional
from uuid import UUID, uuid5

from ..encoding import encode
from ..errors import ConfigurationError, InvalidMessageError, InvalidTypeError
from ..messages import MAX_BATCH_MESSAGES

log = logging.getLogger("analytics_vitally")

Message = Dict[str, Any]

RECENT = timedelta(seconds=5)
"""A naive timestamp this close to ``datetime.now()`` is local time (Segment's rule); others are UTC."""

SEGMENT_ONLY: Dict[str, Any] = {
    "oauth_client_id": None,
    "oauth_client_key": None,
    "oauth_key_id": None,
    "oauth_auth_server": "https://oauth2.segment.io",
    "oauth_scope": "tracking_api:write",
    "max_total_backoff_duration": None,
    "max_rate_limit_duration": None,
}
"""Segment's settings that Vitally's client has no name for, with Segment's defaults (None: ours)."""

POSITIONAL = (
    "write_key", "host", "debug", "max_queue_size", "send", "on_error", "gzip", "max_retries", "sync_mode",
    "timeout", "proxies", "thread", "upload_size", "upload_interval", "log_handler", "oauth_client_id",
    "oauth_client_key", "oauth_key_id", "oauth_auth_server", "oauth_scope", "max_total_backoff_duration",
    "max_rate_limit_duration",
)  # fmt: skip
"""``Client(...)``'s positional parameters, in Segment's order; every other setting is keyword-only."""


_NAMESPACE = UUID("9c7d5c1e-3a53-4d38-9c52-5b0f1f3c2a6e")
"""Of the UUID5 messageIds derived from a group() call's message_id."""


def derived_id(base: str, kind: str) -> str:
    return str(uuid5(_NAMESPACE, f"{base}/{kind}"))


def vitally_settings(settings: Dict[str, Any], segment: Dict[str, Any]) -> Dict[str, Any]:
    """``analytics_vitally.Client``'s settings from a Segment-style call's."""
    for name in ("oauth_client_id", "oauth_client_key", "oauth_key_id"):
        if segment.get(name) is not None:
            raise ConfigurationError(
                name, "is Segment's OAuth, which Vitally does not use: the write_key is Vitally's credential; "
                "leave the oauth_* settings None"
            )  # fmt: skip
    for name in ("max_total_backoff_duration", "max_rate_limit_duration"):
        value = segment.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0):
            raise ConfigurationError(name, f"must be a non-negative number of seconds or None, not {value!r}")
    if segment.get("max_total_backoff_duration") is not None and "max_retry_time" not in settings:
        settings["max_retry_time"] = segment["max_total_backoff_duration"]
    for name in ("host", "on_error", "log_handler", "proxies"):
        if name in settings and not settings[name]:  # Segment reads these with ``if value:``: False is None
            settings[name] = None
    size = settings.get("upload_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > MAX_BATCH_MESSAGES:
        log.warning(
            "upload_size=%d is taken as %d, the most messages Vitally takes in one batch", size, MAX_BATCH_MESSAGES
        )
        settings["upload_size"] = MAX_BATCH_MESSAGES
    return settings


def as_object(name: str, value: Any) -> Message:
    """A dict argument as Segment takes it: anything false is ``{}``; anything else must be a dict."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise InvalidTypeError(name, f"must be a dict, not {type(value).__name__}")
    return value


def someone(user_id: Any, anonymous_id: Any) -> bool:
    """Whether a call has a user_id (False: only an anonymous_id); InvalidMessageError when it has neither."""
    if user_id is not None and user_id != "":
        return True
    if not as_id("anonymous_id", anonymous_id):
        raise InvalidMessageError("user_id", "or anonymous_id is required")
    return False


def as_text(value: Any) -> str:
    """A message_id as Segment takes it: anything, as its str()."""
    if value.__class__ is str:
        return value
    try:
        text = str(value)
    except Exception as error:
        raise InvalidTypeError("message_id", f"could not be made a string: {type(error).__name__}") from None
    if not text:
        raise InvalidMessageError("message_id", "must not be empty")
    return text


def as_id(name: str, value: Any) -> Optional[str]:
    """An ID as Segment takes it: a string, or a number made one; None for None."""
    if value is None or value.__class__ is str:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, numbers.Number):
        try:
            return str(value)
        except ValueError as error:  # an int beyond Python's int string limit
            raise InvalidMessageError(name, str(error)) from None
    raise InvalidTypeError(name, f"must be a string or a number, not {type(value).__name__}")


def moment(timestamp: Any) -> Any:
    """A naive datetime within ``RECENT`` of now as local time, as Segment reads it; anything else unchanged."""
    if timestamp is not None and isinstance(timestamp, datetime) and timestamp.tzinfo is None:
        try:
            if abs(datetime.now() - timestamp) < RECENT:
                return timestamp.astimezone()
        except (OverflowError, ValueError, OSError):
            pass
    return timestamp


DROP = object()


def cleaned(value: Any, path: str, dropped: Callable[[str, str], None]) -> Any:
    """``value`` with what JSON cannot take left out (``dropped(path, why)`` told), bytes as text."""
    kind = value.__class__
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        dropped(path, "is not a finite number")
        return DROP
    if isinstance(value, dict):
        kept: Dict[Any, Any] = {}
        for key, item in list(value.items()):
            shown = f"{path}[{key!r}]"
            if not (isinstance(key, (str, int, float)) or key is None):
                dropped(shown, f"has a key of type {type(key).__name__}")
                continue
            item = cleaned(item, shown, dropped)
            if item is not DROP:
                kept[key] = item
        return kept
    if isinstance(value, (list, tuple, set, frozenset)):
        items = (cleaned(item, f"{path}[{index}]", dropped) for index, item in enumerate(value))
        return [item for item in items if item is not DROP]
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            dropped(path, "is bytes that are not UTF-8 text")
            return DROP
    if isinstance(value, Enum):
        return cleaned(value.value, path, dropped)
    try:
        encode({"value": value})
    except InvalidMessageError as error:
        dropped(path, error.problem)
        return DROP
    return value
