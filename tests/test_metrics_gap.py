"""Sim-to-real gap reduction: values, direction for lower-is-better metrics, and the undefined case."""

from __future__ import annotations

import math

import pytest

from geosapiens.metrics.gap import gap_reduction


def test_gap_reduction_values() -> None:
    assert gap_reduction(0.80, 0.60, 0.90).value == pytest.approx(2 / 3)
    assert gap_reduction(0.60, 0.60, 0.90).value == 0.0  # no better than source-only
    assert gap_reduction(0.90, 0.60, 0.90).value == 1.0  # as good as the oracle
    assert gap_reduction(0.95, 0.60, 0.90).value > 1.0
    assert gap_reduction(0.50, 0.60, 0.90).value < 0.0
    # lower-is-better (G-Error): closing 3 of the 4 points of gap is 0.75 too
    assert gap_reduction(0.02, 0.05, 0.01).value == pytest.approx(0.75)
    assert float(gap_reduction(0.80, 0.60, 0.90)) == pytest.approx(2 / 3)


def test_gap_reduction_is_nan_with_a_reason_when_undefined() -> None:
    same = gap_reduction(0.8, 0.6, 0.6)
    assert math.isnan(same.value) and "oracle equals source-only" in same.reason
    assert str(same).startswith("nan (")
    missing = gap_reduction(0.8, float("nan"), 0.9)
    assert math.isnan(missing.value) and "source_only=nan" in missing.reason

