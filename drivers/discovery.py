"""Discovery and checking of devices, for the site engineer writing a profile (`culturectl device ...`).

- `browse_opcua`: walk a server's address space from the Objects folder (one Browse request per level, many
  nodes each) and describe every variable: NodeId, browse path, data type, access level, engineering units.
  `draft_profile` turns that into a profile to edit rather than write.
- `probe_modbus`: read a register range and `candidates` shows each address in every type and word order.
- `check_device`: connect as the service does and report per point what the device says.
No database, no HTTP: the command line prints the results.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from pymodbus.client import AsyncModbusTcpClient

from app.core.clock import Clock
from drivers.base import DeviceProtocolError, DeviceUnavailable, DriverError, PointCheck
from drivers.devices import DeviceConfig, OpcUaSecurity
from drivers.modbus import parse_endpoint
from drivers.opcua import DATA_TYPES, OpcUaDriver, type_name, unit_text
from drivers.profiles import SCHEMA_VERSION

MAX_NODES: Final = 50_000
MAX_DEPTH: Final = 16
_BROWSE_BATCH: Final = 500


@dataclass
class Variable:
    nodeid: str
    path: list[str]  # qualified names from Objects, "<ns index>:<name>"
    data_type: str | None = None
    access: str = ""  # r, w or rw (the user's access level)
    unit: str | None = None


@dataclass
class BrowseResult:
    namespaces: list[str]
    variables: list[Variable] = field(default_factory=list)
    objects: int = 0


async def browse_opcua(client: Client, max_nodes: int = MAX_NODES,
                       progress: Callable[[str], None] | None = None) -> BrowseResult:
    """Every variable below the Objects folder (the standard Server object left out); `progress` hears one line
    per level and one for the attribute reads."""
    result = BrowseResult(await client.get_namespace_array())
    seen: set[str] = set()
    level: list[tuple[ua.NodeId, list[str]]] = [(client.nodes.objects.nodeid, [])]
    variables: list[tuple[ua.NodeId, list[str]]] = []
    units_of: dict[str, ua.NodeId] = {}  # a variable's NodeId -> its EngineeringUnits property (met while browsing)
    depth = 0
    while level and depth < MAX_DEPTH and len(seen) < max_nodes:
        following: list[tuple[ua.NodeId, list[str]]] = []
        for i in range(0, len(level), _BROWSE_BATCH):
            batch = level[i : i + _BROWSE_BATCH]
            params = ua.BrowseParameters()
            params.NodesToBrowse = [_browse_children(nodeid) for nodeid, _path in batch]
            for (parent, path), res in zip(batch, await client.uaclient.browse(params), strict=True):
                for ref in res.References:
                    nid = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                    key = nid.to_string()
                    name = f"{ref.BrowseName.NamespaceIndex}:{ref.BrowseName.Name}"
                    if key in seen or (not path and name == "0:Server"):
                        continue
                    seen.add(key)
                    if name == "0:EngineeringUnits" and ref.NodeClass == ua.NodeClass.Variable:
                        units_of[parent.to_string()] = nid
                        continue
                    if ref.NodeClass == ua.NodeClass.Variable:
                        variables.append((nid, [*path, name]))
                    else:
                        result.objects += 1
                    following.append((nid, [*path, name]))
        level = following
        depth += 1
        if progress is not None:
            progress(f"level {depth}: {len(seen)} nodes, {len(variables)} variables")
    if progress is not None:
        progress(f"reading data type, access level and units of {len(variables)} variables")
    types = await _read_all(client, [n for n, _ in variables], AttributeIds.DataType)
    access = await _read_all(client, [n for n, _ in variables], AttributeIds.UserAccessLevel)
    eu_keys = list(units_of)
    eu_values = await _read_all(client, [units_of[k] for k in eu_keys], AttributeIds.Value)
    units = {k: unit_text(v.Value.Value if v.Value is not None else None) for k, v in zip(eu_keys, eu_values,
                                                                                         strict=True)}
    for (nid, path), t, a in zip(variables, types, access, strict=True):
        bits = a.Value.Value if a.Value is not None else None
        rw = ("r" if isinstance(bits, int) and bits & 1 else "") + ("w" if isinstance(bits, int) and bits & 2 else "")
        result.variables.append(Variable(nid.to_string(), path, type_name(t.Value.Value if t.Value else None), rw,
                                         units.get(nid.to_string())))
    return result


def _browse_children(nodeid: ua.NodeId) -> ua.BrowseDescription:
    """Forward hierarchical references of `nodeid` to objects and variables."""
    desc = ua.BrowseDescription()
    desc.NodeId = nodeid
    desc.BrowseDirection = ua.BrowseDirection.Forward
    desc.ReferenceTypeId = ua.NodeId.from_string("i=33")  # HierarchicalReferences
    desc.IncludeSubtypes = True
    desc.NodeClassMask = int(ua.NodeClass.Object) | int(ua.NodeClass.Variable)
    desc.ResultMask = int(ua.BrowseResultMask.All)
    return desc


async def _read_all(client: Client, nodeids: Sequence[ua.NodeId], attr: AttributeIds) -> list[ua.DataValue]:
    """One attribute of many nodes, `_BROWSE_BATCH` nodes a Read request."""
    out: list[ua.DataValue] = []
    for i in range(0, len(nodeids), _BROWSE_BATCH):
        out += await client.read_attributes([client.get_node(n) for n in nodeids[i : i + _BROWSE_BATCH]], attr)
    return out


def _alias(uri: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "-", uri.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]).strip("-").lower()
    base = (base if base[:1].isalpha() else f"ns{base}")[:24] or "ns"
    alias, n = base, 2
    while alias in taken:
        alias, n = f"{base}{n}", n + 1
    taken.add(alias)
    return alias


def draft_profile(result: BrowseResult, name: str = "new-device", device_class: str = "incubator"
                  ) -> dict[str, Any]:
    """A profile to edit: every numeric or boolean variable as a point without a role (fill in role, unit,
    writable with min and max); NodeIds name their namespace by alias; the browse path is in the description."""
    used = {int(v.nodeid.split(";", 1)[0].removeprefix("ns=")) if v.nodeid.startswith("ns=") else 0
            for v in result.variables}
    taken: set[str] = set()
    aliases = {i: _alias(uri, taken) for i, uri in enumerate(result.namespaces) if i in used and i > 0}
    points: list[dict[str, Any]] = []
    names: set[str] = set()
    for v in result.variables:
        if v.data_type not in DATA_TYPES.values():
            continue
        ns, _, rest = v.nodeid.partition(";") if v.nodeid.startswith("ns=") else ("ns=0", "", v.nodeid)
        idx = int(ns.removeprefix("ns="))
        node = f"ns={aliases[idx]};{rest}" if idx in aliases else rest
        base = re.sub(r"[^A-Za-z0-9_]", "_", v.path[-1].split(":", 1)[-1]) or "point"
        if not base[0].isalpha() and base[0] != "_":
            base = f"p_{base}"
        pname, n = base[:60], 2
        while pname in names:
            pname, n = f"{base[:56]}_{n}", n + 1
        names.add(pname)
        shown = "/".join(p.split(":", 1)[1] for p in v.path)
        points.append({"name": pname, "role": None, "node": node, "data_type": v.data_type,
                       "unit": v.unit or "", "description": f"{shown} (access {v.access or '-'})"})
    return {"schema": SCHEMA_VERSION, "name": name, "version": "0.1", "vendor": "", "model": "",
            "device_class": device_class, "protocol": "opcua",
            "opcua": {"namespaces": {a: result.namespaces[i] for i, a in aliases.items()}}, "points": points}


async def connect_opcua(endpoint: str, security: OpcUaSecurity | None, timeout: float, data_dir: Any = None
                        ) -> Client:
    """A connected client (secured as configured) for browsing; the caller disconnects it."""
    from drivers.opcua_security import secure

    client = Client(endpoint, timeout=timeout)
    try:
        if security is not None:
            await secure(client, security, endpoint, data_dir)  # asks the server for its endpoints first
        await client.connect()
    except Exception as exc:
        with contextlib.suppress(Exception):
            client.disconnect_socket()
        if isinstance(exc, DriverError):
            raise
        if isinstance(exc, TimeoutError | OSError):
            raise DeviceUnavailable(f"cannot connect to {endpoint}: {exc!r}") from None
        raise DeviceProtocolError(f"OPC UA connect to {endpoint} failed: {exc!r}") from None  # asyncua's many kinds
    return client


@dataclass
class ProbeResult:
    start: int
    registers: list[int | None]  # None: the device refused that register


async def probe_modbus(endpoint: str, unit: int, start: int, end: int, table: str = "holding",
                       timeout: float = 2.0) -> ProbeResult:
    """Read registers start..end (inclusive) of `table` (holding or input), 125 at a time; a refused block is
    read register by register so the map's holes show."""
    host, port = parse_endpoint(endpoint)
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0, reconnect_delay=0)
    if not await client.connect():
        raise DeviceUnavailable(f"cannot connect to {endpoint}")
    read = client.read_holding_registers if table == "holding" else client.read_input_registers
    out: list[int | None] = []
    try:
        for a in range(start, end + 1, 125):
            n = min(125, end + 1 - a)
            rr = await read(a, count=n, device_id=unit)
            if not rr.isError():
                out += list(rr.registers[:n])
                continue
            for b in range(a, a + n):
                one = await read(b, count=1, device_id=unit)
                out.append(None if one.isError() else int(one.registers[0]))
    except Exception as exc:  # pymodbus' connection and timeout errors
        raise DeviceUnavailable(f"{endpoint}: {exc}") from None
    finally:
        client.close()
    return ProbeResult(start, out)


async def check_device(config: DeviceConfig, clock: Clock, data_dir: Any = None) -> list[PointCheck]:
    """Connect as the service does and return the check of every point (with values)."""
    if config.protocol == "opcua":
        driver = OpcUaDriver(config, clock, data_dir=data_dir, check_values=True)
        try:
            await driver.connect()
            return list(driver.checks)
        finally:
            await driver.close()
    from drivers.modbus import ModbusDriver

    mb = ModbusDriver(config, clock)
    try:
        await mb.connect()
        return list(mb.checks)
    finally:
        await mb.close()


def format_checks(checks: Sequence[PointCheck]) -> list[str]:
    lines = []
    for c in checks:
        mark = "ok " if c.ok else "BAD"
        value = "-" if c.value is None else f"{c.value:g}"
        lines.append(f"  {mark} {c.point:<24} {c.where:<40} type={c.data_type or '-'} unit={c.unit or '-'} "
                     f"writable={'-' if c.writable is None else c.writable} value={value}")
        lines += [f"        {p}" for p in c.problems]
    return lines
