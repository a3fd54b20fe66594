"""Dose arithmetic on the recipe's numbers: what the patient needs, whether the harvest holds it (with the
overage), and the dose of the formulated product (net of QC samples) with its CD3+ cells per kg."""

from __future__ import annotations

import math

import pytest

from app.protocol.dose import (
    allowed_doses,
    check_weight,
    formulated_dose,
    harvest_check,
    needs_split,
    required_cd7,
)
from app.protocol.recipe import Recipe, default_recipe

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


def test_an_arm_narrows_the_weight_range() -> None:
    assert check_weight(R, 20, "paediatric") == 20
    with pytest.raises(ValueError, match=r"patient weight 20 kg is outside 30\.\.250 kg of the adult arm"):
        check_weight(R, 20, "adult")
    with pytest.raises(ValueError, match="arm 'elderly' is not an arm of this recipe"):
        check_weight(R, 20, "elderly")
    assert allowed_doses(R, "adult") == (1.5e6, 4e6, 9e6)


# required = 4e6 x 70 = 2.8e8; with 25 % overage the harvest must hold 3.5e8 CD7+ cells
@pytest.mark.parametrize(("total", "cd7", "enough"), [
    (7.0e8, 50, True),    # 3.5e8: exactly enough
    (6.9e8, 50, False),   # 3.45e8: short
    (5.0e9, 80, True),    # far more than needed: no deviation (the product is formulated from part of it)
    (0.0, 60, False),
])
def test_the_harvest_must_hold_the_required_cells_plus_the_overage(total: float, cd7: float, enough: bool) -> None:
    c = harvest_check(R, total, cd7, 70, 4e6)
    assert c.enough is enough
    assert math.isclose(c.needed, 3.5e8) and math.isclose(c.required, 2.8e8)
    assert math.isclose(c.max_dose_per_kg, total * cd7 / 100 / 1.25 / 70)
    assert ("short of the target" in c.message) is (not enough)


def test_a_harvest_without_overage_in_the_recipe_needs_only_the_required_cells() -> None:
    r = Recipe.model_validate({**R.model_dump(), "dose": {**R.dose.model_dump(), "harvest_overage_percent": 0}})
    assert harvest_check(r, 5.6e8, 50, 70, 4e6).enough


@pytest.mark.parametrize(("cells", "volume", "qc", "pct", "ok"), [
    (2.8e8, 100, 0, 100.0, True),
    (2.8e8, 100, 10, 90.0, True),       # 10 % of the bag goes to QC: the dose is net of it
    (2.8e8, 100, 25, 75.0, False),      # below 80 %
    (3.5e8, 100, 2, 122.5, False),      # above 120 %
    (2.24e8, 50, 0, 80.0, True),        # the edge is inside
])
def test_the_dose_is_checked_on_the_formulated_product(cells: float, volume: float, qc: float, pct: float,
                                                       ok: bool) -> None:
    d = formulated_dose(R, cd7_cells_formulated=cells, product_volume_ml=volume, qc_sample_volume_ml=qc,
                        weight_kg=70, target_per_kg=4e6)
    assert math.isclose(d.percent_of_level, pct) and d.within_acceptance is ok
    assert math.isclose(d.concentration_per_ml, cells / volume)
    assert math.isclose(d.net_cd7_cells, cells * (volume - qc) / volume)


def test_a_lower_dose_level_is_the_reference_of_the_check() -> None:
    d = formulated_dose(R, cd7_cells_formulated=1.05e8, product_volume_ml=50, qc_sample_volume_ml=0, weight_kg=70,
                        target_per_kg=4e6, dose_level_per_kg=1.5e6)
    assert d.within_acceptance and math.isclose(d.percent_of_level, 100.0)
    assert "lower studied level" in d.message
    with pytest.raises(ValueError, match="not allowed"):
        formulated_dose(R, cd7_cells_formulated=1e8, product_volume_ml=50, qc_sample_volume_ml=0, weight_kg=70,
                        target_per_kg=4e6, dose_level_per_kg=2e6)


def test_cd3_cells_per_kg_come_from_the_harvest_panel() -> None:
    # 2.8e8 CD7+ at 56 % CD7 = 5e8 cells; 0.5 % CD3 = 2.5e6 CD3+ / 70 kg = 3.57e4/kg
    d = formulated_dose(R, cd7_cells_formulated=2.8e8, product_volume_ml=100, qc_sample_volume_ml=0, weight_kg=70,
                        target_per_kg=4e6, harvest_cd7_percent=56, harvest_cd3_percent=0.5,
                        cd3_limit_per_kg=2.5e4)
    assert d.cd3_per_kg is not None and math.isclose(d.cd3_per_kg, 2.5e6 / 70)
    assert d.cd3_within_limit is False
    assert formulated_dose(R, cd7_cells_formulated=2.8e8, product_volume_ml=100, qc_sample_volume_ml=0, weight_kg=70,
                           target_per_kg=4e6, harvest_cd7_percent=56, harvest_cd3_percent=0.5,
                           cd3_limit_per_kg=1e5).cd3_within_limit is True


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"qc_sample_volume_ml": 100}, "QC sample volume 100 mL must be less than the product volume 100 mL"),
    ({"product_volume_ml": 0}, "product volume must be a finite number > 0"),
    ({"cd7_cells_formulated": float("inf")}, "CD7+ cells formulated must be a finite number"),
    ({"harvest_cd7_percent": 120, "harvest_cd3_percent": 1}, "harvest %CD7+ must be <= 100"),
])
def test_formulation_refuses_impossible_numbers(kwargs: dict[str, float], message: str) -> None:
    args = {"cd7_cells_formulated": 2.8e8, "product_volume_ml": 100.0, "qc_sample_volume_ml": 0.0,
            "weight_kg": 70.0, "target_per_kg": 4e6, **kwargs}
    with pytest.raises(ValueError, match=message.replace("+", r"\+").replace(".", r"\.")):
        formulated_dose(R, **args)  # type: ignore[arg-type]


def test_split_threshold() -> None:
    assert needs_split(R, 1.6e6) and not needs_split(R, 1.5e6)
