"""Alarms on synthetic signals: deadband, delays, re-alarm, shelving, suppression, stale data, quality, rate."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.alarms import (
    AlarmDefinition,
    AlarmState,
    AlarmStatus,
    BadQualityAlarm,
    CommLossAlarm,
    Limit,
    LimitAlarm,
    RateAlarm,
    Severity,
    StaleAlarm,
    Transition,
    acknowledge,
    default_definitions,
    evaluate,
    initial_state,
    shelve,
    suppress,
    tick,
)
from drivers.base import Quality

S = AlarmStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)
GOOD = Quality.GOOD


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def _temp() -> LimitAlarm:
    d = default_definitions()["incubator.temperature"][0]
    assert isinstance(d, LimitAlarm)
    return d


def run(defn: AlarmDefinition, samples: list[tuple[float, float | None]], quality: Quality = GOOD,
        state: AlarmState | None = None) -> tuple[AlarmState, list[Transition]]:
    s = state or initial_state("inc1.x", T0)
    out: list[Transition] = []
    for t, v in samples:
        s, trs = evaluate(defn, s, v, quality, at(t))
        out += trs
    return s, out


def activations(trs: list[Transition]) -> int:
    return sum(t.reason == "activated" for t in trs)


def noisy(rng: random.Random, start: float, n: int, level: float, sd: float) -> list[tuple[float, float]]:
    return [(start + i * 10.0, level + rng.gauss(0, sd)) for i in range(n)]


def test_noise_around_limit_gives_one_activation_per_excursion() -> None:
    rng = random.Random(5)
    defn = _temp()
    samples: list[tuple[float, float]] = []
    t = 0.0
    for _ in range(4):  # 4 excursions: 30 min at 37.0, 11+ min at 38.6, 18 min chattering across H (38.0)
        samples += noisy(rng, t, 180, 37.0, 0.15)
        samples += noisy(rng, t + 1800, 70, 38.6, 0.1)
        samples += noisy(rng, t + 2500, 110, 38.05, 0.1)
        t += 3600
    samples += noisy(rng, t, 180, 37.0, 0.15)
    crossings = sum((a[1] > 38.0) != (b[1] > 38.0) for a, b in itertools.pairwise(samples))
    assert crossings > 100  # the noise does chatter across the limit
    s, trs = run(defn, samples)
    assert activations(trs) == 4
    assert all(t.severity is Severity.H for t in trs)
    assert s.status is S.RETURNED_UNACK


def test_no_deadband_no_delay_chatters() -> None:
    rng = random.Random(5)
    bare = LimitAlarm(name="limit", h=Limit(value=38.0))
    samples = noisy(rng, 0, 180, 38.0, 0.1)
    assert activations(run(bare, samples)[1]) > 10


def test_on_delay_short_excursion_does_not_alarm() -> None:
    defn = _temp()
    s, trs = run(defn, [(0, 37.0), (60, 38.5), (300, 38.5), (599, 38.5), (600, 37.0), (1000, 37.0)])
    assert trs == [] and s.status is S.NORMAL
    s, trs = run(defn, [(0, 37.0), (60, 38.5)])
    s, trs = tick(defn, s, at(659))
    assert trs == []
    s, trs = tick(defn, s, at(660))  # on-delay completes without a new sample
    assert [t.to_state for t in trs] == [S.ACTIVE_UNACK]


def test_hh_has_short_on_delay_and_escalates() -> None:
    defn = _temp()
    s, trs = run(defn, [(0, 37.0), (10, 39.5), (69, 39.5), (70, 39.5)])
    assert [(t.reason, t.severity) for t in trs] == [("activated", Severity.HH)]
    s, trs = run(defn, [(80, 38.5), (199, 38.5), (200, 38.5)], state=s)  # HH off-delay 2 min
    assert [(t.reason, t.severity) for t in trs] == [("de-escalated", Severity.H)]


def test_off_delay_and_re_alarm() -> None:
    defn = _temp()
    s, trs = run(defn, [(0, 38.5), (600, 38.5)])
    assert activations(trs) == 1
    s, trs = acknowledge(s, at(610))
    # back inside for 1 min, then out again: still the same excursion (off-delay 2 min)
    s, trs = run(defn, [(700, 37.5), (760, 37.5), (770, 38.5)], state=s)
    assert trs == [] and s.status is S.ACTIVE_ACK
    s, trs = run(defn, [(800, 37.5), (919, 37.5)], state=s)
    assert trs == []
    s, trs = tick(defn, s, at(920))
    assert [(t.from_state, t.to_state) for t in trs] == [(S.ACTIVE_ACK, S.NORMAL)]
    # re-alarm: a new excursion needs the full on-delay again
    s, trs = run(defn, [(1000, 38.5), (1599, 38.5), (1600, 38.5)], state=s)
    assert [(t.reason, t.at) for t in trs] == [("activated", at(1600))]


def test_inside_deadband_band_does_not_return() -> None:
    defn = _temp()
    s, _ = run(defn, [(0, 38.5), (600, 38.5)])
    s, trs = run(defn, [(700 + 60 * i, 37.9) for i in range(20)], state=s)  # 37.9 > 38.0 - 0.2: still held
    assert trs == [] and s.status is S.ACTIVE_UNACK


def test_shelving_expires() -> None:
    defn = _temp()
    s, _ = run(defn, [(0, 38.5), (600, 38.5)])
    s, trs = shelve(s, at(610), at(610 + 3600), timedelta(hours=8))
    assert s.status is S.SHELVED
    s, trs = run(defn, [(700, 37.0), (1000, 37.0), (1200, 38.5), (2000, 38.5)], state=s)
    assert trs == []
    s, trs = tick(defn, s, at(4209))
    assert trs == []
    s, trs = tick(defn, s, at(4210))
    assert [(t.from_state, t.to_state, t.reason) for t in trs] == [(S.SHELVED, S.ACTIVE_UNACK, "shelve expired")]


def test_suppression_by_design_ends_with_window() -> None:
    defs = {a.name: a for a in default_definitions()["incubator.door_open"]}
    door = defs["limit"]
    s = initial_state("inc1.door_open.limit", T0)
    s, _ = suppress(door, s, at(0), at(600))  # a scheduled feed: 10 min
    s, trs = run(door, [(10, 1.0), (400, 1.0), (590, 0.0)], state=s)
    assert trs == [] and s.status is S.SUPPRESSED_BY_DESIGN
    s, trs = tick(door, s, at(600))
    assert [(t.to_state, t.reason) for t in trs] == [(S.NORMAL, "suppression window ended")]
    # door left open after the window: advisory after 60 s, escalates to the alarm after 5 min
    s, trs = run(door, [(700, 1.0), (760, 1.0), (1000, 1.0)], state=s)
    s, more = tick(door, s, at(1000 + 1))
    assert [(t.reason, t.severity) for t in trs + more] == [("activated", Severity.H), ("escalated", Severity.HH)]


def test_stale_after_n_seconds_without_samples() -> None:
    stale = StaleAlarm(name="stale", max_age_s=120)
    s, _ = run(stale, [(0, 37.0), (60, 37.0)])
    s, trs = tick(stale, s, at(180))
    assert trs == []
    s, trs = tick(stale, s, at(181))
    assert [(t.to_state, t.severity) for t in trs] == [(S.ACTIVE_UNACK, Severity.STALE)]
    s, trs = evaluate(stale, s, 37.0, GOOD, at(200))
    assert [t.to_state for t in trs] == [S.RETURNED_UNACK]
    s2, trs = tick(stale, initial_state("never", T0), at(121))
    assert s2.status is S.ACTIVE_UNACK  # never sampled since the alarm started


def test_bad_quality_and_comm_loss() -> None:
    bad, loss, lim = BadQualityAlarm(name="bad_quality"), CommLossAlarm(name="comm_loss"), _temp()
    s, trs = run(bad, [(0, 37.0)], Quality.UNCERTAIN)
    assert [t.severity for t in trs] == [Severity.BAD_QUALITY]
    s, trs = run(bad, [(10, 37.0)], state=s)
    assert [t.to_state for t in trs] == [S.RETURNED_UNACK]
    s, trs = run(loss, [(0, None)], Quality.BAD)
    assert [t.severity for t in trs] == [Severity.COMM_LOSS]
    s, trs = run(lim, [(0, 50.0), (600, 50.0)], Quality.BAD)  # a bad value never drives a limit alarm
    assert trs == []


def test_rate_of_change() -> None:
    rate = RateAlarm(name="rate", max_per_min=0.5, window_s=60, on_delay_s=60)
    ramp = [(float(t), 37.0 + t / 60.0) for t in range(0, 200, 10)]  # 1 C/min
    _, trs = run(rate, ramp)
    assert [(t.severity, t.at) for t in trs] == [(Severity.RATE, at(70))]
    slow = [(float(t), 37.0 + 0.2 * t / 60.0) for t in range(0, 600, 10)]
    assert run(rate, slow)[1] == []


FAST = LimitAlarm(name="limit", deadband=0.2, hh=Limit(value=39.0), h=Limit(value=38.0, on_delay_s=30, off_delay_s=20),
                  l=Limit(value=36.0, off_delay_s=60), ll=Limit(value=35.0, on_delay_s=5))


@pytest.mark.parametrize("defn", [_temp(), FAST], ids=["process-defaults", "short-delays"])
@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(min_value=30.0, max_value=45.0), min_size=1, max_size=80),
    gaps=st.lists(st.integers(min_value=1, max_value=200), min_size=80, max_size=80),
)
def test_property_activations_and_return(defn: LimitAlarm, values: list[float], gaps: list[int]) -> None:
    off = max(defn.off_delay(lv) for lv in (Severity.HH, Severity.H, Severity.L, Severity.LL))
    inner_hi = min(x.value for x in (defn.h, defn.hh) if x) - defn.deadband
    inner_lo = max(x.value for x in (defn.l, defn.ll) if x) + defn.deadband
    s = initial_state("p", T0)
    t, acts, excursions, side, inside_since = 0.0, 0, 0, 0, None
    for v, gap in zip(values, gaps, strict=False):
        t += gap
        s, trs = evaluate(defn, s, v, GOOD, at(t))
        acts += activations(trs)
        now = 1 if v > 38.0 else -1 if v < 36.0 else 0  # an excursion: beyond a limit, until inside the deadband
        excursions += now != 0 and now != side
        back = (side > 0 and v < inner_hi) or (side < 0 and v > inner_lo)
        side = now or (0 if back else side)
        inside_since = (t if inside_since is None else inside_since) if inner_lo < v < inner_hi else None
        assert acts <= excursions
        if inside_since is not None and t - inside_since > off:
            assert s.active is None


def test_a_late_pass_journals_each_completed_on_delay_at_its_own_time() -> None:
    door = default_definitions()["incubator.door_open"][0]  # H after 60 s, HH after 300 s, same limit
    s, trs = evaluate(door, initial_state("door", T0), 1.0, GOOD, at(0))
    assert trs == []
    s, trs = tick(door, s, at(400))  # one pass, long after both on-delays
    assert [(t.to_state, t.severity, t.at, t.reason) for t in trs] == [
        (AlarmStatus.ACTIVE_UNACK, Severity.H, at(60), "activated"),
        (AlarmStatus.ACTIVE_UNACK, Severity.HH, at(300), "escalated"),
    ]
    assert s.active is Severity.HH
