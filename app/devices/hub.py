"""The device hub: one supervisor per configured device, and the one write path to devices.

Readings go from the supervisors' callbacks into the ingest buffer and the live hub without ever
awaiting the database. Control writes go through `DeviceHub.write`, the only place the service talks
to a device's setpoints (interlocks and audit hook in here).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from app.core.clock import Clock
from drivers.base import DeviceState, DeviceUnavailable, Driver, PointCheck, PointError, Reading, find_point
from drivers.devices import DeviceConfig
from drivers.supervisor import DeviceSupervisor, make_driver

log = logging.getLogger("culturectl.devices")

ReadingSink = Callable[[Reading], None]


@dataclass
class DeviceStatus:
    """What the API shows of a device's connection."""

    config: DeviceConfig
    state: DeviceState = DeviceState.CONNECTING
    since: datetime | None = None
    # the point check of the last connect: found, type, unit, writable per point of the profile
    checks: list[PointCheck] = field(default_factory=list)
    checked_at: datetime | None = None


class DeviceHub:
    """Owns the supervisors; fans their readings out to the sinks."""

    def __init__(self, devices: Sequence[DeviceConfig], clock: Clock, sinks: Sequence[ReadingSink],
                 on_state: Callable[[str, DeviceState, datetime], None] | None = None,
                 on_check: Callable[[str, list[PointCheck], datetime], None] | None = None,
                 data_dir: Path | None = None, write_window: Callable[[str], float] | None = None) -> None:
        self._clock = clock
        # Wall seconds a write to a device may take from now; 0: this replica may not write to it (its lease is
        # gone or about to expire: app/cluster/node.py). None: one replica alone, no lease.
        self._write_window = write_window
        self._writing: dict[str, set[asyncio.Task[float]]] = {}  # device -> its writes in flight
        self._data_dir = data_dir
        self._sinks = tuple(sinks)
        self._on_state = on_state
        self._on_check = on_check
        self.status: dict[str, DeviceStatus] = {d.name: DeviceStatus(d) for d in devices}
        self._supervisors: dict[str, DeviceSupervisor] = {}
        # The last value of each channel ("<device>.<point>"); None after a BAD reading (nothing known).
        self.latest: dict[str, float | None] = {}

    def _reading(self, reading: Reading) -> None:
        self.latest[reading.channel] = reading.value
        for sink in self._sinks:
            sink(reading)

    def _state(self, name: str, state: DeviceState) -> None:
        status = self.status[name]
        status.state = state
        status.since = self._clock.now()
        if self._on_state is not None:
            self._on_state(name, state, status.since)

    def _check(self, name: str, checks: list[PointCheck]) -> None:
        status = self.status[name]
        for c in checks:  # the one place a point off profile is logged, whichever driver found it
            if not c.ok:
                log.warning("%s: point %s of profile %s: %s", name, c.point, status.config.profile_source,
                            "; ".join(c.problems))
        status.checks = checks
        status.checked_at = self._clock.now()
        if self._on_check is not None:
            self._on_check(name, checks, status.checked_at)

    def start(self, names: Sequence[str] | None = None) -> None:
        """Supervise the configured devices (those named), each through its profile's driver."""
        for name, status in self.status.items():
            if (names is None or name in names) and name not in self._supervisors:
                self.attach(name, make_driver(status.config, self._clock, self._data_dir))

    async def detach(self, name: str) -> None:
        """Stop supervising `name` (its lease moved to another replica): no more reads, no more writes."""
        sup = self._supervisors.pop(name, None)
        writes = list(self._writing.pop(name, set()))
        for task in writes:  # a write in flight ends here, before the lease can go to another replica
            task.cancel()
        for task in writes:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if sup is not None:
            await sup.stop()
            for key in [k for k in self.latest if k.partition(".")[0] == name]:
                del self.latest[key]

    def attach(self, name: str, driver: Driver) -> DeviceSupervisor:
        """Supervise configured device `name` through `driver` (start() uses the real one; tests attach fakes)."""
        status = self.status[name]
        if name in self._supervisors:
            raise RuntimeError(f"{name} is already supervised")
        sup = DeviceSupervisor(driver, self._clock, on_reading=self._reading, on_state=self._state,
                               on_check=self._check)
        self._supervisors[name] = sup
        status.since = self._clock.now()
        sup.start()
        return sup

    async def stop(self) -> None:
        for sup in self._supervisors.values():
            await sup.stop()
        self._supervisors.clear()

    def state(self, name: str) -> DeviceState:
        """The device's connection state (STOPPED when it is not supervised)."""
        status = self.status.get(name)
        if status is None or name not in self._supervisors:
            return DeviceState.STOPPED
        return status.state

    def current(self, device: str, point: str) -> float | None:
        """The last value the device reported for `point` (or the last read-back); None when unknown."""
        return self.latest.get(f"{device}.{point}")

    def supervisor(self, name: str) -> DeviceSupervisor | None:
        return self._supervisors.get(name)

    def stats(self, name: str) -> dict[str, Any]:
        sup = self._supervisors.get(name)
        if sup is None:
            return {}
        return dataclasses.asdict(sup.stats)

    async def write(self, device: str, point: str, value: float) -> float:
        """The one write path to a device: check the point map, write, return the read-back value."""
        status = self.status.get(device)
        if status is None:
            raise PointError(f"unknown device {device!r}")
        spec = find_point(status.config.points, point, device)  # a point's name, or the role it plays
        spec.check_write(value)
        point = spec.name
        sup = self._supervisors.get(device)
        if sup is None:
            raise DeviceUnavailable(f"{device} is not supervised (devices are not connected)")
        window = self._write_window(device) if self._write_window is not None else None
        if window is not None and window <= 0:  # fencing: only the lease holder writes, and only within its lease
            raise DeviceUnavailable(f"{device}: this replica does not hold its lease (or it is about to expire)")
        task = asyncio.create_task(sup.write(point, value))
        writes = self._writing.setdefault(device, set())
        writes.add(task)
        try:
            async with asyncio.timeout(window):
                result = await task
        except TimeoutError:
            raise DeviceUnavailable(f"{device}: the write did not finish within this replica's lease") from None
        except asyncio.CancelledError:
            if self._supervisors.get(device) is not sup:  # detached meanwhile: the device went to another replica
                raise DeviceUnavailable(f"{device}: released during the write (its lease moved)") from None
            raise
        finally:
            writes.discard(task)
        if self._supervisors.get(device) is not sup:
            raise DeviceUnavailable(f"{device}: released during the write (its lease moved)")
        # The read-back is the newest value known (a poll may only bring it later).
        self.latest[f"{device}.{point}"] = result
        log.info("wrote %s.%s = %s (read back %s)", device, point, value, result)
        return result
