"""OPC UA driver: one session, one subscription, readings pushed into a bounded queue.

Where each point lives comes from the device's profile: a NodeId in any form (`ns=<index|alias>;i=..`,
`nsu=<uri>;s=..`, GUID, opaque) or a browse path from the Objects folder; namespace aliases and URIs are
resolved to indexes from the server's namespace array at connect time. On connect every point is checked
(found, data type, engineering units, access level) and the result kept in `checks`: a point that is not
found is left out of the subscription and reported, never a crash. Values are converted to the role's unit.

Design choices:
- asyncua's `auto_reconnect` stays OFF. The supervisor owns reconnects; two reconnect loops (asyncua's
  and ours) would fight and could leave two server sessions for one device. A lost server ends this
  driver instance: `readings()` raises DeviceUnavailable, the supervisor closes it and connects afresh.
- Loss detection: asyncua's connection supervisor still runs with auto_reconnect off; it reads the
  ServerState node every `WATCHDOG_INTERVAL` s (timeout <= that interval) and reacts at once to a closed
  socket, then calls our `connection_lost_callback`. Our own watchdog task also checks the client's
  state every `WATCHDOG_INTERVAL` s, so a crashed asyncua task cannot leave us waiting forever.
- Data path: subscription (iterator mode) -> pump task -> `DropOldestQueue` (bounded, counts drops)
  -> `readings()`. The pump never blocks, so the subscription's own queue never overflows silently.

Errors: asyncua/transport exceptions are translated here (see `drivers.base` for the tree).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeEvent, OverflowPolicy, StatusChangeEvent, Subscription
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaStatusCodeError

from app.core.clock import Clock
from drivers.base import (
    DeviceProtocolError,
    DeviceUnavailable,
    DriverError,
    PointCheck,
    PointSpec,
    Quality,
    Reading,
    find_point,
    reading,
)
from drivers.devices import DeviceConfig
from drivers.roles import normalize_unit

log = logging.getLogger("culturectl.devices.opcua")

PUBLISHING_INTERVAL_MS: Final = 200.0
SAMPLING_INTERVAL_MS: Final = 100.0
MONITORED_ITEM_QUEUE_SIZE: Final = 10
WATCHDOG_INTERVAL: Final = 1.0
# An orphaned session (client vanished without CloseSession) expires on the server after this long.
SESSION_TIMEOUT_MS: Final = 30_000
DEFAULT_QUEUE_SIZE: Final = 10_000

# Transport-level failures: the device is unreachable, try again later.
_UNAVAILABLE = (ConnectionError, OSError, asyncio.TimeoutError, TimeoutError)


class _Lost:
    """Marker put into the readings queue when the connection is gone."""


_LOST: Final = _Lost()


class DropOldestQueue:
    """Bounded FIFO; when full, the OLDEST item is discarded and counted in `dropped`."""

    overflow_policy: Final = "drop-oldest"

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be >= 1")
        self._queue: asyncio.Queue[Reading | _Lost] = asyncio.Queue(maxsize=maxsize)
        self.maxsize = maxsize
        self.dropped = 0

    def put(self, item: Reading | _Lost) -> None:
        """Put without waiting; drop (and count) the oldest item when full."""
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._queue.get_nowait()
                    self.dropped += 1

    async def get(self) -> Reading | _Lost:
        return await self._queue.get()

    def qsize(self) -> int:
        return self._queue.qsize()


def _aware_utc(value: Any) -> datetime | None:
    """asyncua hands out naive UTC datetimes in some paths and aware ones in others."""
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _quality(status: ua.StatusCode | None) -> Quality:
    if status is None or status.is_good():
        return Quality.GOOD
    if status.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


def as_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if hasattr(value, "value") and isinstance(value.value, int):  # an enumeration member
        return float(value.value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# DataType NodeIds (namespace 0) of the types a profile may name
DATA_TYPES: Final[dict[int, str]] = {
    1: "Boolean", 2: "SByte", 3: "Byte", 4: "Int16", 5: "UInt16", 6: "Int32", 7: "UInt32", 8: "Int64",
    9: "UInt64", 10: "Float", 11: "Double", 29: "Enumeration",
}
VARIANT_TYPES: Final[dict[str, ua.VariantType]] = {
    "Boolean": ua.VariantType.Boolean, "SByte": ua.VariantType.SByte, "Byte": ua.VariantType.Byte,
    "Int16": ua.VariantType.Int16, "UInt16": ua.VariantType.UInt16, "Int32": ua.VariantType.Int32,
    "UInt32": ua.VariantType.UInt32, "Int64": ua.VariantType.Int64, "UInt64": ua.VariantType.UInt64,
    "Float": ua.VariantType.Float, "Double": ua.VariantType.Double, "Enumeration": ua.VariantType.Int32,
}
_INTEGERS: Final = frozenset({"SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
                              "Enumeration"})
# UNECE codes (EUInformation.UnitId) of the units the roles use
UNECE_UNITS: Final[dict[int, str]] = {
    4408652: "degC", 4604232: "degF", 4932940: "K", 20529: "%", 13625: "ppm", 5065812: "mL", 5002322: "L",
}


def resolve_nodeid(text: str, namespaces: dict[str, str], array: list[str]) -> ua.NodeId:
    """A profile's NodeId (alias, index or URI form) -> a NodeId with the server's namespace index.

    ValueError names the namespace when the server does not have it."""
    ns_part, sep, rest = text.partition(";")
    if not sep:
        return ua.NodeId.from_string(text)
    key, _, ns = ns_part.partition("=")
    uri = ns if key == "nsu" else namespaces.get(ns)
    if key == "ns" and uri is None:
        return ua.NodeId.from_string(text)  # a numeric index
    if uri not in array:
        raise ValueError(f"server has no namespace {uri!r}" + (f" (alias {ns!r})" if key == "ns" else ""))
    return ua.NodeId.from_string(f"ns={array.index(uri)};{rest}")


def resolve_browse_name(step: str, namespaces: dict[str, str], array: list[str]) -> str:
    """`alias:Name` or `index:Name` -> `index:Name` for the server at hand."""
    ns, sep, name = step.partition(":")
    if not sep:
        return f"0:{step}"
    if ns.isdigit():
        return step
    uri = namespaces.get(ns)
    if uri not in array:
        raise ValueError(f"server has no namespace {uri!r} (alias {ns!r})")
    return f"{array.index(uri)}:{name}"


async def locate(client: Client, points: Sequence[PointSpec], namespaces: dict[str, str]
                 ) -> tuple[dict[str, Node], dict[str, str]]:
    """Find each point's node: point name -> Node for the found, point name -> why for the others."""
    array = await client.get_namespace_array()
    found: dict[str, Node] = {}
    missing: dict[str, str] = {}
    for p in points:
        try:
            if p.browse_path:
                path = [resolve_browse_name(step, namespaces, array) for step in p.browse_path]
                found[p.name] = await client.nodes.objects.get_child(path)
            else:
                found[p.name] = client.get_node(resolve_nodeid(str(p.address), namespaces, array))
        except ValueError as exc:
            missing[p.name] = str(exc)
        except UaStatusCodeError as exc:
            missing[p.name] = f"browse path {'/'.join(p.browse_path)} not found ({type(exc).__name__})"
    return found, missing


async def inspect(client: Client, points: Sequence[PointSpec], namespaces: dict[str, str],
                  read_value: bool = True) -> tuple[list[PointCheck], dict[str, Node]]:
    """Check every point against the server: found, data type, engineering units, access level (and value)."""
    nodes, missing = await locate(client, points, namespaces)
    present = [p for p in points if p.name in nodes]
    order = [nodes[p.name] for p in present]
    if order:
        types = await client.read_attributes(order, AttributeIds.DataType)
        access = await client.read_attributes(order, AttributeIds.UserAccessLevel)
        values = await client.read_attributes(order, AttributeIds.Value) if read_value else [None] * len(order)
    else:
        types = access = values = []
    checks: dict[str, PointCheck] = {}
    gone: set[str] = set()
    for p, node, t, a, v in zip(present, order, types, access, values, strict=True):
        where = node.nodeid.to_string()
        if t.StatusCode is not None and not t.StatusCode.is_good():
            gone.add(p.name)
            checks[p.name] = PointCheck(p.name, False, where, problems=(
                f"node {where} not found ({t.StatusCode.name})",))
            continue
        problems: list[str] = []
        dtype = type_name(t.Value.Value if t.Value is not None else None)
        if dtype is not None and dtype not in DATA_TYPES.values():
            # a server-specific type: an enumeration's subtype reads as Int32; anything else cannot be a number
            dtype = "Enumeration" if p.opc_type == "Enumeration" else dtype
        if p.opc_type is not None and dtype != p.opc_type:
            problems.append(f"data type is {dtype}, the profile says {p.opc_type}")
        elif p.opc_type is None and dtype not in DATA_TYPES.values():
            problems.append(f"data type {dtype} is not a number or a boolean")
        level = a.Value.Value if a.Value is not None else None
        writable = bool(int(level) & 0x02) if isinstance(level, int) else None
        if p.writable and writable is False:
            problems.append("the profile says writable, the server does not allow writing")
        unit = await engineering_unit(node)
        if unit is not None and normalize_unit(unit) != normalize_unit(p.device_unit) and p.device_unit:
            problems.append(f"the server's EngineeringUnits say {unit!r}, the profile says {p.device_unit!r}")
        value = None
        if v is not None and v.Value is not None:
            raw = as_float(v.Value.Value)
            value = p.to_unit(raw) if raw is not None else None
        checks[p.name] = PointCheck(p.name, True, where, dtype, unit, writable, value, tuple(problems))
    for name, why in missing.items():
        checks[name] = PointCheck(name, False, _where(next(p for p in points if p.name == name)), problems=(why,))
    usable = {n: node for n, node in nodes.items() if n not in gone}
    return [checks[p.name] for p in points], usable


def type_name(tid: Any) -> str | None:
    """A DataType NodeId -> the name a profile uses (Double, Int32, ...), else the NodeId as text."""
    if not isinstance(tid, ua.NodeId):
        return None
    if tid.NamespaceIndex == 0 and isinstance(tid.Identifier, int) and tid.Identifier in DATA_TYPES:
        return DATA_TYPES[tid.Identifier]
    return tid.to_string()


def _where(p: PointSpec) -> str:
    return str(p.address) if p.address else "/".join(p.browse_path)


async def engineering_unit(node: Node) -> str | None:
    """The variable's EngineeringUnits (display name, else the UNECE code's unit), or None if it has none."""
    try:
        prop = await node.get_child("0:EngineeringUnits")
        eu = await prop.read_value()
    except Exception:  # no such property, or not readable: nothing to compare
        return None
    return unit_text(eu)


def unit_text(eu: Any) -> str | None:
    """An EUInformation as a unit: its display name, else the unit of its UNECE code."""
    text = getattr(getattr(eu, "DisplayName", None), "Text", None)
    if text:
        return str(text)
    code = getattr(eu, "UnitId", None)
    return UNECE_UNITS.get(code) if isinstance(code, int) else None


class OpcUaDriver:
    """Subscribes to every point of one OPC UA device and writes setpoints with read-back."""

    def __init__(self, config: DeviceConfig, clock: Clock, queue_size: int = DEFAULT_QUEUE_SIZE,
                 data_dir: Path | None = None, check_values: bool = False) -> None:
        self.config = config
        self._check_values = check_values  # the check on connect also reads each value (`device check`)
        self._data_dir = data_dir  # where culturectl's certificate and the trust list live (secured devices)
        self.name: str = config.name
        self.points: Sequence[PointSpec] = config.points
        self._clock = clock
        self._queue_size = queue_size
        self._queue = DropOldestQueue(queue_size)
        self._client: Client | None = None
        self._subscription: Subscription | None = None
        self._nodes: dict[str, Node] = {}
        self._types: dict[str, str | None] = {}
        self._by_nodeid: dict[ua.NodeId, PointSpec] = {}
        # the point check of the last connect (drivers.base.PointCheck per point of the profile)
        self.checks: list[PointCheck] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lost: str | None = None
        self._write_lock = asyncio.Lock()

    @property
    def dropped(self) -> int:
        """Readings discarded by the drop-oldest policy since this driver was created."""
        return self._queue.dropped

    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and self._lost is None and client.uaclient.state is UaClientState.CONNECTED

    async def connect(self) -> None:
        """Open a session, find and check every point, subscribe to the ones found."""
        if self._client is not None:
            await self.close()
        self.checks = []
        self._lost = None
        dropped = self._queue.dropped
        self._queue = DropOldestQueue(self._queue_size)
        self._queue.dropped = dropped
        client = Client(
            self.config.endpoint,
            timeout=self.config.timeout,
            watchdog_intervall=WATCHDOG_INTERVAL,
            auto_reconnect=False,
        )
        client.session_timeout = SESSION_TIMEOUT_MS
        client.connection_lost_callback = self._on_connection_lost
        self._client = client
        try:
            # Bounded as a whole: each request has its own timeout, but a slow server could chain them.
            await asyncio.wait_for(self._open(client), timeout=self.config.timeout * 4)
        except DriverError:
            await self.close()
            raise
        except asyncio.CancelledError:
            await self.close()
            raise
        except _UNAVAILABLE as exc:
            await self.close()
            raise DeviceUnavailable(
                f"{self.name}: cannot connect to {self.config.endpoint}: {exc!r}"
            ) from None
        except Exception as exc:  # asyncua raises many kinds (UaError, status-code errors, parse errors)
            await self.close()
            raise DeviceProtocolError(f"{self.name}: OPC UA connect failed: {exc!r}") from None
        self._tasks = [
            asyncio.create_task(self._pump(), name=f"opcua-pump-{self.name}"),
            asyncio.create_task(self._watchdog(), name=f"opcua-watchdog-{self.name}"),
        ]

    async def _open(self, client: Client) -> None:
        if self.config.security is not None:
            from drivers.opcua_security import secure

            await secure(client, self.config.security, self.config.endpoint, self._data_dir)
        try:
            await client.connect()
        except UaStatusCodeError as exc:
            # refused by the server: our certificate not trusted there, a wrong user or password, ...
            raise DeviceProtocolError(f"{self.name}: the server refused the session: {type(exc).__name__}") from None
        namespaces = dict(self.config.opcua_settings.namespaces)
        self.checks, nodes = await inspect(client, self.points, namespaces, read_value=self._check_values)
        if not nodes:
            raise DeviceProtocolError(f"{self.name}: none of the profile's points was found: "
                                      + "; ".join(c.problems[0] for c in self.checks if c.problems))
        self._nodes = nodes
        self._types = {c.point: c.data_type for c in self.checks if c.found}
        self._by_nodeid = {node.nodeid: p for p in self.points if (node := nodes.get(p.name)) is not None}
        sub = await client.create_subscription(
            PUBLISHING_INTERVAL_MS,
            queue_maxsize=self._queue_size,
            overflow=OverflowPolicy.DROP_OLDEST,
        )
        self._subscription = sub
        # one CreateMonitoredItems call per distinct (sampling interval, queue size, deadband)
        groups: dict[tuple[float, int, tuple[str, float] | None], list[PointSpec]] = {}
        for p in self.points:
            if p.name in nodes:
                key = (p.sampling_interval_ms if p.sampling_interval_ms is not None else SAMPLING_INTERVAL_MS,
                       p.queue_size or MONITORED_ITEM_QUEUE_SIZE, p.deadband)
                groups.setdefault(key, []).append(p)
        failed: list[tuple[PointSpec, ua.StatusCode]] = []
        for (sampling, queue, deadband), pts in groups.items():
            mfilter = None
            if deadband is not None:
                mfilter = ua.DataChangeFilter()
                mfilter.Trigger = ua.DataChangeTrigger.StatusValue
                mfilter.DeadbandType = 2 if deadband[0] == "percent" else 1
                mfilter.DeadbandValue = deadband[1]
            results = await sub._subscribe([nodes[p.name] for p in pts], AttributeIds.Value, mfilter, queue,
                                           sampling_interval=ua.Duration(sampling))
            failed += [(p, r) for p, r in zip(pts, results, strict=True) if isinstance(r, ua.StatusCode)]
        if failed:
            # e.g. a percent deadband on a variable without EURange: that point is off profile, the others are read
            why = {p.name: f"the server refused to monitor it ({r.name})" for p, r in failed}
            self.checks = [PointCheck(c.point, c.found, c.where, c.data_type, c.unit, c.writable, c.value,
                                      (*c.problems, why[c.point])) if c.point in why else c for c in self.checks]
            if len(failed) == len(self._by_nodeid):
                raise DeviceProtocolError(f"{self.name}: cannot monitor any point: {'; '.join(why.values())}")

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._mark_lost(f"connection lost: {exc!r}")

    def _mark_lost(self, cause: str) -> None:
        if self._lost is None:
            self._lost = cause
            self._queue.put(_LOST)

    async def _watchdog(self) -> None:
        """Second line of loss detection; no I/O (asyncua's supervisor already probes ServerState)."""
        while self._lost is None:
            await asyncio.sleep(WATCHDOG_INTERVAL)
            client = self._client
            if client is None or client.uaclient.state is not UaClientState.CONNECTED:
                state = client.uaclient.state.value if client is not None else "closed"
                self._mark_lost(f"client state {state}")

    async def _pump(self) -> None:
        """Move subscription events into the readings queue as Readings."""
        sub = self._subscription
        if sub is None:
            return
        try:
            async for event in sub:
                if isinstance(event, DataChangeEvent):
                    reading = self._to_reading(event)
                    if reading is not None:
                        self._queue.put(reading)
                elif isinstance(event, StatusChangeEvent):
                    status = event.notification.Status
                    if status is not None and not status.is_good():
                        self._mark_lost(f"subscription status {status.name}")
                        return
            self._mark_lost("subscription closed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let a malformed notification kill the driver silently
            self._mark_lost(f"subscription failed: {exc!r}")

    def _to_reading(self, event: DataChangeEvent) -> Reading | None:
        point = self._by_nodeid.get(event.node.nodeid)
        if point is None:
            return None
        dv = event.data.monitored_item.Value
        source = None
        status: ua.StatusCode | None = None
        if dv is not None:
            source = _aware_utc(dv.SourceTimestamp) or _aware_utc(dv.ServerTimestamp)
            status = dv.StatusCode
        # NaN or Inf with status Good, or a value that cannot be true: judged at the edge like every driver's
        raw = as_float(event.value)
        value = point.to_unit(raw) if raw is not None else None
        return reading(self.name, point, value, source or self._clock.now(), _quality(status))

    async def readings(self) -> AsyncIterator[Reading]:
        """Yield readings until the connection is lost, then raise DeviceUnavailable."""
        if self._client is None:
            raise DeviceUnavailable(f"{self.name}: not connected")
        while True:
            item = await self._queue.get()
            if isinstance(item, _Lost):
                raise DeviceUnavailable(f"{self.name}: {self._lost or 'connection lost'}")
            yield item

    async def write(self, point: str, value: float) -> float:
        """Write an absolute value (in the point's unit) in the node's data type, read it back, return it."""
        spec = find_point(self.points, point, self.name)
        checked = spec.check_write(float(value))
        node = self._nodes.get(spec.name)
        if not self.connected:
            raise DeviceUnavailable(f"{self.name}: not connected")
        if node is None:
            raise DeviceProtocolError(f"{self.name}: point {spec.name} was not found on the server (see the device "
                                      "check)")
        dtype = self._types.get(spec.name) or spec.opc_type or "Double"
        device_value: Any = spec.to_device(checked)
        if dtype == "Boolean":
            device_value = bool(device_value)
        elif dtype in _INTEGERS:
            device_value = round(device_value)
        try:
            # Write and read-back as one unit, so a concurrent write cannot slip in between and be reported.
            async with self._write_lock:
                await node.write_value(ua.DataValue(ua.Variant(device_value, VARIANT_TYPES.get(
                    dtype, ua.VariantType.Double))))
                back = await node.read_value()
        except _UNAVAILABLE as exc:
            raise DeviceUnavailable(f"{self.name}: write {point} failed: {exc!r}") from None
        except Exception as exc:  # a Bad status code from the server, or a decoding error
            raise DeviceProtocolError(f"{self.name}: write {point} rejected: {exc!r}") from None
        result = as_float(back)
        if result is None:
            raise DeviceProtocolError(f"{self.name}: read-back of {point} is not a number: {back!r}")
        return spec.to_unit(result)

    async def close(self) -> None:
        """Delete the subscription and close the session; never raises."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        client, self._client = self._client, None
        self._subscription = None
        self._nodes = {}
        if client is None:
            return
        client.connection_lost_callback = None
        try:
            if client.uaclient.state is UaClientState.CONNECTED:
                # CloseSession(DeleteSubscriptions=True): the server drops our session at once.
                await asyncio.wait_for(client.disconnect(), timeout=self.config.timeout)
            else:
                # Nothing to say to a dead server; this still cancels asyncua's own tasks.
                await asyncio.wait_for(client.close_session(), timeout=self.config.timeout)
        except BaseException as exc:  # close() never raises, not even on a timeout
            log.debug("%s: close: %r", self.name, exc)
            if isinstance(exc, asyncio.CancelledError):
                self._teardown(client)
                raise
        self._teardown(client)

    @staticmethod
    def _teardown(client: Client) -> None:
        """Make sure no socket or asyncua task outlives the driver, whatever the close path did."""
        client.uaclient.request_disconnect()
        with contextlib.suppress(Exception):
            client.disconnect_socket()
        leftovers = (
            client._supervisor_task,
            client._stale_watchdog_task,
            client._renew_channel_task,
            client.uaclient.session._publish_task,
        )
        for task in leftovers:
            if task is not None and not task.done():
                task.cancel()
