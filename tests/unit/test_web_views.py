"""The dashboard's pure helpers: day of the run, countdown target, alarm words, dose status, timeline, forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.protocol import recipe as rmod
from app.protocol.recipe import default_recipe, load_recipe
from app.web import views

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(("status", "t0", "now", "text"), [
    ("planned", None, T0, "Planned"),
    ("planned", T0, T0 + timedelta(hours=1), "Planned"),
    ("running", T0, T0 - timedelta(minutes=1), "Planned"),
    ("running", T0, T0, "Day 1 of 7"),
    ("running", T0, T0 + timedelta(hours=23, minutes=59), "Day 1 of 7"),
    ("running", T0, T0 + timedelta(hours=24), "Day 2 of 7"),
    ("held", T0, T0 + timedelta(days=6, hours=12), "Day 7 of 7"),
])
def test_run_day(status: str, t0: datetime | None, now: datetime, text: str) -> None:
    assert views.run_day(status, t0, now) == text


def test_countdown_counts_to_the_next_edge_of_the_window() -> None:
    w = {"earliest": "e", "target": "t", "latest": "l", "hard_latest": "h"}
    assert views.countdown_target({"status": "pending", "window": w}) == ("due in", "t")
    assert views.countdown_target({"status": "open", "window": w}) == ("due in", "t")
    assert views.countdown_target({"status": "due", "window": w}) == ("late in", "l")
    assert views.countdown_target({"status": "late", "window": w}) == ("missed in", "h")
    assert views.countdown_target({"status": "late", "window": {**w, "hard_latest": None}}) == ("missed in", "l")
    assert views.countdown_target(None) == ("no step due", None)


def test_alarm_words_and_groups() -> None:
    assert views.alarm_status_text("active_unack") == "ACTIVE, UNACKNOWLEDGED"
    assert views.alarm_status_text("returned_unack") == "RETURNED, UNACKNOWLEDGED"
    alarms = [{"id": "a", "priority": "low"}, {"id": "b", "priority": "high"}, {"id": "c", "priority": "low"}]
    groups = views.group_alarms(alarms)
    assert [(p, [a["id"] for a in items]) for p, items in groups] == [("high", ["b"]), ("low", ["a", "c"])]


def test_dose_status_uses_the_latest_fact() -> None:
    assert views.dose_status(None)["state"] == "unknown"
    seed = {"below_target": True, "message": "low"}
    assert views.dose_status({"seed": seed, "day3": None, "achieved": None})["state"] == "alert"
    day3 = {"below_target": False, "message": "fine"}
    status = views.dose_status({"seed": seed, "day3": day3, "achieved": None})
    assert (status["state"], status["basis"]) == ("ok", "day3")
    harvest = {"enough": False, "percent_of_needed": 80.0, "message": "short"}
    status = views.dose_status({"seed": seed, "day3": day3, "harvest": harvest, "achieved": None})
    assert (status["state"], status["basis"]) == ("alert", "harvest") and "80 %" in status["text"]
    achieved = {"within_acceptance": True, "percent_of_level": 101.0, "message": "ok"}
    status = views.dose_status({"seed": seed, "day3": day3, "harvest": harvest, "achieved": achieved})
    assert (status["state"], status["basis"]) == ("ok", "formulate")
    assert status["text"] == "formulated 101 % of the dose level", status


def test_timeline_places_windows_on_one_span() -> None:
    def step(key: str, e: int, t: int, la: int, hard: int | None, status: str = "pending") -> dict[str, object]:
        iso = lambda h: (T0 + timedelta(hours=h)).isoformat()  # noqa: E731
        return {"key": key, "title": key, "status": status, "done_at": None, "window": {
            "earliest": iso(e), "target": iso(t), "latest": iso(la), "hard_latest": iso(hard) if hard else None}}

    tl = views.timeline([step("a", 0, 10, 20, None, "done"), step("b", 50, 80, 90, 100)], T0 + timedelta(hours=50))
    a, b = tl["steps"]
    assert a["bar"] == {"left": 0.0, "width": 20.0, "target": 10.0, "hard_width": 0.0, "done": None}
    assert b["bar"]["left"] == 50.0 and b["bar"]["width"] == 40.0 and b["bar"]["hard_width"] == 10.0
    assert tl["now_pct"] == 50.0 and a["icon"] and "target" in a["window_text"]


def test_forms_follow_the_recipe_inputs() -> None:
    recipe = default_recipe()
    forms = {f["key"]: f for f in views.step_forms(recipe)}
    assert set(forms) == {s.key for s in recipe.steps}
    day3 = forms["feed_day3"]
    assert [f["name"] for f in day3["fields"]] == [i.name for i in recipe.step("feed_day3").inputs]
    viability = next(f for f in day3["fields"] if f["name"] == "viability")
    assert viability["control"] == "number" and viability["unit"] == "%" and "0 \u2013 100 %" in viability["hint"]
    assert day3["signatures"] == ["performed"]
    assert next(f for f in forms["receive_cells"]["fields"] if f["name"] == "cell_source")["choices"] == [
        "mobilized", "cord"]
    # v2: the seed form has no density or vessel fields (computed from the run's vessels); the infusion records
    # its start and end as date and time
    assert [f["name"] for f in forms["seed"]["fields"]] == ["viable_cells_seeded", "volume"]
    assert [(f["name"], f["kind"]) for f in forms["infuse"]["fields"] if f["kind"] == "datetime"] == [
        ("infusion_start", "datetime"), ("infusion_end", "datetime")]
    assert forms["infuse"]["signatures"] == ["performed", "verified"] and forms["release"]["signatures"] == [
        "approved"]
    # the incubator check's calibration is read from the records, not typed
    assert [f["name"] for f in forms["incubator_ready"]["fields"]] == ["temperature", "co2", "humidity",
                                                                        "trend_hours"]
    assert forms["incubator_ready"]["read"] == ["calibration valid", "calibration due"]


def test_forms_name_the_reagents_whose_lots_a_step_records() -> None:
    recipe = default_recipe()
    forms = {f["key"]: f for f in views.step_forms(recipe)}
    assert forms["coat_vessels"]["materials"] == [{"key": "dl4", "name": "DL-4-Fc (coating)"},
                                                  {"key": "medium", "name": "serum-free X-VIVO-type medium"}]
    assert [m["key"] for m in forms["seed"]["materials"]] == ["medium", "scf", "flt3l", "tpo", "il7", "tnfa"]
    assert forms["feed_day3"]["materials"] == forms["feed_day5"]["materials"] == forms["seed"]["materials"]
    assert forms["harvest"]["materials"] == forms["release"]["materials"] == []
    v1 = load_recipe(Path(rmod.__file__).parent / "recipes" / "htlp-dl4-tnfa-v1.yaml")
    assert all(f["materials"] == [] for f in views.step_forms(v1))  # v1 records no lots
    assert views.step_forms(None) == []


def test_chart_specs_carry_limits_and_bands() -> None:
    recipe = default_recipe()
    run = {"incubator": "inc-1", "culture_system": None}
    # a vendor's point names: the charts follow the roles they play; a role the device lacks has no chart
    roles = {"inc-1.temperature": "inc-1.ChamberTemp", "inc-1.co2": "inc-1.CO2_Level"}
    specs = views.chart_specs(run, {"inc-1.ChamberTemp": 7}, {"inc-1.ChamberTemp": "degC"},
                              {"inc-1.ChamberTemp": {"l": 36.0, "h": 38.0}}, recipe, roles)
    assert [s["channel"] for s in specs] == ["inc-1.ChamberTemp", "inc-1.CO2_Level"]
    temp = specs[0]
    assert temp["channel_id"] == 7 and temp["limits"] == {"l": 36.0, "h": 38.0}
    assert temp["band"] == {"low": 36.0, "high": 38.0}
    assert views.limit_bands({"kind": "limit", "h": {"value": 38}, "ll": {"value": 35}}) == {"ll": 35.0, "h": 38.0}
    assert views.limit_bands({"kind": "stale"}) == {}


def test_alarm_summary_names_the_most_urgent() -> None:
    assert views.alarm_summary([]) == {"count": 0, "unack": 0, "top": None}
    alarms = [{"priority": "low", "status": "active_ack"}, {"priority": "high", "status": "active_unack"}]
    assert views.alarm_summary(alarms) == {"count": 2, "unack": 1, "top": "high"}


def test_chart_range_starts_a_day_before_t0_or_at_the_first_reading() -> None:
    now = T0 + timedelta(days=3)
    r = views.chart_range({"t0": T0.isoformat()}, now)
    assert r == {"start": (T0 - timedelta(days=1)).isoformat(), "end": now.isoformat()}
    first = T0 + timedelta(hours=2)
    assert views.chart_range({"t0": T0.isoformat()}, now, first)["start"] == (first - timedelta(minutes=10)).isoformat()
    planned = {"t0": None, "planned_t0": (T0 + timedelta(hours=6)).isoformat()}
    assert views.chart_range(planned, T0, T0 - timedelta(minutes=5))["start"] == (T0 - timedelta(hours=1)).isoformat()
    long_ago = views.chart_range({"t0": (T0 - timedelta(days=30)).isoformat()}, T0)
    assert long_ago["start"] == (T0 - timedelta(days=8)).isoformat()
