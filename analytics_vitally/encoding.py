"""JSON for messages: timestamps, extra value types, and one encode per message.

Vitally wants timestamps as ISO 8601 UTC with milliseconds
(``2018-05-15T12:31:12.123Z``). Naive datetimes are taken to be UTC already
(as ``datetime.utcnow()`` and most databases give them).

Inside traits and properties these types are encoded beyond plain JSON:
datetime (as a timestamp above), date and time (ISO 8601), Decimal (a number),
UUID (its string), Enum (its value), set and frozenset (a list); tuples are
lists as usual. NaN and infinity are refused, as JSON has no spelling for them.
"""

from __future__ import annotations

import json
import math
import time
from datetime import date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from enum import Enum
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple
from uuid import UUID

from .errors import InvalidMessageError, InvalidTypeError


def format_timestamp(moment: datetime) -> str:
    """``moment`` as ISO 8601 UTC with milliseconds; naive means UTC."""
    offset = moment.utcoffset()
    if offset:
        moment = moment - offset
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}."
        f"{moment.microsecond // 1000:03d}Z"
    )


_second_cache: Tuple[int, str] = (-1, "")


def now_timestamp() -> str:
    """The current time as ``format_timestamp`` writes it, cheaply."""
    global _second_cache
    second, millisecond = divmod(time.time_ns() // 1_000_000, 1000)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache = (second, prefix)
    return f"{prefix}.{millisecond:03d}Z"


def _encode_extra(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, (date, time_of_day)):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("NaN and infinity are not valid JSON")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"a {type(value).__name__} cannot be encoded as JSON")


_encoder = json.JSONEncoder(default=_encode_extra, allow_nan=False, separators=(",", ":"))
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_chunks: Callable[[Any, int], Iterable[str]] = (
    # CPython: the C encoder, made once (JSONEncoder.encode makes one per call).
    _make_c_encoder(None, _encode_extra, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
    if _make_c_encoder is not None
    else lambda value, level: _encoder.iterencode(value)
)


def encode(message: dict[str, Any], param: Optional[Callable[[str], str]] = None) -> str:
    """``message`` as compact ASCII JSON, or InvalidMessageError naming the bad value.

    ``param`` maps a wire field name to the name shown in errors.
    """
    try:
        return "".join(_chunks(message, 0))
    except (TypeError, ValueError, RecursionError) as error:
        path, problem = _find_unencodable(message) or ("message", str(error))
        head, _, rest = path.partition("[")
        if param is not None:
            head = param(head)
        field = f"{head}[{rest}" if rest else head
        kind = InvalidTypeError if isinstance(error, TypeError) else InvalidMessageError
        raise kind(field, problem) from None


def _children(value: Any) -> Iterator[Tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"[{key!r}]", item
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            yield f"[{index}]", item


def _find_unencodable(value: Any, path: str = "", parents: Tuple[int, ...] = ()) -> Optional[Tuple[str, str]]:
    """The path and reason of the first value JSON can't take (slow path only)."""
    if id(value) in parents:
        return path, "contains itself (a circular reference)"
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                return path or "message", f"has a key of type {type(key).__name__}; keys must be strings"
    if isinstance(value, float) and not math.isfinite(value):
        return path, f"is {value!r}, which JSON cannot represent; send a finite number or None"
    if isinstance(value, (dict, list, tuple)):
        for suffix, item in _children(value):
            found = _find_unencodable(item, _join(path, suffix), (*parents, id(value)))
            if found:
                return found
        return None
    try:
        "".join(_chunks(value, 0))
    except (TypeError, ValueError, RecursionError) as error:
        return path, f"cannot be sent: {error}"
    return None


def _join(path: str, suffix: str) -> str:
    if path:
        return path + suffix
    return suffix[2:-2] if suffix.startswith("['") else suffix


__all__ = ["encode", "format_timestamp", "now_timestamp"]
