"""The one clock of the service, the drivers and the simulators.

A `ScaledClock` runs `scale` times faster than the wall clock: at the wall-clock instant `epoch` it reads
`origin` (by default `epoch` itself), and every wall second after that adds `scale` simulated seconds.
Processes given the same epoch, origin and scale agree on the time without talking to each other, which
is how the service and the simulators share a 7-days-in-30-minutes clock.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


def utcnow() -> datetime:
    """Wall-clock time, aware UTC."""
    return datetime.now(UTC)


class Clock(Protocol):
    """What every component reads time from."""

    @property
    def scale(self) -> float: ...

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for `seconds` of clock time."""
        ...


@dataclass(frozen=True)
class ScaledClock:
    """Simulated time = origin + (wall - epoch) * scale."""

    epoch: datetime = field(default_factory=utcnow)
    scale: float = 1.0
    origin: datetime | None = None

    def __post_init__(self) -> None:
        if self.epoch.tzinfo is None:
            raise ValueError("clock epoch must be timezone-aware")
        if self.origin is not None and self.origin.tzinfo is None:
            raise ValueError("clock origin must be timezone-aware")
        if not (self.scale > 0 and self.scale < 1e7):
            raise ValueError(f"time scale must be > 0 and < 1e7, got {self.scale!r}")

    def now(self) -> datetime:
        wall = time.time() - self.epoch.timestamp()
        start = self.origin if self.origin is not None else self.epoch
        return start + timedelta(seconds=wall * self.scale)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.scale)

    def retime(self, scale: float) -> None:
        """Run at `scale` from now on, continuing from the current time (it never jumps or goes back).

        The demo and the end-to-end run slow a fast clock around a door opening so that a 60 s opening reaches the
        telemetry (a simulator publishes every 0.25 wall seconds); everything in the process reads `scale` and
        `now()` as it goes. Only for a clock one process owns: processes that share a clock by its epoch, origin
        and scale (settings) would no longer agree.
        """
        if not (scale > 0 and scale < 1e7):
            raise ValueError(f"time scale must be > 0 and < 1e7, got {scale!r}")
        wall = time.time()
        start = self.origin if self.origin is not None else self.epoch
        now = start + timedelta(seconds=(wall - self.epoch.timestamp()) * self.scale)
        object.__setattr__(self, "origin", now)
        object.__setattr__(self, "epoch", datetime.fromtimestamp(wall, tz=UTC))
        object.__setattr__(self, "scale", scale)


class ManualClock:
    """A clock tests move by hand; `sleep` yields to the loop and advances the clock."""

    def __init__(self, start: datetime | None = None, scale: float = 1.0) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._scale = scale

    @property
    def scale(self) -> float:
        return self._scale

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        self._now = when

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)
