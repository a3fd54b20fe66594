"""Pure rules of supervised setpoint control: point limits, run state, rate of change, device state, read-back.

Each check returns None (allowed) or a `Refusal` naming the rule, the HTTP status and the limit; the command
service (app/setpoints.py) runs them in order: role (the policy table) -> device and point -> point limits ->
run state -> rate of change -> device state, then writes, reads back and confirms with `follows`.
No I/O, no clock: the caller passes times and states. Table tests in tests/unit/test_control.py.

Sources: `api` (people and scripts), `recipe` (the schedule engine's phase setpoints) and `alarm` (the alarm
beacon, app/alarms/beacon.py). Only `api` commands are held to the held-run and rate-of-change rules: the recipe's
setpoints are released content, and the beacon annunciates alarms, it does not change the process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from app.auth.principal import Role
from drivers.base import DeviceState, PointSpec

Source = Literal["api", "recipe", "alarm"]
# Commands the held-run and rate-of-change rules do not apply to: the recipe's (released, signed content applied
# at planned phase boundaries) and the alarm beacon's (it annunciates, whatever the run state, as soon as it must).
EXEMPT_SOURCES: frozenset[Source] = frozenset({"recipe", "alarm"})

# Run states that bind a run's devices; completed and aborted runs release them.
BINDING_STATES: frozenset[str] = frozenset({"planned", "running", "held"})
# Who may change the setpoints of a device whose run is held: nobody by hand. A hold is QA's disposition of the
# product; the culture goes on as the recipe says (the engine still applies the recipe's setpoints).
HELD_RUN_ROLES: frozenset[Role] = frozenset()
# Relative tolerance of a read-back for float points (float32 keeps ~7 significant digits).
RELATIVE_RESOLUTION = 1e-6


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Rate-of-change rule of one writable point: the largest step per command and the clock time between two."""

    max_step: float
    unit: str
    min_interval: float  # clock seconds between accepted commands by people on the same point


# The one table of rate-of-change values (README "Setpoint control" shows it).
RATE_LIMITS: dict[str, RateLimit] = {
    "temperature_setpoint": RateLimit(max_step=1.0, unit="degC", min_interval=60.0),
    "co2_setpoint": RateLimit(max_step=1.0, unit="%", min_interval=60.0),
    "pump_rate_setpoint": RateLimit(max_step=10.0, unit="mL/h", min_interval=60.0),
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A command refused by a rule: HTTP status, the rule's name, a detail naming the limit, and facts (`field`:
    the request body's field the refusal is about, when it is one)."""

    status: int
    rule: str
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BoundRun:
    """A run that uses the device (any status; only BINDING_STATES bind it)."""

    id: int
    code: str
    status: str


def _range(spec: PointSpec) -> str:
    low = "-inf" if spec.min is None else f"{spec.min:g}"
    high = "inf" if spec.max is None else f"{spec.max:g}"
    return f"{low}..{high} {spec.unit}"


def check_point(spec: PointSpec, value: float) -> Refusal | None:
    """The point map: writable, finite, within min..max (422 point_not_writable / point_limit)."""
    if not spec.writable:
        return Refusal(422, "point_not_writable", f"point {spec.name!r} is not writable",
                       {"point": spec.name, "field": "point"})
    if not math.isfinite(value):
        return Refusal(422, "point_limit", f"point {spec.name!r}: the value must be a finite number within "
                       f"{_range(spec)}",
                       {"point": spec.name, "min": spec.min, "max": spec.max, "unit": spec.unit, "field": "value"})
    if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
        return Refusal(422, "point_limit",
                       f"point {spec.name!r}: {value:g} {spec.unit} is outside its limits {_range(spec)}",
                       {"point": spec.name, "min": spec.min, "max": spec.max, "unit": spec.unit, "value": value,
                        "field": "value"})
    return None


def binding_runs(runs: Iterable[BoundRun]) -> list[BoundRun]:
    """The runs that bind the device now: planned, running or held."""
    return [r for r in runs if r.status in BINDING_STATES]


def check_run_state(runs: Iterable[BoundRun], role: Role, source: Source) -> Refusal | None:
    """A device of a held run takes no setpoint outside the recipe (409 run_held); planned, running or no run:
    allowed. The recipe engine's writes (source "recipe") are the recipe's, so they go on while QA decides; the
    alarm beacon's (source "alarm") are no process setpoint at all.
    """
    if source in EXEMPT_SOURCES:
        return None
    held = [r for r in binding_runs(runs) if r.status == "held"]
    if not held or role in HELD_RUN_ROLES:
        return None
    names = ", ".join(f"{r.code} (id {r.id})" for r in held)
    return Refusal(409, "run_held",
                   f"the device belongs to held run {names}, held for QA disposition: its setpoints change only "
                   f"as the recipe says until QA resumes the run ({role.value} may not change them by hand)",
                   {"run_ids": [r.id for r in held], "allowed_roles": sorted(r.value for r in HELD_RUN_ROLES)})


def check_interval(point: str, last_at: datetime | None, now: datetime, source: Source,
                   limits: dict[str, RateLimit] = RATE_LIMITS) -> Refusal | None:
    """At least `min_interval` clock seconds since the last command by people on this point (409 rate_of_change)."""
    rate = limits.get(point)
    if source in EXEMPT_SOURCES or rate is None or last_at is None:
        return None
    elapsed = (now - last_at).total_seconds()
    if elapsed >= rate.min_interval:
        return None
    left = rate.min_interval - elapsed
    return Refusal(409, "rate_of_change",
                   f"{point}: the last command was {elapsed:.0f} s ago; at least {rate.min_interval:g} s (clock) "
                   f"must pass between commands: try again in {math.ceil(left)} s",
                   {"point": point, "min_interval_s": rate.min_interval, "retry_after_s": math.ceil(left)})


def check_step(point: str, current: float | None, value: float, source: Source,
               limits: dict[str, RateLimit] = RATE_LIMITS) -> Refusal | None:
    """At most `max_step` away from the current setpoint (409 rate_of_change); an unknown current is refused."""
    rate = limits.get(point)
    if source in EXEMPT_SOURCES or rate is None:
        return None
    if current is None:
        return Refusal(409, "rate_of_change",
                       f"{point}: the current setpoint is not known yet, so the step (max {rate.max_step:g} "
                       f"{rate.unit}) cannot be checked; try again when the device has reported it",
                       {"point": point, "max_step": rate.max_step, "unit": rate.unit, "current": None})
    step = abs(value - current)
    # A hair of tolerance: 36.0 -> 37.0 read back as float32 must not count as more than 1.0.
    if step <= rate.max_step * (1 + RELATIVE_RESOLUTION):
        return None
    return Refusal(409, "rate_of_change",
                   f"{point}: {current:g} -> {value:g} {rate.unit} is a step of {step:g} {rate.unit}; at most "
                   f"{rate.max_step:g} {rate.unit} per command (make the change in steps)",
                   {"point": point, "max_step": rate.max_step, "unit": rate.unit, "current": current,
                    "step": step, "field": "value"})


def check_device(device: str, state: DeviceState) -> Refusal | None:
    """The device must be online to take a command (503 device_unavailable)."""
    if state is DeviceState.ONLINE:
        return None
    return Refusal(503, "device_unavailable", f"device {device!r} is {state.value}, not online: nothing was written",
                   {"device": device, "state": state.value})


def resolution(spec: PointSpec, value: float) -> float:
    """How far a read-back may be from the request and still be the same value."""
    tol = max(abs(value) * RELATIVE_RESOLUTION, 1e-9)
    if spec.data_type in ("int16", "uint16"):
        tol = max(tol, spec.scale / 2)  # a scaled register holds multiples of `scale`
    return tol


def follows(spec: PointSpec, requested: float, read_back: float) -> bool:
    """The device took the value: the read-back equals the request within the point's resolution."""
    return math.isfinite(read_back) and abs(read_back - requested) <= resolution(spec, requested)
