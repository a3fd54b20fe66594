"""Excursions of a run's channel outside its band: time and integral outside, and the rules that open deviations.

Pure: samples and times in, a new immutable state and the rules it tripped out. Between two samples the earlier
value holds (zero-order hold), over at most `max_gap_s`: a gap in the data is not counted as an excursion nor as
time inside. The integral is in unit x minutes (C x min, CO2 % x min) of distance beyond the band edge.

A sample of a planned door opening (`planned`, from app/alarms/door.py) is not accounted: neither the time up to the
next sample nor the value count as outside, no rule trips, and the excursion after it starts afresh (a value beyond a
hard limit once the plan is exceeded trips as a new excursion). The opening is recorded as such instead.

docs/process.md rules: temperature, a deviation when the time beyond +/-1 C adds up to more than 30 min, and for any
excursion beyond +/-2 C; CO2, a deviation when its LL alarm activates (the alarm service opens that one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

Finite = Annotated[float, Field(allow_inf_nan=False)]

CUMULATIVE = "excursion_cumulative"
HARD = "excursion_hard_limit"


class ExcursionRule(BaseModel):
    """The band of one channel ("<device kind>.<point>") and when leaving it becomes a deviation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    unit: str
    low: Finite
    high: Finite
    hard_low: Finite | None = None  # any excursion beyond opens a deviation
    hard_high: Finite | None = None
    max_outside_min: Annotated[float, Field(allow_inf_nan=False, gt=0)] | None = None  # cumulative, per run
    deviation_on_alarm: str | None = None  # "<alarm name>:<severity>", e.g. "limit:ll": a deviation when it activates

    @model_validator(mode="after")
    def _ordered(self) -> ExcursionRule:
        lo = self.hard_low if self.hard_low is not None else self.low
        hi = self.hard_high if self.hard_high is not None else self.high
        if not lo <= self.low < self.high <= hi:
            raise ValueError(f"{self.channel}: the band must be ordered hard_low <= low < high <= hard_high")
        return self


def default_rules() -> tuple[ExcursionRule, ...]:
    """docs/process.md: temperature 37 +/- 1 C (hard +/- 2 C, 30 min cumulative); CO2 5 +/- 1 % (LL alarm)."""
    return (
        ExcursionRule(channel="incubator.temperature", unit="C", low=36.0, high=38.0, hard_low=35.0, hard_high=39.0,
                      max_outside_min=30.0),
        ExcursionRule(channel="incubator.co2", unit="%", low=4.0, high=6.0, deviation_on_alarm="limit:ll"),
    )


@dataclass(frozen=True, slots=True)
class ExcursionState:
    """Accumulated excursion of one channel of one run."""

    seconds_outside: float = 0.0
    integral: float = 0.0  # unit x min beyond the band edge
    worst: float = 0.0  # largest distance beyond the band edge
    episodes: int = 0  # times the value left the band
    hard_episodes: int = 0  # times the value went beyond a hard limit
    cumulative_tripped: bool = False
    outside: bool = False
    beyond_hard: bool = False
    last_value: float | None = None
    last_at: datetime | None = None
    first_outside_at: datetime | None = None
    planned: bool = False  # the last sample belonged to a planned door opening: the time after it is not accounted


@dataclass(frozen=True, slots=True)
class Trip:
    """A rule the excursion just broke: it opens one deviation."""

    rule: str
    description: str
    at: datetime
    value: float


def beyond(rule: ExcursionRule, value: float) -> float:
    """Distance beyond the band (0 inside)."""
    if value > rule.high:
        return value - rule.high
    if value < rule.low:
        return rule.low - value
    return 0.0


def _beyond_hard(rule: ExcursionRule, value: float) -> bool:
    return (rule.hard_high is not None and value > rule.hard_high) or (rule.hard_low is not None
                                                                      and value < rule.hard_low)


def add_sample(rule: ExcursionRule, st: ExcursionState, value: float | None, at: datetime,
               max_gap_s: float = 300.0, planned: bool = False) -> tuple[ExcursionState, list[Trip]]:
    """Account the time since the last sample at the last value, then take this one (None: no value, a gap).

    `planned`: the sample belongs to a planned door opening inside its stated recovery: taken, not accounted.
    """
    if at.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    if st.last_at is not None and at < st.last_at:
        return st, []  # late sample: the interval it falls in is already accounted
    seconds, integral, worst = st.seconds_outside, st.integral, st.worst
    if st.last_at is not None and st.last_value is not None and not st.planned:
        dt = min((at - st.last_at).total_seconds(), max_gap_s)
        d = beyond(rule, st.last_value)
        if d > 0:
            seconds += dt
            integral += d * dt / 60.0
    trips: list[Trip] = []
    if planned:
        return replace(st, seconds_outside=seconds, integral=integral, outside=False, beyond_hard=False,
                       last_value=value if value is not None else st.last_value, last_at=at, planned=True), trips
    if value is None:
        return replace(st, seconds_outside=seconds, integral=integral, last_value=None, last_at=at,
                       planned=False), trips
    d = beyond(rule, value)
    outside = d > 0
    episodes = st.episodes + (1 if outside and not st.outside else 0)
    hard = _beyond_hard(rule, value)
    hard_episodes = st.hard_episodes
    if hard and not st.beyond_hard:
        hard_episodes += 1
        lim = rule.hard_high if rule.hard_high is not None and value > rule.hard_high else rule.hard_low
        trips.append(Trip(HARD, f"{rule.channel} {value:.2f} {rule.unit} beyond the hard limit {lim:g} {rule.unit} "
                                f"(excursion {hard_episodes})", at, value))
    tripped = st.cumulative_tripped
    if rule.max_outside_min is not None and not tripped and seconds > rule.max_outside_min * 60.0:
        tripped = True
        trips.append(Trip(CUMULATIVE, f"{rule.channel} outside {rule.low:g}-{rule.high:g} {rule.unit} for "
                                      f"{seconds / 60:.1f} min in total, more than {rule.max_outside_min:g} min",
                          at, value))
    return ExcursionState(
        seconds_outside=seconds, integral=integral, worst=max(worst, d), episodes=episodes,
        hard_episodes=hard_episodes, cumulative_tripped=tripped, outside=outside, beyond_hard=hard,
        last_value=value, last_at=at,
        first_outside_at=st.first_outside_at or (at if outside else None),
    ), trips
