"""The devices file: which devices exist, how to reach them, and which device profile each one runs with.

A device names its profile (`profile: <name>`, optionally `profile_version:`) from the shipped library or the
site's profiles directory, or carries it inline (`profile: {...}`). `kind: incubator` (or `culture-system`)
without a profile is short for the shipped simulator profile of that class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from drivers.base import PointSpec
from drivers.profiles import (
    ModbusProfile,
    ModbusSettings,
    OpcUaProfile,
    OpcUaSettings,
    Profile,
    ProfileError,
    ProfileLibrary,
    library,
    parse_profile,
    point_specs,
    shipped_profile_for,
)

DEFAULT_DEVICES_FILE = "default_devices.yaml"

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]


class OpcUaSecurity(BaseModel):
    """How to reach a secured OPC UA server. The password comes from the environment or a file, never from here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: SecurityPolicy = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    username: str | None = None
    password_env: str | None = Field(default=None, description="environment variable holding the password")
    password_file: Path | None = Field(default=None, description="file holding the password (first line)")

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError(f"security policy {self.policy} needs mode Sign or SignAndEncrypt; mode None needs "
                             "policy None" if self.policy != "None" else
                             f"mode {self.mode} needs a security policy (Basic256Sha256, Aes128_Sha256_RsaOaep, "
                             "Aes256_Sha256_RsaPss)")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("a password needs a username")
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        if self.username and not (self.password_env or self.password_file):
            raise ValueError(f"user {self.username!r} needs password_env or password_file")
        return self


@dataclass(frozen=True)
class Resolved:
    profile: Profile
    points: tuple[PointSpec, ...]
    source: str


class DeviceConfig(BaseModel):
    """One device: a name unique on the site, the profile it runs with, its endpoint and timings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    profile: str | dict[str, Any] | None = Field(default=None, description="profile name, or an inline profile")
    profile_version: str | None = None
    # both filled from the profile (given, they must match it)
    kind: str = Field(default="", description="device class; alone: the shipped simulator profile")
    protocol: Literal["opcua", "modbus"] = "opcua"
    endpoint: str
    poll_interval: float = Field(default=1.0, gt=0, le=3600, description="wall seconds between Modbus polls")
    timeout: float = Field(default=2.0, gt=0, le=60, description="wall seconds per request")
    description: str = ""
    security: OpcUaSecurity | None = None
    resolved: Resolved | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping) or data.get("resolved") is not None:
            return data
        data = dict(data)
        ctx = info.context if isinstance(info.context, Mapping) else {}
        lib: ProfileLibrary = ctx.get("library") or library(None)
        ref = data.get("profile")
        try:
            if isinstance(ref, Mapping):
                prof = parse_profile(ref, f"{ctx.get('source', 'devices file')}: device {data.get('name')!r}: "
                                          "inline profile")
                source = "inline"
            elif isinstance(ref, str):
                prof = lib.get(ref, data.get("profile_version"))
                source = lib.source(prof)
            elif ref is None and isinstance(data.get("kind"), str):
                prof = shipped_profile_for(str(data["kind"]))
                source = lib.source(prof)
            else:
                raise ProfileError("name the device's profile (profile: <name>) or its kind")
        except ProfileError as exc:
            raise ValueError(str(exc)) from None
        if data.get("kind") not in (None, prof.device_class):
            raise ValueError(f"kind {data['kind']!r} does not match profile {prof.name!r}, which describes a "
                             f"{prof.device_class}")
        if data.get("protocol") not in (None, prof.protocol):
            raise ValueError(f"protocol {data['protocol']!r} does not match profile {prof.name!r} ({prof.protocol})")
        if data.get("security") is not None and prof.protocol != "opcua":
            raise ValueError("security settings apply to OPC UA devices only")
        data["kind"] = prof.device_class
        data["protocol"] = prof.protocol
        if not isinstance(ref, Mapping):
            data["profile"] = prof.name
        data["profile_version"] = prof.version
        data["resolved"] = Resolved(prof, point_specs(prof), source)
        return data

    @property
    def profile_spec(self) -> Profile:
        assert self.resolved is not None
        return self.resolved.profile

    @property
    def profile_source(self) -> str:
        """The profile's name, version and file (or "inline"), as messages name it."""
        assert self.resolved is not None
        prof = self.resolved.profile
        return f"{prof.name} {prof.version} ({self.resolved.source})"

    @property
    def points(self) -> tuple[PointSpec, ...]:
        assert self.resolved is not None
        return self.resolved.points

    @property
    def modbus_settings(self) -> ModbusSettings:
        prof = self.profile_spec
        return prof.modbus if isinstance(prof, ModbusProfile) else ModbusSettings()

    @property
    def opcua_settings(self) -> OpcUaSettings:
        prof = self.profile_spec
        return prof.opcua if isinstance(prof, OpcUaProfile) else OpcUaSettings()

    def role_point(self, role: str) -> PointSpec | None:
        """The point playing `role` on this device, or None."""
        return next((p for p in self.points if p.role == role), None)

    def roles(self) -> frozenset[str]:
        return frozenset(p.role for p in self.points if p.role)


class DevicesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[DeviceConfig]

    @model_validator(mode="after")
    def _unique(self) -> DevicesFile:
        names = [d.name for d in self.devices]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"device names must be unique; repeated: {', '.join(sorted(dup))}")
        return self


class DevicesFileError(ValueError):
    """The devices file is wrong; the message names the file, the device and the field."""


def parse_devices(text: str, profiles_dir: Path | None = None, source: str = "devices file") -> list[DeviceConfig]:
    """Parse and validate a devices file's text, resolving each device's profile."""
    try:
        data = yaml.safe_load(text) or {"devices": []}
    except yaml.YAMLError as exc:
        raise DevicesFileError(f"{source}: not YAML: {exc}") from None
    try:
        lib = library(profiles_dir)
    except ProfileError as exc:
        raise DevicesFileError(str(exc)) from None
    try:
        return DevicesFile.model_validate(data, context={"library": lib, "source": source}).devices
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = list(err["loc"])
            where = ""
            if len(loc) >= 2 and loc[0] == "devices" and isinstance(loc[1], int):
                devs = data.get("devices") if isinstance(data, Mapping) else None
                name = devs[loc[1]].get("name") if isinstance(devs, list) and loc[1] < len(devs) \
                    and isinstance(devs[loc[1]], Mapping) else None
                where = f"devices[{loc[1]}]" + (f" ({name})" if name else "")
                loc = loc[2:]
            where += "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in loc)
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{source}: {where or '(top level)'}: {msg}")
        raise DevicesFileError("\n".join(lines)) from None


def load_devices(path: Path | None = None, profiles_dir: Path | None = None) -> list[DeviceConfig]:
    """Load a devices file; None loads the default file for the bundled simulators."""
    if path is None:
        text = resources.files("drivers").joinpath(DEFAULT_DEVICES_FILE).read_text(encoding="utf-8")
        return parse_devices(text, profiles_dir, DEFAULT_DEVICES_FILE)
    return parse_devices(Path(path).read_text(encoding="utf-8"), profiles_dir, str(path))


def dump_devices(devices: Sequence[DeviceConfig]) -> str:
    """YAML text for a list of devices (used by the demo and the tests to write their own file)."""
    out = []
    for d in devices:
        row = d.model_dump(mode="json", exclude_defaults=True, exclude={"resolved"})
        out.append(row)
    return yaml.safe_dump({"devices": out}, sort_keys=False)
