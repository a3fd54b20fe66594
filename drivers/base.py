"""What every driver speaks: readings, point specs, device states and the error tree.

Error tree (no asyncua or pymodbus exception escapes `drivers/`; drivers translate at the boundary):

    DriverError                 anything that went wrong talking to a device
    +-- DeviceUnavailable       cannot connect, connection lost, timed out: retry later
    +-- DeviceProtocolError     the device answered, but with an error or garbage
    +-- PointError              a point name, value or limit is wrong (a caller's mistake)
        +-- PointNotWritable    the point map does not allow writes to this point
        +-- PointLimitError     the value is outside the point's min/max
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol


class Quality(enum.IntEnum):
    """Data quality of a reading, stored as a small integer.

    IMPLAUSIBLE: the device reported a finite value that cannot be true (outside the point's plausible range):
    kept for the record, never averaged, charted as good or used for limit alarms.
    """

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2
    IMPLAUSIBLE = 3


# No physical value this service handles comes near it; a larger magnitude is implausible on any point, so sums
# of GOOD values (rollups, bucket averages) can never overflow a double.
MAX_MAGNITUDE = 1e12


class DeviceState(enum.StrEnum):
    """Connection state a supervisor reports for its device."""

    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one channel at the device's source time.

    `channel` is "<device>.<point>"; `value` is None when quality is BAD (nothing was measured).
    """

    channel: str
    value: float | None
    source_time: datetime
    quality: Quality = Quality.GOOD


RegisterType = Literal["input", "holding", "coil", "discrete"]
DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
PointKind = Literal["analog", "boolean"]

_REGISTERS: dict[str, int] = {"int32": 2, "uint32": 2, "float32": 2, "float64": 4}


def registers_of(data_type: str) -> int:
    """How many 16-bit registers a value of `data_type` spans (bool, int16, uint16: one)."""
    return _REGISTERS.get(data_type, 1)


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One point of a device as a profile describes it, read the same way by the driver, the simulator and the
    service. Built by `drivers.profiles` from a device profile; nothing else constructs one outside tests.

    `unit` is the unit values are stored and shown in: the role's canonical unit when the point plays a role,
    else the device's. The device reports in `device_unit`; `stored = device_value * gain + bias`. Limits
    (`min`/`max`) and the plausible range are in `unit`.

    OPC UA: `address` is a NodeId (`ns=<index or namespace alias>;i=...`, `nsu=<uri>;s=...`) or "" when the
    point is reached by `browse_path` (qualified names from the Objects folder, each `<alias or index>:<name>`).
    Modbus: `address` is the first register (or coil) of the point in table `register_type`; the device's
    value is `raw * scale + offset` (raw decoded as `data_type` in `word_order`, or one `bit` of a register).
    """

    name: str
    unit: str
    address: str | int
    kind: PointKind = "analog"
    description: str = ""
    role: str | None = None
    device_unit: str = ""
    gain: float = 1.0
    bias: float = 0.0
    writable: bool = False
    min: float | None = None
    max: float | None = None
    plausible_min: float | None = None
    plausible_max: float | None = None
    # Modbus
    register_type: RegisterType | None = None
    data_type: DataType = "float32"
    word_order: WordOrder = "ABCD"
    bit: int | None = None
    scale: float = 1.0
    offset: float = 0.0
    write_function: int | None = None
    # OPC UA
    browse_path: tuple[str, ...] = ()
    opc_type: str | None = None
    sampling_interval_ms: float | None = None
    queue_size: int | None = None
    deadband: tuple[Literal["absolute", "percent"], float] | None = None

    @property
    def register_count(self) -> int:
        """Registers (or coils) the point spans on a Modbus device."""
        if self.register_type in ("coil", "discrete") or self.bit is not None:
            return 1
        return registers_of(self.data_type)

    def to_unit(self, device_value: float) -> float:
        """A value as the device reports it -> the point's stored unit."""
        return device_value * self.gain + self.bias

    def to_device(self, value: float) -> float:
        """A value in the point's stored unit -> as the device takes it."""
        return (value - self.bias) / self.gain

    def check_write(self, value: float) -> float:
        """Return `value` if it may be written to this point, else raise a PointError."""
        if not self.writable:
            raise PointNotWritable(f"point {self.name!r} is not writable")
        if not math.isfinite(value):
            raise PointLimitError(f"point {self.name!r}: value must be a finite number, got {value!r}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise PointLimitError(
                f"point {self.name!r}: {value} {self.unit} is outside [{self.min}, {self.max}] {self.unit}"
            )
        return value


@dataclass(frozen=True, slots=True)
class PointCheck:
    """What a device says about one point of its profile: found where the profile says, with which data type,
    unit, access and value, and every way it differs from the profile (`problems`)."""

    point: str
    found: bool
    where: str
    data_type: str | None = None
    unit: str | None = None
    writable: bool | None = None
    value: float | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.found and not self.problems

    def as_dict(self) -> dict[str, object]:
        return {"point": self.point, "found": self.found, "where": self.where, "data_type": self.data_type,
                "unit": self.unit, "writable": self.writable, "value": self.value, "ok": self.ok,
                "problems": list(self.problems)}


def judge(point: PointSpec, value: float | None, reported: Quality = Quality.GOOD) -> tuple[float | None, Quality]:
    """The one decision on a reading's quality, made at the edge for every driver.

    No value, or a non-finite one (NaN, Inf), is BAD with no value, whatever status the device gave. A finite value
    outside the point's plausible range (or beyond MAX_MAGNITUDE) is IMPLAUSIBLE and kept. Otherwise the device's
    own status stands.
    """
    if value is None or reported is Quality.BAD or not math.isfinite(value):
        return None, Quality.BAD
    lo, hi = point.plausible_min, point.plausible_max
    if abs(value) > MAX_MAGNITUDE or (lo is not None and value < lo) or (hi is not None and value > hi):
        return value, Quality.IMPLAUSIBLE
    return value, reported


def reading(device: str, point: PointSpec, value: float | None, at: datetime,
            reported: Quality = Quality.GOOD) -> Reading:
    """A Reading of `point` with its quality judged (see `judge`)."""
    v, q = judge(point, value, reported)
    return Reading(f"{device}.{point.name}", v, at, q)


def find_point(points: Sequence[PointSpec], name: str, device: str) -> PointSpec:
    """The spec of point `name` in a device's profile, else of the point playing role `name`; PointError names
    the device and the point."""
    for p in points:
        if p.name == name:
            return p
    for p in points:
        if p.role == name:
            return p
    raise PointError(f"{device}: unknown point {name!r}")


class DriverError(Exception):
    """Base of every error a driver raises."""


class DeviceUnavailable(DriverError):
    """The device cannot be reached now; the supervisor retries."""


class DeviceProtocolError(DriverError):
    """The device answered with an error or with data that cannot be decoded."""


class PointError(DriverError):
    """A point name or value is wrong."""


class PointNotWritable(PointError):
    """The point map does not allow writing this point."""


class PointLimitError(PointError):
    """The value is outside the point's limits."""


class Driver(Protocol):
    """A connection to one device. The supervisor owns its life cycle."""

    name: str
    points: Sequence[PointSpec]
    checks: list[PointCheck]  # what the last connect found of each point (empty before the first)

    async def connect(self) -> None:
        """Open the connection and check the points; raise DeviceUnavailable when it cannot."""
        ...

    def readings(self) -> AsyncIterator[Reading]:
        """Yield readings until the connection is lost (then raise DeviceUnavailable)."""
        ...

    async def write(self, point: str, value: float) -> float:
        """Write an absolute value to a writable point and return the value read back."""
        ...

    async def close(self) -> None:
        """Close the connection; never raises."""
        ...
