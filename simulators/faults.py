"""Faults the simulators can be told to have, for alarm tests and operator training.

fault             simulator  what happens physically -> the alarm it should raise
door_left_open    incubator  the door opens: temperature, CO2 and RH relax toward ambient (22 C, 0.04 %, 45 %)
                             -> incubator.door_open H then HH (then CO2 and temperature L/LL)
co2_supply_empty  incubator  no CO2 dosing: CO2 decays toward ambient 0.04 % (time constant 30 min) -> co2 L, LL
heater_stuck_on   incubator  full heating: temperature relaxes toward ~45 C (time constant 10 min) -> temperature H, HH;
                             a coupled culture's cells die (viability and viable cell density fall, see below)
heater_stuck_off  incubator  no heating: temperature relaxes toward ambient ~22 C (time constant 40 min)
                             -> temperature L, LL
frozen_sensor     both       the reported value of one analog read-only point (`point=`; default temperature on the
                             incubator, ph on the culture system) stops changing while the physics goes on: the OPC UA
                             node is no longer updated (subscribers get no notification), the Modbus registers return
                             the same value -> stale data
modbus_timeout    culture    requests are received but never answered (the connection stays open); the driver times
                  system     out and reconnects -> communication loss, then recovery once cleared
opcua_restart     incubator  the OPC UA server stops and stays down while the fault is active; clearing it starts it
                             again on the same port with the same model -> communication loss, then recovery
setpoint_ignored  both       setpoint writes are acknowledged (Good, no Modbus exception) but not applied, so the
                             driver's read-back returns the old value -> the setpoint command fails its read-back
nan_value         both       one point (`point=`; default temperature on the incubator, viability on the culture
                             system) reports NaN: on OPC UA with status Good, on Modbus as float32 NaN registers
                             -> stored BAD, bad-quality alarm, stale alarm (no good sample)
inf_value         both       the same with +Inf
out_of_range      both       the point reports a finite value no sensor can give (its plausible maximum plus the width
                             of its plausible range, e.g. viability 200 %) -> stored implausible, bad-quality alarm
no_answer         both       the device accepts TCP connections and never answers: the incubator's OPC UA server is
                             replaced by a listener that reads and stays silent; the culture system holds every
                             request unanswered (as modbus_timeout) -> one communication loss, setpoints refused

Clearing a fault returns the physics to normal control (door shut, supply back, heater regulating), so the
values relax back to their setpoints.

When the culture system lives in the incubator's chamber (both simulators under the runner or the demo stack, see
docs/process.md), the incubator's physical faults show in the culture data too: heater_stuck_on kills cells (above
42 C half of them every ~2 h): viability and viable cell density fall and stay low after the fault is cleared (the
dead cells remain; the survivors grow again); heater_stuck_off, co2_supply_empty and door_left_open slow or stop
growth while they last. The sensor faults (frozen_sensor, nan_value, ...) change what is reported, not the cells.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from drivers.base import PointSpec


class Fault(enum.StrEnum):
    door_left_open = "door_left_open"
    co2_supply_empty = "co2_supply_empty"
    heater_stuck_on = "heater_stuck_on"
    heater_stuck_off = "heater_stuck_off"
    frozen_sensor = "frozen_sensor"
    modbus_timeout = "modbus_timeout"
    opcua_restart = "opcua_restart"
    setpoint_ignored = "setpoint_ignored"
    nan_value = "nan_value"
    inf_value = "inf_value"
    out_of_range = "out_of_range"
    no_answer = "no_answer"


SIMULATORS = ("incubator", "culture-system")

# Faults that make one point report a value the physics did not produce.
VALUE_FAULTS = frozenset({Fault.nan_value, Fault.inf_value, Fault.out_of_range})
POINT_FAULTS = VALUE_FAULTS | {Fault.frozen_sensor}

_BOTH = (Fault.setpoint_ignored, Fault.nan_value, Fault.inf_value, Fault.out_of_range, Fault.no_answer)
SUPPORTED: dict[str, tuple[Fault, ...]] = {
    "incubator": (
        Fault.door_left_open, Fault.co2_supply_empty, Fault.heater_stuck_on, Fault.heater_stuck_off,
        Fault.frozen_sensor, Fault.opcua_restart, *_BOTH,
    ),
    "culture-system": (Fault.frozen_sensor, Fault.modbus_timeout, *_BOTH),
}

DEFAULT_FROZEN_POINT = {"incubator": "temperature", "culture-system": "ph"}
DEFAULT_VALUE_POINT = {"incubator": "temperature", "culture-system": "viability"}


def as_fault(fault: Fault | str, simulator: str | None = None) -> Fault:
    """`fault` as a Fault; ValueError naming the faults (of `simulator`, if given) otherwise."""
    supported = SUPPORTED[simulator] if simulator is not None else tuple(Fault)
    try:
        value = Fault(fault)
    except ValueError:
        value = None
    if value is None or value not in supported:
        where = f" on the {simulator} simulator" if simulator is not None else ""
        raise ValueError(f"unknown fault {str(fault)!r}{where}; supported: {', '.join(supported)}")
    return value


def fault_point(fault: Fault, point: str | None, simulator: str) -> str | None:
    """The point a fault is about: point faults default to the simulator's usual one, others take none."""
    if fault is Fault.frozen_sensor:
        return point or DEFAULT_FROZEN_POINT[simulator]
    if fault in VALUE_FAULTS:
        return point or DEFAULT_VALUE_POINT[simulator]
    if point is not None:
        raise ValueError(f"fault {fault} takes no point (only {_point_faults()} do)")
    return None


def _point_faults() -> str:
    return ", ".join(sorted(POINT_FAULTS))


def fault_value(fault: Fault, spec: PointSpec) -> float:
    """What a value fault makes `spec` report; ValueError when the point cannot carry it."""
    if spec.kind == "boolean":
        raise ValueError(f"point {spec.name!r} is boolean: it cannot carry {fault}")
    if spec.data_type in ("int16", "uint16") and fault is not Fault.out_of_range:
        raise ValueError(f"point {spec.name!r} ({spec.data_type}, {spec.kind}) cannot carry {fault}; "
                         "NaN and Inf need a floating-point point")
    if fault is Fault.nan_value:
        return math.nan
    if fault is Fault.inf_value:
        return math.inf
    lo, hi = spec.plausible_min, spec.plausible_max
    if lo is None or hi is None:
        raise ValueError(f"point {spec.name!r} has no plausible range to go beyond")
    return hi + max(1.0, hi - lo)


@dataclass(frozen=True, slots=True)
class FaultRequest:
    """One fault for one simulator, as given on the command line or to the control interface."""

    simulator: str
    fault: Fault
    point: str | None = None


def parse_fault_spec(text: str) -> FaultRequest:
    """Parse `[simulator:]fault[:point]`; the simulator defaults to the only one that supports the fault."""
    parts = text.strip().split(":")
    simulator: str | None = None
    if parts and parts[0] in SIMULATORS:
        simulator = parts.pop(0)
    if not parts or len(parts) > 2 or not parts[0]:
        raise ValueError(f"{text!r}: expected [simulator:]fault[:point], e.g. culture-system:frozen_sensor:ph")
    fault = as_fault(parts[0], simulator)
    point = parts[1] if len(parts) == 2 and parts[1] else None
    if simulator is None:
        owners = [name for name in SIMULATORS if fault in SUPPORTED[name]]
        if len(owners) > 1:
            raise ValueError(f"{text!r}: {fault} exists on {' and '.join(owners)}; say which, e.g. {owners[0]}:{fault}")
        simulator = owners[0]
    if point is not None and fault not in POINT_FAULTS:
        raise ValueError(f"{text!r}: only {_point_faults()} take a point")
    return FaultRequest(simulator, fault, point)


class ActiveFaults:
    """The faults active on one simulator, keyed by fault and point (None unless a point fault)."""

    def __init__(self, simulator: str) -> None:
        self.simulator = simulator
        self._active: dict[tuple[Fault, str | None], datetime] = {}

    def __contains__(self, fault: object) -> bool:
        return any(f == fault for f, _ in self._active)

    def has(self, fault: Fault, point: str | None = None) -> bool:
        return (fault, point) in self._active

    def add(self, fault: Fault, point: str | None, since: datetime) -> bool:
        """Record `fault`; False when it was active already."""
        if (fault, point) in self._active:
            return False
        self._active[(fault, point)] = since
        return True

    def remove(self, fault: Fault, point: str | None) -> bool:
        """Forget `fault`; False when it was not active."""
        return self._active.pop((fault, point), None) is not None

    def points(self, fault: Fault) -> list[str | None]:
        return [p for f, p in self._active if f == fault]

    def as_list(self) -> list[dict[str, Any]]:
        return [
            {"simulator": self.simulator, "fault": str(f), "point": p, "since": since.isoformat()}
            for (f, p), since in self._active.items()
        ]
