"""OPC UA server standing in for a CO2 incubator, driven by `IncubatorModel` on the injected clock.

Variables live under the object `Incubator` in namespace `INCUBATOR_NAMESPACE`, with the string NodeIds
of the shipped profile `culturectl-sim-incubator` (`INCUBATOR_POINTS`). Analog points are Double, `door_open` is
Boolean. Values carry the clock's (simulated) time as SourceTimestamp. Clients may write the setpoints
(any numeric variant; stored as Double); a value outside the point's limits is refused with
BadOutOfRange and leaves the model unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any, cast

from asyncua import ua
from asyncua.crypto.permission_rules import User
from asyncua.server.address_space import AddressSpace, AttributeService
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from app.core.clock import Clock, utcnow
from drivers.base import PointError, PointLimitError, PointSpec
from drivers.points import INCUBATOR_NAMESPACE, INCUBATOR_POINTS
from simulators._net import SimulatorServer
from simulators.faults import Fault
from simulators.opcua_security import ServerSecurity, new_server, stop_server
from simulators.physics import IncubatorModel

log = logging.getLogger("culturectl.simulators")

ENDPOINT_PATH = "/culturectl/incubator"


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def _ua_time(when: datetime) -> ua.DateTime:
    # ua.DateTime is a typing alias of datetime; the encoder takes any aware datetime
    return cast(ua.DateTime, when)


class _SetpointAttributeService(AttributeService):
    """Attribute service that checks setpoint writes against the point map and feeds them to the model."""

    def __init__(self, aspace: AddressSpace, sim: IncubatorSimulator, setpoints: dict[ua.NodeId, PointSpec]):
        super().__init__(aspace)
        self._sim = sim
        self._setpoints = setpoints

    async def write(self, params: ua.WriteParameters, user: User | None = None) -> list[ua.StatusCode]:
        results: list[ua.StatusCode] = []
        for item in params.NodesToWrite:
            results.append(await self._write_one(item, user))
        return results

    async def _write_one(self, item: ua.WriteValue, user: User | None) -> ua.StatusCode:
        spec = self._setpoints.get(item.NodeId)
        if spec is None or item.AttributeId != AttributeIds.Value:
            return (await self._plain_write(item, user))[0]
        raw: Any = item.Value.Value.Value if item.Value.Value is not None else None
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return _status(StatusCodes.BadTypeMismatch)
        try:
            value = spec.check_write(float(raw))
        except PointLimitError:
            return _status(StatusCodes.BadOutOfRange)
        except PointError:
            return _status(StatusCodes.BadNotWritable)
        now = self._sim.clock.now()
        # store as Double with the clock's time, whatever numeric type and timestamps the client sent
        coerced = ua.WriteValue(
            NodeId=item.NodeId,
            AttributeId=item.AttributeId,
            IndexRange=item.IndexRange,
            Value=ua.DataValue(
                ua.Variant(value, ua.VariantType.Double),
                SourceTimestamp=_ua_time(now),
                ServerTimestamp=_ua_time(utcnow()),
            ),
        )
        if self._sim.model.ignore_setpoint_writes:
            # fault setpoint_ignored: acknowledge, change nothing, so the read-back shows the old value
            log.info("incubator %s write of %s ignored (fault setpoint_ignored)", spec.name, value)
            return _status(StatusCodes.Good)
        status = (await self._plain_write(coerced, user))[0]
        if status.is_good():
            self._sim.model.write(spec.name, value, now)
            log.info("incubator %s set to %s %s by a client", spec.name, value, spec.unit)
        return status

    async def _plain_write(self, item: ua.WriteValue, user: User | None) -> list[ua.StatusCode]:
        params = ua.WriteParameters(NodesToWrite=[item])
        if user is None:
            return await super().write(params)
        return await super().write(params, user=user)


class IncubatorSimulator(SimulatorServer):
    """An OPC UA incubator on 127.0.0.1; `stop()` keeps the model and the port for a later `start()`."""

    kind = "incubator"
    points = INCUBATOR_POINTS
    model: IncubatorModel

    def __init__(
        self,
        clock: Clock,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        update_interval: float = 0.25,
        model: IncubatorModel | None = None,
        security: ServerSecurity | None = None,
    ) -> None:
        super().__init__(host, port)
        self.security = security  # None: anonymous, SecurityPolicy None (the demo's); else secured endpoints
        self.clock = clock
        self.seed = seed
        self.update_interval = update_interval
        self.model = model or IncubatorModel(clock.now(), seed)
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._namespace_index: int | None = None
        # fault no_answer: a listener on the port that accepts connections and never says a word
        self._mute: asyncio.Server | None = None
        self._mute_peers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self._port}{ENDPOINT_PATH}"

    @property
    def namespace_index(self) -> int | None:
        """Index of `INCUBATOR_NAMESPACE` on the running server (None when stopped)."""
        return self._namespace_index

    def open_door(self) -> None:
        self.model.open_door(self.clock.now())

    def close_door(self) -> None:
        self.model.close_door(self.clock.now())

    async def _start_fault(self, fault: Fault, now: datetime) -> None:
        if fault is Fault.door_left_open:
            self.model.open_door(now)
        elif fault is Fault.co2_supply_empty:
            self.model.set_co2_supply(False, now)
        elif fault in (Fault.heater_stuck_on, Fault.heater_stuck_off):
            # one heater, one way of being stuck at a time
            other = Fault.heater_stuck_off if fault is Fault.heater_stuck_on else Fault.heater_stuck_on
            self._faults.remove(other, None)
            self.model.set_heater("on" if fault is Fault.heater_stuck_on else "off", now)
        elif fault is Fault.opcua_restart:
            await self.stop()
        elif fault is Fault.no_answer:
            await self.stop()
            self._mute = await asyncio.start_server(self._stay_silent, self.host, self._port)

    async def _stay_silent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Take whatever the client sends and answer nothing, until the fault ends or the client leaves."""
        self._mute_peers.add(writer)
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass  # the client left; a cancellation (the listener closing) goes on to the finally below
        finally:
            self._mute_peers.discard(writer)
            writer.close()

    async def _unmute(self) -> None:
        mute, self._mute = self._mute, None
        if mute is None:
            return
        mute.close()
        for peer in list(self._mute_peers):
            peer.close()
        await mute.wait_closed()

    async def _end_fault(self, fault: Fault, now: datetime) -> None:
        if fault is Fault.door_left_open:
            self.model.close_door(now)
        elif fault is Fault.co2_supply_empty:
            self.model.set_co2_supply(True, now)
        elif fault in (Fault.heater_stuck_on, Fault.heater_stuck_off):
            self.model.set_heater("auto", now)
        elif fault is Fault.opcua_restart:
            await self.start()
        elif fault is Fault.no_answer:
            await self._unmute()
            await self.start()

    async def start(self) -> None:
        """Build a fresh server around the kept model and listen; returns when clients can connect."""
        if self._server is not None:
            return
        server = await new_server(self.endpoint, "culturectl incubator simulator", self.security)
        idx = await server.register_namespace(INCUBATOR_NAMESPACE)
        ns = ua.Int16(idx)
        obj = await server.nodes.objects.add_object(
            ua.NodeId(ua.String("Incubator"), ns), ua.QualifiedName("Incubator", ua.UInt16(idx))
        )
        self.model.step(self.clock.now())
        values = self.model.values()
        setpoints: dict[ua.NodeId, PointSpec] = {}
        nodes: dict[str, ua.NodeId] = {}
        for spec in INCUBATOR_POINTS:
            string_id = str(spec.address).split(";s=", 1)[1]  # the shipped profile: ns=sim;s=Incubator.<Name>
            nodeid = ua.NodeId(ua.String(string_id), ns)
            browse = ua.QualifiedName(string_id.split(".", 1)[-1], ua.UInt16(idx))
            var = await obj.add_variable(nodeid, browse, self._variant(spec, values[spec.name]))
            if spec.writable:
                await var.set_writable()
                setpoints[nodeid] = spec
            nodes[spec.name] = nodeid
        server.iserver.attribute_service = _SetpointAttributeService(server.iserver.aspace, self, setpoints)
        self._nodes = nodes
        await self._publish(server)
        await server.start()
        self._server = server
        self._namespace_index = idx
        self._task = asyncio.create_task(self._update_loop(server), name=f"incubator-sim-{self._port}")
        log.debug("incubator simulator listening on %s", self.endpoint)

    async def stop(self) -> None:
        """Stop serving and release the port; the model keeps its state."""
        await self._unmute()
        server, task = self._server, self._task
        self._server, self._task, self._namespace_index = None, None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await stop_server(server)
            log.info("incubator simulator on port %d stopped", self._port)

    @staticmethod
    def _variant(spec: PointSpec, value: float) -> ua.Variant:
        if spec.kind == "boolean":
            return ua.Variant(bool(value), ua.VariantType.Boolean)
        return ua.Variant(float(value), ua.VariantType.Double)

    async def _publish(self, server: Server) -> None:
        now = self.clock.now()
        self.model.step(now)
        values = self.model.values()
        wall = utcnow()
        for spec in INCUBATOR_POINTS:
            if spec.name in self.model.frozen:
                continue  # a frozen sensor: the node keeps its value and timestamp, subscribers hear nothing
            dv = ua.DataValue(
                # a value fault's NaN or Inf goes out with status Good, as a faulty device would send it
                self._variant(spec, self.reported(spec.name, values[spec.name])),
                StatusCode=_status(StatusCodes.Good),
                SourceTimestamp=_ua_time(now),
                ServerTimestamp=_ua_time(wall),
            )
            await server.write_attribute_value(self._nodes[spec.name], dv)

    async def _update_loop(self, server: Server) -> None:
        while True:
            await asyncio.sleep(self.update_interval)
            try:
                await self._publish(server)
            except Exception:
                # one bad cycle must not end the simulation; the next one retries
                log.exception("incubator simulator update failed")

