"""Modbus register encoding, pure: data types, byte and word orders, bits, scale/offset and unit conversion.

Word orders name where the bytes of a big-endian value A B C D (A most significant) land in the registers:
ABCD -> [AB, CD] (Modbus' own order), CDAB -> [CD, AB] (word swap), BADC -> [BA, DC] (byte swap),
DCBA -> [DC, BA] (both). For 64-bit values the same rule applies to four words; for 16-bit values only the
byte swap (BADC, DCBA) matters.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Final

from drivers.base import DataType, DeviceProtocolError, PointError, PointSpec, WordOrder, registers_of

_FORMATS: Final[dict[str, str]] = {
    "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f", "float64": ">d",
}
_RANGES: Final[dict[str, tuple[int, int]]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
}
WORD_ORDERS: Final[tuple[WordOrder, ...]] = ("ABCD", "CDAB", "BADC", "DCBA")


def _to_words(data: bytes, order: WordOrder) -> list[int]:
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def _from_words(registers: Sequence[int], order: WordOrder) -> bytes:
    words = [int(r & 0xFFFF).to_bytes(2, "big") for r in registers]
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    return b"".join(words)


def pack(data_type: DataType, order: WordOrder, raw: float) -> list[int]:
    """A raw value -> registers. Integers must fit their type (PointError otherwise)."""
    fmt = _FORMATS.get(data_type)
    if fmt is None:
        raise PointError(f"data type {data_type} is not a register type")
    if data_type in _RANGES:
        lo, hi = _RANGES[data_type]
        if not math.isfinite(raw):
            raise PointError(f"{raw!r} is not a number")
        value: float | int = round(raw)
        if not lo <= value <= hi:
            raise PointError(f"{raw:g} does not fit a {data_type} ({lo}..{hi})")
    else:
        value = float(raw)
    return _to_words(struct.pack(fmt, value), order)


def unpack(data_type: DataType, order: WordOrder, registers: Sequence[int]) -> float:
    """Registers -> the raw value they hold."""
    fmt = _FORMATS.get(data_type)
    if fmt is None:
        raise DeviceProtocolError(f"data type {data_type} is not a register type")
    n = struct.calcsize(fmt) // 2
    if len(registers) < n:
        raise DeviceProtocolError(f"a {data_type} needs {n} registers, got {len(registers)}")
    return float(struct.unpack(fmt, _from_words(registers[:n], order))[0])


def decode(point: PointSpec, registers: Sequence[int | bool]) -> float:
    """The registers (or the one coil/discrete input) of `point` -> its value in the point's stored unit."""
    if point.register_type in ("coil", "discrete"):
        return 1.0 if registers[0] else 0.0
    if point.bit is not None:
        return float((int(registers[0]) >> point.bit) & 1)
    raw = unpack(point.data_type, point.word_order, [int(r) for r in registers])
    return point.to_unit(raw * point.scale + point.offset)


def encode(point: PointSpec, value: float) -> list[int]:
    """A value in the point's stored unit -> the registers the device takes (coils: [0] or [1])."""
    if point.register_type in ("coil", "discrete"):
        return [1 if value else 0]
    if point.bit is not None:
        raise PointError(f"point {point.name!r}: a bit of a register cannot be written")
    raw = (point.to_device(value) - point.offset) / point.scale
    try:
        return pack(point.data_type, point.word_order, raw)
    except PointError as exc:
        raise PointError(f"point {point.name!r}: {value:g} {point.unit}: {exc}") from None


def candidates(registers: Sequence[int], at: int) -> dict[str, float]:
    """What the registers from index `at` would mean in each data type and word order (for probing a map)."""
    out: dict[str, float] = {}
    for dtype in ("uint16", "int16", "uint32", "int32", "float32", "float64"):
        n = registers_of(dtype)
        if at + n > len(registers):
            continue
        orders: tuple[WordOrder, ...] = ("ABCD", "BADC") if n == 1 else WORD_ORDERS
        for order in orders:
            out[f"{dtype} {order}" if n > 1 or order != "ABCD" else dtype] = unpack(
                dtype, order, registers[at : at + n])
    return out
