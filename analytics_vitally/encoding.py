"""JSON for messages: timestamps, extra value types, and one encode per message.

Vitally wants timestamps as ISO 8601 UTC with milliseconds
(``2018-05-15T12:31:12.123Z``). Naive datetimes are taken to be UTC already
(as ``datetime.utcnow()`` and most databases give them).

Inside traits and properties these types are encoded beyond plain JSON:
datetime (as a timestamp above), date and time (ISO 8601), Decimal (a number),
UUID (its string), Enum (its value), set and frozenset (a list); tuples are
lists as usual. NaN and infinity are refused, as JSON has no spelling for them.

Whatever a value is, ``encode`` raises only ``InvalidMessageError`` (or its
``InvalidTypeError``) naming it, and quickly. The limits that takes:

- Nesting: dicts and lists nested up to ``MAX_NESTING`` (100) levels deep are
  always encoded (traits or properties is level 1). Deeper nesting is not looked
  for on every call (that would be a walk of every message); it is refused,
  "nested too deeply", when Python's JSON encoder runs out of recursion: at
  about 1,000 levels on CPython 3.9 to 3.12 (less the caller's own stack), about
  10,000 on 3.13. The limit is well below Python's recursion limit, so a caller
  deep in its own stack still gets the same answer.
- Integers: Python's own limit on turning an int into digits
  (``sys.get_int_max_str_digits()``, 4300 by default).
- Decimals: a Decimal of more than ``MAX_DIGITS`` (4300) digits before the
  point is refused, whatever Python's int limit is set to (turning one into an
  int takes time that grows with its size: ``Decimal("1e1000000")`` would take
  seconds). Below that, integral Decimals are sent as exact integers, others as
  floats; one beyond a float's range (1.8e308) is refused.
- datetimes: must fall within the years 1 to 9999 once moved to UTC.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from datetime import date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from enum import Enum
from typing import Any, Callable, Iterable, Iterator, List, Optional, Set, Tuple, Type, Union
from uuid import UUID

from dateutil.parser import isoparse

from .errors import InvalidMessageError, InvalidTypeError

MAX_NESTING = 100
"""Dicts and lists nested this deep (traits or properties being level 1) are always encoded."""

MAX_DIGITS = 4300
"""A Decimal with more digits than this before the point is refused (Python's default int string limit)."""


class _Unsendable(ValueError):
    """A value JSON (or Vitally) can't take; ``str()`` is the problem, phrased to follow the field's name."""


class _UnsendableType(TypeError):
    """As ``_Unsendable``, for a value of a type that can't be encoded."""


def format_timestamp(moment: datetime) -> str:
    """``moment`` as ISO 8601 UTC with milliseconds; naive means UTC.

    ValueError, saying why, if it falls outside the years 1 to 9999 once moved to UTC
    or its tzinfo fails.
    """
    try:
        offset = moment.utcoffset()
        if offset:
            moment = moment - offset
        return (
            f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}."
            f"{moment.microsecond // 1000:03d}Z"
        )
    except OverflowError:
        raise _Unsendable("is out of range: in UTC it falls outside the years 1 to 9999") from None
    except Exception as error:  # a tzinfo of the caller's that fails
        raise _Unsendable(f"could not be converted to UTC: {_describe(error)}") from None


_VITALLY_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.\d{3}Z\Z")


def parse_timestamp(text: str) -> str:
    """Any ISO 8601 time as ``format_timestamp`` writes it; ValueError if ``text`` is none.

    An offset is converted to UTC, a time without one is taken as UTC, a date alone is
    midnight UTC.
    """
    exact = _VITALLY_TIME.match(text)
    if exact:  # already in Vitally's form: only check that the date exists (isoparse is the slow part)
        year, month, day, hour, minute, second = map(int, exact.groups())
        datetime(year, month, day, hour, minute, second)
        return text
    try:
        return format_timestamp(isoparse(text))
    except OverflowError as error:
        raise ValueError(str(error)) from None


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
        return _decimal(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise _UnsendableType(f"is a {type(value).__name__}, which cannot be encoded as JSON")


def _decimal(value: Decimal) -> Union[int, float]:
    """An exact int for an integral Decimal, else a float; never slow (see ``MAX_DIGITS``)."""
    if not value.is_finite():
        raise _Unsendable("is not a finite number, which JSON cannot represent; send a finite number or None")
    if value.is_zero():
        return 0
    digits = value.adjusted() + 1  # before the point; O(1), unlike int(value)
    if digits > MAX_DIGITS:
        raise _Unsendable(f"is a Decimal with {digits} digits before the point; at most {MAX_DIGITS} can be sent")
    if value == value.to_integral_value():
        return int(value)
    number = float(value)
    if math.isinf(number):
        raise _Unsendable("is a Decimal beyond a float's range (1.8e308) and not an integer, so it cannot be sent")
    return number


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
    except MemoryError:
        raise  # the process's problem, not the message's
    except Exception as error:  # anything a value's own code raises, too
        found = _find_problem(message, isinstance(error, RecursionError))
        path, problem, kind = found or ("message", f"cannot be sent: {_describe(error)}", _kind(error))
        head, _, rest = path.partition("[")
        if param is not None:
            head = param(head)
        field = f"{head}[{rest}" if rest else head
        raise kind(field, problem) from None


# The slow path: which value, and why. ---------------------------------------------------

_Found = Tuple[str, str, Type[InvalidMessageError]]


class _Problem(Exception):
    def __init__(self, found: _Found) -> None:
        super().__init__(found[1])
        self.found = found


_SAFE_INT_BITS = 2000
"""Ints this short always have fewer digits than any int string limit Python allows (640 at least)."""


def _find_problem(message: Any, out_of_stack: bool) -> Optional[_Found]:
    """The first value, in the encoder's order, that it can't take: (path, problem, error class).

    Iterative, so no message, however deep, makes it recurse; it stops at the first problem,
    so it visits no more values than the encoder did. ``out_of_stack`` says the encoder raised
    RecursionError: then nesting deeper than ``MAX_NESTING`` is refused here, and if there is
    none (the caller's own stack was nearly full) the deepest value is named.
    """
    walk = _Walk(out_of_stack)
    found = walk.visit("", message)
    stack = walk.stack
    while found is None and stack:
        children, parent, ident, is_dict = stack[-1]
        depth = len(stack)
        try:
            for key, value in children:
                if is_dict and type(key) is not str:
                    _check_key(key, parent)
                kind = type(value)  # the common values first, cheaply
                if kind is str or kind is bool or value is None:
                    continue
                if kind is int and value.bit_length() <= _SAFE_INT_BITS:
                    continue
                if kind is float and math.isfinite(value):
                    continue
                found = walk.visit(_join(parent, key), value)
                if found is not None or len(stack) > depth:
                    break  # a problem, or a container to go into
            else:
                stack.pop()
                walk.on_path.discard(ident)
        except _Problem as raised:
            return raised.found
        except Exception as error:  # a dict subclass's items() of the caller's
            return parent or "message", f"could not be read: {_describe(error)}", _kind(error)
    if found is None and out_of_stack:
        problem = (
            f"is nested {walk.deepest} levels deep, within the limit of {MAX_NESTING}, but the call stack"
            f" was too deep to encode it (Python's recursion limit is {sys.getrecursionlimit()})"
        )
        return walk.deepest_path, problem, InvalidMessageError
    return found


class _Walk:
    """The state of ``_find_problem``: the containers on the current path, and the deepest seen."""

    def __init__(self, out_of_stack: bool) -> None:
        self.out_of_stack = out_of_stack
        self.stack: List[Tuple[Iterator[Tuple[Any, Any]], str, int, bool]] = []
        self.on_path: Set[int] = set()
        self.deepest = 0
        self.deepest_path = "message"

    def visit(self, path: str, value: Any) -> Optional[_Found]:
        """The problem with ``value`` itself, if any; a container is pushed, to be gone into next."""
        for _ in range(MAX_NESTING):  # an extra type may encode as another (an Enum of Enums)
            if isinstance(value, (str, bool)) or value is None:
                return None
            if isinstance(value, int):
                if value.bit_length() > _SAFE_INT_BITS and not _int_fits(value):
                    return path, f"is an integer {_too_many_digits()}", InvalidMessageError
                return None
            if isinstance(value, float):
                if math.isfinite(value):
                    return None
                problem = f"is {float.__repr__(value)}, which JSON cannot represent; send a finite number or None"
                return path, problem, InvalidMessageError
            if isinstance(value, (dict, list, tuple)):
                return self._push(path, value)
            try:
                value = _encode_extra(value)
            except (_Unsendable, _UnsendableType) as error:
                return path, str(error), _kind(error)
            except Exception as error:  # a value's own code failed (a tzinfo, an Enum's value, ...)
                return path, f"could not be encoded: {_describe(error)}", _kind(error)
        return path, "is nested too deeply (an extra type that encodes as another, and so on)", InvalidMessageError

    def _push(self, path: str, container: Any) -> Optional[_Found]:
        level = len(self.stack)  # the message is level 0, traits or properties level 1
        top = self.stack[2][1] if level > 2 else path or "message"  # e.g. properties['x']
        if id(container) in self.on_path:
            return path, "contains itself (a circular reference)", InvalidMessageError
        if self.out_of_stack and level > MAX_NESTING:
            return top, f"is nested too deeply: more than {MAX_NESTING} levels of dicts and lists", InvalidMessageError
        if level > self.deepest:
            self.deepest, self.deepest_path = level, top
        children: Iterator[Tuple[Any, Any]]
        if type(container) is dict:
            children = iter(dict.items(container))
        elif isinstance(container, dict):  # the encoder reads a subclass through its items()
            children = _pairs(container, path)
        else:
            children = enumerate(list.__iter__(container) if isinstance(container, list) else tuple.__iter__(container))
        self.stack.append((children, path, id(container), isinstance(container, dict)))
        self.on_path.add(id(container))
        return None


def _pairs(container: dict[Any, Any], path: str) -> Iterator[Tuple[Any, Any]]:
    """The items() of a dict subclass, checked as the encoder checks them."""
    for pair in container.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            problem = "could not be read: its items() gave something other than (key, value) pairs"
            raise _Problem((path or "message", problem, InvalidMessageError))
        yield pair


def _check_key(key: Any, path: str) -> None:
    """_Problem unless JSON takes ``key`` as the encoder does (str, int, float, bool or None)."""
    if isinstance(key, str) or key is None or key is True or key is False:
        return
    where = path or "message"
    if isinstance(key, float):
        if not math.isfinite(key):
            problem = f"has a key {float.__repr__(key)}, which JSON cannot represent; keys must be strings"
            raise _Problem((where, problem, InvalidMessageError))
        return
    if isinstance(key, int):
        if key.bit_length() > _SAFE_INT_BITS and not _int_fits(key):
            raise _Problem((where, f"has an integer key {_too_many_digits()}", InvalidMessageError))
        return
    raise _Problem((where, f"has a key of type {type(key).__name__}; keys must be strings", InvalidTypeError))


def _int_fits(value: int) -> bool:
    """Whether Python will write ``value`` in digits (its int string limit)."""
    try:
        int.__repr__(value)
    except ValueError:
        return False
    return True


def _too_many_digits() -> str:
    limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
    return f"of more than {limit} digits, too long to send (Python's int string limit)"


_MAX_KEY_SHOWN = 100


def _join(path: str, key: Any) -> str:
    """The path of ``key`` in the dict at ``path``: a top-level field by its name, else ``path['key']``."""
    if isinstance(key, str):
        if not path:
            return str.__str__(key)
        if len(key) > _MAX_KEY_SHOWN:
            return f"{path}[{str.__repr__(key[:_MAX_KEY_SHOWN])}...]"
        return f"{path}[{str.__repr__(key)}]"
    if isinstance(key, float):
        shown = float.__repr__(key)
    elif isinstance(key, int) and not isinstance(key, bool):
        shown = int.__repr__(key)  # checked by _check_key: it fits
    else:
        shown = repr(key)  # True, False or None
    return f"{path}[{shown}]" if path else shown


def _describe(error: BaseException) -> str:
    """``Type: text`` of ``error``, kept short, even when its ``str()`` fails."""
    try:
        text = str(error)
    except Exception:
        text = ""
    if len(text) > 200:
        text = text[:200] + "..."
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def _kind(error: BaseException) -> Type[InvalidMessageError]:
    return InvalidTypeError if isinstance(error, TypeError) else InvalidMessageError


__all__ = ["MAX_DIGITS", "MAX_NESTING", "encode", "format_timestamp", "now_timestamp", "parse_timestamp"]
