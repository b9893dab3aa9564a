"""The ``vitally_receiver`` pytest fixture (loaded by pytest through an entry point)."""

from __future__ import annotations

from typing import Iterator

import pytest

from .testing import Receiver


@pytest.fixture
def vitally_receiver() -> Iterator[Receiver]:
    """A started local Vitally receiver accepting the token ``test-token``; ``.url`` is its base URL."""
    with Receiver(token="test-token") as receiver:
        yield receiver
