"""Quality is judged once at the edge, and the alarms hear bad, impossible and silent readings.

Table tests of `drivers.base.judge`, of each quality transition in the pure alarm core, and of the alarm service
telling a bad measurement from the gap marker of a device that lost its link.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from app.alarms import (
    AlarmState,
    AlarmStatus,
    BadQualityAlarm,
    Severity,
    StaleAlarm,
    Transition,
    default_definitions,
    evaluate,
    initial_state,
    tick,
)
from app.alarms.model import BAD_QUALITY_ON_DELAY_S, LimitAlarm
from app.alarms.service import AlarmService
from app.core.clock import ManualClock
from app.core.live import LiveHub
from app.ingest.writer import rollup_rows
from drivers.base import MAX_MAGNITUDE, DeviceState, PointSpec, Quality, Reading, judge
from drivers.devices import DeviceConfig
from drivers.points import CULTURE_SYSTEM_POINTS, INCUBATOR_POINTS

S = AlarmStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)
G, U, B, IMP = Quality.GOOD, Quality.UNCERTAIN, Quality.BAD, Quality.IMPLAUSIBLE
VIABILITY = next(p for p in CULTURE_SYSTEM_POINTS if p.name == "viability")
PH = next(p for p in CULTURE_SYSTEM_POINTS if p.name == "ph")
OPEN = PointSpec("free", "x", "a")  # a point without a plausible range of its own


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


@pytest.mark.parametrize(("point", "value", "reported", "expected"), [
    (VIABILITY, 91.5, G, (91.5, G)),
    (VIABILITY, math.nan, G, (None, B)),  # NaN with status Good is no measurement
    (VIABILITY, math.inf, G, (None, B)),
    (VIABILITY, -math.inf, U, (None, B)),
    (VIABILITY, None, G, (None, B)),
    (VIABILITY, 91.5, B, (None, B)),  # the device says bad: nothing was measured
    (VIABILITY, 250.0, G, (250.0, IMP)),  # kept, but it cannot be true
    (VIABILITY, -0.1, G, (-0.1, IMP)),
    (VIABILITY, 100.0, G, (100.0, G)),  # the range's edges are plausible
    (VIABILITY, 91.5, U, (91.5, U)),  # the device's own doubt stands
    (PH, 65.535, G, (65.535, IMP)),  # a uint16 register at its maximum
    (OPEN, 3e38, G, (3e38, IMP)),  # beyond any physical value, range or not
    (OPEN, -1.5e308, G, (-1.5e308, IMP)),
    (OPEN, MAX_MAGNITUDE, G, (MAX_MAGNITUDE, G)),
])
def test_judge(point: PointSpec, value: float | None, reported: Quality,
               expected: tuple[float | None, Quality]) -> None:
    assert judge(point, value, reported) == expected


def test_every_point_of_both_devices_has_a_plausible_range() -> None:
    for p in (*INCUBATOR_POINTS, *CULTURE_SYSTEM_POINTS):
        assert p.plausible_min is not None and p.plausible_max is not None and p.plausible_min < p.plausible_max
        if p.min is not None and p.max is not None:  # whatever may be written can also be read back as plausible
            assert p.plausible_min <= p.min and p.max <= p.plausible_max, p.name


def test_the_rollup_averages_good_values_only() -> None:
    rows = [(at(0), 1, 37.0, 0), (at(1), 1, None, 2), (at(2), 1, 1.5e308, 3), (at(3), 1, 36.0, 1),
            (at(4), 1, 38.0, 0)]
    assert rollup_rows(rows) == [(1, datetime(2026, 1, 1, tzinfo=UTC), 2, 75.0, 37.0, 38.0)]
    assert rollup_rows([(at(0), 1, 250.0, 3)]) == []  # a bucket with no good value has no aggregate


def _run(defn: BadQualityAlarm | StaleAlarm | LimitAlarm, samples: list[tuple[float, float | None, Quality]],
         state: AlarmState | None = None) -> tuple[AlarmState, list[Transition]]:
    s = state or initial_state("x", T0)
    out: list[Transition] = []
    for t, v, q in samples:
        s, trs = evaluate(defn, s, v, q, at(t))
        out += trs
        s, trs = tick(defn, s, at(t))
        out += trs
    return s, out


def _defn(kind: str, channel: str = "culture-system.viability") -> BadQualityAlarm | StaleAlarm | LimitAlarm:
    return next(d for d in default_definitions()[channel] if d.kind == kind)  # type: ignore[return-value]


@pytest.mark.parametrize(("quality", "value"), [(B, None), (IMP, 250.0), (U, 91.0)])
def test_bad_quality_activates_after_its_on_delay_and_returns_on_good_readings(quality: Quality,
                                                                              value: float | None) -> None:
    bad = _defn("bad_quality")
    assert isinstance(bad, BadQualityAlarm) and bad.on_delay_s == BAD_QUALITY_ON_DELAY_S
    s, trs = _run(bad, [(0, 91.0, G), (10, value, quality), (40, value, quality)])
    assert trs == []  # one glitch is not an alarm
    s, trs = _run(bad, [(10 + BAD_QUALITY_ON_DELAY_S, value, quality)], s)
    assert [(t.to_state, t.severity) for t in trs] == [(S.ACTIVE_UNACK, Severity.BAD_QUALITY)]
    s, trs = _run(bad, [(100, 91.0, G), (100 + bad.off_delay_s, 91.1, G)], s)
    assert [t.to_state for t in trs] == [S.RETURNED_UNACK]


def test_a_bad_sample_between_good_ones_never_alarms() -> None:
    _, trs = _run(_defn("bad_quality"), [(t, None if t % 20 else 91.0, B if t % 20 else G) for t in range(0, 600, 10)])
    assert trs == []


@pytest.mark.parametrize(("quality", "value"), [(B, None), (IMP, 250.0), (U, 91.0)])
def test_only_good_samples_keep_the_stale_alarm_quiet(quality: Quality, value: float | None) -> None:
    stale = _defn("stale")
    assert isinstance(stale, StaleAlarm)
    s, trs = _run(stale, [(0, 91.0, G), *((t, value, quality) for t in range(10, 130, 10))])
    assert trs == []
    s, trs = _run(stale, [(stale.max_age_s + 1, value, quality)], s)
    assert [(t.to_state, t.severity) for t in trs] == [(S.ACTIVE_UNACK, Severity.STALE)]
    s, trs = _run(stale, [(200, 91.2, G)], s)
    assert [t.to_state for t in trs] == [S.RETURNED_UNACK]


def test_a_limit_alarm_pending_when_readings_go_bad_still_activates_at_its_time() -> None:
    temp = _defn("limit", "incubator.temperature")
    assert isinstance(temp, LimitAlarm)
    # below LL (1 min on-delay) from t=0; from t=10 the sensor reports NaN (BAD at the edge) or nonsense
    samples = [(0, 34.0, G), (10, None, B), (20, 500.0, IMP), (30, None, B), (50, None, B), (61, None, B)]
    s, trs = _run(temp, samples)
    assert [(t.to_state, t.severity, t.at) for t in trs] == [(S.ACTIVE_UNACK, Severity.LL, at(60))]
    assert s.last_value == 34.0  # the last good value, never NaN or 500


def test_implausible_values_never_drive_a_limit_alarm() -> None:
    s, trs = _run(_defn("limit", "incubator.temperature"), [(t, 500.0, IMP) for t in range(0, 900, 30)])
    assert trs == [] and s.status is S.NORMAL


def test_the_service_tells_a_bad_measurement_from_a_lost_link() -> None:
    clock = ManualClock(T0)
    live = LiveHub()
    devices = [DeviceConfig(name="cs", kind="culture-system", protocol="modbus", endpoint="modbus://127.0.0.1:2")]
    svc = AlarmService(clock, live, devices)

    def events() -> list[tuple[str, str]]:
        return [(e.data["id"], e.data["to"]) for e in live._history if e.kind == "alarm"]

    # the link drops: the supervisor's gap markers (BAD, no value) follow the OFFLINE state
    svc.on_device_state("cs", DeviceState.OFFLINE, clock.now())
    for _ in range(10):
        svc.on_reading(Reading("cs.viability", None, clock.now(), B))
        clock.advance(30)
        svc.tick()
    assert events() == [("cs:comm_loss", "active_unack")]  # one alarm for the device, no bad quality per point
    svc.on_device_state("cs", DeviceState.ONLINE, clock.now())
    svc.on_reading(Reading("cs.viability", 91.0, clock.now()))
    # online, the device sends NaN (BAD at the edge) for viability: that is a bad measurement
    for _ in range(4):
        clock.advance(30)
        svc.on_reading(Reading("cs.viability", None, clock.now(), B))
        svc.tick()
    assert ("cs.viability:bad_quality", "active_unack") in events()
