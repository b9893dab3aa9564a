"""Every Segment call shape of ``tests/segment_shapes.py`` runs with only its import swapped to
``analytics_vitally.segment`` and delivers what Vitally needs (each in a fresh interpreter)."""

from __future__ import annotations

import pytest

from analytics_vitally.testing import Receiver

from .segment_shapes import SHAPES, TOKEN, Shape, arrived_as_expected, run


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{shape.area}: {shape.name}" for shape in SHAPES])
def test_a_segment_call_shape_runs_unchanged_and_delivers(shape: Shape) -> None:
    with Receiver(token=TOKEN) as receiver:
        ran, error = run("analytics_vitally.segment", shape, receiver.url)
        assert ran, error
        assert arrived_as_expected(shape, receiver.messages), receiver.messages
