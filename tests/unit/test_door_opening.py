"""The planned door opening rule (pure, app/alarms/door.py): a fake clock, door/temperature/CO2 samples in, the phase,
the events and the reason out; and `resume`, which ends the suppression of its alarms. No service, no database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from app.alarms import (
    AlarmStatus,
    IllegalTransition,
    LimitAlarm,
    Severity,
    default_definitions,
    evaluate,
    initial_state,
    resume,
    suppress,
    tick,
)
from app.alarms.door import OpeningState, Phase, Plan, PlannedOpening, Sample, advance, observe
from drivers.base import Quality

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
OPENING = PlannedOpening(max_open_s=90, temperature_min=32.0, co2_min=1.0, recovery_min=20)
PLAN = Plan("feed_day3", OPENING, temperature=(36.0, 38.0), co2=(4.0, 6.0))


@dataclass
class FakeClock:
    """Seconds since T0; `at` is the time of the sample or pass."""

    s: float = 0.0

    def at(self, seconds: float) -> datetime:
        self.s = seconds
        return T0 + timedelta(seconds=seconds)


@dataclass
class Rule:
    """Feeds the rule and keeps what it said."""

    plan: Plan | None = PLAN
    state: OpeningState = field(default_factory=OpeningState)
    events: list[str] = field(default_factory=list)
    clock: FakeClock = field(default_factory=FakeClock)

    def __post_init__(self) -> None:
        self.feed(-60, "T", 37.0)
        self.feed(-60, "C", 5.0)

    def feed(self, s: float, what: str, value: float | bool | None = None) -> None:
        at = self.clock.at(s)
        if what == "tick":
            self.state, evs = advance(self.state, at)
        elif what == "door":
            assert isinstance(value, bool)
            self.state, evs = observe(self.state, Sample(at, door_open=value), self.plan if value else None)
        elif what == "T":
            self.state, evs = observe(self.state, Sample(at, temperature=float(value or 0)))
        else:
            self.state, evs = observe(self.state, Sample(at, co2=float(value or 0)))
        self.events += [e.kind for e in evs]


OPEN, SHUT = True, False
# (samples: (seconds, what, value)), the phase after them, the events, the reason
CASES: list[tuple[str, list[tuple[float, str, float | bool | None]], Phase, list[str], str | None]] = [
    ("60 s opening, recovered in 12 min",
     [(0, "door", OPEN), (30, "T", 34.5), (30, "C", 2.4), (60, "T", 33.7), (60, "C", 1.9), (60, "door", SHUT),
      (300, "T", 35.0), (300, "C", 3.9), (420, "C", 4.2), (780, "T", 36.05)],
     Phase.CLOSED, ["opened", "closed", "recovered"], None),
    ("still recovering: temperature back, CO2 not yet",
     [(0, "door", OPEN), (60, "T", 33.7), (60, "C", 1.9), (60, "door", SHUT), (600, "T", 36.1), (600, "C", 3.9)],
     Phase.RECOVERING, ["opened", "closed"], None),
    ("door open 130 s: the shutting reveals it",
     [(0, "door", OPEN), (60, "T", 33.7), (130, "door", SHUT)],
     Phase.EXCEEDED, ["opened", "exceeded", "closed"], "door open 130 s > 90 s"),
    ("door open too long: a pass breaks the plan without any sample",
     [(0, "door", OPEN), (90, "tick", None), (91, "tick", None)],
     Phase.EXCEEDED, ["opened", "exceeded"], "door open 91 s > 90 s"),
    ("temperature below its minimum",
     [(0, "door", OPEN), (40, "T", 31.2)],
     Phase.EXCEEDED, ["opened", "exceeded"], "temperature 31.2 C < 32.0 C"),
    ("a value just below the minimum is not shown as equal to it",
     [(0, "door", OPEN), (40, "T", 31.96)],
     Phase.EXCEEDED, ["opened", "exceeded"], "temperature 31.96 C < 32.0 C"),
    ("CO2 below its minimum",
     [(0, "door", OPEN), (50, "C", 0.8)],
     Phase.EXCEEDED, ["opened", "exceeded"], "CO2 0.8 % < 1.0 %"),
    ("recovery slower than stated",
     [(0, "door", OPEN), (60, "T", 33.7), (60, "door", SHUT), (1200, "T", 35.9), (1260, "tick", None),
      (1261, "tick", None)],
     Phase.EXCEEDED, ["opened", "closed", "exceeded"], "not recovered within 20 min"),
    ("reopened while recovering: the same opening, the open time adds up",
     [(0, "door", OPEN), (50, "T", 34.0), (50, "door", SHUT), (100, "door", OPEN), (141, "door", SHUT)],
     Phase.EXCEEDED, ["opened", "closed", "reopened", "exceeded", "closed"], "door open 91 s > 90 s"),
    ("a short opening that never left the limits recovers as the door shuts",
     [(0, "door", OPEN), (5, "T", 36.8), (10, "door", SHUT)],
     Phase.CLOSED, ["opened", "closed", "recovered"], None),
    ("a chamber already below the minimum breaks the plan as the door opens",
     [(-10, "T", 31.5), (0, "door", OPEN)],
     Phase.EXCEEDED, ["opened", "exceeded"], "temperature 31.5 C < 32.0 C"),
    ("an exceeded opening ends when the door is shut and the values are back",
     [(0, "door", OPEN), (40, "T", 31.0), (300, "door", SHUT), (1500, "T", 36.2), (1500, "C", 4.5)],
     Phase.CLOSED, ["opened", "exceeded", "closed", "recovered"], "temperature 31.0 C < 32.0 C"),
]


@pytest.mark.parametrize(("name", "samples", "phase", "events", "reason"), CASES, ids=[c[0] for c in CASES])
def test_the_rule(name: str, samples: list[tuple[float, str, float | bool | None]], phase: Phase, events: list[str],
                  reason: str | None) -> None:
    rule = Rule()
    for s, what, value in samples:
        rule.feed(s, what, value)
    assert (rule.state.phase, rule.events, rule.state.reason) == (phase, events, reason)


def test_an_opening_with_no_door_step_in_window_is_unplanned_and_says_nothing() -> None:
    rule = Rule(plan=None)
    rule.feed(0, "door", OPEN)
    assert rule.state.phase is Phase.UNPLANNED and not rule.state.suppressing
    rule.feed(300, "T", 25.0)  # far below any plan's minimum: nothing to break
    rule.feed(300, "door", SHUT)
    assert (rule.state.phase, rule.events) == (Phase.CLOSED, [])
    rule.feed(305, "T", 37.0)
    rule.plan = PLAN  # a step that comes into window later makes the next opening planned, not this one's rest
    rule.feed(310, "door", OPEN)
    assert rule.state.phase is Phase.PLANNED_OPEN


def test_the_record_of_a_recovered_opening() -> None:
    rule = Rule()
    for s, what, value in [(0, "door", OPEN), (60, "T", 33.7), (60, "C", 1.86), (60, "door", SHUT),
                           (420, "C", 4.1), (720, "T", 36.02)]:
        rule.feed(s, what, value)
    st = rule.state
    assert (st.opened_at, st.closed_at, st.recovered_at) == (T0, T0 + timedelta(seconds=60),
                                                             T0 + timedelta(seconds=720))
    assert (st.min_temperature, st.min_co2, st.outcome, st.recovery_s) == (33.7, 1.86, "planned", 660.0)
    assert st.plan is not None and st.plan.step_key == "feed_day3"
    rule.feed(730, "T", 35.9)  # after the recovery: no longer the opening's
    assert rule.state.min_temperature == 33.7 and rule.events == ["opened", "closed", "recovered"]


def test_only_the_bands_the_plan_names_are_required() -> None:
    rule = Rule(plan=Plan("harvest", OPENING, temperature=(36.0, 38.0), co2=None))  # no CO2 probe
    for s, what, value in [(0, "door", OPEN), (60, "T", 33.7), (60, "door", SHUT), (700, "T", 36.1)]:
        rule.feed(s, what, value)
    assert rule.state.phase is Phase.CLOSED and rule.events[-1] == "recovered"


def test_times_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        observe(OpeningState(), Sample(datetime(2026, 12, 1), door_open=True), PLAN)


def test_resume_ends_a_suppression_and_starts_the_on_delay_afresh() -> None:
    temp = next(d for d in default_definitions()["incubator.temperature"] if isinstance(d, LimitAlarm))
    st = initial_state("inc.temperature:limit", T0)
    st, _ = evaluate(temp, st, 37.0, Quality.GOOD, T0)
    st, _ = suppress(temp, st, T0, T0 + timedelta(minutes=30))
    for s in range(10, 300, 10):  # the chamber falls below LL 35 C for longer than its 1 min on-delay
        st, trs = evaluate(temp, st, 33.5, Quality.GOOD, T0 + timedelta(seconds=s))
        assert trs == []
    assert st.active is Severity.LL and st.status is AlarmStatus.SUPPRESSED_BY_DESIGN
    at = T0 + timedelta(seconds=300)
    st, trs = resume(temp, st, at, "planned door opening exceeded")
    assert [(t.from_state, t.to_state, t.reason) for t in trs] == [
        (AlarmStatus.SUPPRESSED_BY_DESIGN, AlarmStatus.NORMAL, "planned door opening exceeded")]
    assert st.active is None and st.status is AlarmStatus.NORMAL
    st, trs = tick(temp, st, at + timedelta(seconds=59))
    assert trs == []
    st, trs = tick(temp, st, at + timedelta(seconds=60))  # LL one minute after the resume
    assert [(t.to_state, t.severity) for t in trs] == [(AlarmStatus.ACTIVE_UNACK, Severity.LL)]
    with pytest.raises(IllegalTransition, match="cannot resume in state active_unack"):
        resume(temp, st, at + timedelta(seconds=61))
