"""Values beyond plain JSON inside traits and properties."""

from __future__ import annotations

import enum
import json
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from uuid import UUID

import pytest

from analytics_vitally import Client, InvalidMessageError
from analytics_vitally.encoding import encode


class Plan(enum.Enum):
    PRO = "pro"


class Seats(enum.IntEnum):
    TEN = 10


def test_extra_types_are_encoded_sensibly() -> None:
    client = Client("k", send=False)
    properties = {
        "at": datetime(2020, 1, 2, 5, 4, 5, 678000, tzinfo=timezone(timedelta(hours=-3))),
        "naive": datetime(2020, 1, 2, 3, 4, 5),
        "day": date(2020, 1, 2),
        "clock": time(3, 4, 5),
        "price": Decimal("19.99"),
        "count": Decimal("10"),
        "id": UUID("12345678-1234-5678-1234-567812345678"),
        "plan": Plan.PRO,
        "seats": Seats.TEN,
        "tags": {"a"},
        "frozen": frozenset({1}),
        "pair": (1, "b"),
        "nested": {"when": [date(2021, 5, 6)]},
    }
    _, message = client.track("u", "e", properties)
    wire = json.loads(encode(message))["properties"]
    assert wire == {
        "at": "2020-01-02T08:04:05.678Z",
        "naive": "2020-01-02T03:04:05.000Z",
        "day": "2020-01-02",
        "clock": "03:04:05",
        "price": 19.99,
        "count": 10,
        "id": "12345678-1234-5678-1234-567812345678",
        "plan": "pro",
        "seats": 10,
        "tags": ["a"],
        "frozen": [1],
        "pair": [1, "b"],
        "nested": {"when": ["2021-05-06"]},
    }


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), float("-inf")])
def test_non_finite_numbers_are_refused(value: object) -> None:
    with pytest.raises(InvalidMessageError) as raised:
        Client("k", send=False).track("u", "e", {"v": value})
    assert raised.value.field == "properties['v']"


def test_unicode_survives() -> None:
    assert json.loads(encode({"name": "Lionel Messi ⚽ Ñandú"})) == {"name": "Lionel Messi ⚽ Ñandú"}
