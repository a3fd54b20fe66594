"""One supervisor per device: connect, consume readings, mark gaps, back off and reconnect.

The supervisor is the only owner of a driver's life cycle (asyncua and pymodbus reconnects are off).
A device is ONLINE only once a reading has come through, not when the connection opens: a device that accepts
TCP connections and never answers stays OFFLINE, its backoff keeps growing, and setpoints are refused.
On any DriverError the device goes OFFLINE: one BAD reading per point marks the gap (the last value is
never reused as current), the driver is closed, and the next attempt waits a capped, jittered
exponential backoff. One WARNING line is logged when a device goes down and one INFO line when it is
back; failed attempts in between are silent (DEBUG).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from app.core.clock import Clock
from drivers.base import DeviceState, DeviceUnavailable, Driver, DriverError, PointCheck, Quality, Reading
from drivers.devices import DeviceConfig

log = logging.getLogger("culturectl.devices")
_RNG = random.Random()


@dataclass
class SupervisorStats:
    """Counters of one supervisor, for /readyz and /metrics."""

    connects: int = 0
    disconnects: int = 0
    readings: int = 0
    last_error: str | None = None
    last_reading_time: datetime | None = None
    last_backoff: float = 0.0
    # Outages (from the WARNING line "offline" to the INFO line "back online"), in wall seconds.
    reconnects: int = 0  # outages that ended with the device back online
    offline_seconds: float = 0.0  # length of the outages that ended (the one in progress: see offline_total)
    offline_since_monotonic: float | None = None  # time.monotonic() when the outage in progress began

    def offline_total(self, now_monotonic: float | None = None) -> float:
        """Wall seconds the device has been offline, the outage in progress included."""
        return offline_total(self.offline_seconds, self.offline_since_monotonic, now_monotonic)


def offline_total(ended: float, since: float | None, now_monotonic: float | None = None) -> float:
    """`ended` seconds of past outages plus the one in progress since `since` (time.monotonic()), if any."""
    if since is None:
        return ended
    now = time.monotonic() if now_monotonic is None else now_monotonic
    return ended + max(0.0, now - since)


def backoff_delay(
    attempt: int, initial: float, maximum: float, jitter: float, rng: random.Random | None = None
) -> float:
    """Delay before reconnect attempt `attempt` (1-based): min(max, initial * 2**(n-1)), +/- jitter share."""
    base = min(maximum, initial * 2.0 ** max(0, attempt - 1))
    if jitter <= 0:
        return base
    r = (rng or _RNG).uniform(-jitter, jitter)
    # Jitter spreads reconnects of many devices after a shared outage; the cap still holds.
    return max(0.0, min(maximum, base * (1.0 + r)))


def make_driver(config: DeviceConfig, clock: Clock, data_dir: Path | None = None) -> Driver:
    """The driver for a device, chosen by its protocol (`data_dir`: the OPC UA certificate store's home)."""
    if config.protocol == "opcua":
        from drivers.opcua import OpcUaDriver

        return OpcUaDriver(config, clock, data_dir=data_dir)
    if config.protocol == "modbus":
        from drivers.modbus import ModbusDriver

        return ModbusDriver(config, clock)
    raise ValueError(f"unknown protocol {config.protocol!r}")


class DeviceSupervisor:
    """Keeps one device connected and turns its readings into non-blocking callbacks."""

    def __init__(
        self,
        driver: Driver,
        clock: Clock,
        on_reading: Callable[[Reading], None],
        on_state: Callable[[str, DeviceState], None],
        backoff_initial: float = 0.5,
        backoff_max: float = 5.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
        on_check: Callable[[str, list[PointCheck]], None] | None = None,
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if not 0 <= jitter < 1:
            raise ValueError("jitter is a share of the delay in [0, 1)")
        self.driver = driver
        self._clock = clock
        self._on_reading = on_reading
        self._on_state = on_state
        self._on_check = on_check
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._state = DeviceState.STOPPED
        self._task: asyncio.Task[None] | None = None
        self._down = False
        self.stats = SupervisorStats()

    @property
    def name(self) -> str:
        return self.driver.name

    @property
    def state(self) -> DeviceState:
        return self._state

    def _set_state(self, state: DeviceState) -> None:
        if state is self._state:
            return
        self._state = state
        try:
            self._on_state(self.name, state)
        except Exception:  # a broken listener must not stop the device
            log.exception("%s: on_state callback failed", self.name)

    def _emit(self, reading: Reading) -> None:
        try:
            self._on_reading(reading)
        except Exception:  # a broken consumer must not take the device offline
            log.exception("%s: on_reading callback failed", self.name)

    def start(self) -> None:
        """Start supervising (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._run(), name=f"supervisor-{self.name}")

    async def stop(self) -> None:
        """Cancel the supervisor, close the driver; state STOPPED."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.driver.close()
        self._end_outage()  # a stopped device is not offline
        self._set_state(DeviceState.STOPPED)

    async def write(self, point: str, value: float) -> float:
        """Write through the driver and return the read-back; DeviceUnavailable unless ONLINE."""
        if self._state is not DeviceState.ONLINE:
            raise DeviceUnavailable(f"{self.name} is {self._state.value}")
        return await self.driver.write(point, value)

    async def _run(self) -> None:
        attempt = 0
        while True:
            self._set_state(DeviceState.CONNECTING if not self._down else DeviceState.OFFLINE)
            try:
                try:
                    await self.driver.connect()
                finally:
                    self._report_checks()  # also when the connect failed because of them
                self.stats.connects += 1
                async for reading in self.driver.readings():
                    if self._state is not DeviceState.ONLINE:
                        attempt = 0  # the link works: the next outage starts its backoff afresh
                        self._came_up()
                    self.stats.readings += 1
                    self.stats.last_reading_time = reading.source_time
                    self._emit(reading)
                raise DeviceUnavailable("reading stream ended")
            except DriverError as exc:
                self.stats.last_error = str(exc)
                self._went_down(exc)
            except Exception as exc:  # a driver bug: keep supervising, but show the traceback once
                self.stats.last_error = repr(exc)
                if not self._down:
                    log.error("%s: unexpected driver error", self.name, exc_info=exc)
                self._went_down(exc)
            await self.driver.close()
            attempt += 1
            delay = backoff_delay(attempt, self.backoff_initial, self.backoff_max, self.jitter, self._rng)
            self.stats.last_backoff = delay
            log.debug("%s: reconnect attempt %d in %.2f s", self.name, attempt, delay)
            # Backoff is wall time: it paces network attempts, not simulated process time.
            await asyncio.sleep(delay)

    def _report_checks(self) -> None:
        checks = list(self.driver.checks)
        if self._on_check is None or not checks:
            return
        try:
            self._on_check(self.name, checks)
        except Exception:  # a failing listener must not take the device down
            log.exception("%s: the point check listener failed", self.name)

    def _came_up(self) -> None:
        if self._down:
            log.info("%s is back online", self.name)
            self._down = False
            self.stats.reconnects += 1
            self._end_outage()
        self._set_state(DeviceState.ONLINE)

    def _end_outage(self) -> None:
        since = self.stats.offline_since_monotonic
        if since is not None:
            self.stats.offline_seconds += max(0.0, time.monotonic() - since)
            self.stats.offline_since_monotonic = None

    def _went_down(self, exc: Exception) -> None:
        if self._state is DeviceState.ONLINE:
            self.stats.disconnects += 1
        self._set_state(DeviceState.OFFLINE)
        if self._down:
            return  # still the same outage: stay quiet
        self._down = True
        self.stats.offline_since_monotonic = time.monotonic()
        log.warning("%s is offline: %s", self.name, exc)
        # Mark the gap once per outage: nothing is known from now until the link returns.
        now = self._clock.now()
        for p in self.driver.points:
            self._emit(Reading(f"{self.name}.{p.name}", None, now, Quality.BAD))
