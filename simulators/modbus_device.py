"""A Modbus TCP device built from a device profile: any unit id, tables, data types, word orders, bits and coils.

It stands in for hardware we did not design. It is written from the Modbus specification on asyncio streams
(MBAP header + PDU; functions 1, 2, 3, 4, 5, 6, 15, 16), not on pymodbus' server, so the driver is tested
against a second implementation. Like many real devices it refuses (ILLEGAL DATA ADDRESS) any read that
touches a register no point owns, answers GATEWAY TARGET FAILED for other unit ids, and refuses a write outside
a point's limits (ILLEGAL DATA VALUE).

Values come from `source()` (point name -> value in the point's stored unit, e.g. from the physics models by
role) and are encoded exactly as the profile says; `on_write(point, value)` receives accepted writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from drivers.base import PointError, PointSpec
from drivers.modbus_codec import decode, encode
from drivers.profiles import ModbusProfile, point_specs
from simulators._net import pick_free_port

log = logging.getLogger("culturectl.simulators")

ILLEGAL_FUNCTION: Final = 1
ILLEGAL_ADDRESS: Final = 2
ILLEGAL_VALUE: Final = 3
GATEWAY_TARGET_FAILED: Final = 0x0B
_BIT_TABLES: Final = {1: "coil", 2: "discrete", 5: "coil", 15: "coil"}
_REG_TABLES: Final = {3: "holding", 4: "input", 6: "holding", 16: "holding"}


class ModbusProfileDevice:
    """A Modbus TCP server on 127.0.0.1 that serves the points of `profile`."""

    def __init__(self, profile: ModbusProfile, source: Callable[[], Mapping[str, float]],
                 on_write: Callable[[str, float], None] | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.profile = profile
        self.points = point_specs(profile)
        self.unit_id = profile.modbus.unit_id
        self.host = host
        self.port = port or pick_free_port(host)
        self._source = source
        self._on_write = on_write
        self._server: asyncio.Server | None = None
        self._peers: set[asyncio.StreamWriter] = set()
        self.requests: list[tuple[int, int, int]] = []  # (function, address, count) of every request served
        self.overrides: dict[str, float] = {}  # point -> value reported instead of the source's
        # register (or bit) owners per table
        self._owner: dict[tuple[str, int], PointSpec] = {}
        for p in self.points:
            for a in range(int(p.address), int(p.address) + p.register_count):
                self._owner.setdefault((p.register_type or "holding", a), p)
        self._held: dict[str, float] = {p.name: 0.0 for p in self.points if p.writable}

    @property
    def endpoint(self) -> str:
        return f"modbus://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        for w in list(self._peers):
            w.close()
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def __aenter__(self) -> ModbusProfileDevice:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def value(self, p: PointSpec) -> float:
        if p.name in self.overrides:
            return self.overrides[p.name]
        if p.writable:
            return self._held[p.name]
        return float(self._source().get(p.name, 0.0))

    def set_held(self, point: str, value: float) -> None:
        """The current value of a writable point (what a read-back shows)."""
        self._held[point] = value

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._peers.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, pid, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                reply = self._answer(unit, pdu) if pid == 0 else None
                if reply is not None:
                    writer.write(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._peers.discard(writer)
            writer.close()

    def _answer(self, unit: int, pdu: bytes) -> bytes:
        fc = pdu[0]
        if unit != self.unit_id:
            return bytes([fc | 0x80, GATEWAY_TARGET_FAILED])
        try:
            return self._handle(fc, pdu[1:])
        except _Refused as exc:
            return bytes([fc | 0x80, exc.code])

    def _handle(self, fc: int, data: bytes) -> bytes:
        if fc in (1, 2, 3, 4):
            address, count = struct.unpack(">HH", data[:4])
            self.requests.append((fc, address, count))
            table = _BIT_TABLES.get(fc) or _REG_TABLES[fc]
            if fc in (1, 2):
                if not 1 <= count <= 2000:
                    raise _Refused(ILLEGAL_VALUE)
                bits = [self._bit(table, a) for a in range(address, address + count)]
                packed = bytes(sum(1 << i for i, b in enumerate(bits[k:k + 8]) if b) for k in range(0, count, 8))
                return bytes([fc, len(packed)]) + packed
            if not 1 <= count <= 125:
                raise _Refused(ILLEGAL_VALUE)
            regs = self._registers(table, address, count)
            return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *regs)
        if fc == 5:
            address, raw = struct.unpack(">HH", data[:4])
            self.requests.append((fc, address, 1))
            if raw not in (0x0000, 0xFF00):
                raise _Refused(ILLEGAL_VALUE)
            self._write("coil", address, [1 if raw else 0])
            return bytes([fc]) + data[:4]
        if fc == 15:
            address, count, _n = struct.unpack(">HHB", data[:5])
            self.requests.append((fc, address, count))
            coils = [(data[5 + i // 8] >> (i % 8)) & 1 for i in range(count)]
            self._write("coil", address, coils)
            return bytes([fc]) + data[:4]
        if fc == 6:
            address, value = struct.unpack(">HH", data[:4])
            self.requests.append((fc, address, 1))
            self._write("holding", address, [value])
            return bytes([fc]) + data[:4]
        if fc == 16:
            address, count, _n = struct.unpack(">HHB", data[:5])
            self.requests.append((fc, address, count))
            self._write("holding", address, list(struct.unpack(f">{count}H", data[5:5 + 2 * count])))
            return bytes([fc]) + data[:4]
        raise _Refused(ILLEGAL_FUNCTION)

    def _bit(self, table: str, address: int) -> bool:
        p = self._owner.get((table, address))
        if p is None:
            raise _Refused(ILLEGAL_ADDRESS)
        return bool(self.value(p))

    def _registers(self, table: str, address: int, count: int) -> list[int]:
        image: dict[int, int] = {}
        for a in range(address, address + count):
            if (table, a) not in self._owner:
                raise _Refused(ILLEGAL_ADDRESS)  # a register no point owns
        done: set[str] = set()
        for a in range(address, address + count):
            p = self._owner[(table, a)]
            start = int(p.address)
            if p.bit is not None:
                # the status word: every bit point of this register
                word = 0
                for q in self.points:
                    if q.register_type == table and int(q.address) == a and q.bit is not None and self.value(q):
                        word |= 1 << q.bit
                image[a] = word
                continue
            if p.name in done:
                continue
            done.add(p.name)
            for i, r in enumerate(encode(p, self.value(p))):
                image[start + i] = r
        return [image[a] for a in range(address, address + count)]

    def _write(self, table: str, address: int, values: Sequence[int]) -> None:
        touched: dict[str, PointSpec] = {}
        for i in range(len(values)):
            p = self._owner.get((table, address + i))
            if p is None or not p.writable:
                raise _Refused(ILLEGAL_ADDRESS)
            touched[p.name] = p
        for p in touched.values():
            start = int(p.address)
            if start < address or start + p.register_count > address + len(values):
                raise _Refused(ILLEGAL_ADDRESS)  # a write of part of a value
            value = decode(p, values[start - address : start - address + p.register_count])
            try:
                p.check_write(value)
            except PointError:
                raise _Refused(ILLEGAL_VALUE) from None
            self._held[p.name] = value
            if self._on_write is not None:
                self._on_write(p.name, value)
            log.info("modbus device %s: %s set to %s %s", self.profile.name, p.name, value, p.unit)


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
