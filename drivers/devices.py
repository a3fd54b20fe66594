"""The devices file: which devices exist, how to reach them, and which point map they use."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.base import PointSpec
from drivers.points import POINT_MAPS, point_map

DEFAULT_DEVICES_FILE = "default_devices.yaml"


class DeviceConfig(BaseModel):
    """One device: a name unique on the site, its kind (point map), protocol and endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    kind: str
    protocol: Literal["opcua", "modbus"]
    endpoint: str
    poll_interval: float = Field(default=1.0, gt=0, le=3600, description="wall seconds between Modbus polls")
    timeout: float = Field(default=2.0, gt=0, le=60, description="wall seconds per request")
    description: str = ""

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in POINT_MAPS:
            raise ValueError(f"unknown device kind {v!r}; known: {', '.join(sorted(POINT_MAPS))}")
        return v

    @property
    def points(self) -> tuple[PointSpec, ...]:
        return point_map(self.kind)


class DevicesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[DeviceConfig]

    @field_validator("devices")
    @classmethod
    def _unique(cls, v: list[DeviceConfig]) -> list[DeviceConfig]:
        names = [d.name for d in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"device names must be unique; repeated: {', '.join(sorted(dup))}")
        return v


def parse_devices(text: str) -> list[DeviceConfig]:
    """Parse and validate a devices file's text."""
    return DevicesFile.model_validate(yaml.safe_load(text) or {"devices": []}).devices


def load_devices(path: Path | None = None) -> list[DeviceConfig]:
    """Load a devices file; None loads the default file for the bundled simulators."""
    if path is None:
        text = resources.files("drivers").joinpath(DEFAULT_DEVICES_FILE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return parse_devices(text)


def dump_devices(devices: Sequence[DeviceConfig]) -> str:
    """YAML text for a list of devices (used by the demo and the tests to write their own file)."""
    return yaml.safe_dump(
        {"devices": [d.model_dump(exclude_defaults=True) for d in devices]}, sort_keys=False
    )
