"""The point maps of the two device types, defined once for drivers, simulators and docs.

Incubator (OPC UA): variables live in namespace `INCUBATOR_NAMESPACE` under the object
`Incubator`, with string NodeIds `ns=<index>;s=Incubator.<Name>`. The index is looked up by URI at
connect time, so the map stores the string part only.

Culture system (Modbus TCP, unit/device id 1): float32 values take two registers, high word first
(big-endian words, big-endian bytes); int16/uint16 values are raw integers times `scale`.

Every point has a plausible range: a finite value outside it cannot be true (a sensor or decoding fault) and is
stored with the quality IMPLAUSIBLE (see `drivers.base.judge`).
"""

from __future__ import annotations

from drivers.base import PointSpec

INCUBATOR_NAMESPACE = "urn:culturectl:simulator:incubator"
CULTURE_SYSTEM_DEVICE_ID = 1
MODBUS_WORD_ORDER = "big"

INCUBATOR_POINTS: tuple[PointSpec, ...] = (
    PointSpec("temperature", "degC", "Incubator.Temperature", description="chamber temperature",
              plausible_min=-20.0, plausible_max=100.0),
    PointSpec("co2", "%", "Incubator.CO2", description="chamber CO2", plausible_min=0.0, plausible_max=100.0),
    PointSpec("humidity", "%RH", "Incubator.Humidity", description="chamber relative humidity",
              plausible_min=0.0, plausible_max=100.0),
    PointSpec("door_open", "bool", "Incubator.DoorOpen", kind="boolean",
              description="door open (1) or shut (0)", plausible_min=0.0, plausible_max=1.0),
    PointSpec(
        "temperature_setpoint", "degC", "Incubator.TemperatureSetpoint",
        description="temperature setpoint", writable=True, min=30.0, max=40.0,
        plausible_min=-20.0, plausible_max=100.0,
    ),
    PointSpec(
        "co2_setpoint", "%", "Incubator.CO2Setpoint",
        description="CO2 setpoint", writable=True, min=0.0, max=10.0, plausible_min=0.0, plausible_max=100.0,
    ),
)

CULTURE_SYSTEM_POINTS: tuple[PointSpec, ...] = (
    PointSpec("viable_cell_density", "cells/mL", 0, register_type="input", data_type="float32",
              description="viable cells per mL", plausible_min=0.0, plausible_max=1e9),
    PointSpec("viability", "%", 2, register_type="input", data_type="float32", description="viable fraction",
              plausible_min=0.0, plausible_max=100.0),
    PointSpec("cd7_percent", "%", 4, register_type="input", data_type="float32",
              description="CD7+ share of viable cells", plausible_min=0.0, plausible_max=100.0),
    PointSpec("ph", "pH", 6, register_type="input", data_type="uint16", scale=0.001, description="medium pH",
              plausible_min=0.0, plausible_max=14.0),
    PointSpec("dissolved_o2", "%", 7, register_type="input", data_type="float32",
              description="dissolved O2, % air saturation", plausible_min=0.0, plausible_max=500.0),
    PointSpec("medium_pumped", "mL", 9, register_type="input", data_type="float32",
              description="medium pumped since start", plausible_min=0.0, plausible_max=1e6),
    PointSpec("temperature", "degC", 11, register_type="input", data_type="int16", scale=0.01,
              description="culture temperature", plausible_min=-20.0, plausible_max=100.0),
    PointSpec("pump_rate_setpoint", "mL/h", 100, register_type="holding", data_type="float32",
              description="medium pump rate setpoint", writable=True, min=0.0, max=50.0,
              plausible_min=0.0, plausible_max=1000.0),
)

POINT_MAPS: dict[str, tuple[PointSpec, ...]] = {
    "incubator": INCUBATOR_POINTS,
    "culture-system": CULTURE_SYSTEM_POINTS,
}


def point_map(kind: str) -> tuple[PointSpec, ...]:
    """The point map of a device kind; KeyError names the known kinds."""
    try:
        return POINT_MAPS[kind]
    except KeyError:
        raise KeyError(f"unknown device kind {kind!r}; known: {', '.join(sorted(POINT_MAPS))}") from None


def _plausible(p: PointSpec) -> str:
    """A point's plausible range as the docs show it; outside it a reading is stored as implausible."""
    return f"{p.plausible_min:g}..{p.plausible_max:g}" if p.plausible_min is not None and p.plausible_max is not None \
        else "-"


def register_map_markdown() -> str:
    """The culture system's register map as the Markdown table the README shows."""
    lines = [
        "| point | address | register | data type | word order | scale | unit | plausible | writable (min..max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in CULTURE_SYSTEM_POINTS:
        order = MODBUS_WORD_ORDER if p.data_type == "float32" else "-"
        span = f"{p.address}-{int(p.address) + 1}" if p.register_count == 2 else str(p.address)
        rw = f"yes ({p.min:g}..{p.max:g})" if p.writable else "no"
        lines.append(f"| {p.name} | {span} | {p.register_type} | {p.data_type} | {order} | {p.scale:g} | "
                     f"{p.unit} | {_plausible(p)} | {rw} |")
    return "\n".join(lines)


def node_map_markdown() -> str:
    """The incubator's OPC UA variables as the Markdown table the README shows."""
    lines = ["| point | NodeId | unit | plausible | writable (min..max) |", "|---|---|---|---|---|"]
    for p in INCUBATOR_POINTS:
        rw = f"yes ({p.min:g}..{p.max:g})" if p.writable else "no"
        lines.append(f"| {p.name} | `ns=<{INCUBATOR_NAMESPACE}>;s={p.address}` | {p.unit} | {_plausible(p)} | {rw} |")
    return "\n".join(lines)
