"""The pure simulator models: incubator dynamics, culture growth and its run-to-run spread, the culture's
coupling to its incubator, and determinism."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from drivers.base import PointLimitError, PointNotWritable
from drivers.points import CULTURE_SYSTEM_POINTS, INCUBATOR_POINTS
from simulators.physics import (
    AMBIENT_CO2,
    AMBIENT_TEMPERATURE,
    CD7_FINAL,
    FOLD_7D_LIMITS,
    HEATER_STUCK_ON_TEMPERATURE,
    PROFILE_FOLD_7D,
    CultureModel,
    IncubatorModel,
    culture_parameters,
    death_rate,
    growth_factor,
    logistic_step,
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
    assert FOLD_7D_LIMITS == (10.0, 50.0)
    assert 10.0 <= m.params.fold_7d <= 50.0
    assert m.density_true(7.0) / m.density_true(0.0) == pytest.approx(m.params.fold_7d, rel=1e-12)
    assert end / start == pytest.approx(m.params.fold_7d, rel=0.041)  # the counts' +-2 % noise


@pytest.mark.parametrize(("profile", "median", "log_sd"), [("mobilized", 17.0, 0.28), ("cord", 32.0, 0.22)])
def test_fold_and_final_cd7_vary_from_run_to_run_lognormal_and_normal_within_their_limits(
    profile: str, median: float, log_sd: float
) -> None:
    params = [culture_parameters(seed, profile) for seed in range(2000)]
    logs = [math.log(p.fold_7d) for p in params]
    assert PROFILE_FOLD_7D[profile] == (median, log_sd)
    assert math.exp(statistics.median(logs)) == pytest.approx(median, rel=0.03)
    # the clipping at 10x / 50x trims the tails a little
    assert statistics.stdev(logs) == pytest.approx(log_sd, rel=0.08)
    assert min(p.fold_7d for p in params) >= 10.0 and max(p.fold_7d for p in params) <= 50.0
    cd7 = [p.cd7_final for p in params]
    assert statistics.fmean(cd7) == pytest.approx(CD7_FINAL[0], abs=0.5)
    assert statistics.stdev(cd7) == pytest.approx(CD7_FINAL[1], rel=0.08)
    assert min(cd7) >= 50.0 and max(cd7) <= 80.0
    assert culture_parameters(5, profile) == culture_parameters(5, profile)


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


# --- the culture in its incubator -------------------------------------------------------------------


@pytest.mark.parametrize(("temperature", "co2", "factor"), [
    (37.0, 5.0, 1.0), (36.5, 4.5, 1.0), (37.5, 5.5, 1.0),
    (34.75, 5.0, 0.5), (38.75, 5.0, 0.5), (37.0, 3.25, 0.5), (37.0, 6.75, 0.5), (34.75, 3.25, 0.25),
    (33.0, 5.0, 0.0), (45.0, 5.0, 0.0), (37.0, 2.0, 0.0), (37.0, AMBIENT_CO2, 0.0), (37.0, 9.0, 0.0),
])
def test_growth_factor_is_1_in_band_and_falls_linearly_to_0(temperature: float, co2: float, factor: float) -> None:
    assert growth_factor(temperature, co2) == pytest.approx(factor)


@pytest.mark.parametrize(("temperature", "half_life_h"), [
    (10.0, None), (37.0, None), (39.0, None), (40.5, 48.0), (42.0, 24.0), (42.1, 2.0), (45.0, 2.0), (9.9, 12.0),
])
def test_cells_die_above_39_c_fast_above_42_c_and_below_10_c(temperature: float, half_life_h: float | None) -> None:
    rate = death_rate(temperature)  # per day
    assert rate == (0.0 if half_life_h is None else pytest.approx(math.log(2) * 24 / half_life_h))
    with pytest.raises(ValueError, match="temperature must be finite"):
        death_rate(math.nan)
    with pytest.raises(ValueError, match="co2 must be finite"):
        growth_factor(37.0, math.inf)


def test_logistic_step_is_exact() -> None:
    k, n0, r = 3.0e6, 1.0e5, 0.6
    n1, integral = logistic_step(n0, r, 0.0, k, 2.5)
    assert n1 == pytest.approx(k / (1 + (k / n0 - 1) * math.exp(-r * 2.5)), rel=1e-12)
    # the integral by the midpoint rule on a fine grid
    steps = 20000
    grid = [logistic_step(n0, r, 0.0, k, (i + 0.5) * 2.5 / steps)[0] for i in range(steps)]
    assert integral == pytest.approx(sum(grid) * 2.5 / steps, rel=1e-7)
    # two half steps are one step, with death too
    half, i1 = logistic_step(n0, r, 2.0, k, 0.5)
    whole, i2 = logistic_step(half, r, 2.0, k, 0.5)
    assert logistic_step(n0, r, 2.0, k, 1.0) == pytest.approx((whole, i1 + i2), rel=1e-12)
    # no growth: exponential death; growth equal to death: only the crowding term
    assert logistic_step(n0, 0.0, 3.0, k, 1.0) == pytest.approx((n0 * math.exp(-3.0), n0 * (1 - math.exp(-3)) / 3))
    assert logistic_step(n0, 3.0, 3.0, k, 1.0)[0] == pytest.approx(1 / (1 / n0 + 3.0 / k), rel=1e-12)


def constant(temperature: float, co2: float) -> Callable[[datetime], tuple[float, float]]:
    return lambda when: (temperature, co2)


@pytest.mark.parametrize(("temperature", "co2"), [(37.0, 5.0), (37.4, 4.6), (36.5, 5.5)])
def test_nominal_conditions_give_exactly_the_closed_form_values(temperature: float, co2: float) -> None:
    plain = CultureModel(T0, 6, "cord", start=T0 - DAY)
    coupled = CultureModel(T0, 6, "cord", start=T0 - DAY, environment=constant(temperature, co2))
    for minutes in range(-600, 8 * 24 * 60, 37):
        when = T0 + timedelta(minutes=minutes)
        plain.step(when)
        coupled.step(when)
        assert coupled.values() == plain.values()
    assert coupled.dead_density == 0.0
    assert coupled.viable_density == plain.density_true(11499 / 1440)  # the last step: minute 11499


def test_co2_out_of_band_slows_growth_and_far_out_of_band_stops_it() -> None:
    half = CultureModel(T0, 2, "mobilized", environment=constant(37.0, 3.25))  # growth factor 0.5
    stopped = CultureModel(T0, 2, "mobilized", environment=constant(37.0, AMBIENT_CO2))
    nominal = CultureModel(T0, 2, "mobilized")
    for m in (half, stopped, nominal):
        m.step(T0 + 4 * DAY)
    # a constant factor on the rate is a slower clock: 4 days at half speed grow as 2 days
    assert half.viable_density == pytest.approx(nominal.density_true(2.0), rel=1e-9)
    assert stopped.viable_density == pytest.approx(nominal.seeding_density, rel=1e-12)
    assert stopped.viable_density < half.viable_density < nominal.viable_density
    assert half.dead_density == 0.0 and half.values()["viability"] >= 85.0  # nobody died


def test_empty_co2_supply_in_the_coupled_incubator_slows_the_culture() -> None:
    incubator = IncubatorModel(T0)
    culture = CultureModel(T0, 2, "cord", environment=incubator.chamber)
    culture.step(T0 + 2 * DAY)
    incubator.set_co2_supply(False, T0 + 2 * DAY)
    culture.step(T0 + 3 * DAY)
    assert incubator.co2 < 0.1
    grown = culture.viable_density / culture.density_true(2.0)
    assert 1.0 < grown < 1.1  # about an hour's growth until the CO2 fell below 2 %
    assert culture.dead_density == 0.0


def test_a_stuck_heater_kills_cells_viability_and_viable_density_fall_and_recover_slowly() -> None:
    incubator = IncubatorModel(T0)
    culture = CultureModel(T0, 1, "mobilized", environment=incubator.chamber)
    before = culture_at(culture, 3.0)
    incubator.set_heater("on", T0 + 3 * DAY)
    hot = culture_at(culture, 3.0 + 4 / 24)  # four hours, most of them above 42 C
    assert incubator.temperature > 44.0
    assert hot["viable_cell_density"] < 0.35 * before["viable_cell_density"]
    assert hot["viability"] < 35.0 < 85.0 <= before["viability"]
    assert culture.dead_density > 0.6 * culture.density_true(3.0)
    incubator.set_heater("auto", T0 + 3 * DAY + timedelta(hours=4))
    later = culture_at(culture, 4.9)
    assert incubator.temperature == pytest.approx(37.0, abs=0.01)
    assert later["viable_cell_density"] > hot["viable_cell_density"]  # the survivors grow again
    assert hot["viability"] < later["viability"] < 85.0  # the dead stay in the closed system
    assert culture.viable_density < culture.density_true(4.9)
    # fewer cells acidify the medium less
    assert later["ph"] > CultureModel(T0, 1, "mobilized").ph_true(4.9) + 0.01


def test_a_barely_off_nominal_culture_follows_the_closed_form_through_the_feeds() -> None:
    # 37.5000001 C: growth factor 1 - 4e-8, so the integrated state (density, pH since each feed) must agree
    coupled = CultureModel(T0, 3, "cord", environment=constant(37.5000001, 5.0))
    plain = CultureModel(T0, 3, "cord")
    for hours in (1.0, 50.0, 71.99, 72.0, 80.5, 119.5, 121.0, 168.0):
        v, ref = culture_at(coupled, hours / 24), culture_at(plain, hours / 24)
        assert v == pytest.approx(ref, rel=1e-6, abs=1e-9), hours
    assert coupled.viable_density != plain.density_true(7.0)  # it did take the integrated path


def test_the_environment_has_no_effect_before_t0() -> None:
    m = CultureModel(T0, 4, "mobilized", start=T0 - DAY,
                     environment=lambda when: (45.0, 5.0) if when < T0 else (37.0, 5.0))
    m.step(T0 + DAY)
    assert m.values() == CultureModel(T0, 4, "mobilized", start=T0 + DAY).values()


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


def heat_episode(when: datetime) -> tuple[float, float]:
    """A deterministic environment: 45 C from 50 h to 53 h, CO2 at 3 % from 100 h to 110 h, else nominal."""
    hours = (when - T0).total_seconds() / 3600
    return (45.0 if 50 <= hours < 53 else 37.0), (3.0 if 100 <= hours < 110 else 5.0)


@pytest.mark.parametrize("stride_s", [420.0, 3600.0, 86400.0, 0.0], ids=["7min", "hourly", "daily", "irregular"])
def test_coupled_culture_is_deterministic_whatever_the_step_pattern(stride_s: float) -> None:
    samples = [T0 + timedelta(hours=h) for h in (49.0, 51.5, 53.0, 60.25, 105.0, 168.0)]

    def series(steps: list[datetime]) -> list[dict[str, float]]:
        m = CultureModel(T0, 8, "cord", environment=heat_episode)
        out = []
        for when in sorted({*steps, *samples}):
            m.step(when)
            if when in samples:
                out.append(m.values())
        return out

    reference = series([])
    if stride_s:
        steps = [T0 + timedelta(seconds=stride_s * i) for i in range(int(168 * 3600 / stride_s) + 1)]
    else:
        steps = [T0 + timedelta(seconds=random.Random(3).uniform(0, 168 * 3600)) for _ in range(500)]
    for ref, got in zip(reference, series(steps), strict=True):
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert reference[1]["viability"] < 80.0 and reference[-1]["viable_cell_density"] > 0


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
