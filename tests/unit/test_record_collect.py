"""The pure parts of assembling the batch record (app/records/record_collect.py): the charts' bucket, the band a
chart shows, and an input's acceptance limit as text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.alarms.model import Limit, LimitAlarm
from app.protocol.recipe import AlarmOverride, StepInput, default_recipe
from app.records.record_collect import MAX_CHART_POINTS, chart_bucket, limit_band, limit_text

START = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
RECIPE = default_recipe()


@pytest.mark.parametrize(("span", "minutes"), [
    (timedelta(0), 5), (timedelta(hours=1), 5), (timedelta(days=7), 5),  # 2,016 buckets of 5 min
    (timedelta(hours=191), 10), (timedelta(days=30), 25), (timedelta(days=365), 255)])
def test_the_chart_bucket_is_5_minutes_or_the_smallest_multiple_that_fits(span: timedelta, minutes: int) -> None:
    bucket = chart_bucket(START, START + span)
    assert bucket == timedelta(minutes=minutes)
    assert span / bucket + 1 <= MAX_CHART_POINTS  # the grid's alignment may add one bucket
    if minutes > 5:
        assert span / (bucket - timedelta(minutes=5)) + 1 > MAX_CHART_POINTS


def test_the_band_is_the_limit_alarm_of_the_whole_run_else_the_excursion_band() -> None:
    # the recipe overrides temperature and CO2 only while the incubator equilibrates (`during`): the defaults apply
    assert limit_band(RECIPE, "incubator.temperature") == (36.0, 38.0)
    assert limit_band(RECIPE, "incubator.co2") == (4.0, 6.0)
    assert limit_band(RECIPE, "incubator.humidity") == (80.0, None)  # a low limit only
    assert limit_band(None, "culture-system.viability") is None  # no limit alarm, no recipe
    whole_run = RECIPE.model_copy(update={"alarms": (AlarmOverride(channel="incubator.temperature", definitions=(
        LimitAlarm(name="limit", hh=Limit(value=38.5), ll=Limit(value=35.5)),)),)})
    assert limit_band(whole_run, "incubator.temperature") == (35.5, 38.5)  # LL/HH when it has no L/H
    no_limit = RECIPE.model_copy(update={"alarms": (AlarmOverride(channel="incubator.temperature", definitions=(
        RECIPE.alarms[0].definitions[1],)),)})
    assert limit_band(no_limit, "incubator.temperature") == (36.0, 38.0)  # the excursion band


@pytest.mark.parametrize(("inp", "text"), [
    (StepInput(name="viability", kind="number", unit="%", accept_min=80), ">= 80 %"),
    (StepInput(name="t", kind="number", unit="degC", accept_min=36.5, accept_max=37.5),
     ">= 36.5 degC and <= 37.5 degC"),
    (StepInput(name="donor_id", kind="text", expected_from="donor_id"), "== donor_id ('D-100')"),
    (StepInput(name="calibration_valid", kind="bool", expected=True), "== True"),
    (StepInput(name="volume", kind="number", unit="mL", min=0, max=50), None),
])
def test_an_inputs_limit_as_the_recipe_states_it(inp: StepInput, text: str | None) -> None:
    assert limit_text(inp, {"donor_id": "D-100"}) == text
