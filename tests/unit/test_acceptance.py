"""Step inputs: field errors for what cannot be recorded, acceptance failures at and beyond each limit."""

from __future__ import annotations

from typing import Any

import pytest

from app.protocol.acceptance import MAX_MAGNITUDE, Value, evaluate_limits, validate_inputs
from app.protocol.recipe import default_recipe

R = default_recipe()
CONTEXT = {"donor_id": "D-0042", "patient_id": "P-7", "cell_source": "cord"}
HARVEST_OK: dict[str, Any] = {"total_viable_cells": 2e9, "viability": 90, "cd7_percent": 60, "cd34_percent": 5,
                              "cd3_percent": 0.2}


def errors(step: str, posted: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.field, e.rule) for e in validate_inputs(R.step(step), posted)[1]]


def test_valid_post_is_typed() -> None:
    values, errs = validate_inputs(R.step("harvest"), {**HARVEST_OK, "viability": {"value": 90, "unit": "%"}})
    assert errs == [] and values["viability"] == 90.0 and isinstance(values["viability"], float)
    values, errs = validate_inputs(R.step("formulate"), {"cd7_cells_formulated": 6e8, "endotoxin": 1,
                                                        "gram_stain": " negative ", "mycoplasma": "negative"})
    assert errs == [] and values["gram_stain"] == "negative"
    values, errs = validate_inputs(R.step("release"), {})
    assert errs == [] and values == {}


@pytest.mark.parametrize(("change", "field", "rule", "text"), [
    ({"colour": "blue"}, "colour", "unknown_field", "not an input of step harvest"),
    ({"viability": None}, "viability", "required", "a value is required"),
    ({"viability": "90"}, "viability", "type", "a number is required, got str"),
    ({"viability": True}, "viability", "type", "a number is required, got bool"),
    ({"viability": float("nan")}, "viability", "not_finite", "nan is not a finite number"),
    ({"viability": float("inf")}, "viability", "not_finite", "inf is not a finite number"),
    ({"total_viable_cells": 1e300}, "total_viable_cells", "too_large", "exceeds the magnitude limit 1e+15"),
    ({"viability": 100.01}, "viability", "above_max", "above the valid maximum 100 %"),
    ({"viability": -0.01}, "viability", "below_min", "below the valid minimum 0 %"),
    ({"viability": {"value": 90, "unit": "fraction"}}, "viability", "unit", "unit 'fraction' is not the recipe's"),
    ({"viability": {"value": 90, "unit": "%", "x": 1}}, "viability", "type", "object with value and unit only"),
])
def test_field_errors(change: dict[str, Any], field: str, rule: str, text: str) -> None:
    posted = {**HARVEST_OK, **change}
    _, errs = validate_inputs(R.step("harvest"), posted)
    assert [(e.field, e.rule) for e in errs] == [(field, rule)]
    assert text in errs[0].message and errs[0].message.startswith(field)
    assert errs[0].as_dict()["field"] == field


def test_valid_range_is_inclusive() -> None:
    assert errors("harvest", {**HARVEST_OK, "viability": 100}) == []
    assert errors("harvest", {**HARVEST_OK, "viability": 0}) == []


def test_text_bool_and_choice_errors() -> None:
    assert errors("formulate", {"cd7_cells_formulated": 6e8, "endotoxin": 1, "gram_stain": "purple",
                                "mycoplasma": 1}) == [("gram_stain", "choice"), ("mycoplasma", "type")]
    posted = {"temperature": 37, "co2": 5, "humidity": 90, "trend_hours": 3, "calibration_valid": "yes",
              "calibration_due": "x" * 201}
    assert errors("incubator_ready", posted) == [("calibration_valid", "type"), ("calibration_due", "too_long")]
    assert ("calibration_due", "required") in errors("incubator_ready", {**posted, "calibration_due": "  "})


def limit_cases() -> list[tuple[str, str, float, float, str]]:
    """Every numeric acceptance limit of the default recipe: (step, input, at the limit, just beyond, limit text)."""
    cases = []
    for s in R.steps:
        for i in s.inputs:
            unit = f" {i.unit}" if i.unit else ""
            if i.accept_min is not None:
                cases.append((s.key, i.name, i.accept_min, i.accept_min - 0.01, f">= {i.accept_min:g}{unit}"))
            if i.accept_max is not None:
                cases.append((s.key, i.name, i.accept_max, i.accept_max + 0.01, f"<= {i.accept_max:g}{unit}"))
    return cases


LIMITS = limit_cases()


def test_limits_cover_process_acceptance() -> None:
    names = {(k, n) for k, n, *_ in LIMITS}
    assert {("receive_cells", "viability"), ("receive_cells", "cd34_purity"), ("feed_day3", "viability"),
            ("harvest", "viability"), ("harvest", "cd7_percent"), ("harvest", "cd3_percent"),
            ("formulate", "endotoxin"), ("seed", "seeding_density"), ("incubator_ready", "temperature")} <= names


@pytest.mark.parametrize(("key", "name", "at", "beyond", "limit"), LIMITS,
                         ids=[f"{c[0]}.{c[1]}{c[4][:2]}" for c in LIMITS])
def test_numeric_limit_at_and_beyond(key: str, name: str, at: float, beyond: float, limit: str) -> None:
    step = R.step(key)
    assert evaluate_limits(step, {name: at}, CONTEXT) == []
    (f,) = evaluate_limits(step, {name: beyond}, CONTEXT)
    assert (f.field, f.limit, f.value, f.severity) == (name, limit, beyond, "deviation")
    assert limit in f.message and f"{key}.{name}" in f.message


@pytest.mark.parametrize(("key", "name", "good", "bad", "limit"), [
    ("receive_cells", "donor_id", "D-0042", "D-0043", "== donor_id ('D-0042')"),
    ("incubator_ready", "calibration_valid", True, False, "== True"),
    ("formulate", "gram_stain", "negative", "positive", "== 'negative'"),
    ("formulate", "mycoplasma", "negative", "positive", "== 'negative'"),
])
def test_expected_values(key: str, name: str, good: Value, bad: Value, limit: str) -> None:
    step = R.step(key)
    assert evaluate_limits(step, {name: good}, CONTEXT) == []
    (f,) = evaluate_limits(step, {name: bad}, CONTEXT)
    assert (f.field, f.limit, f.value) == (name, limit, bad)


def test_expected_from_needs_the_run_attribute() -> None:
    with pytest.raises(KeyError, match="donor_id"):
        evaluate_limits(R.step("receive_cells"), {"donor_id": "D-1"}, {})


def test_absent_optional_values_have_no_failures() -> None:
    values, errs = validate_inputs(R.step("feed_day3"), {"viable_cells": 3e6, "viable_density": 1e6, "viability": 69})
    assert errs == []
    assert [f.field for f in evaluate_limits(R.step("feed_day3"), values)] == ["viability"]
    assert MAX_MAGNITUDE == 1e15
