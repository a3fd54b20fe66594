"""An OPC UA server built from a device profile: another vendor's address space, not ours.

Each point becomes a variable where the profile says it is: at its NodeId (numeric, string, GUID or opaque, in
the namespace its alias or URI names) under nested objects (`parents`), or at the end of its browse path (the
objects on the way are created, e.g. a LADS-shaped DeviceSet/FunctionalUnitSet/FunctionSet tree). Variables
carry the profile's data type and an `EngineeringUnits` property with the device's unit, and report values in
the device's unit (a degF incubator reports degF). Writes to writable points are checked against the point's
limits (BadOutOfRange) and passed to `on_write(point, value in the stored unit)`.

`extra_variables` adds that many more variables in nested folders (for timing `device browse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from asyncua import ua
from asyncua.crypto.permission_rules import User
from asyncua.server.address_space import AddressSpace, AttributeService
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from app.core.clock import utcnow
from drivers.base import PointError, PointSpec
from drivers.opcua import VARIANT_TYPES, as_float, resolve_browse_name, resolve_nodeid
from drivers.profiles import OpcUaProfile, point_specs
from simulators._net import pick_free_port
from simulators.opcua_security import ServerSecurity, new_server, stop_server

log = logging.getLogger("culturectl.simulators")

ENDPOINT_PATH: Final = "/vendor"


class _CheckedWrites(AttributeService):
    """Writes to writable points: limits checked, accepted values passed on."""

    def __init__(self, aspace: AddressSpace, device: OpcUaProfileDevice) -> None:
        super().__init__(aspace)
        self._device = device

    async def write(self, params: ua.WriteParameters, user: User | None = None) -> list[ua.StatusCode]:
        out: list[ua.StatusCode] = []
        for item in params.NodesToWrite:
            spec = self._device.writable.get(item.NodeId)
            if spec is not None and item.AttributeId == AttributeIds.Value:
                raw = as_float(item.Value.Value.Value if item.Value.Value is not None else None)
                if raw is None:
                    out.append(ua.StatusCode(ua.UInt32(StatusCodes.BadTypeMismatch)))
                    continue
                try:
                    spec.check_write(spec.to_unit(raw))
                except PointError:
                    out.append(ua.StatusCode(ua.UInt32(StatusCodes.BadOutOfRange)))
                    continue
            one = ua.WriteParameters(NodesToWrite=[item])
            status = (await (super().write(one) if user is None else super().write(one, user=user)))[0]
            if spec is not None and raw is not None and status.is_good():
                self._device.accepted(spec, raw)
            out.append(status)
        return out


class OpcUaProfileDevice:
    """An OPC UA server on 127.0.0.1 serving the points of `profile` (secured as `security` says)."""

    def __init__(self, profile: OpcUaProfile, source: Callable[[], Mapping[str, float]],
                 on_write: Callable[[str, float], None] | None = None, *,
                 parents: Mapping[str, Sequence[str]] | None = None, host: str = "127.0.0.1", port: int = 0,
                 update_interval: float = 0.2, extra_variables: int = 0, engineering_units: bool = True,
                 security: ServerSecurity | None = None) -> None:
        self.security = security
        self.profile = profile
        self.points = point_specs(profile)
        self.host = host
        self.port = port or pick_free_port(host)
        self._source = source
        self._on_write = on_write
        self._parents = parents or {}
        self._interval = update_interval
        self._extra = extra_variables
        self._eu = engineering_units
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.nodes: dict[str, ua.NodeId] = {}
        self.writable: dict[ua.NodeId, PointSpec] = {}
        self.held: dict[str, float] = {}  # writable point -> device value
        self.overrides: dict[str, float] = {}  # point -> device value reported instead of the source's

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{ENDPOINT_PATH}"

    async def __aenter__(self) -> OpcUaProfileDevice:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def accepted(self, spec: PointSpec, device_value: float) -> None:
        self.held[spec.name] = device_value
        if self._on_write is not None:
            self._on_write(spec.name, spec.to_unit(device_value))

    def _device_value(self, p: PointSpec) -> float:
        if p.name in self.overrides:
            return self.overrides[p.name]
        if p.writable:
            return self.held.get(p.name, p.to_device(p.min or 0.0))
        return p.to_device(float(self._source().get(p.name, 0.0)))

    def _variant(self, p: PointSpec, value: float) -> ua.Variant:
        dtype = p.opc_type or "Double"
        vt = VARIANT_TYPES.get(dtype, ua.VariantType.Double)
        v: Any = bool(value) if dtype == "Boolean" else round(value) if vt not in (
            ua.VariantType.Float, ua.VariantType.Double) else float(value)
        return ua.Variant(v, vt)

    async def start(self) -> None:
        if self._server is not None:
            return
        server = await new_server(self.endpoint, f"{self.profile.vendor or 'vendor'} {self.profile.model or 'device'}",
                                  self.security)
        namespaces = dict(self.profile.opcua.namespaces)
        for uri in namespaces.values():
            await server.register_namespace(uri)
        array = await server.get_namespace_array()
        first = array.index(next(iter(namespaces.values()))) if namespaces else 1
        objects: dict[tuple[str, ...], Any] = {(): server.nodes.objects}

        def qualified(step: str) -> tuple[int, str]:
            """The browse name a profile's path step names, in this server's namespace indexes."""
            ns, _, name = resolve_browse_name(step, namespaces, array).partition(":")
            return int(ns), name

        async def folder(path: Sequence[str]) -> Any:
            key = tuple(path)
            if key not in objects:
                parent = await folder(key[:-1])
                ns, name = qualified(key[-1])
                objects[key] = await parent.add_object(_string_id(f"obj:{'/'.join(key)}", ns),
                                                       ua.QualifiedName(name, ua.UInt16(ns)))
            return objects[key]

        for p in self.points:
            value = self._variant(p, self._device_value(p))
            if p.browse_path:
                parent = await folder(p.browse_path[:-1])
                ns, name = qualified(p.browse_path[-1])
                nodeid = _string_id(f"var:{'/'.join(p.browse_path)}", ns)
            else:
                nodeid = resolve_nodeid(str(p.address), namespaces, array)
                parent = await folder(self._parents.get(p.name, ("Device",)))
                name = p.name
            var = await parent.add_variable(nodeid, ua.QualifiedName(name, ua.UInt16(nodeid.NamespaceIndex)), value,
                                            varianttype=value.VariantType)
            if self._eu and p.device_unit:
                eu = ua.EUInformation(NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact", UnitId=-1,
                                      DisplayName=ua.LocalizedText(p.device_unit),
                                      Description=ua.LocalizedText(p.device_unit))
                await var.add_property(_string_id(f"eu:{nodeid.to_string()}", nodeid.NamespaceIndex),
                                       ua.QualifiedName("EngineeringUnits", 0), eu)
            if p.writable:
                await var.set_writable()
                self.writable[nodeid] = p
                self.held.setdefault(p.name, self._device_value(p))
            self.nodes[p.name] = nodeid
        for i in range(self._extra):
            parent = await folder(("Bulk", f"Group{i // 100:03d}"))
            await parent.add_variable(_string_id(f"bulk:{i}", first), ua.QualifiedName(f"Value{i:05d}", first),
                                      ua.Variant(float(i), ua.VariantType.Double))
        server.iserver.attribute_service = _CheckedWrites(server.iserver.aspace, self)
        await server.start()
        self._server = server
        self._task = asyncio.create_task(self._update(server), name=f"opcua-device-{self.port}")

    async def _update(self, server: Server) -> None:
        while True:
            try:
                wall = utcnow()
                for p in self.points:
                    dv = ua.DataValue(self._variant(p, self._device_value(p)),
                                      StatusCode=ua.StatusCode(ua.UInt32(StatusCodes.Good)),
                                      SourceTimestamp=wall, ServerTimestamp=wall)  # type: ignore[arg-type]
                    await server.write_attribute_value(self.nodes[p.name], dv)
            except Exception:  # one bad cycle must not end the simulation
                log.exception("opcua device update failed")
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        server, task = self._server, self._task
        self._server, self._task = None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await stop_server(server)


def _string_id(ident: str, ns: int) -> ua.NodeId:
    """A string NodeId this simulator makes up for an object or variable the profile names by path."""
    return ua.NodeId.from_string(f"ns={ns};s={ident}")
