"""Modbus TCP driver: polls the points of a device's profile, one request at a time per connection.

Design choices:
- pymodbus' own retries and reconnect task are switched off (`retries=0`, `reconnect_delay=0`): the
  supervisor owns reconnects, and hidden retries would pile up behind a slow device.
- One `asyncio.Lock` per connection serialises requests. After a timeout the connection is dropped,
  because the late answer could otherwise be read as the answer to the next request; the driver then
  raises DeviceUnavailable and the supervisor reconnects.
- Neighbouring points of one table are read in one request (`plan_reads`): at most 125 registers or 2000
  bits (or the profile's lower limits), never spanning more than `max_gap` unmapped registers and never
  a range the profile marks unreadable.
- Values are decoded by `drivers.modbus_codec` (data type, byte and word order, bit, scale, offset, unit).
- Writes use the function the point needs: FC6 for one holding register, FC16 for more, FC5 for a coil
  (or the profile's `write_function`), each followed by a read-back.

Errors: pymodbus exceptions and error responses are translated here (see `drivers.base`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlparse

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from app.core.clock import Clock
from drivers.base import (
    DeviceProtocolError,
    DeviceUnavailable,
    PointCheck,
    PointError,
    PointSpec,
    Reading,
    RegisterType,
    find_point,
    reading,
)
from drivers.devices import DeviceConfig
from drivers.modbus_codec import decode, encode
from drivers.profiles import ModbusSettings

log = logging.getLogger("culturectl.devices.modbus")

# Modbus allows at most 125 registers or 2000 bits in one read request.
MAX_REGISTERS_PER_READ: Final = 125
MAX_BITS_PER_READ: Final = 2000
_READ_CALLS: Final[dict[str, str]] = {
    "coil": "read_coils", "discrete": "read_discrete_inputs",
    "input": "read_input_registers", "holding": "read_holding_registers",
}


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """`modbus://host:port` -> (host, port); the port defaults to 502."""
    url = urlparse(endpoint)
    if url.scheme != "modbus" or not url.hostname:
        raise ValueError(f"not a modbus://host:port endpoint: {endpoint!r}")
    return url.hostname, url.port or 502


@dataclass(frozen=True, slots=True)
class Span:
    """One read request: `count` registers (or bits) of one table from `start`, covering `points`."""

    register_type: RegisterType
    start: int
    count: int
    points: tuple[PointSpec, ...]


def plan_reads(points: Sequence[PointSpec], settings: ModbusSettings | None = None) -> list[Span]:
    """Group points into as few read requests as the device allows (see the module's notes)."""
    settings = settings or ModbusSettings()
    spans: list[Span] = []
    for table in ("coil", "discrete", "input", "holding"):
        bits = table in ("coil", "discrete")
        limit = settings.max_bits_per_read if bits else settings.max_registers_per_read
        unreadable = () if bits else settings.unreadable
        chosen = sorted((p for p in points if p.register_type == table), key=lambda p: int(p.address))
        group: list[PointSpec] = []
        start = end = 0
        for p in chosen:
            addr, stop = int(p.address), int(p.address) + p.register_count
            if group and (addr - end > settings.max_gap or max(end, stop) - start > limit
                          or any(lo <= addr - 1 and hi >= end for lo, hi in unreadable)):
                spans.append(Span(table, start, end - start, tuple(group)))
                group = []
            if not group:
                start = end = addr
            group.append(p)
            end = max(end, stop)
        if group:
            spans.append(Span(table, start, end - start, tuple(group)))
    return spans


class ModbusDriver:
    """Polls every point of one Modbus TCP device every `config.poll_interval` wall seconds."""

    def __init__(self, config: DeviceConfig, clock: Clock, device_id: int | None = None,
                 merge: bool = True) -> None:
        self.config = config
        self.name: str = config.name
        self.points: Sequence[PointSpec] = config.points
        self._clock = clock
        settings = config.modbus_settings
        self._device_id = settings.unit_id if device_id is None else device_id
        self._host, self._port = parse_endpoint(config.endpoint)
        self._settings = settings
        self._merge = merge  # False: one request per point (the bench's comparison; never used by the service)
        self._spans = self._plan(self.points)
        # the point check of the last connect (drivers.base.PointCheck per point of the profile)
        self.checks: list[PointCheck] = []
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._closed_by_peer: asyncio.Future[None] | None = None

    def _plan(self, points: Sequence[PointSpec]) -> list[Span]:
        if self._merge:
            return plan_reads(points, self._settings)
        return [Span(p.register_type or "input", int(p.address), p.register_count, (p,)) for p in points]

    async def inspect(self) -> list[PointCheck]:
        """Read every point on its own: found (the device answers), value. A point the device refuses is left
        out of the polls, so one wrong address does not blind the others."""
        checks: list[PointCheck] = []
        for p in self.points:
            where = f"{p.register_type} {p.address}" + (f" bit {p.bit}" if p.bit is not None else "")
            try:
                values = await self._read_span(Span(p.register_type or "input", int(p.address), p.register_count,
                                                    (p,)))
            except DeviceProtocolError as exc:
                checks.append(PointCheck(p.name, False, where, problems=(str(exc),)))
                continue
            try:
                value: float | None = decode(p, values)
            except DeviceProtocolError as exc:
                checks.append(PointCheck(p.name, True, where, p.data_type, p.device_unit, p.writable,
                                         problems=(str(exc),)))
                continue
            checks.append(PointCheck(p.name, True, where, p.data_type, p.device_unit or None,
                                     p.writable if p.register_type in ("holding", "coil") else False, value))
        return checks

    def _on_connect_change(self, connected: bool) -> None:
        # pymodbus leaves a pending request waiting for its timeout when the peer closes; end it now.
        fut = self._closed_by_peer
        if not connected and fut is not None and not fut.done():
            fut.set_result(None)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the TCP connection and check every point; raise DeviceUnavailable when it cannot."""
        await self.close()
        self.checks = []
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
        try:
            self.checks = await self.inspect()
        except DeviceUnavailable:
            await self.close()
            raise
        found = [p for p, c in zip(self.points, self.checks, strict=True) if c.found]
        if not found:
            await self.close()
            raise DeviceProtocolError(f"{self.name}: the device answers for none of the profile's points "
                                      f"(first: {self.checks[0].problems[0]})")
        self._spans = self._plan(found)

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
                code = int(getattr(response, "exception_code", 0) or 0)
                try:
                    text = ExcCodes(code).name
                except ValueError:
                    text = f"exception code {code}"
                raise DeviceProtocolError(f"{self.name}: {what}: the device answered {text}")
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

    async def _read_span(self, span: Span) -> list[int] | list[bool]:
        what = f"read {span.register_type} {span.start}+{span.count}"
        response = await self._request(what, _READ_CALLS[span.register_type], span.start, count=span.count)
        values: list[int] | list[bool] = list(response.bits) if span.register_type in ("coil", "discrete") \
            else list(response.registers)
        if len(values) < span.count:
            raise DeviceProtocolError(f"{self.name}: {what}: got {len(values)} values")
        return values

    async def poll(self) -> list[Reading]:
        """Read every point once; all readings share the clock time of the poll."""
        when = self._clock.now()
        out: list[Reading] = []
        for span in list(self._spans):
            try:
                values = await self._read_span(span)
            except DeviceProtocolError as exc:
                if len(span.points) < 2 or "ILLEGAL_ADDRESS" not in str(exc):
                    raise
                # the device refuses a register between two points: read them apart from now on (the profile's
                # `unreadable` ranges say so up front)
                log.warning("%s: %s; reading its %d points one by one (declare the gap in the profile's "
                            "modbus.unreadable)", self.name, exc, len(span.points))
                singles = [Span(span.register_type, int(p.address), p.register_count, (p,)) for p in span.points]
                i = self._spans.index(span)
                self._spans[i : i + 1] = singles
                for single in singles:
                    part = await self._read_span(single)
                    p = single.points[0]
                    out.append(reading(self.name, p, decode(p, part), when))
                continue
            for p in span.points:
                offset = int(p.address) - span.start
                out.append(reading(self.name, p, decode(p, values[offset : offset + p.register_count]), when))
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
        """Write an absolute value (in the point's unit), read it back and return the read-back value."""
        spec = find_point(self.points, point, self.name)
        checked = spec.check_write(float(value))
        if spec.register_type not in ("holding", "coil"):
            raise PointError(f"{self.name}: point {point!r} is a {spec.register_type}, which cannot be written")
        registers = encode(spec, checked)
        address = int(spec.address)
        coil = spec.register_type == "coil"
        function = spec.write_function or (5 if coil else 6 if len(registers) == 1 else 16)
        calls: dict[int, tuple[str, dict[str, object]]] = {
            5: ("write_coil", {"value": bool(registers[0])}),
            15: ("write_coils", {"values": [bool(registers[0])]}),
            6: ("write_register", {"value": registers[0]}),
            16: ("write_registers", {"values": registers}),
        }
        call, kwargs = calls[function]
        # Write and read-back as one unit, so a concurrent write cannot slip in between and be reported.
        async with self._write_lock:
            await self._request(f"write {point} (FC{function})", call, address, **kwargs)
            back = await self._read_span(Span(spec.register_type, address, spec.register_count, (spec,)))
        return decode(spec, back)

    async def close(self) -> None:
        """Close the connection; never raises."""
        client, self._client = self._client, None
        self._closed_by_peer = None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # close() never raises
                log.debug("%s: close: %r", self.name, exc)
