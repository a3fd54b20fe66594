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
DataType = Literal["float32", "int16", "uint16", "bool"]
PointKind = Literal["analog", "boolean"]


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One point of a device, read the same way by the driver, the simulator and validation.

    For OPC UA `address` is a string NodeId; for Modbus it is the first register's address. A Modbus
    value is `raw * scale`; float32 spans two registers in `word_order`.
    """

    name: str
    unit: str
    address: str | int
    kind: PointKind = "analog"
    description: str = ""
    register_type: RegisterType | None = None
    data_type: DataType = "float32"
    scale: float = 1.0
    writable: bool = False
    min: float | None = None
    max: float | None = None
    plausible_min: float | None = None
    plausible_max: float | None = None

    @property
    def register_count(self) -> int:
        return 2 if self.data_type == "float32" else 1

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
    """The spec of point `name` in a device's map; PointError names the device and the point."""
    for p in points:
        if p.name == name:
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

    async def connect(self) -> None:
        """Open the connection; raise DeviceUnavailable when it cannot."""
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
