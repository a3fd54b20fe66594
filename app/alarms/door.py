"""Door openings a recipe plans: the recovery the chamber is expected to make, and the rule that follows one.

The rule is pure: samples and times in, a new immutable state and what happened out (no clock, no I/O), one state
per incubator. The alarm service feeds it the incubator's door, temperature and CO2 and, when the door opens, the
door-opening step in window (`Plan`); it suppresses and resumes alarms and records the opening from the events.

States (`Phase`):
- closed: no opening in progress (the fields of the last opening stay for the record).
- unplanned: the door opened with no door-opening step stating a `PlannedOpening` in window: nothing is suppressed,
  alarms and deviations as usual. It ends when the door shuts.
- planned_open: the door opened while such a step was in window (the step may close meanwhile; the opening stays
  planned).
- recovering: the door shut; temperature and CO2 are not yet both back inside their alarm limits (L..H of the
  active definitions, or the recipe's excursion band). Back inside: closed, the recovery time recorded. The door
  opening again continues the same opening (planned_open).
- exceeded: the plan broke: the door was open longer than `max_open_s` in total, temperature fell below
  `temperature_min` or CO2 below `co2_min`, or the chamber was not back inside its limits `recovery_min` after the
  door shut. Nothing is suppressed any more; it ends in closed when the door is shut and both values are back
  inside (recovered_at is recorded then, the outcome stays exceeded).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Seconds = Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]
Minutes = Annotated[float, Field(gt=0, le=240, allow_inf_nan=False)]


class PlannedOpening(BaseModel):
    """A door opening inside a step's window, with its expected recovery.

    Inside it the temperature and CO2 alarms are suppressed by design: the door is open at most `max_open_s`,
    the chamber temperature does not fall below `temperature_min` nor CO2 below `co2_min`, and both are back
    inside their alarm limits within `recovery_min` after the door shuts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_open_s: Seconds
    temperature_min: Annotated[float, Field(ge=0, le=40, allow_inf_nan=False)]
    co2_min: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]
    recovery_min: Minutes


class Phase(enum.StrEnum):
    """Where an incubator's door opening stands."""

    CLOSED = "closed"
    UNPLANNED = "unplanned"
    PLANNED_OPEN = "planned_open"
    RECOVERING = "recovering"
    EXCEEDED = "exceeded"


# While the opening is in one of these, its temperature and CO2 alarms are suppressed by design.
SUPPRESSING = frozenset({Phase.PLANNED_OPEN, Phase.RECOVERING})
_IN_OPENING = frozenset({Phase.PLANNED_OPEN, Phase.RECOVERING, Phase.EXCEEDED})

Band = tuple[float, float]  # low, high: inside when low <= value <= high


@dataclass(frozen=True, slots=True)
class Plan:
    """The step in window that plans the opening, what it states, and the bands recovery returns inside (None: that
    value is not required, e.g. an incubator without a CO2 probe)."""

    step_key: str
    opening: PlannedOpening
    temperature: Band | None = None
    co2: Band | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the incubator: the door, the temperature or the CO2 (None: no news of that channel)."""

    at: datetime
    door_open: bool | None = None
    temperature: float | None = None
    co2: float | None = None


@dataclass(frozen=True, slots=True)
class OpeningState:
    """The incubator's door and its current (or last) opening."""

    phase: Phase = Phase.CLOSED
    door_open: bool = False
    temperature: float | None = None  # last good values, whatever the phase
    co2: float | None = None
    plan: Plan | None = None  # of the current or last opening (None: unplanned)
    opened_at: datetime | None = None
    door_since: datetime | None = None  # when the door's current open stretch began (None: shut)
    open_s: float = 0.0  # open time of the finished stretches of this opening
    closed_at: datetime | None = None
    recovered_at: datetime | None = None
    exceeded_at: datetime | None = None
    min_temperature: float | None = None
    min_co2: float | None = None
    reason: str | None = None  # why the plan broke

    @property
    def suppressing(self) -> bool:
        """Temperature and CO2 alarms are suppressed by design."""
        return self.phase in SUPPRESSING

    @property
    def outcome(self) -> Literal["planned", "exceeded"]:
        return "exceeded" if self.exceeded_at is not None else "planned"

    def open_seconds(self, at: datetime) -> float:
        """Total time the door has been open in this opening, at `at`."""
        current = (at - self.door_since).total_seconds() if self.door_since is not None else 0.0
        return self.open_s + max(0.0, current)

    @property
    def recovery_s(self) -> float | None:
        """Seconds from the door shutting to both values back inside (None: not recovered)."""
        if self.closed_at is None or self.recovered_at is None:
            return None
        return max(0.0, (self.recovered_at - self.closed_at).total_seconds())


EventKind = Literal["opened", "reopened", "closed", "recovered", "exceeded"]


@dataclass(frozen=True, slots=True)
class Event:
    """A change of a planned opening (unplanned openings give none): the state right after it."""

    kind: EventKind
    at: datetime
    state: OpeningState


def _inside(band: Band | None, value: float | None) -> bool:
    if band is None:
        return True
    return value is not None and band[0] <= value <= band[1]


def recovered(st: OpeningState) -> bool:
    """Both values back inside the bands of the opening's plan."""
    plan = st.plan
    return plan is not None and _inside(plan.temperature, st.temperature) and _inside(plan.co2, st.co2)


def _below(what: str, unit: str, value: float, minimum: float) -> str:
    shown = f"{value:.1f}"
    if float(shown) >= minimum:  # never "32.0 C < 32.0 C"
        shown = f"{value:.2f}"
    return f"{what} {shown} {unit} < {minimum:.1f} {unit}"


def _exceed(st: OpeningState, at: datetime, reason: str) -> tuple[OpeningState, list[Event]]:
    new = replace(st, phase=Phase.EXCEEDED, exceeded_at=at, reason=reason)
    return new, [Event("exceeded", at, new)]


def _check(st: OpeningState, at: datetime) -> tuple[OpeningState, list[Event]]:
    """The plan's limits at `at`: open time, minimums, recovery time; and the end of a recovery."""
    if st.phase in SUPPRESSING:
        assert st.plan is not None
        plan = st.plan.opening
        opened = st.open_seconds(at)
        if opened > plan.max_open_s:
            return _exceed(st, at, f"door open {opened:.0f} s > {plan.max_open_s:g} s")
        if st.temperature is not None and st.temperature < plan.temperature_min:
            return _exceed(st, at, _below("temperature", "C", st.temperature, plan.temperature_min))
        if st.co2 is not None and st.co2 < plan.co2_min:
            return _exceed(st, at, _below("CO2", "%", st.co2, plan.co2_min))
        if st.phase is Phase.RECOVERING:
            assert st.closed_at is not None
            if (at - st.closed_at).total_seconds() > plan.recovery_min * 60.0:
                return _exceed(st, at, f"not recovered within {plan.recovery_min:g} min")
            if recovered(st):
                new = replace(st, phase=Phase.CLOSED, recovered_at=at)
                return new, [Event("recovered", at, new)]
    elif st.phase is Phase.EXCEEDED and not st.door_open and recovered(st):
        new = replace(st, phase=Phase.CLOSED, recovered_at=at)
        return new, [Event("recovered", at, new)]
    return st, []


def _door(st: OpeningState, is_open: bool, at: datetime, plan: Plan | None) -> tuple[OpeningState, list[Event]]:
    if is_open == st.door_open:
        return st, []
    if is_open:
        if st.phase is Phase.CLOSED:
            if plan is None:
                return replace(st, phase=Phase.UNPLANNED, door_open=True), []
            new = OpeningState(Phase.PLANNED_OPEN, True, st.temperature, st.co2, plan, opened_at=at, door_since=at,
                               min_temperature=st.temperature, min_co2=st.co2)
            return new, [Event("opened", at, new)]
        if st.phase in _IN_OPENING:  # recovering (the same opening goes on) or exceeded
            reopened: Phase = Phase.PLANNED_OPEN if st.phase is Phase.RECOVERING else st.phase
            new = replace(st, phase=reopened, door_open=True, door_since=at, closed_at=None)
            return new, [Event("reopened", at, new)]
        return replace(st, door_open=True), []
    if st.phase is Phase.UNPLANNED:
        return replace(st, phase=Phase.CLOSED, door_open=False), []
    if st.phase in _IN_OPENING:
        shut: Phase = Phase.RECOVERING if st.phase is Phase.PLANNED_OPEN else st.phase
        new = replace(st, phase=shut, door_open=False, door_since=None, open_s=st.open_seconds(at), closed_at=at)
        return new, [Event("closed", at, new)]
    return replace(st, door_open=False), []


def advance(st: OpeningState, now: datetime) -> tuple[OpeningState, list[Event]]:
    """Apply the passage of time: the door open too long, or no recovery within the stated time."""
    return _check(st, now)


def observe(st: OpeningState, sample: Sample, plan: Plan | None = None) -> tuple[OpeningState, list[Event]]:
    """Apply one sample. `plan`: the door-opening step in window when the sample is the door opening (consulted
    only then); None there makes the opening unplanned."""
    if sample.at.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    st, events = _check(st, sample.at)  # a deadline that passed before this sample breaks the plan at its own pass
    if sample.temperature is not None or sample.co2 is not None:
        t = sample.temperature if sample.temperature is not None else st.temperature
        c = sample.co2 if sample.co2 is not None else st.co2
        if st.phase in _IN_OPENING:
            st = replace(st, temperature=t, co2=c, min_temperature=_min(st.min_temperature, sample.temperature),
                         min_co2=_min(st.min_co2, sample.co2))
        else:
            st = replace(st, temperature=t, co2=c)
    if sample.door_open is not None:
        st, more = _door(st, sample.door_open, sample.at, plan)
        events += more
    st, more = _check(st, sample.at)
    return st, events + more


def _min(current: float | None, value: float | None) -> float | None:
    if value is None:
        return current
    return value if current is None else min(current, value)
