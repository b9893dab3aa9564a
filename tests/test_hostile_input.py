"""Input built to hurt: every call raises only InvalidMessageError/InvalidTypeError naming the field, fast.

Each case builds its input first and times only the call; the bound is generous (a loaded
2-core machine), yet far below what the cases took before their fixes (``Decimal("1e1000000")``
took 51 s of CPU).
"""

from __future__ import annotations

import enum
import json
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Type

import pytest

from analytics_vitally import Client, InvalidMessageError, InvalidTypeError
from analytics_vitally.encoding import MAX_DIGITS, MAX_NESTING, encode
from analytics_vitally.messages import normalize_ids

TIME_BOUND = 0.5
"""Seconds one refused call may take, even on a loaded machine."""

PLUS_ONE = timezone(timedelta(hours=1))
MINUS_ONE = timezone(timedelta(hours=-1))


def deep_dict(levels: int) -> Dict[str, Any]:
    """``levels`` dicts, each the only value of the one before."""
    root: Dict[str, Any] = {}
    inner = root
    for _ in range(levels - 1):
        inner["a"] = {}
        inner = inner["a"]
    return root


def deep_list(levels: int) -> List[Any]:
    root: List[Any] = []
    inner = root
    for _ in range(levels - 1):
        inner.append([])
        inner = inner[0]
    return root


def deep_frozenset(levels: int) -> frozenset[Any]:
    value: frozenset[Any] = frozenset()
    for _ in range(levels - 1):
        value = frozenset({value})
    return value


class FailingZone(tzinfo):
    def utcoffset(self, moment: Optional[datetime]) -> timedelta:
        raise RuntimeError("no offset today")

    def dst(self, moment: Optional[datetime]) -> None:
        return None

    def tzname(self, moment: Optional[datetime]) -> str:
        return "failing"


class KeyWithoutRepr(str):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __hash__ = str.__hash__


class UnreadableDict(Dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("no items")


class TriplesDict(Dict[str, Any]):
    def items(self) -> Any:
        return [("a", 1, 2)]


class UnreadableSet(set):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        raise RuntimeError("no iteration")


class UUIDWithoutStr(uuid.UUID):
    def __str__(self) -> str:
        raise RuntimeError("no str")


class StrWithoutLen(str):
    def __len__(self) -> int:
        raise RuntimeError("no len")


def hostile(value: Any) -> Any:
    """``value``, typed as anything: these calls pass what the signatures don't allow."""
    return value


Call = Callable[[Client], Any]
Make = Callable[[], Call]
"""Builds the hostile input (not timed) and returns the call to time."""


def _deep_enum() -> Call:
    value = enum.Enum("Deep", {"A": deep_dict(10_000)}).A  # type: ignore[attr-defined]
    return lambda c: c.track("u", "e", {"e": value})


def _built(build: Callable[[], Any], call: Callable[[Client, Any], Any]) -> Make:
    """A case whose input ``build()`` makes, untimed, and ``call`` passes."""

    def make() -> Call:
        value = build()
        return lambda c: call(c, value)

    return make


CASES: Dict[str, Tuple[Make, Type[InvalidMessageError], str, str]] = {
    # Nesting: RecursionError before (the C encoder, then the slow path again).
    "10,000-deep dict in properties": (
        _built(lambda: deep_dict(10_000), lambda c, v: c.track("u", "e", {"x": v})),
        InvalidMessageError,
        "properties['x']",
        "nested too deeply",
    ),
    "10,000-deep list in properties": (
        _built(lambda: deep_list(10_000), lambda c, v: c.track("u", "e", {"x": v})),
        InvalidMessageError,
        "properties['x']",
        "nested too deeply",
    ),
    "10,000-deep traits": (
        _built(lambda: deep_dict(10_000), lambda c, v: c.identify("u", v, account_id="a")),
        InvalidMessageError,
        "traits['a']",
        "nested too deeply",
    ),
    "10,000-deep frozensets": (
        _built(lambda: deep_frozenset(10_000), lambda c, v: c.track("u", "e", {"f": v})),
        InvalidMessageError,
        "properties['f']",
        "nested too deeply",
    ),
    "Enum whose value is 10,000 deep": (_deep_enum, InvalidMessageError, "properties['e']", "nested too deeply"),
    # Integers beyond Python's int string limit: a bare ValueError before, for IDs and keys.
    "huge integer user_id": (lambda: lambda c: c.track(10**5000, "e"), InvalidMessageError, "user_id", "too long"),
    "huge integer account_id": (
        lambda: lambda c: c.track(None, "e", account_id=10**5000),
        InvalidMessageError,
        "account_id",
        "too long",
    ),
    "huge integer in properties": (
        lambda: lambda c: c.track("u", "e", {"n": [1, {"m": 10**5000}]}),
        InvalidMessageError,
        "properties['n'][1]['m']",
        "too long to send",
    ),
    "huge integer key": (
        lambda: lambda c: c.track("u", "e", hostile({10**5000: 1})),
        InvalidMessageError,
        "properties",
        "too long to send",
    ),
    # Datetimes beyond the years 1 to 9999 in UTC: OverflowError before.
    "datetime.min+01:00 as timestamp": (
        lambda: lambda c: c.track("u", "e", timestamp=datetime.min.replace(tzinfo=PLUS_ONE)),
        InvalidMessageError,
        "timestamp",
        "out of range: in UTC it falls outside the years 1 to 9999",
    ),
    "datetime.max-01:00 as timestamp": (
        lambda: lambda c: c.track("u", "e", timestamp=datetime.max.replace(tzinfo=MINUS_ONE)),
        InvalidMessageError,
        "timestamp",
        "out of range: in UTC it falls outside the years 1 to 9999",
    ),
    "datetime.min+01:00 in properties": (
        lambda: lambda c: c.track("u", "e", {"x": datetime.min.replace(tzinfo=PLUS_ONE)}),
        InvalidMessageError,
        "properties['x']",
        "out of range: in UTC it falls outside the years 1 to 9999",
    ),
    "failing tzinfo as timestamp": (
        lambda: lambda c: c.track("u", "e", timestamp=datetime(2020, 1, 1, tzinfo=FailingZone())),
        InvalidMessageError,
        "timestamp",
        "could not be converted to UTC: RuntimeError: no offset today",
    ),
    "failing tzinfo in properties": (
        lambda: lambda c: c.track("u", "e", {"t": datetime(2020, 1, 1, tzinfo=FailingZone())}),
        InvalidMessageError,
        "properties['t']",
        "could not be converted to UTC",
    ),
    # Decimals: int() of Decimal("1e1000000") took 51 s of CPU, twice.
    "Decimal 1e1000000": (
        lambda: lambda c: c.track("u", "e", {"d": Decimal("1e1000000")}),
        InvalidMessageError,
        "properties['d']",
        f"at most {MAX_DIGITS}",
    ),
    "Decimal -1e4300": (
        lambda: lambda c: c.track("u", "e", {"d": Decimal("-1e4300")}),
        InvalidMessageError,
        "properties['d']",
        f"at most {MAX_DIGITS}",
    ),
    # Odd keys and containers that run the caller's code.
    "infinite float key": (
        lambda: lambda c: c.track("u", "e", {"d": {float("inf"): 1}}),
        InvalidMessageError,
        "properties['d']",
        "has a key inf",
    ),
    "key whose repr raises, bad value": (
        lambda: lambda c: c.track("u", "e", {KeyWithoutRepr("k"): object()}),
        InvalidTypeError,
        "properties['k']",
        "cannot be encoded",
    ),
    "dict subclass whose items() raises, in properties": (
        lambda: lambda c: c.track("u", "e", {"x": UnreadableDict(a=1)}),
        InvalidMessageError,
        "properties['x']",
        "RuntimeError: no items",
    ),
    "dict subclass whose items() raises, as properties": (
        lambda: lambda c: c.track("u", "e", UnreadableDict(a=1)),
        InvalidMessageError,
        "properties",
        "RuntimeError: no items",
    ),
    "dict subclass whose items() gives triples": (
        lambda: lambda c: c.track("u", "e", {"x": TriplesDict(a=1)}),
        InvalidMessageError,
        "properties['x']",
        "(key, value) pairs",
    ),
    "set subclass that cannot be iterated": (
        lambda: lambda c: c.track("u", "e", {"s": UnreadableSet({1})}),
        InvalidMessageError,
        "properties['s']",
        "RuntimeError: no iteration",
    ),
    "UUID message_id whose str raises": (
        lambda: lambda c: c.track("u", "e", message_id=hostile(UUIDWithoutStr(int=1))),
        InvalidTypeError,
        "message_id",
        "could not be made a string",
    ),
    "str message_id whose len raises": (
        lambda: lambda c: c.track("u", "e", message_id=StrWithoutLen("")),
        InvalidMessageError,
        "message_id",
        "must not be empty",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_raises_naming_the_field_fast(case: str) -> None:
    make, kind, field, says = CASES[case]
    client = Client(send=False)
    call = make()
    started = time.perf_counter()
    with pytest.raises(kind) as raised:
        call(client)
    elapsed = time.perf_counter() - started
    assert type(raised.value) is kind
    assert raised.value.field == field
    assert says in str(raised.value)
    assert elapsed < TIME_BOUND, f"took {elapsed:.2f}s"


def _with_stack_room(room: int, call: Callable[[], Any]) -> Any:
    """Run ``call`` with only about ``room`` frames left below Python's recursion limit."""
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back  # type: ignore[assignment]

    def descend(levels: int) -> Any:
        return descend(levels - 1) if levels else call()

    return descend(max(0, sys.getrecursionlimit() - depth - room))


@pytest.mark.parametrize("room", [300, 100, 40])
def test_too_deep_is_named_the_same_however_full_the_callers_stack(room: int) -> None:
    client = Client(send=False)
    deep = deep_dict(10_000)
    with pytest.raises(InvalidMessageError) as raised:
        _with_stack_room(room, lambda: client.track("u", "e", {"x": deep}))
    assert raised.value.field == "properties['x']"
    assert f"nested too deeply: more than {MAX_NESTING} levels" in str(raised.value)


def test_within_the_limit_on_a_nearly_full_stack_is_sent_or_named() -> None:
    """Encoded (CPython 3.12+: the encoder's own recursion budget), or refused naming the value (3.9 to 3.11)."""
    client = Client(send=False)
    value = deep_dict(50)
    try:
        _with_stack_room(30, lambda: client.track("u", "e", {"x": value}))
    except InvalidMessageError as error:
        assert error.field == "properties['x']"
        assert f"within the limit of {MAX_NESTING}" in str(error)


def test_nesting_up_to_the_limit_is_encoded_and_one_more_refused_when_the_stack_runs_out() -> None:
    client = Client(send=False)
    at_limit = deep_dict(MAX_NESTING - 1)  # properties is level 1
    _, message = client.track("u", "e", {"x": at_limit})
    assert json.loads(encode(message))["properties"]["x"] == at_limit
    if sys.version_info < (3, 12):  # where the encoder shares the caller's recursion budget
        with pytest.raises(InvalidMessageError, match="nested too deeply"):
            _with_stack_room(40, lambda: client.track("u", "e", {"x": deep_dict(MAX_NESTING)}))


def test_decimals_within_the_limit_stay_exact() -> None:
    client = Client(send=False)
    values = {
        "big": Decimal(f"1e{MAX_DIGITS - 1}"),
        "exact": Decimal("123456789012345678901234567890"),
        "zero": Decimal("0e99999"),
    }
    _, message = client.track("u", "e", values)
    wire = json.loads(encode(message))["properties"]
    assert wire == {"big": 10 ** (MAX_DIGITS - 1), "exact": 123456789012345678901234567890, "zero": 0}


def test_huge_integer_id_is_named_by_the_callers_naming() -> None:
    with pytest.raises(InvalidMessageError) as raised:
        normalize_ids({"type": "track", "userId": 10**5000, "event": "e"}, lambda field: field)
    assert raised.value.field == "userId"


class _UnreadableMapping(Mapping):  # type: ignore[type-arg]
    """A Mapping whose every read raises, as a broken ORM row or proxy might."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("the row is gone")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("the row is gone")

    def __len__(self) -> int:
        return 3


class _UnhashableName(str):
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("compared")


def test_enqueue_lets_only_our_errors_out_of_a_hostile_mapping() -> None:
    client = Client("k", send=False)
    with pytest.raises(InvalidTypeError, match="message could not be read: RuntimeError"):
        client.enqueue(_UnreadableMapping())
    queued, message = client.enqueue({"type": _UnhashableName("track"), "userId": "u", "event": "e"})
    assert queued and message["type"] == "track" and message["type"].__class__ is str
