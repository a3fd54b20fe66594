"""The two shipped simulator profiles as point lists, and profiles as the Markdown tables docs/devices.md shows.

Nothing here is special in code: the simulators' point maps are the profiles `culturectl-sim-incubator` and
`culturectl-sim-culture-system` in `drivers/profile_library/`, read like any site's profile.
"""

from __future__ import annotations

from typing import Final

from drivers.base import PointSpec
from drivers.profiles import ModbusProfile, OpcUaProfile, Profile, point_specs, shipped_library

INCUBATOR_PROFILE: Final = shipped_library().get("culturectl-sim-incubator")
CULTURE_SYSTEM_PROFILE: Final = shipped_library().get("culturectl-sim-culture-system")
assert isinstance(INCUBATOR_PROFILE, OpcUaProfile) and isinstance(CULTURE_SYSTEM_PROFILE, ModbusProfile)

INCUBATOR_NAMESPACE: Final = INCUBATOR_PROFILE.opcua.namespaces["sim"]
INCUBATOR_POINTS: Final[tuple[PointSpec, ...]] = point_specs(INCUBATOR_PROFILE)
CULTURE_SYSTEM_DEVICE_ID: Final = CULTURE_SYSTEM_PROFILE.modbus.unit_id
CULTURE_SYSTEM_POINTS: Final[tuple[PointSpec, ...]] = point_specs(CULTURE_SYSTEM_PROFILE)


def _plausible(p: PointSpec) -> str:
    """A point's plausible range as the docs show it; outside it a reading is stored as implausible."""
    return f"{p.plausible_min:g}..{p.plausible_max:g}" if p.plausible_min is not None and p.plausible_max is not None \
        else "-"


def _rw(p: PointSpec) -> str:
    return f"yes ({p.min:g}..{p.max:g})" if p.writable and p.min is not None and p.max is not None else "no"


def register_map_markdown(profile: Profile = CULTURE_SYSTEM_PROFILE) -> str:
    """A Modbus profile's register map as a Markdown table."""
    lines = [
        "| point | role | table | address | data type | word order | scale | unit | plausible | writable (min..max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in point_specs(profile):
        assert isinstance(p.address, int)
        span = f"{p.address}-{p.address + p.register_count - 1}" if p.register_count > 1 else str(p.address)
        if p.bit is not None:
            span += f" bit {p.bit}"
        order = p.word_order if p.register_count > 1 else "-"
        lines.append(f"| {p.name} | {p.role or '-'} | {p.register_type} | {span} | {p.data_type} | {order} | "
                     f"{p.scale:g} | {p.unit} | {_plausible(p)} | {_rw(p)} |")
    return "\n".join(lines)


def node_map_markdown(profile: Profile = INCUBATOR_PROFILE) -> str:
    """An OPC UA profile's variables as a Markdown table."""
    lines = ["| point | role | NodeId or browse path | data type | unit | plausible | writable (min..max) |",
             "|---|---|---|---|---|---|---|"]
    for p in point_specs(profile):
        where = f"`{p.address}`" if p.address else "`" + "/".join(p.browse_path) + "`"
        lines.append(f"| {p.name} | {p.role or '-'} | {where} | {p.opc_type or '-'} | {p.unit} | {_plausible(p)} | "
                     f"{_rw(p)} |")
    return "\n".join(lines)
