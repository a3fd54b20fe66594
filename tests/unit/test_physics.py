"""The pure simulator models: incubator dynamics, culture growth and determinism."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from drivers.base import PointLimitError, PointNotWritable
from drivers.points import CULTURE_SYSTEM_POINTS, INCUBATOR_POINTS
from simulators.physics import (
    AMBIENT_CO2,
    AMBIENT_TEMPERATURE,
    HEATER_STUCK_ON_TEMPERATURE,
    PROFILE_FOLD_RANGE,
    CultureModel,
    IncubatorModel,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def run(model: IncubatorModel, start: datetime, seconds: float, step: float) -> None:
    """Step `model` from `start` over `seconds` in increments of `step` (a fast clock means big steps)."""
    t = 0.0
    while t < seconds:
        t = min(seconds, t + step)
        model.step(start + timedelta(seconds=t))


def culture_at(model: CultureModel, days: float) -> dict[str, float]:
    model.step(model.t0 + timedelta(days=days))
    return model.values()


# --- incubator ------------------------------------------------------------------------------------


def test_incubator_values_are_keyed_by_the_point_map() -> None:
    assert set(IncubatorModel(T0).values()) == {p.name for p in INCUBATOR_POINTS}


@pytest.mark.parametrize("step_s", [1.0, 60.0, 600.0, 3600.0])
def test_incubator_settles_at_setpoint_within_an_hour_whatever_the_step(step_s: float) -> None:
    m = IncubatorModel(T0, temperature=AMBIENT_TEMPERATURE, co2=AMBIENT_CO2, humidity=45.0)
    run(m, T0, 3600.0, step_s)
    v = m.values()
    assert v["temperature"] == pytest.approx(37.0, abs=0.1)
    assert v["co2"] == pytest.approx(5.0, abs=0.1)
    assert v["humidity"] > 85.0  # incubator_ready needs RH >= 85 %


def test_huge_step_at_a_fast_clock_stays_stable() -> None:
    m = IncubatorModel(T0, temperature=AMBIENT_TEMPERATURE)
    m.step(T0 + timedelta(days=30))
    assert m.temperature == pytest.approx(37.0, abs=1e-9)


def test_door_open_drops_temperature_and_co2_which_recover_with_their_time_constants() -> None:
    m = IncubatorModel(T0)
    opened = T0 + timedelta(minutes=5)
    m.open_door(opened)
    shut = opened + timedelta(minutes=2)
    m.close_door(shut)
    v = m.values()
    assert v["door_open"] == 0.0
    # two minutes open: temperature falls by degrees, CO2 toward room air
    temp_dev, co2_dev = 37.0 - m.temperature, 5.0 - m.co2
    assert temp_dev == pytest.approx(15.0 * (1 - math.exp(-120 / m.tau.temperature_door_open)), rel=1e-9)
    assert temp_dev > 5.0
    assert m.co2 < 1.0
    # after one time constant shut, e^-1 of the deviation is left
    m.step(shut + timedelta(seconds=m.tau.temperature))
    assert (37.0 - m.temperature) / temp_dev == pytest.approx(math.exp(-1), abs=1e-6)
    m2 = IncubatorModel(T0)
    m2.open_door(opened)
    m2.close_door(shut)
    m2.step(shut + timedelta(seconds=m2.tau.co2))
    assert (5.0 - m2.co2) / co2_dev == pytest.approx(math.exp(-1), abs=1e-6)
    assert m.tau.temperature == pytest.approx(600.0) and m.tau.co2 == pytest.approx(300.0)


def test_door_state_is_reported_while_open() -> None:
    m = IncubatorModel(T0)
    m.open_door(T0 + timedelta(seconds=10))
    m.step(T0 + timedelta(seconds=70))
    v = m.values()
    assert v["door_open"] == 1.0
    assert v["temperature"] < 36.0 and v["co2"] < 2.0 and v["humidity"] < 80.0


@pytest.mark.parametrize(
    ("point", "new", "state"),
    [("temperature_setpoint", 35.0, "temperature"), ("co2_setpoint", 7.5, "co2")],
)
def test_setpoint_change_is_followed(point: str, new: float, state: str) -> None:
    m = IncubatorModel(T0)
    changed = T0 + timedelta(minutes=1)
    m.write(point, new, changed)
    m.step(changed + timedelta(hours=1))
    assert m.values()[point] == new
    assert getattr(m, state) == pytest.approx(new, abs=0.1)


@pytest.mark.parametrize(
    ("point", "value"),
    [
        ("temperature_setpoint", 29.9),
        ("temperature_setpoint", 40.1),
        ("temperature_setpoint", math.nan),
        ("co2_setpoint", -0.1),
        ("co2_setpoint", 10.5),
    ],
)
def test_out_of_limit_setpoint_is_refused_and_keeps_the_old_one(point: str, value: float) -> None:
    m = IncubatorModel(T0)
    before = m.values()[point]
    with pytest.raises(PointLimitError):
        m.write(point, value, T0)
    assert m.values()[point] == before


def test_measured_points_are_not_writable() -> None:
    with pytest.raises(PointNotWritable):
        IncubatorModel(T0).write("temperature", 30.0)


# --- culture system -------------------------------------------------------------------------------

SEEDS = range(8)


def test_culture_values_are_keyed_by_the_point_map() -> None:
    assert set(CultureModel(T0).values()) == {p.name for p in CULTURE_SYSTEM_POINTS}


@pytest.mark.parametrize("profile", ["mobilized", "cord"])
@pytest.mark.parametrize("seed", SEEDS)
def test_fold_over_seven_days_is_10_to_50x(profile: str, seed: int) -> None:
    m = CultureModel(T0, seed, profile)
    start = culture_at(m, 0.0)["viable_cell_density"]
    end = culture_at(m, 7.0)["viable_cell_density"]
    lo, hi = PROFILE_FOLD_RANGE[profile]
    assert 10.0 <= end / start <= 50.0
    assert lo * 0.95 <= end / start <= hi * 1.05


def test_cord_blood_expands_more_than_mobilized_blood() -> None:
    def mean_fold(profile: str) -> float:
        return sum(CultureModel(T0, s, profile).params.fold_7d for s in SEEDS) / len(SEEDS)

    assert mean_fold("cord") > mean_fold("mobilized")


def test_growth_is_monotonic_and_logistic() -> None:
    m = CultureModel(T0, 3, "cord")
    densities = [m.density_true(d / 4) for d in range(0, 29)]
    assert densities == sorted(densities)
    assert m.density_true(30.0) < m.capacity  # levels off instead of growing forever


@pytest.mark.parametrize("profile", ["mobilized", "cord"])
@pytest.mark.parametrize("seed", SEEDS)
def test_cd7_rises_from_zero_to_50_80_percent_at_day_7(profile: str, seed: int) -> None:
    m = CultureModel(T0, seed, profile)
    assert culture_at(m, 0.0)["cd7_percent"] < 1.0
    day3 = culture_at(m, 3.0)["cd7_percent"]
    day7 = culture_at(m, 7.0)["cd7_percent"]
    assert day3 < day7
    assert 50.0 <= day7 <= 80.0


@pytest.mark.parametrize("seed", SEEDS)
def test_viability_stays_85_to_95(seed: int) -> None:
    m = CultureModel(T0, seed, "cord")
    samples = [culture_at(m, h / 24)["viability"] for h in range(-12, 8 * 24, 3)]
    assert all(85.0 <= v <= 95.0 for v in samples)


def test_ph_drifts_down_between_feeds_faster_at_higher_density_and_feeds_reset_it() -> None:
    m = CultureModel(T0, 2, "cord")
    before_feed, after_feed = m.ph_true(72.0 / 24 - 1e-6), m.ph_true(72.0 / 24 + 1e-6)
    assert before_feed < 7.35 < after_feed
    assert m.ph_true(5.0 + 1e-6) > m.ph_true(5.0 - 1e-6)
    early_drop = m.ph_true(0.0) - m.ph_true(1.0)
    late_drop = m.ph_true(5.0 + 1e-6) - m.ph_true(6.0)
    assert late_drop > 2 * early_drop > 0
    assert 6.8 <= m.ph_true(7.0) < 7.3


def test_dissolved_o2_falls_as_cells_grow_and_temperature_is_near_37() -> None:
    m = CultureModel(T0, 1, "cord")
    do = [culture_at(m, d)["dissolved_o2"] for d in (0, 2, 4, 6, 7)]
    assert do == sorted(do, reverse=True)
    assert 0 < do[-1] < do[0] <= 100
    temps = [culture_at(m, h / 24)["temperature"] for h in range(0, 7 * 24, 5)]
    assert all(36.8 < t < 37.2 for t in temps)


def test_values_before_t0_are_seeding_values() -> None:
    m = CultureModel(T0, 4, "mobilized", seeding_density=2.0e5, start=T0 - DAY)
    v = m.values()
    assert v["viable_cell_density"] == pytest.approx(2.0e5, rel=0.021)
    assert v["cd7_percent"] < 1.0
    assert v["medium_pumped"] == 0.0
    assert v["ph"] == pytest.approx(7.40, abs=0.01)


def test_medium_pumped_integrates_the_pump_rate() -> None:
    m = CultureModel(T0, pump_rate=2.0, start=T0 - timedelta(hours=3))
    m.set_pump_rate(10.0, T0 + timedelta(hours=10))  # 10 h at 2 mL/h; nothing before T0
    assert culture_at(m, 15 / 24)["medium_pumped"] == pytest.approx(20.0 + 5 * 10.0)
    assert m.values()["pump_rate_setpoint"] == 10.0
    with pytest.raises(PointLimitError):
        m.set_pump_rate(51.0)
    assert m.pump_rate == 10.0


# --- determinism ----------------------------------------------------------------------------------

SAMPLE_TIMES = [137.0, 600.0, 1234.5, 3000.0, 7200.0]
EVENTS = [(100.0, "open"), (220.0, "close"), (1000.0, "setpoint"), (5000.0, "open"), (5090.0, "close")]


def incubator_samples(seed: int, steps: list[float]) -> list[dict[str, float]]:
    """Values at SAMPLE_TIMES after stepping through `steps` (seconds) with EVENTS applied on time."""
    m = IncubatorModel(T0, seed, temperature=30.0)
    times = sorted({*steps, *SAMPLE_TIMES, *(t for t, _ in EVENTS)})
    events = dict(EVENTS)
    out = []
    for t in times:
        when = T0 + timedelta(seconds=t)
        m.step(when)
        event = events.get(t)
        if event == "open":
            m.open_door(when)
        elif event == "close":
            m.close_door(when)
        elif event == "setpoint":
            m.set_temperature_setpoint(36.5, when)
        if t in SAMPLE_TIMES:
            out.append(m.values())
    return out


@pytest.mark.parametrize(
    "steps",
    [
        [float(s) for s in range(1, 7201)],  # 1 Hz
        sorted(random.Random(5).uniform(0, 7200) for _ in range(300)),  # irregular, like a loaded loop
        [],  # only at the events and the samples
    ],
    ids=["every-second", "irregular", "sparse"],
)
def test_incubator_is_deterministic_whatever_the_step_pattern(steps: list[float]) -> None:
    reference = incubator_samples(11, [])
    got = incubator_samples(11, steps)
    for ref, val in zip(reference, got, strict=True):
        assert val == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_culture_is_deterministic_per_seed_and_seeds_differ() -> None:
    def series(seed: int, stride_h: float) -> list[dict[str, float]]:
        m = CultureModel(T0, seed, "cord")
        out = []
        h = 0.0
        while h <= 168.0:
            m.step(T0 + timedelta(hours=h))
            if h % 24 == 0:
                out.append(m.values())
            h += stride_h
        return out

    a, b = series(3, 1.0), series(3, 24.0)
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y, rel=1e-12)
    assert series(4, 24.0)[-1]["viable_cell_density"] != a[-1]["viable_cell_density"]


# --- fault hooks ----------------------------------------------------------------------------------


def test_stuck_heater_drives_temperature_to_45_or_ambient_and_auto_brings_it_back() -> None:
    hot, cold = IncubatorModel(T0), IncubatorModel(T0)
    hot.set_heater("on", T0)
    cold.set_heater("off", T0)
    ten_min = T0 + timedelta(minutes=10)
    hot.step(ten_min)
    cold.step(ten_min)
    assert hot.temperature == pytest.approx(37.0 + 8.0 * (1 - math.exp(-1)), rel=1e-9)  # tau 10 min
    assert hot.temperature > 39.0  # beyond HH within ten minutes
    # no heating: tens of minutes to cool, passing L (36) and LL (35) within ten minutes
    assert cold.tau.temperature_passive >= 1200.0
    assert 30.0 < cold.temperature < 35.0
    hot.step(T0 + timedelta(hours=3))
    cold.step(T0 + timedelta(hours=3))
    assert hot.temperature == pytest.approx(HEATER_STUCK_ON_TEMPERATURE, abs=0.1)
    assert cold.temperature == pytest.approx(AMBIENT_TEMPERATURE, abs=2.0)
    for m in (hot, cold):
        m.set_heater("auto", T0 + timedelta(hours=3))
        m.step(T0 + timedelta(hours=5))
        assert m.temperature == pytest.approx(37.0, abs=0.1)
    with pytest.raises(ValueError, match="heater mode"):
        hot.set_heater("broken")  # type: ignore[arg-type]


def test_empty_co2_supply_decays_to_ambient_no_faster_than_regulation_and_refill_recovers() -> None:
    m = IncubatorModel(T0)
    m.set_co2_supply(False, T0)
    m.step(T0 + timedelta(seconds=m.tau.co2))
    assert m.tau.co2_leak >= m.tau.co2
    assert 5.0 - m.co2 == pytest.approx((5.0 - AMBIENT_CO2) * (1 - math.exp(-m.tau.co2 / m.tau.co2_leak)), rel=1e-9)
    m.step(T0 + timedelta(hours=1))
    assert m.co2 < 3.0  # LL
    assert m.values()["door_open"] == 0.0 and m.temperature == pytest.approx(37.0)
    m.set_co2_supply(True, T0 + timedelta(hours=1))
    m.step(T0 + timedelta(hours=2))
    assert m.co2 == pytest.approx(5.0, abs=0.05)


def test_frozen_point_reports_one_value_while_the_physics_goes_on() -> None:
    m = IncubatorModel(T0)
    m.freeze("temperature", T0)
    held = m.values()["temperature"]
    m.set_heater("on", T0)
    m.step(T0 + timedelta(minutes=30))
    assert m.values()["temperature"] == held
    assert m.temperature > 43.0  # the chamber underneath is hot
    m.unfreeze("temperature")
    assert m.values()["temperature"] > 43.0
    for bad in ("door_open", "co2_setpoint", "pressure"):
        with pytest.raises(ValueError, match="cannot be frozen"):
            m.freeze(bad)
    c = CultureModel(T0, seed=1)
    c.step(T0 + 2 * DAY)
    c.freeze("ph")
    ph = c.values()["ph"]
    c.step(T0 + 3 * DAY)
    assert c.values()["ph"] == ph and c.values()["medium_pumped"] > 0.0
    c.unfreeze("ph")
    assert c.values()["ph"] != ph
    with pytest.raises(ValueError, match="cannot be frozen"):
        c.freeze("pump_rate_setpoint")


def test_ignored_setpoint_writes_are_accepted_but_change_nothing() -> None:
    m = IncubatorModel(T0)
    m.ignore_setpoint_writes = True
    m.write("temperature_setpoint", 34.0, T0)
    assert m.temperature_setpoint == 37.0
    with pytest.raises(PointLimitError):  # limits are still checked
        m.write("co2_setpoint", 11.0, T0)
    m.ignore_setpoint_writes = False
    m.write("temperature_setpoint", 34.0, T0)
    assert m.temperature_setpoint == 34.0
    c = CultureModel(T0)
    c.ignore_setpoint_writes = True
    c.set_pump_rate(9.0, T0 + DAY)
    assert c.values()["pump_rate_setpoint"] == 2.0
