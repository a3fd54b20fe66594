"""Run the simulators until told to stop; `culturectl simulate` and `python -m simulators` call this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from app.clock import Clock
from drivers.devices import DeviceConfig
from simulators.culture_system import CultureSystemSimulator
from simulators.incubator import IncubatorSimulator

log = logging.getLogger(__name__)

Which = Literal["incubator", "culture-system", "all"]


def device_configs(incubator: IncubatorSimulator, culture: CultureSystemSimulator, *,
                   poll_interval: float = 1.0) -> list[DeviceConfig]:
    """The devices file entries of a running pair of simulators (the demo's, the tests' and the benches')."""
    return [
        DeviceConfig(name="incubator-1", kind="incubator", protocol="opcua", endpoint=incubator.endpoint,
                     description="CO2 incubator, bay 1 (OPC UA simulator)"),
        DeviceConfig(name="culture-system-1", kind="culture-system", protocol="modbus", endpoint=culture.endpoint,
                     poll_interval=poll_interval, description="closed culture system, bay 1 (Modbus simulator)"),
    ]


def quiet_protocol_loggers() -> None:
    """asyncua and pymodbus log tracebacks on every client reconnect: keep them at WARNING."""
    for name in ("asyncua", "pymodbus"):
        logging.getLogger(name).setLevel(logging.WARNING)


async def run_simulators(
    which: Which,
    clock: Clock,
    host: str = "127.0.0.1",
    incubator_port: int = 4840,
    culture_port: int = 5020,
    seed: int = 0,
    stop: asyncio.Event | None = None,
) -> None:
    """Start the chosen simulators, run until `stop` is set (or the task is cancelled), stop them cleanly."""
    if which not in ("incubator", "culture-system", "all"):
        raise ValueError(f"unknown simulator {which!r}; choose incubator, culture-system or all")
    quiet_protocol_loggers()
    sims: list[IncubatorSimulator | CultureSystemSimulator] = []
    if which in ("incubator", "all"):
        sims.append(IncubatorSimulator(clock, host=host, port=incubator_port, seed=seed))
    if which in ("culture-system", "all"):
        sims.append(CultureSystemSimulator(clock, host=host, port=culture_port, seed=seed))
    try:
        for sim in sims:
            await sim.start()
            kind = "incubator" if isinstance(sim, IncubatorSimulator) else "culture-system"
            log.info(
                "%s simulator listening on %s (seed %d, clock x%g)", kind, sim.endpoint, seed, clock.scale
            )
        await (stop or asyncio.Event()).wait()
    finally:
        for sim in reversed(sims):
            # shielded so a cancelled runner still releases its ports
            with contextlib.suppress(Exception):
                await asyncio.shield(sim.stop())
        log.info("simulators stopped")
