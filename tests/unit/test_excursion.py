"""Excursion accounting (pure): time and integral outside the band, hard limits, the cumulative rule, gaps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from app.alarms.excursion import CUMULATIVE, HARD, ExcursionRule, ExcursionState, add_sample, default_rules
from app.protocol.recipe import default_recipe

T0 = datetime(2026, 11, 22, tzinfo=UTC)
TEMP = ExcursionRule(channel="incubator.temperature", unit="C", low=36.0, high=38.0, hard_low=35.0, hard_high=39.0,
                     max_outside_min=30.0)


def feed(samples: list[tuple[float, float | None]], rule: ExcursionRule = TEMP,
         max_gap_s: float = 3600.0) -> tuple[ExcursionState, list[str]]:
    st, rules = ExcursionState(), []
    for minute, value in samples:
        st, trips = add_sample(rule, st, value, T0 + timedelta(minutes=minute), max_gap_s)
        rules += [t.rule for t in trips]
    return st, rules


def test_inside_the_band_accumulates_nothing() -> None:
    st, trips = feed([(m, 37.0 + (0.9 if m % 2 else -0.9)) for m in range(100)])
    assert (st.seconds_outside, st.integral, st.episodes, trips) == (0.0, 0.0, 0, [])


@pytest.mark.parametrize(("value", "minutes", "integral"), [(38.5, 10, 5.0), (35.5, 4, 2.0), (38.01, 1, 0.01)])
def test_time_and_integral_beyond_the_band_edge(value: float, minutes: int, integral: float) -> None:
    st, _ = feed([(0, 37.0), (1, value), (1 + minutes, 37.0)])
    assert st.seconds_outside == pytest.approx(minutes * 60)
    assert st.integral == pytest.approx(integral)  # unit x min beyond the edge
    assert st.episodes == 1 and not st.outside


def test_cumulative_rule_trips_once_when_the_total_passes_30_min() -> None:
    samples: list[tuple[float, float | None]] = []
    for episode in range(4):  # 4 excursions of 10 min each, with returns between them
        base = episode * 20
        samples += [(base + m, 38.5) for m in range(10)] + [(base + 10 + m, 37.0) for m in range(10)]
    st, trips = feed(samples)
    assert trips == [CUMULATIVE]
    assert st.episodes == 4 and st.seconds_outside == pytest.approx(40 * 60) and st.cumulative_tripped


def test_exactly_30_min_does_not_trip() -> None:
    st, trips = feed([(0, 38.5), (30, 37.0)])
    assert st.seconds_outside == 30 * 60 and trips == []


def test_each_excursion_beyond_the_hard_limit_trips() -> None:
    _, trips = feed([(0, 39.2), (1, 39.5), (2, 38.5), (3, 34.9), (4, 37.0)])
    assert trips == [HARD, HARD]


def test_a_gap_counts_at_most_max_gap_and_missing_values_are_not_outside() -> None:
    st, _ = feed([(0, 38.5), (60, 38.5)], max_gap_s=300)  # one hour without data: 5 min counted
    assert st.seconds_outside == pytest.approx(300)
    st, _ = feed([(0, 38.5), (1, None), (30, None), (31, 37.0)], max_gap_s=300)
    assert st.seconds_outside == pytest.approx(60)


def test_a_late_sample_is_ignored() -> None:
    st, _ = feed([(0, 38.5), (10, 38.5)])
    late, trips = add_sample(TEMP, st, 45.0, T0 + timedelta(minutes=5))
    assert late == st and trips == []


def test_rules_validate_band_order_and_the_recipe_carries_the_process_defaults() -> None:
    with pytest.raises(ValidationError, match="ordered"):
        ExcursionRule(channel="incubator.co2", unit="%", low=6.0, high=4.0)
    with pytest.raises(ValidationError, match="ordered"):
        ExcursionRule(channel="incubator.temperature", unit="C", low=36.0, high=38.0, hard_high=37.5)
    assert default_recipe().excursions == default_rules()


def test_a_planned_door_opening_is_not_accounted_and_the_excursion_after_it_starts_afresh() -> None:
    st, trips = ExcursionState(), []
    for minute, value, planned in [(0, 37.0, False), (1, 33.7, True), (5, 34.9, True), (12, 36.1, False),
                                   (13, 37.0, False)]:
        st, t = add_sample(TEMP, st, value, T0 + timedelta(minutes=minute), planned=planned)
        trips += t
    assert (st.seconds_outside, st.integral, st.episodes, st.hard_episodes, trips) == (0.0, 0.0, 0, 0, [])
    # a plan exceeded while the chamber is beyond the hard limit: from then on it is an excursion like any other
    st, t = add_sample(TEMP, st, 33.0, T0 + timedelta(minutes=20), planned=True)
    st, t = add_sample(TEMP, st, 32.5, T0 + timedelta(minutes=21))
    assert [x.rule for x in t] == [HARD] and st.seconds_outside == 0.0 and st.episodes == 1
    st, _ = add_sample(TEMP, st, 37.0, T0 + timedelta(minutes=25))
    assert st.seconds_outside == pytest.approx(240)
