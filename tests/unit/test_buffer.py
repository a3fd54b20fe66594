"""ReadingBuffer: overflow policies, counters and batching."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from app.ingest.buffer import OverflowPolicy, ReadingBuffer
from drivers.base import Reading

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def reading(i: int) -> Reading:
    return Reading("inc1.temperature", float(i), T0 + timedelta(seconds=i))


def values(batch: list[Reading]) -> list[float | None]:
    return [r.value for r in batch]


def test_drop_oldest_keeps_the_newest_readings_and_counts_the_loss() -> None:
    buf = ReadingBuffer(3, OverflowPolicy.DROP_OLDEST)
    for i in range(5):
        buf.put_nowait(reading(i))
    assert (buf.accepted, buf.dropped, buf.depth, buf.high_water) == (5, 2, 3, 3)
    assert values(buf.get_nowait(10)) == [2.0, 3.0, 4.0]
    assert buf.depth == 0


def test_drop_newest_keeps_the_oldest_readings_and_refuses_new_ones() -> None:
    buf = ReadingBuffer(3, OverflowPolicy.DROP_NEWEST)
    for i in range(5):
        buf.put_nowait(reading(i))
    assert (buf.accepted, buf.dropped, buf.depth) == (3, 2, 3)
    assert values(buf.get_nowait(10)) == [0.0, 1.0, 2.0]


def test_default_policy_is_drop_oldest_and_stats_report_counters() -> None:
    buf = ReadingBuffer(2)
    for i in range(3):
        buf.put_nowait(reading(i))
    stats = buf.stats()
    assert stats["policy"] == "drop_oldest"
    assert (stats["accepted"], stats["dropped"], stats["depth"], stats["high_water"]) == (3, 1, 2, 2)
    buf.get_nowait(2)
    assert buf.stats()["depth"] == 0 and buf.stats()["high_water"] == 2


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        ReadingBuffer(0)


async def test_get_batch_returns_as_soon_as_the_batch_is_full() -> None:
    buf = ReadingBuffer(100)

    async def producer() -> None:
        for i in range(10):
            buf.put_nowait(reading(i))
            await asyncio.sleep(0)

    started = time.monotonic()
    task = asyncio.create_task(producer())
    batch = await buf.get_batch(10, timeout=5.0)
    await task
    assert values(batch) == [float(i) for i in range(10)]
    assert time.monotonic() - started < 1.0, "get_batch waited for the timeout although the batch was full"


async def test_get_batch_returns_a_partial_batch_after_the_timeout() -> None:
    buf = ReadingBuffer(100)
    buf.put_nowait(reading(0))
    buf.put_nowait(reading(1))
    started = time.monotonic()
    batch = await buf.get_batch(10, timeout=0.2)
    elapsed = time.monotonic() - started
    assert values(batch) == [0.0, 1.0]
    assert 0.15 <= elapsed < 1.0


async def test_get_batch_never_returns_more_than_asked_and_keeps_order() -> None:
    buf = ReadingBuffer(100)
    for i in range(25):
        buf.put_nowait(reading(i))
    got: list[Reading] = []
    for _ in range(3):
        got += await buf.get_batch(10, timeout=0.1)
    assert [len(b) for b in (got[:10], got[10:20], got[20:])] == [10, 10, 5]
    assert values(got) == [float(i) for i in range(25)]


async def test_get_batch_is_empty_when_nothing_arrives() -> None:
    buf = ReadingBuffer(10)
    assert await buf.get_batch(5, timeout=0.05) == []


async def test_a_reading_arriving_during_the_wait_is_delivered() -> None:
    buf = ReadingBuffer(10)
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, buf.put_nowait, reading(7))
    batch = await buf.get_batch(5, timeout=0.5)
    assert values(batch) == [7.0]
