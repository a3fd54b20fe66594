"""The role vocabulary: what a point means to the process, whatever the vendor calls it, and in which unit.

A device profile says which of its points plays which role. Recipes, alarms, excursions, charts and the run's
device binding name roles as "<device class>.<role>" (e.g. `incubator.temperature`), never a vendor's point
name. Each role has one canonical unit; a point reported in another unit of the same quantity is converted
to it at the edge (`conversion`), and one that cannot be converted is refused when the profile is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

DeviceClass = Literal["incubator", "culture-system"]
DEVICE_CLASSES: Final[tuple[DeviceClass, ...]] = ("incubator", "culture-system")


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """One role: its name within a device class, canonical unit, kind, and the range no true value leaves."""

    name: str
    device_class: DeviceClass
    unit: str
    description: str
    kind: Literal["analog", "boolean"] = "analog"
    writable: bool = False  # a setpoint: the point that plays it must be writable
    plausible: tuple[float, float] = (-1e12, 1e12)
    units: tuple[str, ...] | None = None  # the device units it takes, when not every unit of its quantity fits

    @property
    def ref(self) -> str:
        """How recipes name it: "<device class>.<role>"."""
        return f"{self.device_class}.{self.name}"


def _r(cls: DeviceClass, name: str, unit: str, description: str, plausible: tuple[float, float],
       kind: Literal["analog", "boolean"] = "analog", writable: bool = False,
       units: tuple[str, ...] | None = None) -> RoleSpec:
    return RoleSpec(name, cls, unit, description, kind, writable, plausible, units)


# A writable point that annunciates rather than controls: a beacon or horn the alarm service switches on while any
# high-priority alarm is unacknowledged (app/alarms/beacon.py). Any device class may have one.
ALARM_BEACON: Final = "alarm_beacon"
BEACON_TEXT: Final = "alarm beacon or horn: on (1) while a high-priority alarm is unacknowledged"

ROLES: Final[dict[DeviceClass, dict[str, RoleSpec]]] = {
    "incubator": {r.name: r for r in (
        _r("incubator", "temperature", "degC", "chamber temperature", (-20.0, 100.0)),
        _r("incubator", "co2", "%", "chamber CO2", (0.0, 100.0)),
        _r("incubator", "humidity", "%RH", "chamber relative humidity", (0.0, 100.0)),
        _r("incubator", "door_open", "bool", "door open (1) or shut (0)", (0.0, 1.0), kind="boolean"),
        _r("incubator", "o2", "%", "chamber O2", (0.0, 100.0)),
        _r("incubator", "temperature_setpoint", "degC", "chamber temperature setpoint", (-20.0, 100.0),
           writable=True),
        _r("incubator", "co2_setpoint", "%", "chamber CO2 setpoint", (0.0, 100.0), writable=True),
        _r("incubator", ALARM_BEACON, "bool", BEACON_TEXT, (0.0, 1.0), kind="boolean", writable=True),
    )},
    "culture-system": {r.name: r for r in (
        _r("culture-system", "viable_cell_density", "cells/mL", "viable cells per mL", (0.0, 1e9)),
        _r("culture-system", "viability", "%", "viable share of all cells", (0.0, 100.0)),
        _r("culture-system", "cd7_percent", "%", "CD7+ share of viable cells", (0.0, 100.0)),
        _r("culture-system", "ph", "pH", "medium pH", (0.0, 14.0)),
        # % air saturation: a ppm (mg/L) or a fraction is another measure of dissolved O2, not a unit of this one
        _r("culture-system", "dissolved_o2", "%", "dissolved O2, % air saturation", (0.0, 500.0), units=("%",)),
        _r("culture-system", "medium_pumped", "mL", "medium pumped since the start", (0.0, 1e6)),
        _r("culture-system", "temperature", "degC", "culture (medium) temperature", (-20.0, 100.0)),
        _r("culture-system", "pump_running", "bool", "medium pump running (1) or stopped (0)", (0.0, 1.0),
           kind="boolean"),
        _r("culture-system", "pump_rate_setpoint", "mL/h", "medium pump rate setpoint", (0.0, 1000.0),
           writable=True),
        _r("culture-system", ALARM_BEACON, "bool", BEACON_TEXT, (0.0, 1.0), kind="boolean", writable=True),
    )},
}


def role(device_class: str, name: str) -> RoleSpec | None:
    """The role `name` of `device_class`, or None."""
    roles: dict[str, RoleSpec] = ROLES.get(device_class, {})  # type: ignore[call-overload]
    return roles.get(name)


def role_by_ref(ref: str) -> RoleSpec | None:
    """The role a recipe names as "<device class>.<role>", or None."""
    cls, _, name = ref.partition(".")
    return role(cls, name)


def known_roles(device_class: str) -> list[str]:
    return sorted(ROLES.get(device_class, {}))  # type: ignore[call-overload]


# Units: aliases a vendor writes -> one spelling; each spelling belongs to a quantity with a linear conversion
# (canonical = value * gain + offset) to the quantity's base unit.
_ALIASES: Final[dict[str, str]] = {
    "°c": "degC", "degc": "degC", "c": "degC", "cel": "degC", "celsius": "degC", "deg c": "degC",
    "°f": "degF", "degf": "degF", "f": "degF", "fah": "degF", "fahrenheit": "degF", "deg f": "degF",
    "k": "K", "kelvin": "K",
    "%": "%", "percent": "%", "p1": "%", "% sat": "%", "%sat": "%", "% air sat": "%",
    "%rh": "%RH", "% rh": "%RH", "rh": "%RH",
    "fraction": "fraction", "ratio": "fraction",
    "ppm": "ppm",
    "bool": "bool", "boolean": "bool", "": "",
    "cells/ml": "cells/mL", "1/ml": "cells/mL", "cells/l": "cells/L", "1e6 cells/ml": "1e6 cells/mL",
    "ml": "mL", "l": "L", "µl": "uL", "ul": "uL",
    "ml/h": "mL/h", "ml/min": "mL/min", "l/h": "L/h", "ul/min": "uL/min",
    "ph": "pH",
}

# unit -> (quantity, gain, offset) with base = value * gain + offset
_UNITS: Final[dict[str, tuple[str, float, float]]] = {
    "degC": ("temperature", 1.0, 0.0),
    "degF": ("temperature", 5.0 / 9.0, -32.0 * 5.0 / 9.0),
    "K": ("temperature", 1.0, -273.15),
    "%": ("ratio", 1.0, 0.0),
    "%RH": ("ratio", 1.0, 0.0),
    "fraction": ("ratio", 100.0, 0.0),
    "ppm": ("ratio", 1e-4, 0.0),
    "bool": ("bool", 1.0, 0.0),
    "cells/mL": ("concentration", 1.0, 0.0),
    "cells/L": ("concentration", 1e-3, 0.0),
    "1e6 cells/mL": ("concentration", 1e6, 0.0),
    "mL": ("volume", 1.0, 0.0),
    "L": ("volume", 1000.0, 0.0),
    "uL": ("volume", 1e-3, 0.0),
    "mL/h": ("flow", 1.0, 0.0),
    "mL/min": ("flow", 60.0, 0.0),
    "L/h": ("flow", 1000.0, 0.0),
    "uL/min": ("flow", 0.06, 0.0),
    "pH": ("pH", 1.0, 0.0),
}


def role_conversion(spec: RoleSpec, from_unit: str) -> tuple[float, float] | None:
    """(gain, offset) from a device unit to the role's canonical unit, or None when the role cannot take it."""
    if spec.units is not None and normalize_unit(from_unit) not in spec.units:
        return None
    return conversion(from_unit, spec.unit)


def normalize_unit(unit: str) -> str:
    """A vendor's spelling of a unit -> ours (unknown spellings are kept as written)."""
    return _ALIASES.get(unit.strip().lower(), unit.strip())


def conversion(from_unit: str, to_unit: str) -> tuple[float, float] | None:
    """(gain, offset) with `to = from * gain + offset`, or None when the units measure different things."""
    a, b = normalize_unit(from_unit), normalize_unit(to_unit)
    if a == b:
        return (1.0, 0.0)
    ua, ub = _UNITS.get(a), _UNITS.get(b)
    if ua is None or ub is None or ua[0] != ub[0]:
        return None
    # from -> base: x * ga + oa; base -> to: (y - ob) / gb
    gain = ua[1] / ub[1]
    offset = (ua[2] - ub[2]) / ub[1]
    return (gain, offset)


def vocabulary_markdown() -> str:
    """The role vocabulary as the Markdown table docs/devices.md shows."""
    lines = ["| role (as recipes name it) | canonical unit | kind | setpoint | plausible | meaning |",
             "|---|---|---|---|---|---|"]
    for roles in ROLES.values():
        for r in roles.values():
            lines.append(f"| `{r.ref}` | {r.unit} | {r.kind} | {'yes' if r.writable else 'no'} | "
                         f"{r.plausible[0]:g}..{r.plausible[1]:g} | {r.description} |")
    return "\n".join(lines)
