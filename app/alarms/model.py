"""Alarm definitions per channel (pydantic, extra="forbid") and the defaults from docs/process.md.

Kinds: `limit` (HH/H/L/LL with deadband and per-limit on/off-delays and priority), `rate` (units/min over a
window), `stale` (no GOOD sample for N s), `bad_quality` (readings whose quality is not Good: BAD, uncertain or
implausible) and `comm_loss` (the device's link is down). Limit, rate and stale alarms see GOOD samples only.
Times are seconds.
"""

from __future__ import annotations

import enum
import functools
import itertools
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.roles import ROLES

Seconds = Annotated[float, Field(allow_inf_nan=False, ge=0, le=7 * 24 * 3600)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class AlarmStatus(enum.StrEnum):
    """ISA-18.2 alarm states."""

    NORMAL = "normal"
    ACTIVE_UNACK = "active_unack"
    ACTIVE_ACK = "active_ack"
    RETURNED_UNACK = "returned_unack"
    SHELVED = "shelved"
    SUPPRESSED_BY_DESIGN = "suppressed_by_design"
    OUT_OF_SERVICE = "out_of_service"


class Severity(enum.StrEnum):
    """Which condition of an alarm is active."""

    HH = "hh"
    H = "h"
    L = "l"
    LL = "ll"
    RATE = "rate"
    STALE = "stale"
    BAD_QUALITY = "bad_quality"
    COMM_LOSS = "comm_loss"


_LIMIT_LEVELS = frozenset({Severity.HH, Severity.H, Severity.L, Severity.LL})


class Priority(enum.StrEnum):
    """Alarm priority."""

    ADVISORY = "advisory"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limit(_Model):
    """One limit of a limit alarm: its value, on-delay, off-delay and priority."""

    value: Finite
    on_delay_s: Seconds = 0.0
    off_delay_s: Seconds = 0.0
    priority: Priority = Priority.MEDIUM


class _Alarm(_Model):
    name: Name
    description: str = ""
    priority: Priority = Priority.HIGH
    max_suppression_s: Seconds | None = None

    def on_delay(self, level: Severity) -> float:
        """On-delay of a condition, seconds."""
        return 0.0

    def off_delay(self, level: Severity) -> float:
        """Off-delay of a condition, seconds."""
        return 0.0

    def priority_of(self, level: Severity) -> Priority:
        """Priority of a condition."""
        return self.priority


class LimitAlarm(_Alarm):
    """HH/H/L/LL limits with a deadband: return only when back inside limit -/+ deadband."""

    kind: Literal["limit"] = "limit"
    hh: Limit | None = None
    h: Limit | None = None
    l: Limit | None = None  # noqa: E741
    ll: Limit | None = None
    deadband: Annotated[float, Field(allow_inf_nan=False, ge=0)] = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> LimitAlarm:
        vals = [(n, lim.value) for n, lim in (("ll", self.ll), ("l", self.l), ("h", self.h), ("hh", self.hh))
                if lim is not None]
        if not vals:
            raise ValueError("a limit alarm needs at least one of hh, h, l, ll")
        for (n1, v1), (n2, v2) in itertools.pairwise(vals):
            if v1 > v2 or (v1 == v2 and {n1, n2} not in ({"h", "hh"}, {"l", "ll"})):
                raise ValueError(f"limits must be ordered ll <= l < h <= hh, got {n1} {v1:g} vs {n2} {v2:g}")
        return self

    @functools.cached_property
    def levels(self) -> tuple[tuple[Severity, int, float], ...]:
        """Configured limits as (level, side +1 high / -1 low, value): HH, H, then LL, L."""
        order = ((Severity.HH, 1), (Severity.H, 1), (Severity.LL, -1), (Severity.L, -1))
        return tuple((lv, side, lim.value) for lv, side in order if (lim := self.limit(lv)) is not None)

    def limit(self, level: Severity) -> Limit | None:
        """The limit of a level, or None."""
        lim: Limit | None = getattr(self, level.value, None) if level in _LIMIT_LEVELS else None
        return lim

    def on_delay(self, level: Severity) -> float:
        """On-delay of a limit, seconds."""
        lim = self.limit(level)
        return 0.0 if lim is None else lim.on_delay_s

    def off_delay(self, level: Severity) -> float:
        """Off-delay of a limit, seconds."""
        lim = self.limit(level)
        return 0.0 if lim is None else lim.off_delay_s

    def priority_of(self, level: Severity) -> Priority:
        """Priority of a limit."""
        lim = self.limit(level)
        return self.priority if lim is None else lim.priority


class _DelayedAlarm(_Alarm):
    """An alarm with one condition and one on-delay and off-delay for it."""

    on_delay_s: Seconds = 0.0
    off_delay_s: Seconds = 0.0

    def on_delay(self, level: Severity) -> float:
        """On-delay, seconds."""
        return self.on_delay_s

    def off_delay(self, level: Severity) -> float:
        """Off-delay, seconds."""
        return self.off_delay_s


class RateAlarm(_DelayedAlarm):
    """Rate of change above max_per_min (either direction) over window_s, held for on_delay_s."""

    kind: Literal["rate"] = "rate"
    max_per_min: Annotated[float, Field(allow_inf_nan=False, gt=0)]
    window_s: Annotated[float, Field(allow_inf_nan=False, gt=0, le=3600)] = 60.0


class StaleAlarm(_Alarm):
    """No new sample for more than max_age_s; with changes_only a repeated identical value is not new (frozen sensor).

    changes_only suits analog points whose true signal always carries measurement noise: a value that stops
    changing is a sensor that stopped measuring. OPC UA devices report only changes, so there it is the same test.
    """

    kind: Literal["stale"] = "stale"
    max_age_s: Annotated[float, Field(allow_inf_nan=False, gt=0)] = 120.0
    changes_only: bool = False


class BadQualityAlarm(_DelayedAlarm):
    """Readings whose quality is not Good (BAD, uncertain or implausible) for on_delay_s: the culture is unobserved.

    A BAD reading has no value; it counts all the same. The gap markers of a device that lost its link do not:
    the device's comm-loss alarm says that.
    """

    kind: Literal["bad_quality"] = "bad_quality"


class CommLossAlarm(_Alarm):
    """A reading without a value (the device connection was lost)."""

    kind: Literal["comm_loss"] = "comm_loss"


AlarmDefinition = Annotated[
    LimitAlarm | RateAlarm | StaleAlarm | BadQualityAlarm | CommLossAlarm, Field(discriminator="kind")
]

_MIN = 60.0
# One bad sample is a glitch; a minute of them is an unobserved culture. The return waits for a few good samples.
BAD_QUALITY_ON_DELAY_S = 60.0
BAD_QUALITY_OFF_DELAY_S = 30.0


# Analog points that may legitimately repeat a value: a totaliser (changes only while the pump runs) and the culture
# system's computed cell measurements (CD7+ at 0 % before differentiation starts, viability at its ceiling). A
# constant value there is not a frozen sensor; their stale alarm asks for a sample only.
_STEADY_POINTS = frozenset({"culture-system.medium_pumped", "culture-system.cd7_percent", "culture-system.viability"})


def _quality_alarms(channel: str, kind: str) -> tuple[AlarmDefinition, ...]:
    """Data-quality alarms of a read-only point: stale (frozen for noisy analog points), bad quality, comm loss.

    Discrete points (the door) get no stale alarm: OPC UA reports them only when they change, so hours without a
    sample are normal; a lost device still raises comm_loss.
    """
    quality: tuple[AlarmDefinition, ...] = (
        BadQualityAlarm(name="bad_quality", on_delay_s=BAD_QUALITY_ON_DELAY_S, off_delay_s=BAD_QUALITY_OFF_DELAY_S,
                        description="readings bad, uncertain or implausible: the culture is unobserved"),
        CommLossAlarm(name="comm_loss", description="device communication lost"),
    )
    if kind == "boolean":
        return quality
    changes = channel not in _STEADY_POINTS
    what = "no new value" if changes else "no sample"
    stale = StaleAlarm(name="stale", max_age_s=2 * _MIN, changes_only=changes,
                       description=f"{what} of good quality for > 2 min: the culture is unobserved")
    return (stale, *quality)


@functools.cache
def default_definitions() -> Mapping[str, tuple[AlarmDefinition, ...]]:
    """docs/process.md alarm defaults keyed by role ("<device class>.<role>"); every measured role gets data-quality
    alarms. A point without a role gets none: it is stored and shown only.

    Built once (the alarm service looks them up on every context refresh); the definitions are frozen models.
    """
    out: dict[str, tuple[AlarmDefinition, ...]] = {
        r.ref: _quality_alarms(r.ref, r.kind) for roles in ROLES.values() for r in roles.values() if not r.writable
    }
    m = Priority.MEDIUM
    hi = Priority.HIGH
    q = out["incubator.temperature"]
    out["incubator.temperature"] = (
        LimitAlarm(
            name="limit", deadband=0.2, description="chamber temperature out of 36-38 C",
            hh=Limit(value=39.0, on_delay_s=1 * _MIN, off_delay_s=2 * _MIN, priority=hi),
            h=Limit(value=38.0, on_delay_s=10 * _MIN, off_delay_s=2 * _MIN, priority=m),
            l=Limit(value=36.0, on_delay_s=10 * _MIN, off_delay_s=2 * _MIN, priority=m),
            ll=Limit(value=35.0, on_delay_s=1 * _MIN, off_delay_s=2 * _MIN, priority=hi),
        ),
        RateAlarm(name="rate", max_per_min=0.5, window_s=_MIN, on_delay_s=_MIN, priority=Priority.LOW,
                  description="temperature changes > 0.5 C/min: sensor-fault diagnostic"),
        *q,
    )
    q = out["incubator.co2"]
    out["incubator.co2"] = (
        LimitAlarm(
            name="limit", deadband=0.2, description="chamber CO2 out of 4-6 %",
            h=Limit(value=6.0, on_delay_s=15 * _MIN, off_delay_s=2 * _MIN, priority=m),
            l=Limit(value=4.0, on_delay_s=15 * _MIN, off_delay_s=2 * _MIN, priority=m),
            ll=Limit(value=3.0, on_delay_s=30 * _MIN, off_delay_s=2 * _MIN, priority=hi),
        ),
        *q,
    )
    q = out["incubator.humidity"]
    out["incubator.humidity"] = (
        LimitAlarm(name="limit", deadband=2.0, description="relative humidity below 80 %",
                   l=Limit(value=80.0, on_delay_s=60 * _MIN, priority=Priority.ADVISORY)),
        *q,
    )
    q = out["incubator.door_open"]
    out["incubator.door_open"] = (
        LimitAlarm(
            name="limit", description="door open: > 60 s advisory, > 5 min alarm", max_suppression_s=10 * _MIN,
            h=Limit(value=0.5, on_delay_s=_MIN, priority=Priority.ADVISORY),
            hh=Limit(value=0.5, on_delay_s=5 * _MIN, priority=hi),
        ),
        *q,
    )
    return out
