"""Spool: order, persistence across reopen, capacity, quarantine and gaps."""

from __future__ import annotations

import asyncio
import math
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.ingest.spool import Row, Spool, SpoolClosed, decode_rows, encode_rows, level_of

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
REPO = str(Path(__file__).resolve().parents[2])


def rows(start: int, n: int, channel: int = 1) -> list[Row]:
    return [(T0 + timedelta(seconds=start + i), channel, float(start + i), 0) for i in range(n)]


def test_rows_survive_encoding_exactly() -> None:
    data: list[Row] = [
        (T0 + timedelta(microseconds=123_457), 7, 21.5, 0),
        (T0, 8, None, 2),
        (T0 + timedelta(days=3650), 2_000_000_000, -1e300, 1),
    ]
    assert decode_rows(encode_rows(data)) == data
    nan = decode_rows(encode_rows([(T0, 1, math.nan, 0)]))[0][2]
    assert nan is not None and math.isnan(nan)


def test_levels() -> None:
    assert [level_of(x) for x in (0.0, 0.79, 0.8, 0.94, 0.95, 1.0)] == [
        "ok", "ok", "warn", "warn", "critical", "critical"]


async def test_batches_come_back_in_order_and_leave_only_when_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3", capacity_rows=1000)
    await spool.open()
    try:
        ids = [await spool.append(rows(i * 10, 10)) for i in range(5)]
        assert all(i is not None for i in ids)
        assert (spool.rows, spool.batches) == (50, 5)
        first = await spool.oldest(limit=2)
        assert [b.rows for b in first] == [rows(0, 10), rows(10, 10)]
        # reading does not remove anything
        assert (await spool.oldest())[0].id == ids[0]
        await spool.delete([ids[0], ids[1]])
        assert (spool.rows, spool.batches) == (30, 3)
        rest = await spool.oldest(limit=10)
        assert [b.id for b in rest] == ids[2:]
        assert rest[0].rows == rows(20, 10)
    finally:
        await spool.close()


async def test_oldest_respects_max_rows_but_always_returns_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", capacity_rows=1000)
    await spool.open()
    try:
        for i in range(4):
            await spool.append(rows(i * 100, 100))
        assert len(await spool.oldest(limit=10, max_rows=250)) == 2
        assert len(await spool.oldest(limit=10, max_rows=10)) == 1
    finally:
        await spool.close()


async def test_spool_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, capacity_rows=1000)
    await spool.open()
    a = await spool.append(rows(0, 3))
    await spool.append(rows(3, 4, channel=2))
    assert a is not None
    await spool.delete([a])
    await spool.quarantine([(rows(100, 1), "CheckViolationError: bad")])
    await spool.record_gap(5, T0, T0 + timedelta(minutes=1), "spool_full", 60)
    await spool.close()
    with pytest.raises(SpoolClosed):
        await spool.append(rows(0, 1))

    again = Spool(path, capacity_rows=1000)
    await again.open()
    try:
        assert (again.rows, again.batches) == (4, 1)
        assert (await again.oldest())[0].rows == rows(3, 4, channel=2)
        assert again.quarantined_rows == 1
        q = await again.quarantined()
        assert q[0].rows == rows(100, 1) and "bad" in q[0].error
        gaps = await again.gaps()
        assert [(g.channel_id, g.start, g.end, g.cause, g.n_rows) for g in gaps] == [
            (5, T0, T0 + timedelta(minutes=1), "spool_full", 60)]
    finally:
        await again.close()


async def test_capacity_refuses_a_batch_that_does_not_fit_and_reports_fill(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3", capacity_rows=100)
    await spool.open()
    try:
        assert await spool.append(rows(0, 80)) is not None
        assert spool.fill_ratio == pytest.approx(0.8)
        assert spool.level == "warn"
        assert await spool.append(rows(80, 15)) is not None
        assert spool.level == "critical"
        assert await spool.append(rows(95, 10)) is None, "a batch past capacity must not be stored"
        assert (spool.rows, spool.refused_batches, spool.refused_rows) == (95, 1, 10)
        assert await spool.append(rows(95, 5)) is not None  # exactly full is allowed
        assert spool.fill_ratio == pytest.approx(1.0)
        first = (await spool.oldest())[0]
        await spool.delete([first.id])
        assert spool.level == "ok" and spool.rows == 20
    finally:
        await spool.close()


async def test_quarantine_removes_the_spooled_batch_in_the_same_step(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3", capacity_rows=100)
    await spool.open()
    try:
        bid = await spool.append(rows(0, 10))
        await spool.quarantine([(rows(3, 1), "DataError: x")], delete_batch_id=bid)
        assert (spool.rows, spool.batches, spool.quarantined_rows) == (0, 0, 1)
    finally:
        await spool.close()


async def test_a_gap_can_be_widened_and_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3", capacity_rows=100)
    await spool.open()
    try:
        gid = await spool.record_gap(1, T0, T0 + timedelta(seconds=10), "spool_full", 10)
        later = T0 + timedelta(seconds=11)
        same = await spool.record_gap(1, later, T0 + timedelta(seconds=20), "spool_full", 10, gap_id=gid)
        assert same == gid and spool.gap_count == 1
        (gap,) = await spool.gaps()
        assert (gap.start, gap.end, gap.n_rows) == (T0, T0 + timedelta(seconds=20), 20)
        await spool.delete_gaps([gid])
        assert spool.gap_count == 0 and await spool.gaps() == []
    finally:
        await spool.close()


_KILL_CHILD = """
import asyncio, sys
from datetime import UTC, datetime, timedelta
from app.ingest.spool import Spool

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

async def main() -> None:
    spool = Spool(sys.argv[1], capacity_rows=10_000_000)
    await spool.open()
    for i in range(100_000):
        rows = [(T0 + timedelta(seconds=i * 100 + j), 1, float(j), 0) for j in range(100)]
        await spool.append(rows)
        print(i, flush=True)  # acknowledged: the batch is committed to disk

asyncio.run(main())
"""


async def test_acknowledged_batches_survive_sigkill(tmp_path: Path) -> None:

    path = tmp_path / "spool.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILL_CHILD, str(path), stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    acked = -1
    try:
        async with asyncio.timeout(20):
            while acked < 50:
                line = await proc.stdout.readline()
                assert line, "the spool writer process ended early"
                acked = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    # anything printed before the kill was acknowledged; drain what the pipe still holds
    rest = await proc.stdout.read()
    for line in rest.split():
        acked = int(line)

    spool = Spool(path, capacity_rows=10_000_000)
    await spool.open()
    try:
        assert spool.batches >= acked + 1, f"{acked + 1} batches acknowledged, {spool.batches} on disk"
        batches = await spool.oldest(limit=spool.batches)
        for i, b in enumerate(batches):
            assert b.rows[0][0] == T0 + timedelta(seconds=i * 100), "batches out of order or corrupted"
            assert len(b.rows) == 100
    finally:
        await spool.close()
