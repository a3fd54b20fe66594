"""Run the simulators until told to stop; `culturectl simulate` and `python -m simulators` call this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Literal

from app.core.clock import Clock
from drivers.devices import DeviceConfig
from simulators.control import ControlServer
from simulators.culture_system import CultureSystemSimulator
from simulators.faults import FaultRequest
from simulators.incubator import IncubatorSimulator

log = logging.getLogger("culturectl.simulators")

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
    faults: Sequence[FaultRequest] = (),
    control_port: int | None = None,
) -> None:
    """Start the chosen simulators, run until `stop` is set (or the task is cancelled), stop them cleanly.

    `faults` are injected once the simulators listen; with `control_port` (0: any free port) the fault control
    interface (simulators.control) serves on 127.0.0.1.
    """
    if which not in ("incubator", "culture-system", "all"):
        raise ValueError(f"unknown simulator {which!r}; choose incubator, culture-system or all")
    named = ("incubator", "culture-system") if which == "all" else (which,)
    for req in faults:
        if req.simulator not in named:
            raise ValueError(f"fault {req.fault} is for the {req.simulator} simulator, which is not being run")
    quiet_protocol_loggers()
    sims: dict[str, IncubatorSimulator | CultureSystemSimulator] = {}
    if "incubator" in named:
        sims["incubator"] = IncubatorSimulator(clock, host=host, port=incubator_port, seed=seed)
    if "culture-system" in named:
        incubator = sims.get("incubator")
        # both run: the culture lives in the incubator's chamber (its temperature and CO2)
        environment = incubator.model.chamber if isinstance(incubator, IncubatorSimulator) else None
        sims["culture-system"] = CultureSystemSimulator(clock, host=host, port=culture_port, seed=seed,
                                                        environment=environment)
    control: ControlServer | None = None
    try:
        for kind, sim in sims.items():
            await sim.start()
            log.info(
                "%s simulator listening on %s (seed %d, clock x%g)", kind, sim.endpoint, seed, clock.scale
            )
        for req in faults:
            await sims[req.simulator].inject(req.fault, point=req.point)
        if control_port is not None:
            control = ControlServer(sims, port=control_port)
            await control.start()
        await (stop or asyncio.Event()).wait()
    finally:
        if control is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(control.stop())
        for sim in reversed(sims.values()):
            # shielded so a cancelled runner still releases its ports
            with contextlib.suppress(Exception):
                await asyncio.shield(sim.stop())
        log.info("simulators stopped")
