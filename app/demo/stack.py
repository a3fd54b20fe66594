"""The one builder of the whole stack on loopback: database, both simulators, the service on a real uvicorn.

Used by `culturectl demo`, the benches and the end-to-end tests, each with its own settings. The parts compose
(`database`, `simulators`, `service`) for a caller that does its own work between them (the demo creates its
accounts, recipe and run before the service starts); `running_stack` is all three in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from app import db
from app.core.clock import ScaledClock
from app.main import Server, create_app, make_server
from app.runtime import Runtime
from app.settings import Settings
from drivers.devices import dump_devices
from simulators.culture_system import CultureSystemSimulator
from simulators.faults import Fault
from simulators.incubator import IncubatorSimulator
from simulators.runner import device_configs


@contextlib.asynccontextmanager
async def database(data_dir: Path, dsn: str | None = None) -> AsyncIterator[str]:
    """A migrated database: `dsn` as it is, or an embedded PostgreSQL in `data_dir`/pg, stopped at the end."""
    embedded = None
    if dsn is None:
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        embedded = db.EmbeddedPostgres(data_dir / "pg")
        dsn = await asyncio.to_thread(embedded.start)
    try:
        await db.upgrade_async(dsn)
        yield dsn
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


@dataclass
class Simulators:
    incubator: IncubatorSimulator
    culture: CultureSystemSimulator
    devices_file: Path


@contextlib.asynccontextmanager
async def simulators(clock: ScaledClock, devices_file: Path, *, seed: int = 0, culture_t0: datetime | None = None,
                     poll_interval: float = 1.0, incubator_port: int = 0,
                     culture_port: int = 0) -> AsyncIterator[Simulators]:
    """Both simulators on 127.0.0.1 on `clock`, and the devices file that points the service at them. The culture
    lives in the incubator's chamber: an incubator fault (heater, CO2, door) shows in the culture data too."""
    incubator = IncubatorSimulator(clock, port=incubator_port, seed=seed)
    culture = CultureSystemSimulator(clock, port=culture_port, seed=seed, t0=culture_t0,
                                     environment=incubator.model.chamber)
    started: list[IncubatorSimulator | CultureSystemSimulator] = []
    try:
        for sim in (incubator, culture):
            await sim.start()
            started.append(sim)
        text = dump_devices(device_configs(incubator, culture, poll_interval=poll_interval))
        await asyncio.to_thread(devices_file.write_text, text)
        yield Simulators(incubator, culture, devices_file)
    finally:
        for sim in reversed(started):
            with contextlib.suppress(Exception):
                await sim.stop()


DOOR_OPEN_S = 60.0  # how long an operator keeps the door open at a feed or a harvest (clock seconds)
DOOR_RECOVERY_S = 25 * 60.0  # waited after closing it: the chamber is back inside its alarm limits by then
DOOR_SETTLE_S = 40.0  # clock seconds at the slow scale after opening and closing, for the telemetry to follow


async def open_door(clock: ScaledClock, incubator: IncubatorSimulator, *,
                    sync: Callable[[], Awaitable[None]] | None = None, open_s: float = DOOR_OPEN_S,
                    recovery_s: float = DOOR_RECOVERY_S) -> None:
    """Open the incubator's door for `open_s` clock seconds, as an operator does at a feed or a harvest, and wait
    out the chamber's recovery. On a fast clock the clock runs at most x20 while the door is open (so the door's
    state reaches the telemetry within seconds of clock time: the simulator publishes every 0.25 wall seconds) and
    at most x600 while the chamber recovers, then returns to its scale. `sync` makes the alarm service see the
    step's window first."""
    scale = clock.scale
    try:
        clock.retime(min(scale, 20.0))
        if sync is not None:
            await sync()
        await incubator.inject(Fault.door_left_open)
        await clock.sleep(open_s)
        await incubator.clear(Fault.door_left_open)
        await clock.sleep(DOOR_SETTLE_S)  # still slow: the shut door reaches the telemetry before the clock speeds up
        clock.retime(min(scale, 600.0))
        await clock.sleep(max(0.0, recovery_s - DOOR_SETTLE_S))
    finally:
        clock.retime(scale)


@dataclass
class Service:
    base_url: str
    runtime: Runtime
    server: Server
    task: asyncio.Task[None]

    async def wait_closed(self) -> None:
        """Until the server stops by itself (Ctrl-C, SIGTERM, or `server.should_exit`)."""
        await self.task


@contextlib.asynccontextmanager
async def service(settings: Settings, clock: ScaledClock, *, start_timeout: float = 60.0) -> AsyncIterator[Service]:
    """The service on a real uvicorn at settings.host:settings.port until the block ends (or it stops by itself)."""
    app = create_app(settings, clock=clock)
    server = make_server(app, settings)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        deadline = time.monotonic() + start_timeout
        while not server.started:  # uvicorn exposes a flag, not an event
            if task.done():
                task.result()
                raise RuntimeError("the service stopped before it started")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service did not start within {start_timeout} s")
            await asyncio.sleep(0.05)
        yield Service(f"http://{settings.host}:{settings.port}", app.state.runtime, server, task)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


@dataclass
class Stack:
    dsn: str
    clock: ScaledClock
    incubator: IncubatorSimulator
    culture: CultureSystemSimulator
    settings: Settings
    service: Service

    @property
    def base_url(self) -> str:
        return self.service.base_url

    @property
    def runtime(self) -> Runtime:
        return self.service.runtime


@contextlib.asynccontextmanager
async def running_stack(data_dir: Path, port: int, *, scale: float = 1.0, dsn: str | None = None, seed: int = 0,
                        culture_t0: datetime | None = None, poll_interval: float = 1.0,
                        clock: ScaledClock | None = None, **settings: Any) -> AsyncIterator[Stack]:
    """Database, simulators and service, started in order and stopped in reverse; `settings` are Settings fields."""
    clock = clock or ScaledClock(scale=scale)
    async with database(data_dir, dsn) as url, \
            simulators(clock, data_dir / "devices.yaml", seed=seed, culture_t0=culture_t0,
                       poll_interval=poll_interval) as sims:
        cfg = Settings(database_url=SecretStr(url), data_dir=data_dir / "data", devices_file=sims.devices_file,
                       host="127.0.0.1", port=port, time_scale=clock.scale, **settings)
        async with service(cfg, clock) as svc:
            yield Stack(url, clock, sims.incubator, sims.culture, cfg, svc)
