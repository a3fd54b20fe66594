"""Modbus TCP server standing in for a closed culture system, driven by `CultureModel` on the clock.

Registers follow `CULTURE_SYSTEM_POINTS`: input registers are computed from the model when a client
reads them (so a read is never stale), the holding register `pump_rate_setpoint` is writable and read
by the model; a value outside its limits is refused with ILLEGAL_VALUE. Reading input addresses with
function 3, or holding addresses with function 4, is refused with ILLEGAL_ADDRESS.

With an `environment` (the incubator's chamber, `IncubatorModel.chamber`) the culture grows and dies with the
chamber's temperature and CO2 (simulators.physics); the model is then also stepped every `update_interval` wall
seconds while the server runs, so it follows the chamber even when nobody reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from datetime import datetime

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from app.core.clock import Clock
from drivers.base import PointError, PointSpec
from drivers.modbus_codec import decode, encode
from drivers.points import CULTURE_SYSTEM_DEVICE_ID, CULTURE_SYSTEM_POINTS
from simulators._net import SimulatorServer
from simulators.faults import Fault
from simulators.physics import CultureModel, Environment

log = logging.getLogger("culturectl.simulators")

READ_INPUT = 4
HOLDING_FUNCTIONS = frozenset({3, 6, 16, 22, 23})

_SILENT = (Fault.modbus_timeout, Fault.no_answer)
_SIM_TYPES = {"float32": DataType.FLOAT32, "int16": DataType.INT16, "uint16": DataType.UINT16}


def encode_point(spec: PointSpec, value: float) -> list[int]:
    """Registers for `value` of `spec` as the profile encodes it; a value that does not fit is clamped."""
    try:
        return encode(spec, value if math.isfinite(value) or spec.data_type.startswith("float") else 0.0)
    except PointError:
        lo, hi = (-(2**15), 2**15 - 1) if spec.data_type == "int16" else (0, 2**16 - 1)
        raw = (spec.to_device(value) - spec.offset) / spec.scale
        return encode(spec, spec.to_unit(max(lo, min(hi, raw)) * spec.scale + spec.offset))


def _covers(specs: Sequence[PointSpec], address: int, count: int) -> bool:
    """Whether every register in [address, address + count) belongs to one of `specs`."""
    owned = {int(s.address) + i for s in specs for i in range(s.register_count)}
    return all(a in owned for a in range(address, address + count))


async def _no_such_device(
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """What a gateway answers for a unit id nobody has."""
    return ExcCodes.GATEWAY_NO_RESPONSE


class CultureSystemSimulator(SimulatorServer):
    """A Modbus TCP culture system; `stop()` keeps the model and the port for a later `start()`."""

    kind = "culture-system"
    points = CULTURE_SYSTEM_POINTS
    model: CultureModel

    def __init__(
        self,
        clock: Clock,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        t0: datetime | None = None,
        profile: str = "mobilized",
        device_id: int = CULTURE_SYSTEM_DEVICE_ID,
        model: CultureModel | None = None,
        environment: Environment | None = None,
        update_interval: float = 0.25,
    ) -> None:
        super().__init__(host, port)
        if model is not None and environment is not None:
            raise ValueError("give the environment to the model (CultureModel(environment=...)), not beside it")
        self.clock = clock
        self.seed = seed
        self.device_id = device_id
        self.update_interval = update_interval
        self.model = model or CultureModel(t0 or clock.now(), seed, profile, start=clock.now(),
                                           environment=environment)
        self._server: ModbusTcpServer | None = None
        self._follow: asyncio.Task[None] | None = None
        self._inputs = [s for s in CULTURE_SYSTEM_POINTS if s.register_type == "input"]
        self._holdings = [s for s in CULTURE_SYSTEM_POINTS if s.register_type == "holding"]
        # set while modbus_timeout is active: requests wait on it and are dropped unanswered when it fires
        self._silence: asyncio.Event | None = None

    @property
    def endpoint(self) -> str:
        return f"modbus://{self.host}:{self._port}"

    @property
    def t0(self) -> datetime:
        return self.model.t0

    def _device(self) -> SimDevice:
        values = self.model.values()
        simdata = [
            SimData(
                address=int(spec.address),
                values=self._sim_value(spec, values[spec.name]),
                datatype=_SIM_TYPES[spec.data_type],
                readonly=not spec.writable,
            )
            for spec in CULTURE_SYSTEM_POINTS
        ]
        return SimDevice(id=self.device_id, simdata=simdata, action=self._action)

    def _other_devices(self) -> SimDevice:
        """Device id 0 catches every other id; pymodbus would otherwise log a traceback per request."""
        span = max(int(s.address) + s.register_count for s in CULTURE_SYSTEM_POINTS)
        return SimDevice(
            id=0, simdata=SimData(address=0, count=span, datatype=DataType.REGISTERS), action=_no_such_device
        )

    @staticmethod
    def _sim_value(spec: PointSpec, value: float) -> int | float:
        if spec.data_type == "float32":
            return float(value)
        raw = encode_point(spec, value)[0]
        # SimData wants the signed value for INT16
        return raw - 0x10000 if spec.data_type == "int16" and raw >= 0x8000 else raw

    async def start(self) -> None:
        """Listen on the kept port; returns when clients can connect."""
        if self._server is not None:
            return
        self.model.step(self.clock.now())
        devices = [self._device()] if self.device_id == 0 else [self._device(), self._other_devices()]
        server = ModbusTcpServer(devices, address=(self.host, self._port))
        await server.serve_forever(background=True)
        self._server = server
        if self.model.environment is not None:
            self._follow = asyncio.create_task(self._follow_environment(), name=f"culture-sim-{self._port}")
        log.debug("culture-system simulator listening on %s (device id %d)", self.endpoint, self.device_id)

    async def _follow_environment(self) -> None:
        """Step the model on the clock, so the culture sees the chamber as it is, read or not."""
        while True:
            await asyncio.sleep(self.update_interval)
            try:
                self.model.step(self.clock.now())
            except Exception:
                # one bad cycle must not end the simulation; the next one retries
                log.exception("culture-system simulator update failed")

    async def _start_fault(self, fault: Fault, now: datetime) -> None:
        # no_answer is the same silence: connections are accepted, requests never answered
        if fault in _SILENT and self._silence is None:
            self._silence = asyncio.Event()

    async def _end_fault(self, fault: Fault, now: datetime) -> None:
        if fault in _SILENT and not any(f in self._faults for f in _SILENT):
            self._release_silenced()

    def _release_silenced(self) -> None:
        silence, self._silence = self._silence, None
        if silence is not None:
            silence.set()

    async def _never_answer(self, silence: asyncio.Event) -> None:
        """Hold a request until modbus_timeout ends, then drop it without a response."""
        await silence.wait()
        # pymodbus sends nothing for a request whose handler is cancelled; a late answer would be wrong
        raise asyncio.CancelledError

    async def stop(self) -> None:
        """Close the listener and every client connection; the model keeps its state."""
        if self._silence is not None:
            # let the held requests go (unanswered) so shutdown does not wait for them
            self._silence.set()
            self._silence = asyncio.Event()
        follow, self._follow = self._follow, None
        if follow is not None:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
            log.info("culture-system simulator on port %d stopped", self._port)

    def _fill(self, specs: Sequence[PointSpec], start_address: int, registers: list[int]) -> None:
        """Write the model's current values of `specs` into the device's register image."""
        now = self.clock.now()
        self.model.step(now)
        values = self.model.values()
        for spec in specs:
            offset = int(spec.address) - start_address
            registers[offset : offset + spec.register_count] = encode_point(
                spec, self.reported(spec.name, values[spec.name]))

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus before each access: compute reads from the model, validate writes."""
        if self._silence is not None:
            await self._never_answer(self._silence)
        if function_code == READ_INPUT:
            if not _covers(self._inputs, address, count):
                return ExcCodes.ILLEGAL_ADDRESS
            self._fill(self._inputs, start_address, registers)
            return None
        if function_code not in HOLDING_FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        if not _covers(self._holdings, address, count):
            return ExcCodes.ILLEGAL_ADDRESS
        if not set_values:
            self._fill(self._holdings, start_address, registers)
            return None
        # a write: decode the registers as they would be after it, then check and apply
        image = list(registers)
        offset = address - start_address
        image[offset : offset + len(set_values)] = [int(v) for v in set_values]
        now = self.clock.now()
        updates: list[tuple[PointSpec, float]] = []
        for spec in self._holdings:
            a = int(spec.address)
            if a + spec.register_count <= address or a >= address + len(set_values):
                continue
            value = decode(spec, image[a - start_address : a - start_address + spec.register_count])
            try:
                updates.append((spec, spec.check_write(value)))
            except PointError:
                log.info("culture-system %s: refused write of %r", spec.name, value)
                return ExcCodes.ILLEGAL_VALUE
        for spec, value in updates:
            if spec.name == "pump_rate_setpoint":
                if self.model.ignore_setpoint_writes:
                    log.info("culture-system pump rate write of %s mL/h ignored (fault setpoint_ignored)", value)
                    continue
                self.model.set_pump_rate(value, now)
                log.info("culture-system pump rate set to %s mL/h by a client", value)
        return None
