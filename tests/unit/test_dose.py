"""Dose arithmetic: docs/process.md's example, the projection bands at seed and day 3, the harvest dose."""

from __future__ import annotations

import math

import pytest

from app.protocol.dose import (
    achieved_dose,
    harvest_cd7,
    needs_split,
    projection_at_day3,
    projection_at_seed,
    required_cd7,
)
from app.protocol.recipe import default_recipe

R = default_recipe()


@pytest.mark.parametrize(("dose", "weight", "cells"), [(9e6, 70, 6.3e8), (4e6, 70, 2.8e8), (1.5e6, 20, 3.0e7)])
def test_required_cd7(dose: float, weight: float, cells: float) -> None:
    assert math.isclose(required_cd7(R, dose, weight), cells)


@pytest.mark.parametrize(("dose", "weight", "message"), [
    (5e6, 70, "target dose 5e+06 CD7+ cells/kg is not allowed; allowed: 1.5e+06, 4e+06, 9e+06"),
    (9e6, 0, "patient weight must be a finite number > 0"),
    (9e6, float("nan"), "patient weight must be a finite number"),
    (9e6, 400, "patient weight 400 kg is outside 2..250 kg"),
])
def test_required_cd7_refuses(dose: float, weight: float, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+").replace(".", r"\.")):
        required_cd7(R, dose, weight)


def test_projection_at_seed_uses_the_source_ranges() -> None:
    need = required_cd7(R, 9e6, 70)  # 6.3e8
    b = projection_at_seed(R, "mobilized", 2e8, need)  # fold 10-30, CD7 50-70 %: 1e9 .. 4.2e9
    assert (b.low, b.high) == pytest.approx((2e8 * 10 * 0.5, 2e8 * 30 * 0.7))
    assert not b.alert and b.basis == "seed"
    low = projection_at_seed(R, "mobilized", 1e7, need)  # 5e7 .. 2.1e8
    assert low.alert and "below the required dose" in low.message
    cord = projection_at_seed(R, "cord", 1e7, need)  # fold 20-50, CD7 55-80 %
    assert (cord.low, cord.high) == pytest.approx((1e7 * 20 * 0.55, 1e7 * 50 * 0.8))
    with pytest.raises(ValueError, match="cell source 'marrow'"):
        projection_at_seed(R, "marrow", 1e7, need)


def test_projection_at_day3_narrows_with_the_observed_fold() -> None:
    need = required_cd7(R, 9e6, 70)
    b = projection_at_day3(R, "mobilized", 2e8, 6e8, 72, need)  # f3 = 3 -> F = 3 ** (168/72) = 12.98
    f = 3 ** (168 / 72)
    assert b.observed_fold == pytest.approx(3)
    assert b.fold == pytest.approx((max(10, f / 1.5), min(30, f * 1.5)))  # (10, 19.5): narrower than 10..30
    assert b.fold[1] - b.fold[0] < 30 - 10
    assert b.low == pytest.approx(2e8 * 10 * 0.5) and b.high == pytest.approx(2e8 * f * 1.5 * 0.7)
    assert not b.low_expansion and not b.alert


def test_projection_at_day3_low_expansion_leaves_the_prior() -> None:
    need = required_cd7(R, 9e6, 70)
    b = projection_at_day3(R, "mobilized", 1e8, 1.2e8, 72, need)  # f3 = 1.2 -> F = 1.53, far below 10
    f = 1.2 ** (168 / 72)
    assert b.fold == pytest.approx((f / 1.5, f * 1.5))
    assert b.low_expansion and b.alert and "low expansion: day-3 fold 1.20x" in b.message


def test_day3_fold_threshold_boundary() -> None:
    need = 1.0
    assert not projection_at_day3(R, "cord", 1e6, 1.5e6, 72, need).low_expansion
    assert projection_at_day3(R, "cord", 1e6, 1.49e6, 72, need).low_expansion


def test_split_threshold() -> None:
    assert not needs_split(R, 1.5e6) and needs_split(R, 1.5e6 + 1)


@pytest.mark.parametrize(("percent", "ok"), [(80, True), (79.9, False), (120, True), (120.1, False), (100, True)])
def test_achieved_dose_acceptance(percent: float, ok: bool) -> None:
    cells = 9e6 * 70 * percent / 100
    d = achieved_dose(R, cells, 70, 9e6)
    assert d.percent_of_target == pytest.approx(percent)
    assert d.within_acceptance == ok
    assert ("within" if ok else "outside") + " 80-120 %" in d.message


def test_harvest_cd7() -> None:
    assert harvest_cd7(2e9, 60) == pytest.approx(1.2e9)
    with pytest.raises(ValueError, match="<= 100"):
        harvest_cd7(2e9, 160)
