"""What the simulator servers share: the port, running state, context management and fault injection."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from app.core.clock import Clock
from drivers.base import PointError, PointSpec, find_point
from simulators.faults import VALUE_FAULTS, ActiveFaults, Fault, as_fault, fault_point, fault_value

log = logging.getLogger("culturectl.simulators")


class FaultableModel(Protocol):
    """What the shared faults need of a simulator's physics model."""

    ignore_setpoint_writes: bool

    def freeze(self, point: str, now: datetime | None = None) -> None: ...

    def unfreeze(self, point: str) -> None: ...


def pick_free_port(host: str) -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SimulatorServer:
    """What both simulators share: a port chosen once (a restart comes back on it), start/stop as a context, and
    fault injection (the faults both have here; each simulator starts and ends its own in `_start_fault`)."""

    kind: str = ""  # "incubator" or "culture-system", as simulators.faults names them
    points: Sequence[PointSpec] = ()
    clock: Clock
    model: FaultableModel
    _server: object | None = None

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        # port 0: choose once, so a restart comes back where clients expect it
        self._port = port or pick_free_port(host)
        self._faults = ActiveFaults(self.kind)
        # point -> (value fault, the value it reports instead of the physics)
        self._overrides: dict[str, tuple[Fault, float]] = {}

    def reported(self, point: str, value: float) -> float:
        """What the device reports for `point`: the physics' `value`, unless a value fault overrides it."""
        override = self._overrides.get(point)
        return value if override is None else override[1]

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def active_faults(self) -> list[dict[str, Any]]:
        """The injected faults still active, oldest first."""
        return self._faults.as_list()

    async def inject(self, fault: Fault | str, *, point: str | None = None) -> None:
        """Give the simulator `fault` (see simulators.faults); ValueError if it does not apply here."""
        f = as_fault(fault, self.kind)
        point = fault_point(f, point, self.kind)
        if self._faults.has(f, point):
            return
        now = self.clock.now()
        if f is Fault.frozen_sensor:
            assert point is not None
            self.model.freeze(point, now)
        elif f in VALUE_FAULTS:
            assert point is not None
            try:
                spec = find_point(self.points, point, self.kind)
            except PointError as exc:
                raise ValueError(str(exc)) from None
            self._overrides[point] = (f, fault_value(f, spec))
        elif f is Fault.setpoint_ignored:
            self.model.ignore_setpoint_writes = True
        else:
            await self._start_fault(f, now)
        self._faults.add(f, point, now)
        log.info("fault %s%s injected on %s :%d", f, f":{point}" if point else "", self.kind, self._port)

    async def clear(self, fault: Fault | str, *, point: str | None = None) -> None:
        """Remove `fault` and return to normal control; a fault that is not active is ignored."""
        f = as_fault(fault, self.kind)
        point = fault_point(f, point, self.kind)
        if not self._faults.remove(f, point):
            return
        if f is Fault.frozen_sensor:
            assert point is not None
            self.model.unfreeze(point)
        elif f in VALUE_FAULTS:
            assert point is not None
            if self._overrides.get(point, (None,))[0] is f:
                del self._overrides[point]
        elif f is Fault.setpoint_ignored:
            self.model.ignore_setpoint_writes = False
        else:
            await self._end_fault(f, self.clock.now())
        log.info("fault %s%s cleared on %s :%d", f, f":{point}" if point else "", self.kind, self._port)

    async def _start_fault(self, fault: Fault, now: datetime) -> None:
        """Start a fault of this simulator's own (the shared ones are handled above)."""
        raise NotImplementedError

    async def _end_fault(self, fault: Fault, now: datetime) -> None:
        """End a fault of this simulator's own."""
        raise NotImplementedError
