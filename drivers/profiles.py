"""Device profiles: one device model described as data (YAML), validated here, turned into the drivers' PointSpecs.

A profile names its protocol, device class and points; each point says where the device keeps it, how it is
encoded, its unit and (optionally) the role it plays in the process (`drivers.roles`). Profiles come from the
library shipped in this package (`drivers/profile_library/`), from a site directory, or inline in the devices
file. docs/devices.md tells how to write one.

Every error names the file, the point and the field: `site/acme.yaml: points[2] (chamber_temp).role: ...`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from drivers.base import DataType, PointKind, PointSpec, RegisterType, WordOrder, registers_of
from drivers.roles import DeviceClass, conversion, known_roles, normalize_unit, role, role_conversion

SCHEMA_VERSION: Final = 1
LIBRARY_PACKAGE: Final = "drivers.profile_library"
NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,62}$"
POINT_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
VERSION_PATTERN: Final = r"^[0-9]+(\.[0-9]+){0,2}$"
# ns=<index or alias>;<i|s|g|b>=<id>, nsu=<uri>;<type>=<id>, or <type>=<id> (namespace 0)
_NODE = re.compile(r"^(?:(?P<key>ns|nsu)=(?P<ns>[^;]+);)?(?P<type>[isgb])=(?P<id>.+)$", re.S)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

Finite = Annotated[float, Field(allow_inf_nan=False)]
OpcType = Literal["Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float",
                  "Double", "Enumeration"]


class ProfileError(ValueError):
    """A profile (or a device's reference to one) is wrong; the message names the file, point and field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Deadband(_Model):
    """Report a change only when it exceeds `value` (absolute, in the device's unit) or `value` % of EURange."""

    type: Literal["absolute", "percent"]
    value: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Point(_Model):
    name: str = Field(pattern=POINT_PATTERN, description="the point's name, unique in the profile")
    role: str | None = Field(default=None, description="the role it plays (drivers.roles); none: stored only")
    unit: str = Field(default="", description="the unit the device reports in")
    description: str = ""
    writable: bool = False
    min: Finite | None = Field(default=None, description="lowest value that may be written (device unit)")
    max: Finite | None = Field(default=None, description="highest value that may be written (device unit)")
    plausible_min: Finite | None = Field(default=None, description="below it a reading cannot be true")
    plausible_max: Finite | None = Field(default=None, description="above it a reading cannot be true")

    @property
    def boolean(self) -> bool:
        return False

    @model_validator(mode="after")
    def _limits(self) -> _Point:
        if self.writable and (self.min is None or self.max is None):
            raise ValueError("a writable point needs min and max (the limits a write must respect)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        lo, hi = self.plausible_min, self.plausible_max
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"plausible_min {lo:g} is above plausible_max {hi:g}")
        return self


class OpcUaPoint(_Point):
    node: str | None = Field(default=None, description="NodeId: ns=<index|alias>;i=.., nsu=<uri>;s=.., g=, b=")
    browse_path: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1, description="qualified names from the Objects folder, each <alias|index>:<name>")
    data_type: OpcType | None = Field(default=None, description="expected DataType; checked at connect")
    sampling_interval_ms: Annotated[float, Field(ge=0, le=3_600_000)] | None = None
    queue_size: Annotated[int, Field(ge=1, le=1000)] | None = None
    deadband: Deadband | None = None

    @model_validator(mode="after")
    def _address(self) -> OpcUaPoint:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError("give exactly one of node and browse_path")
        if self.node is not None:
            m = _NODE.match(self.node)
            if m is None:
                raise ValueError(f"node {self.node!r} is not a NodeId (ns=<index|alias>;i=<number>, "
                                 "nsu=<uri>;s=<string>, g=<guid>, b=<base64>)")
            if m["type"] == "i" and not m["id"].isdigit():
                raise ValueError(f"node {self.node!r}: a numeric identifier (i=) must be digits")
            if m["type"] == "g" and not _GUID.match(m["id"]):
                raise ValueError(f"node {self.node!r}: a GUID identifier (g=) must look like "
                                 "01234567-89ab-cdef-0123-456789abcdef")
        return self

    @property
    def boolean(self) -> bool:
        return self.data_type == "Boolean"


class ModbusPoint(_Point):
    table: RegisterType = Field(description="coil, discrete, input or holding")
    address: Annotated[int, Field(ge=0, le=65535)]
    data_type: DataType | None = Field(default=None, description="default: bool for coils and discrete inputs, "
                                                                 "uint16 for registers")
    bit: Annotated[int, Field(ge=0, le=15)] | None = Field(default=None, description="one bit of a register")
    word_order: WordOrder | None = Field(default=None, description="default: the profile's word_order")
    scale: Finite = 1.0
    offset: Finite = 0.0
    write_function: Literal[5, 6, 15, 16] | None = Field(default=None, description="default: 5 for coils, 6 for "
                                                                                   "one register, 16 for more")

    @model_validator(mode="after")
    def _encoding(self) -> ModbusPoint:
        dtype = self.dtype
        if self.table in ("coil", "discrete"):
            if dtype != "bool" or self.bit is not None:
                raise ValueError(f"a {self.table} is one bit: data_type must be bool and bit is not used")
        elif self.bit is not None:
            if dtype != "bool":
                raise ValueError("a bit of a register is a bool: set data_type: bool")
        elif dtype == "bool":
            raise ValueError("a bool in a register needs the bit it is (bit: 0..15)")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.address + self.count > 65536:
            raise ValueError(f"{self.count} registers from {self.address} run past 65535")
        if self.writable:
            if self.table not in ("holding", "coil"):
                raise ValueError(f"a {self.table} cannot be written: only holding registers and coils can")
            if self.bit is not None:
                raise ValueError("a single bit of a register cannot be written (use a coil)")
        if self.write_function is not None:
            if not self.writable:
                raise ValueError("write_function is set but the point is not writable")
            allowed = {"coil": (5, 15), "holding": (16,) if self.count > 1 else (6, 16)}[self.table]
            if self.write_function not in allowed:
                raise ValueError(f"write_function {self.write_function} cannot write this point; use one of "
                                 f"{list(allowed)}")
        return self

    @property
    def dtype(self) -> DataType:
        if self.data_type is not None:
            return self.data_type
        return "bool" if self.table in ("coil", "discrete") or self.bit is not None else "uint16"

    @property
    def count(self) -> int:
        if self.table in ("coil", "discrete") or self.bit is not None:
            return 1
        return registers_of(self.dtype)

    @property
    def boolean(self) -> bool:
        return self.dtype == "bool"


class OpcUaSettings(_Model):
    namespaces: dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")], str] = Field(
        default_factory=dict, description="alias -> namespace URI, resolved to an index at connect time")


class ModbusSettings(_Model):
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    word_order: WordOrder = "ABCD"
    max_registers_per_read: Annotated[int, Field(ge=1, le=125)] = 125
    max_bits_per_read: Annotated[int, Field(ge=1, le=2000)] = 2000
    max_gap: Annotated[int, Field(ge=0, le=124)] = Field(
        default=8, description="unmapped registers a merged read may span between two points")
    unreadable: list[tuple[Annotated[int, Field(ge=0, le=65535)], Annotated[int, Field(ge=0, le=65535)]]] = Field(
        default_factory=list, description="register ranges [first, last] the device refuses to read")


class _Profile(_Model):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    vendor: str = ""
    model: str = ""
    description: str = ""
    device_class: DeviceClass

    def _common(self, points: Sequence[_Point]) -> None:
        names = [p.name for p in points]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"point names must be unique; repeated: {', '.join(dup)}")
        seen: dict[str, str] = {}
        for i, p in enumerate(points):
            where = f"points[{i}] ({p.name})"
            if p.role is None:
                continue
            spec = role(self.device_class, p.role)
            if spec is None:
                raise ValueError(f"{where}.role: {p.role!r} is not a role of device class {self.device_class}; "
                                 f"known: {', '.join(known_roles(self.device_class))}")
            if p.role in seen:
                raise ValueError(f"{where}.role: {p.role!r} is already played by point {seen[p.role]!r}")
            seen[p.role] = p.name
            if spec.kind == "boolean" and p.unit in ("", "bool"):
                pass
            elif role_conversion(spec, p.unit) is None:
                raise ValueError(f"{where}.unit: {p.unit!r} cannot be converted to {spec.unit!r}, the unit of role "
                                 f"{spec.ref}")
            if spec.writable and not p.writable:
                raise ValueError(f"{where}.writable: role {spec.ref} is a setpoint; the point must be writable")
            if p.writable and not spec.writable:
                raise ValueError(f"{where}.writable: role {spec.ref} is a measurement; a writable point cannot "
                                 "play it")
            if (spec.kind == "boolean") != p.boolean:
                raise ValueError(f"{where}: role {spec.ref} is {spec.kind}; the point's data type must be "
                                 f"{'a bool' if spec.kind == 'boolean' else 'a number'}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)


class OpcUaProfile(_Profile):
    protocol: Literal["opcua"]
    opcua: OpcUaSettings = Field(default_factory=OpcUaSettings)
    points: list[OpcUaPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> OpcUaProfile:
        self._common(self.points)
        aliases = self.opcua.namespaces
        for i, p in enumerate(self.points):
            where = f"points[{i}] ({p.name})"
            refs: list[tuple[str, str]] = []
            if p.node is not None:
                m = _NODE.match(p.node)
                if m is not None and m["key"] == "ns":
                    refs.append(("node", m["ns"]))
            for step in p.browse_path or ():
                ns, sep, _ = step.partition(":")
                refs.append(("browse_path", ns if sep else "0"))
            for field, ns in refs:
                if not ns.isdigit() and ns not in aliases:
                    raise ValueError(f"{where}.{field}: namespace {ns!r} is neither an index nor an alias in "
                                     f"opcua.namespaces ({', '.join(sorted(aliases)) or 'none declared'})")
        return self


class ModbusProfile(_Profile):
    protocol: Literal["modbus"]
    modbus: ModbusSettings = Field(default_factory=ModbusSettings)
    points: list[ModbusPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ModbusProfile:
        self._common(self.points)
        used: dict[tuple[str, int], list[tuple[str, int | None]]] = {}
        for i, p in enumerate(self.points):
            for a in range(p.address, p.address + p.count):
                # two bits of one register may be two points; anything else sharing a register overlaps
                held = used.setdefault((p.table, a), [])
                clash = next((n for n, b in held if b is None or p.bit is None or b == p.bit), None)
                if clash is not None:
                    raise ValueError(f"points[{i}] ({p.name}).address: {p.table} {a} overlaps point {clash!r}")
                held.append((p.name, p.bit))
        return self


Profile = OpcUaProfile | ModbusProfile
_ADAPTER: Final[TypeAdapter[Profile]] = TypeAdapter(
    Annotated[OpcUaProfile | ModbusProfile, Field(discriminator="protocol")])


def _where(loc: Sequence[int | str], data: Any) -> str:
    """A pydantic error location as a reader finds it in the file: points[2] (chamber_temp).role."""
    out = ""
    node = data
    if loc and isinstance(data, Mapping) and loc[0] == data.get("protocol"):
        loc = loc[1:]  # the discriminator's branch name, not a key of the file
    for part in loc:
        if isinstance(part, int):
            name = node[part].get("name") if isinstance(node, list) and part < len(node) \
                and isinstance(node[part], Mapping) else None
            out += f"[{part}]" + (f" ({name})" if name else "")
        else:
            out += ("." if out else "") + str(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return out


def parse_profile(data: Any, source: str) -> Profile:
    """Validate one profile (a mapping from YAML); ProfileError names `source`, the point and the field."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"{source}: a profile is a mapping with schema, name, version, protocol, points")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            msg = str(err["msg"]).removeprefix("Value error, ")
            where = _where(err["loc"], data)
            lines.append(f"{source}: {where}: {msg}" if where else f"{source}: {msg}")
        raise ProfileError("\n".join(lines)) from None


def load_profile(path: Path) -> Profile:
    """Read and validate one profile file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: cannot read the profile: {exc}") from None
    return parse_profile(data, str(path))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


@dataclass(frozen=True)
class ProfileLibrary:
    """The shipped profiles and a site's, by (name, version); `get` without a version gives the newest."""

    profiles: Mapping[tuple[str, str], Profile]
    sources: Mapping[tuple[str, str], str]

    def get(self, name: str, version: str | None = None) -> Profile:
        versions = sorted((v for (n, v) in self.profiles if n == name), key=_version_key)
        if not versions:
            raise ProfileError(f"unknown profile {name!r}; known: {', '.join(sorted({n for n, _ in self.profiles}))}")
        if version is None:
            return self.profiles[(name, versions[-1])]
        if (name, version) not in self.profiles:
            raise ProfileError(f"profile {name!r} has no version {version!r}; known: {', '.join(versions)}")
        return self.profiles[(name, version)]

    def source(self, profile: Profile) -> str:
        return self.sources.get(profile.key, "inline")


def _files(directory: Any) -> Iterable[tuple[str, str]]:
    for entry in sorted(directory.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")) and entry.is_file():
            yield str(entry), entry.read_text(encoding="utf-8")


def build_library(site_dir: Path | None = None) -> ProfileLibrary:
    """The shipped library plus every *.yaml in `site_dir`. A name and version defined twice is an error: a
    changed profile gets a new version."""
    profiles: dict[tuple[str, str], Profile] = {}
    sources: dict[tuple[str, str], str] = {}
    texts = list(_files(resources.files(LIBRARY_PACKAGE)))
    if site_dir is not None:
        if not site_dir.is_dir():
            raise ProfileError(f"{site_dir}: the profiles directory does not exist")
        texts += list(_files(site_dir))
    for source, text in texts:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ProfileError(f"{source}: not YAML: {exc}") from None
        prof = parse_profile(data, source)
        if prof.key in profiles:
            raise ProfileError(f"{source}: profile {prof.name!r} version {prof.version} is also defined in "
                               f"{sources[prof.key]}; give the changed one a new version")
        profiles[prof.key] = prof
        sources[prof.key] = source
    return ProfileLibrary(profiles, sources)


@cache
def shipped_library() -> ProfileLibrary:
    """The profiles shipped with culturectl (our simulators are the first two)."""
    return build_library(None)


@cache
def library(site_dir: Path | None) -> ProfileLibrary:
    return build_library(site_dir) if site_dir is not None else shipped_library()


def point_specs(profile: Profile) -> tuple[PointSpec, ...]:
    """The profile's points as the drivers read them, converted to their roles' canonical units."""
    out: list[PointSpec] = []
    for p in profile.points:
        spec = role(profile.device_class, p.role) if p.role else None
        device_unit = normalize_unit(p.unit) or ("bool" if p.boolean else "")
        unit = spec.unit if spec else device_unit
        gain, bias = conversion(device_unit, unit) or (1.0, 0.0)

        def conv(v: float | None, gain: float = gain, bias: float = bias) -> float | None:
            return None if v is None else v * gain + bias

        lo, hi = conv(p.min), conv(p.max)
        if lo is not None and hi is not None and lo > hi:
            lo, hi = hi, lo
        plo, phi = conv(p.plausible_min), conv(p.plausible_max)
        if plo is None and phi is None and spec is not None:
            plo, phi = spec.plausible
        kind: PointKind = spec.kind if spec else ("boolean" if p.boolean else "analog")
        common: dict[str, Any] = dict(
            name=p.name, unit=unit, kind=kind, description=p.description or (spec.description if spec else ""),
            role=p.role, device_unit=device_unit, gain=gain, bias=bias, writable=p.writable, min=lo, max=hi,
            plausible_min=plo, plausible_max=phi)
        if isinstance(p, ModbusPoint):
            assert isinstance(profile, ModbusProfile)
            out.append(PointSpec(
                address=p.address, register_type=p.table, data_type=p.dtype,
                word_order=p.word_order or profile.modbus.word_order, bit=p.bit, scale=p.scale, offset=p.offset,
                write_function=p.write_function, **common))
        else:
            out.append(PointSpec(
                address=p.node or "", browse_path=tuple(p.browse_path or ()), opc_type=p.data_type,
                sampling_interval_ms=p.sampling_interval_ms, queue_size=p.queue_size,
                deadband=(p.deadband.type, p.deadband.value) if p.deadband else None, **common))
    return tuple(out)


def shipped_profile_for(device_class: str) -> Profile:
    """The shipped simulator profile of a device class (what `kind: incubator` alone in a devices file means)."""
    name = SIMULATOR_PROFILES.get(device_class)
    if name is None:
        raise ProfileError(f"unknown device kind {device_class!r}; known: {', '.join(sorted(SIMULATOR_PROFILES))}")
    return shipped_library().get(name)


SIMULATOR_PROFILES: Final[dict[str, str]] = {
    "incubator": "culturectl-sim-incubator",
    "culture-system": "culturectl-sim-culture-system",
}


def dump_profile(profile: Profile) -> str:
    """YAML text of a profile (defaults left out)."""
    data = profile.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data = {"schema": SCHEMA_VERSION, **data}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
