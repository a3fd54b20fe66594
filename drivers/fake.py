"""A scripted in-memory driver for unit tests of pure logic (supervisor, ingest, alarms)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from app.core.clock import Clock
from drivers.base import DeviceUnavailable, DriverError, PointCheck, PointError, PointSpec, Quality, Reading, reading


class FakeDriver:
    """Yields readings a test pushes, and fails when told to.

    - `push(point, value)` queues a reading (source time = clock.now() unless given).
    - `fail_connects = n` makes the next n `connect()` calls raise `connect_error`.
    - `drop(error)` makes the running `readings()` raise `error` (default DeviceUnavailable).
    - `mute_reads = n`: the next n connections open but never deliver a reading (their `readings()` raises
      DeviceUnavailable, as a request timeout would): a device that accepts TCP and never answers.
    - `values` holds what writes stored; `write` reads back from it.
    """

    def __init__(self, name: str, points: Sequence[PointSpec], clock: Clock) -> None:
        self.name = name
        self.points: Sequence[PointSpec] = tuple(points)
        self.checks: list[PointCheck] = []
        self._clock = clock
        self._queue: asyncio.Queue[Reading | DriverError] = asyncio.Queue()
        self.connected = False
        self.fail_connects = 0
        self.connect_error: DriverError = DeviceUnavailable("fake: connection refused")
        self.connect_calls = 0
        self.mute_reads = 0
        self.close_calls = 0
        self.values: dict[str, float] = {}

    def push(
        self, point: str, value: float | None, when: datetime | None = None, quality: Quality = Quality.GOOD
    ) -> None:
        """Queue one reading of `point`, its quality judged at the edge as the real drivers do."""
        self._queue.put_nowait(reading(self.name, self._spec(point), value, when or self._clock.now(), quality))

    def drop(self, error: DriverError | None = None) -> None:
        """Make the current reading stream fail (as a lost connection would)."""
        self._queue.put_nowait(error or DeviceUnavailable("fake: connection lost"))

    def _spec(self, point: str) -> PointSpec:
        for p in self.points:
            if p.name == point:
                return p
        raise PointError(f"{self.name}: unknown point {point!r}")

    async def connect(self) -> None:
        self.connect_calls += 1
        await asyncio.sleep(0)
        if self.fail_connects > 0:
            self.fail_connects -= 1
            raise self.connect_error
        self.connected = True

    async def readings(self) -> AsyncIterator[Reading]:
        if not self.connected:
            raise DeviceUnavailable(f"{self.name}: not connected")
        if self.mute_reads > 0:
            self.mute_reads -= 1
            self.connected = False
            await asyncio.sleep(0)
            raise DeviceUnavailable(f"{self.name}: read timed out")
        while True:
            item = await self._queue.get()
            if isinstance(item, DriverError):
                self.connected = False
                raise item
            yield item

    async def write(self, point: str, value: float) -> float:
        spec = self._spec(point)
        checked = spec.check_write(float(value))
        if not self.connected:
            raise DeviceUnavailable(f"{self.name}: not connected")
        self.values[point] = checked
        return self.values[point]

    async def close(self) -> None:
        self.close_calls += 1
        self.connected = False
