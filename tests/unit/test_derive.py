"""What a recorded step's values imply (app/protocol/derive.py), by table: the seeding density, the forecast band,
the harvest's sufficiency, the formulated dose with QA's decision, the CD3+ limit, the expiry and the endotoxin
figure after the infusion, with the deviations and alerts they open.

The forecast's numbers are app/protocol/forecast.py's (tests/unit/test_forecast.py); here only that a band is
there and when it alerts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.protocol.acceptance import Value
from app.protocol.derive import Derived, Recorded, RunFacts, derive
from app.protocol.recipe import default_recipe

R = default_recipe()
T0 = datetime(2027, 1, 1, 8, 0, tzinfo=UTC)
WEIGHT, TARGET = 70.0, 4e6
REQUIRED = WEIGHT * TARGET  # 2.8e8 CD7+ cells
NEEDED = REQUIRED * 1.25  # with the harvest's 25 % overage: 3.5e8
AREA = 350.0  # two T175-DL4 flasks
RUN = RunFacts(weight_kg=WEIGHT, target_per_kg=TARGET, cell_source="cord", transplant_type="t_cell_depleted",
               vessel_area_cm2=AREA, t0=T0)
SEEDED = 1.2e7  # 3.4e4 cells/cm2
SEED = Recorded({"viable_cells_seeded": SEEDED, "volume": 60.0}, T0)
HARVEST_AT = T0 + timedelta(hours=168)
HARVEST = Recorded({"total_viable_cells": 8e8, "viability": 90.0, "cd7_percent": 60.0, "cd34_percent": 5.0,
                    "cd3_percent": 0.3}, HARVEST_AT)
PRODUCT_ML, QC_ML = 100.0, 5.0
SHARE = (PRODUCT_ML - QC_ML) / PRODUCT_ML


def run_(**changes: Any) -> RunFacts:
    return replace(RUN, **changes)


def rules(d: Derived) -> list[tuple[str, str]]:
    return [(f.rule, f.severity) for f in d.findings]


# ---- seeding density ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seeded", "area", "within"), [
    (1.2e7, 350, True),
    (2.5e4 * 350, 350, True),  # at the low limit
    (5e4 * 350, 350, True),  # at the high limit
    (2.5e4 * 350 * 0.99, 350, False),
    (5e4 * 350 * 1.01, 350, False),
    (1.2e7, 75, False),  # the same cells on one T75: 1.6e5 cells/cm2
    (2e7, 500, True),  # a bag
    (1e7, 75 + 175, True),
])
def test_seeding_density_from_the_vessels_area(seeded: float, area: float, within: bool) -> None:
    d = derive(R, run_(vessel_area_cm2=area), "seed", {"viable_cells_seeded": seeded, "volume": 60.0}, {}, T0)
    assert d.facts is not None
    s = d.facts["seeding"]
    assert s["density_per_cm2"] == pytest.approx(seeded / area)
    assert (s["viable_cells_seeded"], s["area_cm2"], s["limits"], s["within"]) == (seeded, area, [2.5e4, 5e4], within)
    devs = [f for f in d.deviations if f.rule == "seeding_density"]
    assert len(devs) == (0 if within else 1)
    if not within:
        assert "is outside 2.5e+04-5e+04 cells/cm2" in devs[0].message and f"{area:g} cm2" in devs[0].message
        assert devs[0].facts == s


def test_no_seeding_density_without_typed_vessels() -> None:
    for area in (None, 0.0):
        d = derive(R, run_(vessel_area_cm2=area), "seed", {"viable_cells_seeded": 1e9, "volume": 60.0}, {}, T0)
        assert d.facts is None or "seeding" not in d.facts
        assert not [f for f in d.findings if f.rule == "seeding_density"]


# ---- the forecast at seed and at the day-3 count --------------------------------------------------------------------


def test_the_seed_forecast_has_a_band() -> None:
    d = derive(R, RUN, "seed", {"viable_cells_seeded": SEEDED, "volume": 60.0}, {}, T0)
    assert d.facts is not None
    band = d.facts["seed"]
    assert band["basis"] == "seed" and band["required"] == pytest.approx(REQUIRED)
    assert 0 < band["low"] <= band["median"] <= band["high"]
    assert band["below_target"] == band["alert"]
    assert [f.rule for f in d.alerts if f.rule == "forecast_below_target"] == (
        ["forecast_below_target"] if band["alert"] else [])


def test_the_seed_forecast_alerts_when_the_required_dose_is_out_of_reach() -> None:
    huge = run_(weight_kg=250.0, target_per_kg=9e6, vessel_area_cm2=None)  # 2.25e9 CD7+ cells from 1e5 seeded
    d = derive(R, huge, "seed", {"viable_cells_seeded": 1e5, "volume": 60.0}, {}, T0)
    assert d.facts is not None and d.facts["seed"]["alert"] is True and d.facts["seed"]["below_target"] is True
    (alert,) = d.alerts
    assert (alert.rule, alert.severity) == ("forecast_below_target", "alert") and not d.deviations
    assert alert.facts == d.facts["seed"]


def test_no_forecast_without_a_dose_target_or_a_source() -> None:
    for run in (run_(weight_kg=None), run_(target_per_kg=None), run_(cell_source=None)):
        d = derive(R, run, "seed", {"viable_cells_seeded": SEEDED, "volume": 60.0}, {}, T0)
        assert d.facts is not None and "seed" not in d.facts and "seeding" in d.facts


COUNT = {"viable_density": 5e5, "viability": 90.0}


def test_the_day3_count_narrows_the_band() -> None:
    d = derive(R, RUN, "feed_day3", {**COUNT, "viable_cells": SEEDED * 5}, {"seed": SEED}, T0 + timedelta(hours=72))
    assert d.facts is not None
    band = d.facts["day3"]
    assert band["hours"] == pytest.approx(72) and band["observed_fold"] == pytest.approx(5)
    assert 0 < band["low"] <= band["high"] and band["below_target"] == band["alert"]
    assert "low_expansion" not in [f.rule for f in d.findings]


def test_the_day3_count_alerts_when_the_required_dose_is_out_of_reach() -> None:
    huge = run_(weight_kg=250.0, target_per_kg=9e6)
    d = derive(R, huge, "feed_day3", {**COUNT, "viable_cells": SEEDED * 2}, {"seed": SEED}, T0 + timedelta(hours=72))
    assert d.facts is not None and d.facts["day3"]["alert"] is True
    assert rules(d) == [("forecast_below_target", "alert")]


@pytest.mark.parametrize(("fold", "low"), [(1.49, True), (1.5, False), (3.0, False)])
def test_low_expansion_at_day_3(fold: float, low: bool) -> None:
    d = derive(R, RUN, "feed_day3", {**COUNT, "viable_cells": SEEDED * fold}, {"seed": SEED},
               T0 + timedelta(hours=72))
    found = [f for f in d.findings if f.rule == "low_expansion"]
    assert [(f.severity, f.facts["fold"]) for f in found] == ([("alert", pytest.approx(fold))] if low else [])


@pytest.mark.parametrize(("density", "split"), [(1.5e6, False), (1.51e6, True)])
def test_split_advised_above_the_threshold(density: float, split: bool) -> None:
    d = derive(R, RUN, "feed_day5", {"viable_cells": SEEDED * 10, "viable_density": density, "viability": 90.0},
               {"seed": SEED}, T0 + timedelta(hours=120))
    assert (("split_advised", "alert") in rules(d)) is split
    assert d.facts is not None and "feed_day5" in d.facts  # the day-5 count has its band too


def test_a_count_without_the_seed_record_has_no_band() -> None:
    d = derive(R, RUN, "feed_day3", {**COUNT, "viable_cells": 1e6}, {}, T0 + timedelta(hours=72))
    assert d.facts is None and d.findings == ()


# ---- harvest --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "cd7", "enough"), [
    (8e8, 60.0, True),  # 4.8e8 CD7+ cells, more than the 3.5e8 needed
    (NEEDED / 0.5, 50.0, True),  # exactly the required cells plus the overage
    (NEEDED / 0.5 * 0.99, 50.0, False),
    (REQUIRED / 0.6, 60.0, False),  # the required cells, but not the overage
    (1e8, 60.0, False),
    (1e9, 0.0, False),
])
def test_harvest_holds_the_required_cells_plus_the_overage(total: float, cd7: float, enough: bool) -> None:
    d = derive(R, RUN, "harvest", {**HARVEST.values, "total_viable_cells": total, "cd7_percent": cd7},
               {"seed": SEED}, HARVEST_AT)
    assert d.facts is not None
    check = d.facts["harvest"]
    assert check["enough"] is enough
    assert (check["required"], check["needed"], check["overage_percent"]) == (pytest.approx(REQUIRED),
                                                                              pytest.approx(NEEDED), 25)
    assert check["cd7_cells"] == pytest.approx(total * cd7 / 100)
    if enough:
        assert d.findings == ()
    else:
        assert rules(d) == [("harvest_below_required", "alert"), ("harvest_below_required", "deviation")]
        assert all("short of the target" in f.message and f.facts == check for f in d.findings)


def test_no_harvest_check_without_a_dose_target() -> None:
    d = derive(R, run_(weight_kg=None), "harvest", {**HARVEST.values, "total_viable_cells": 1e6}, {}, HARVEST_AT)
    assert d.facts is None and d.findings == ()


# ---- formulation ----------------------------------------------------------------------------------------------------


def cells_for(percent: float, level: float = TARGET) -> float:
    """CD7+ cells to formulate for `percent` of a dose level, net of the QC samples."""
    return percent / 100 * level * WEIGHT / SHARE


def formulate(run: RunFacts, cells: float, recorded: dict[str, Recorded] | None = None,
              now: datetime = HARVEST_AT + timedelta(hours=2)) -> Derived:
    values: dict[str, Value] = {"cd7_cells_formulated": cells, "product_volume": PRODUCT_ML,
                                "qc_sample_volume": QC_ML}
    return derive(R, run, "formulate", values, {"harvest": HARVEST} if recorded is None else recorded, now)


@pytest.mark.parametrize(("percent", "within"), [(100, True), (81, True), (119, True), (79, False), (121, False),
                                                 (40, False)])
def test_formulated_dose_within_80_to_120_percent(percent: float, within: bool) -> None:
    d = formulate(run_(transplant_type=None), cells_for(percent))
    assert d.facts is not None
    achieved = d.facts["achieved"]
    assert achieved["percent_of_level"] == pytest.approx(percent)
    assert achieved["per_kg"] == pytest.approx(percent / 100 * TARGET)
    assert achieved["net_cd7_cells"] == pytest.approx(cells_for(percent) * SHARE)
    assert achieved["within_acceptance"] is within and achieved["decision"] is None
    assert achieved["product_status"] == ("in_specification" if within else "dose_out_of_range")
    assert rules(d) == ([] if within else [("dose_out_of_range", "deviation")])


@pytest.mark.parametrize("percent", [40, 100])
def test_out_of_specification_decision_opens_no_dose_deviation(percent: float) -> None:
    d = formulate(run_(transplant_type=None, decision="out_of_specification"), cells_for(percent))
    assert d.facts is not None
    assert d.facts["achieved"]["product_status"] == "out_of_specification"
    assert d.facts["achieved"]["decision"] == "out_of_specification"
    assert d.deviations == []


LOWER = run_(transplant_type=None, decision="lower_dose", decision_dose_per_kg=1.5e6)


@pytest.mark.parametrize(("cells", "within", "status"), [
    (cells_for(100, 1.5e6), True, "lower_dose_level"),  # 37.5 % of the target, but 100 % of the decided level
    (cells_for(85, 1.5e6), True, "lower_dose_level"),
    (cells_for(100, TARGET), False, "dose_out_of_range"),  # 267 % of the decided level
    (cells_for(70, 1.5e6), False, "dose_out_of_range"),
])
def test_lower_dose_decision_checks_the_lower_level(cells: float, within: bool, status: str) -> None:
    d = formulate(LOWER, cells)
    assert d.facts is not None
    achieved = d.facts["achieved"]
    assert (achieved["dose_level_per_kg"], achieved["target_per_kg"]) == (1.5e6, TARGET)
    assert achieved["within_acceptance"] is within and achieved["product_status"] == status
    assert rules(d) == ([] if within else [("dose_out_of_range", "deviation")])
    assert "lower studied level; target 4e+06/kg" in achieved["message"]


# CD3+ cells/kg in the product: CD7+ formulated / harvest %CD7+ x harvest %CD3+, net of the QC samples, per kg.
def cd3_per_kg(cd3_percent: float, cells: float = cells_for(100)) -> float:
    return cells / 0.60 * cd3_percent / 100 * SHARE / WEIGHT


@pytest.mark.parametrize(("transplant", "cd3_percent", "above"), [
    ("t_cell_depleted", 0.3, False),  # 2.0e4/kg, limit 2.5e4
    ("t_cell_depleted", 0.5, True),  # 3.3e4/kg
    ("haploidentical", 0.5, False),  # limit 5e4
    ("haploidentical", 0.8, True),  # 5.3e4/kg
    ("ptcy_hla_mismatched", 0.8, False),  # limit 1e5
    ("ptcy_hla_mismatched", 1.6, True),  # 1.07e5/kg
])
def test_cd3_per_kg_against_the_transplant_types_limit(transplant: str, cd3_percent: float, above: bool) -> None:
    harvest = Recorded({**HARVEST.values, "cd3_percent": cd3_percent}, HARVEST_AT)
    d = formulate(run_(transplant_type=transplant), cells_for(100), {"harvest": harvest})
    assert d.facts is not None
    achieved = d.facts["achieved"]
    limit = R.transplant_types[transplant].cd3_limit_per_kg  # type: ignore[index]
    assert achieved["cd3_per_kg"] == pytest.approx(cd3_per_kg(cd3_percent))
    assert achieved["cd3_limit_per_kg"] == limit and achieved["cd3_within_limit"] is (not above)
    assert rules(d) == ([("cd3_limit", "deviation")] if above else [])
    if above:
        assert f"above the {transplant} limit" in d.findings[0].message


def test_cd3_is_checked_with_a_dose_deviation_too() -> None:
    harvest = Recorded({**HARVEST.values, "cd3_percent": 2.0}, HARVEST_AT)
    d = formulate(RUN, cells_for(130), {"harvest": harvest})
    assert rules(d) == [("dose_out_of_range", "deviation"), ("cd3_limit", "deviation")]


def test_no_cd3_check_without_the_harvest_or_a_transplant_type() -> None:
    d = formulate(RUN, cells_for(100), {})
    assert d.facts is not None and d.facts["achieved"]["cd3_per_kg"] is None and d.findings == ()
    d = formulate(run_(transplant_type=None), cells_for(100), {"harvest": Recorded({**HARVEST.values,
                                                                                     "cd3_percent": 5.0}, HARVEST_AT)})
    assert d.facts is not None and d.facts["achieved"]["cd3_per_kg"] is not None
    assert d.facts["achieved"]["cd3_within_limit"] is None and d.findings == ()


def test_expiry_is_in_the_formulation_facts() -> None:
    now = HARVEST_AT + timedelta(hours=2)
    d = formulate(RUN, cells_for(100), now=now)
    assert d.expiry == now + timedelta(hours=12)
    assert d.facts is not None and d.facts["expiry"] == (now + timedelta(hours=12)).isoformat()
    # a correction later keeps the formulation's own time
    first = Recorded({"cd7_cells_formulated": cells_for(100), "product_volume": PRODUCT_ML,
                      "qc_sample_volume": QC_ML}, now)
    d = formulate(RUN, cells_for(95), {"harvest": HARVEST, "formulate": first}, now=now + timedelta(hours=5))
    assert d.expiry == now + timedelta(hours=12)
    # no dose target: no dose facts, but the expiry still
    d = formulate(run_(weight_kg=None), cells_for(100), now=now)
    assert d.facts == {"expiry": (now + timedelta(hours=12)).isoformat()} and d.findings == ()
    # the other steps have none
    assert derive(R, RUN, "release", {}, {}, now).expiry is None


# ---- infusion -------------------------------------------------------------------------------------------------------

START = datetime(2027, 1, 8, 18, 0, tzinfo=UTC)


def infuse(eu_per_ml: float | None, volume: float, weight: float, minutes: float) -> Derived:
    values: dict[str, Value] = {"patient_id_scanned": "P-7", "product_id_scanned": "RUN-7",
                                "infusion_start": START.isoformat(),
                                "infusion_end": (START + timedelta(minutes=minutes)).isoformat(),
                                "infused_volume": volume}
    return derive(R, run_(weight_kg=weight, endotoxin_eu_per_ml=eu_per_ml), "infuse", values, {}, START)


@pytest.mark.parametrize(("eu_per_ml", "volume", "weight", "minutes", "rate", "above"), [
    (0.5, 50, 10, 30, 5.0, False),  # at the limit
    (0.6, 50, 10, 30, 6.0, True),
    (0.6, 50, 10, 60, 3.0, False),  # the actual, slower infusion
    (0.6, 25, 10, 30, 3.0, False),  # less infused than formulated
    (0.1, 95, 70, 30, 0.1 * 95 / 70 / 0.5, False),
])
def test_endotoxin_after_the_infusion(eu_per_ml: float, volume: float, weight: float, minutes: float, rate: float,
                                      above: bool) -> None:
    d = infuse(eu_per_ml, volume, weight, minutes)
    assert d.facts is not None
    e = d.facts["endotoxin"]
    assert e["eu_per_kg_h"] == pytest.approx(rate) and e["infusion_hours"] == pytest.approx(minutes / 60)
    assert (e["eu_per_ml"], e["volume_ml"], e["weight_kg"], e["limit_eu_per_kg_h"]) == (eu_per_ml, volume, weight, 5)
    assert rules(d) == ([("endotoxin_limit", "deviation")] if above else [])


def test_no_endotoxin_figure_without_a_result_or_a_duration() -> None:
    assert infuse(None, 50, 10, 30) == Derived()
    assert infuse(0.6, 50, 10, 0) == Derived()  # end == start: the bedside check refuses it before
