"""Modbus TCP driver for culture systems: polls the point map, one request at a time per connection.

Design choices:
- pymodbus' own retries and reconnect task are switched off (`retries=0`, `reconnect_delay=0`): the
  supervisor owns reconnects, and hidden retries would pile up behind a slow device.
- One `asyncio.Lock` per connection serialises requests. After a timeout the connection is dropped,
  because the late answer could otherwise be read as the answer to the next request; the driver then
  raises DeviceUnavailable and the supervisor reconnects.
- Each register type is read in as few requests as the map allows: one contiguous span per type.

Errors: pymodbus exceptions and error responses are translated here (see `drivers.base`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlparse

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from app.core.clock import Clock
from drivers.base import (
    DeviceProtocolError,
    DeviceUnavailable,
    PointError,
    PointSpec,
    Reading,
    RegisterType,
    find_point,
    reading,
)
from drivers.devices import DeviceConfig
from drivers.points import CULTURE_SYSTEM_DEVICE_ID, MODBUS_WORD_ORDER

log = logging.getLogger("culturectl.devices.modbus")

DATATYPE = AsyncModbusTcpClient.DATATYPE
_WORD_ORDER: Literal["big", "little"] = "little" if MODBUS_WORD_ORDER == "little" else "big"
# Modbus allows at most 125 registers in one read request.
MAX_REGISTERS_PER_READ: Final = 125


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """`modbus://host:port` -> (host, port); the port defaults to 502."""
    url = urlparse(endpoint)
    if url.scheme != "modbus" or not url.hostname:
        raise ValueError(f"not a modbus://host:port endpoint: {endpoint!r}")
    return url.hostname, url.port or 502


@dataclass(frozen=True, slots=True)
class Span:
    """One read request: `count` registers of one type from `start`, covering `points`."""

    register_type: RegisterType
    start: int
    count: int
    points: tuple[PointSpec, ...]


def plan_reads(points: Sequence[PointSpec]) -> list[Span]:
    """Group points into as few read requests as possible (one span per type, split at 125 registers)."""
    spans: list[Span] = []
    for rtype in ("input", "holding"):
        chosen = sorted((p for p in points if p.register_type == rtype), key=lambda p: int(p.address))
        group: list[PointSpec] = []
        start = end = 0
        for p in chosen:
            addr = int(p.address)
            if group and addr + p.register_count - start > MAX_REGISTERS_PER_READ:
                spans.append(Span(rtype, start, end - start, tuple(group)))
                group = []
            if not group:
                start = addr
                end = addr
            group.append(p)
            end = max(end, addr + p.register_count)
        if group:
            spans.append(Span(rtype, start, end - start, tuple(group)))
    return spans


def decode(point: PointSpec, registers: Sequence[int]) -> float:
    """Registers of one point -> engineering value (`raw * scale`)."""
    if point.data_type == "float32":
        raw = AsyncModbusTcpClient.convert_from_registers(
            list(registers[:2]), DATATYPE.FLOAT32, word_order=_WORD_ORDER
        )
    elif point.data_type == "int16":
        raw = AsyncModbusTcpClient.convert_from_registers(list(registers[:1]), DATATYPE.INT16)
    elif point.data_type == "uint16":
        raw = AsyncModbusTcpClient.convert_from_registers(list(registers[:1]), DATATYPE.UINT16)
    else:
        raise DeviceProtocolError(f"point {point.name!r}: data type {point.data_type} is not a register type")
    if not isinstance(raw, int | float):
        raise DeviceProtocolError(f"point {point.name!r}: cannot decode {registers!r}")
    return float(raw) * point.scale


def encode(point: PointSpec, value: float) -> list[int]:
    """Engineering value -> registers of one point."""
    if point.data_type == "float32":
        return AsyncModbusTcpClient.convert_to_registers(
            value, DATATYPE.FLOAT32, word_order=_WORD_ORDER
        )
    raw = round(value / point.scale)
    if point.data_type == "int16":
        if not -32768 <= raw <= 32767:
            raise PointError(f"point {point.name!r}: {value} does not fit an int16 register")
        return AsyncModbusTcpClient.convert_to_registers(raw, DATATYPE.INT16)
    if point.data_type == "uint16":
        if not 0 <= raw <= 65535:
            raise PointError(f"point {point.name!r}: {value} does not fit a uint16 register")
        return AsyncModbusTcpClient.convert_to_registers(raw, DATATYPE.UINT16)
    raise PointError(f"point {point.name!r}: data type {point.data_type} cannot be written as registers")


class ModbusDriver:
    """Polls every point of one Modbus TCP device every `config.poll_interval` wall seconds."""

    def __init__(self, config: DeviceConfig, clock: Clock, device_id: int = CULTURE_SYSTEM_DEVICE_ID) -> None:
        self.config = config
        self.name: str = config.name
        self.points: Sequence[PointSpec] = config.points
        self._clock = clock
        self._device_id = device_id
        self._host, self._port = parse_endpoint(config.endpoint)
        self._spans = plan_reads(self.points)
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._closed_by_peer: asyncio.Future[None] | None = None

    def _on_connect_change(self, connected: bool) -> None:
        # pymodbus leaves a pending request waiting for its timeout when the peer closes; end it now.
        fut = self._closed_by_peer
        if not connected and fut is not None and not fut.done():
            fut.set_result(None)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the TCP connection; raise DeviceUnavailable when it cannot."""
        await self.close()
        client = AsyncModbusTcpClient(
            self._host,
            port=self._port,
            timeout=self.config.timeout,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
            name=self.name,
            trace_connect=self._on_connect_change,
        )
        self._client = client
        self._closed_by_peer = asyncio.get_running_loop().create_future()
        try:
            ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            await self.close()
            raise DeviceUnavailable(
                f"{self.name}: cannot connect to {self.config.endpoint}: {exc!r}"
            ) from None
        if not ok:
            await self.close()
            raise DeviceUnavailable(f"{self.name}: cannot connect to {self.config.endpoint}")

    async def _request(self, what: str, call: str, address: int, **kwargs: object) -> ModbusPDU:
        """Run one request under the connection lock, translating every failure."""
        async with self._lock:
            client = self._client
            if client is None or not client.connected:
                # Never let pymodbus reconnect behind our back inside execute().
                raise DeviceUnavailable(f"{self.name}: not connected")
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.requests += 1
            try:
                method = getattr(client, call)
                response = await self._unless_closed(method(address, device_id=self._device_id, **kwargs))
            except (TimeoutError, ModbusIOException, ConnectionException, OSError) as exc:
                # A late answer must never match a later request: drop the connection.
                client.close()
                raise DeviceUnavailable(f"{self.name}: {what} failed: {exc}") from None
            except ModbusException as exc:
                raise DeviceProtocolError(f"{self.name}: {what} failed: {exc}") from None
            finally:
                self.in_flight -= 1
            if response.isError():
                raise DeviceProtocolError(f"{self.name}: {what}: device answered with error {response!r}")
            return response

    async def _unless_closed(self, request: Awaitable[ModbusPDU]) -> ModbusPDU:
        """Await `request`, but give up at once if the device closes the connection meanwhile."""
        closed = self._closed_by_peer
        if closed is None:
            return await request
        task = asyncio.ensure_future(request)
        try:
            await asyncio.wait((task, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if not task.done() or task.cancelled():
            raise ConnectionException("connection closed by the device")
        return task.result()

    async def _read_span(self, span: Span) -> list[int]:
        call = "read_input_registers" if span.register_type == "input" else "read_holding_registers"
        what = f"read {span.register_type} {span.start}+{span.count}"
        response = await self._request(what, call, span.start, count=span.count)
        registers = list(response.registers)
        if len(registers) < span.count:
            raise DeviceProtocolError(f"{self.name}: {what}: got {len(registers)} registers")
        return registers

    async def poll(self) -> list[Reading]:
        """Read every point once; all readings share the clock time of the poll."""
        when = self._clock.now()
        out: list[Reading] = []
        for span in self._spans:
            registers = await self._read_span(span)
            for p in span.points:
                offset = int(p.address) - span.start
                out.append(reading(self.name, p, decode(p, registers[offset : offset + p.register_count]), when))
        return out

    async def readings(self) -> AsyncIterator[Reading]:
        """Poll at a fixed wall-clock rate and yield readings; raise DeviceUnavailable on loss."""
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        while True:
            for r in await self.poll():
                yield r
            next_poll += self.config.poll_interval
            now = loop.time()
            if next_poll < now:
                # Fell behind (slow device): skip missed polls instead of bursting to catch up.
                next_poll = now
            await asyncio.sleep(next_poll - now)

    async def write(self, point: str, value: float) -> float:
        """Write an absolute value, read it back and return the read-back value."""
        spec = find_point(self.points, point, self.name)
        checked = spec.check_write(float(value))
        if spec.register_type != "holding":
            raise PointError(f"{self.name}: point {point!r} is not a holding register")
        registers = encode(spec, checked)
        address = int(spec.address)
        # Write and read-back as one unit, so a concurrent write cannot slip in between and be reported.
        async with self._write_lock:
            await self._request(f"write {point}", "write_registers", address, values=registers)
            response = await self._request(
                f"read back {point}", "read_holding_registers", address, count=spec.register_count
            )
        return decode(spec, list(response.registers))

    async def close(self) -> None:
        """Close the connection; never raises."""
        client, self._client = self._client, None
        self._closed_by_peer = None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # close() never raises
                log.debug("%s: close: %r", self.name, exc)
