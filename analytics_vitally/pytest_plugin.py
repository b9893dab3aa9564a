"""The ``vitally_receiver`` and ``vitally_capture`` pytest fixtures (loaded by pytest through an entry point)."""

from __future__ import annotations

from typing import Iterator

import pytest

from .testing import Captured, Receiver, capture


@pytest.fixture
def vitally_receiver() -> Iterator[Receiver]:
    """A started local Vitally receiver accepting the token ``test-token``; ``.url`` is its base URL."""
    with Receiver(token="test-token") as receiver:
        yield receiver


@pytest.fixture
def vitally_capture() -> Iterator[Captured]:
    """The module-level API captured in memory for the test (``analytics_vitally.testing.capture()``)."""
    with capture() as captured:
        yield captured
