"""OPC UA driver for incubators: one session, one subscription, readings pushed into a bounded queue.

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
from typing import Any, Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeEvent, OverflowPolicy, StatusChangeEvent, Subscription

from app.core.clock import Clock
from drivers.base import (
    DeviceProtocolError,
    DeviceUnavailable,
    DriverError,
    PointSpec,
    Quality,
    Reading,
    find_point,
    reading,
)
from drivers.devices import DeviceConfig
from drivers.points import INCUBATOR_NAMESPACE

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


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class OpcUaDriver:
    """Subscribes to every point of one OPC UA device and writes setpoints with read-back."""

    def __init__(self, config: DeviceConfig, clock: Clock, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.config = config
        self.name: str = config.name
        self.points: Sequence[PointSpec] = config.points
        self._clock = clock
        self._queue_size = queue_size
        self._queue = DropOldestQueue(queue_size)
        self._client: Client | None = None
        self._subscription: Subscription | None = None
        self._nodes: dict[str, Node] = {}
        self._by_nodeid: dict[ua.NodeId, PointSpec] = {}
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
        """Open a session, resolve the namespace, subscribe to every point."""
        if self._client is not None:
            await self.close()
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
        await client.connect()
        try:
            ns = await client.get_namespace_index(INCUBATOR_NAMESPACE)
        except ValueError:
            raise DeviceProtocolError(
                f"{self.name}: server has no namespace {INCUBATOR_NAMESPACE!r}"
            ) from None
        self._nodes = {p.name: client.get_node(f"ns={ns};s={p.address}") for p in self.points}
        self._by_nodeid = {self._nodes[p.name].nodeid: p for p in self.points}
        sub = await client.create_subscription(
            PUBLISHING_INTERVAL_MS,
            queue_maxsize=self._queue_size,
            overflow=OverflowPolicy.DROP_OLDEST,
        )
        self._subscription = sub
        results = await sub.subscribe_data_change(
            list(self._nodes.values()),
            queuesize=MONITORED_ITEM_QUEUE_SIZE,
            sampling_interval=ua.Duration(SAMPLING_INTERVAL_MS),
        )
        failed = [
            f"{p.name}: {r.name}"
            for p, r in zip(self.points, results, strict=True)
            if isinstance(r, ua.StatusCode)
        ]
        if failed:
            raise DeviceProtocolError(f"{self.name}: cannot monitor {', '.join(failed)}")

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
        return reading(self.name, point, _as_float(event.value), source or self._clock.now(), _quality(status))

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
        """Write an absolute Double to a writable point, read it back and return the read-back."""
        spec = find_point(self.points, point, self.name)
        checked = spec.check_write(float(value))
        node = self._nodes.get(spec.name)
        if node is None or not self.connected:
            raise DeviceUnavailable(f"{self.name}: not connected")
        try:
            # Write and read-back as one unit, so a concurrent write cannot slip in between and be reported.
            async with self._write_lock:
                await node.write_value(ua.DataValue(ua.Variant(checked, ua.VariantType.Double)))
                back = await node.read_value()
        except _UNAVAILABLE as exc:
            raise DeviceUnavailable(f"{self.name}: write {point} failed: {exc!r}") from None
        except Exception as exc:  # a Bad status code from the server, or a decoding error
            raise DeviceProtocolError(f"{self.name}: write {point} rejected: {exc!r}") from None
        result = _as_float(back)
        if result is None:
            raise DeviceProtocolError(f"{self.name}: read-back of {point} is not a number: {back!r}")
        return result

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
