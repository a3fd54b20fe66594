"""TelemetryWriter against a real PostgreSQL: rows land, rollup, replays, outages, poison, spool full."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app import db
from app.ingest.buffer import ReadingBuffer
from app.ingest.writer import TelemetryWriter
from drivers.base import Quality, Reading
from tests.support import OwnServer, wait_for

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
REPO = str(Path(__file__).resolve().parents[2])


def channels(prefix: str, first_id: int, n: int) -> dict[str, int]:
    return {f"{prefix}.ch{i}": first_id + i for i in range(n)}


def readings(chans: dict[str, int], start: int, n: int, step: float = 1.0) -> list[Reading]:
    """n readings per channel; every 7th is BAD (no value), values vary per channel and time."""
    out = []
    for i in range(start, start + n):
        t = T0 + timedelta(seconds=i * step)
        for key, cid in chans.items():
            if i % 7 == 3:
                out.append(Reading(key, None, t, Quality.BAD))
            else:
                out.append(Reading(key, cid * 10.0 + (i % 50) * 0.25, t, Quality.GOOD))
    return out


@contextlib.asynccontextmanager
async def running(writer: TelemetryWriter) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(writer.run())
    try:
        yield task
    finally:
        async with asyncio.timeout(30):
            await writer.stop()
            await task


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await db.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def count_rows(dsn: str, ids: Iterable[int]) -> int:
    sql = "SELECT count(*) AS n FROM telemetry WHERE channel_id = ANY($1::int[])"
    rows = await fetch(dsn, sql, list(ids))
    return int(rows[0]["n"])


async def is_timescale(dsn: str) -> bool:
    conn = await db.connect(dsn)
    try:
        return await db.timescale_enabled(conn)
    finally:
        await conn.close()


async def assert_rollup_matches_raw(dsn: str, ids: Iterable[int]) -> None:
    ids = list(ids)
    raw = await fetch(
        dsn,
        """SELECT channel_id, date_bin('5 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
                  count(value) AS n, sum(value) AS sum, min(value) AS min, max(value) AS max
           FROM telemetry WHERE channel_id = ANY($1::int[]) AND quality = 0 GROUP BY 1, 2 ORDER BY 1, 2""",
        ids,
    )
    rollup = await fetch(
        dsn,
        "SELECT channel_id, bucket, n, sum, min, max FROM telemetry_5m WHERE channel_id = ANY($1::int[])"
        " ORDER BY 1, 2",
        ids,
    )
    assert raw, "no raw rows to compare"
    assert [(r["channel_id"], r["bucket"], r["n"], r["min"], r["max"]) for r in rollup] == [
        (r["channel_id"], r["bucket"], r["n"], r["min"], r["max"]) for r in raw
    ]
    assert [r["sum"] for r in rollup] == pytest.approx([r["sum"] for r in raw])


async def assert_no_duplicates_and_order(dsn: str, ids: Iterable[int]) -> None:
    """Each (channel, time) once; within a channel, rows were stored in time order (physical order)."""
    sql = "SELECT channel_id, time FROM telemetry WHERE channel_id = ANY($1::int[]) ORDER BY ctid"
    rows = await fetch(dsn, sql, list(ids))
    seen: set[tuple[int, datetime]] = set()
    last: dict[int, datetime] = {}
    for r in rows:
        key = (r["channel_id"], r["time"])
        assert key not in seen, f"duplicate row {key}"
        seen.add(key)
        prev = last.get(r["channel_id"])
        assert prev is None or r["time"] > prev, f"channel {r['channel_id']} out of order at {r['time']}"
        last[r["channel_id"]] = r["time"]


# -- against the shared test server ------------------------------------------------------------------------


async def test_rows_land_with_the_rollup_and_unknown_channels_are_counted(
    db_dsn: str, tmp_path: Path
) -> None:
    chans = channels("inc1", 100, 5)
    buf = ReadingBuffer(100_000)
    committed: list[int] = []
    writer = TelemetryWriter(db_dsn, buf, chans, spool_path=tmp_path / "spool.sqlite3", batch_size=1000,
                             flush_interval=0.05, on_commit=committed.append)
    data = readings(chans, 0, 800)  # 800 s per channel: three 5-minute buckets
    async with running(writer):
        for r in data:
            buf.put_nowait(r)
        buf.put_nowait(Reading("ghost.pressure", 1.0, T0))
        buf.put_nowait(Reading("ghost.pressure", 2.0, T0 + timedelta(seconds=1)))
        await wait_for(lambda: writer.rows_written == len(data), 15, what="all rows committed")
    assert await count_rows(db_dsn, chans.values()) == len(data)
    stats = writer.stats()
    assert stats["db_up"] is False  # stopped
    assert stats["unknown_channel"] == 2
    assert stats["rows_written"] == len(data) == sum(committed)
    assert stats["last_commit_time"] is not None and stats["spool_rows"] == 0
    bad = await fetch(db_dsn, "SELECT count(*) AS n FROM telemetry WHERE channel_id = ANY($1::int[])"
                      " AND quality = 2 AND value IS NULL", list(chans.values()))
    assert bad[0]["n"] == sum(1 for r in data if r.quality is Quality.BAD)
    if not await is_timescale(db_dsn):
        await assert_rollup_matches_raw(db_dsn, chans.values())


async def test_nan_inf_and_huge_values_never_poison_the_rollup_nor_get_a_valid_reading_quarantined(
    db_dsn: str, tmp_path: Path
) -> None:
    """Readings that reach the writer from anywhere: non-finite values are stored BAD, huge ones implausible; the
    rollup keeps only good values, so nothing overflows and no valid reading of the batch is quarantined."""
    chans = channels("poison", 900, 2)
    a, b = chans
    buf = ReadingBuffer(10_000)
    writer = TelemetryWriter(db_dsn, buf, chans, spool_path=tmp_path / "spool.sqlite3", batch_size=100,
                             flush_interval=0.05)
    t = [T0 + timedelta(days=30, seconds=i) for i in range(8)]
    batch = [Reading(a, 37.0, t[0]), Reading(a, float("nan"), t[1]), Reading(a, 6e307, t[2]),
             Reading(a, 6e307, t[3]), Reading(a, float("inf"), t[4]), Reading(a, -1.5e308, t[5]),
             Reading(a, 37.5, t[6]), Reading(b, 1.5e308, t[0]), Reading(b, 36.0, t[1])]
    async with running(writer):
        for r in batch:
            buf.put_nowait(r)
        await wait_for(lambda: writer.rows_written == len(batch), 15, what="every row committed")
    assert writer.stats()["quarantined"] == 0 and writer.rejected_attempts == 0
    rows = await fetch(db_dsn, "SELECT channel_id, time, value, quality FROM telemetry WHERE channel_id = ANY($1)"
                       " ORDER BY channel_id, time", list(chans.values()))
    assert [(r["value"], r["quality"]) for r in rows] == [
        (37.0, 0), (None, 2), (6e307, 3), (6e307, 3), (None, 2), (-1.5e308, 3), (37.5, 0), (1.5e308, 3), (36.0, 0)]
    if not await is_timescale(db_dsn):
        rollup = await fetch(db_dsn, "SELECT channel_id, n, sum, min, max FROM telemetry_5m"
                             " WHERE channel_id = ANY($1) ORDER BY 1", list(chans.values()))
        assert [tuple(r) for r in rollup] == [(900, 2, 74.5, 37.0, 37.5), (901, 1, 36.0, 36.0, 36.0)]


async def test_a_replayed_batch_adds_no_duplicates(db_dsn: str, tmp_path: Path) -> None:
    chans = channels("inc2", 200, 3)
    buf = ReadingBuffer(100_000)
    writer = TelemetryWriter(db_dsn, buf, chans, spool_path=tmp_path / "spool.sqlite3", batch_size=500,
                             flush_interval=0.05)
    first = readings(chans, 0, 400)
    overlap = readings(chans, 200, 400)  # half already stored, half new
    async with running(writer):
        for r in first:
            buf.put_nowait(r)
        await wait_for(lambda: writer.rows_written == len(first), 15, what="first pass committed")
        for r in first + overlap:
            buf.put_nowait(r)
        expected = len(readings(chans, 0, 600))
        await wait_for(lambda: writer.rows_written == expected, 15, what="new rows of the replay committed")
        dups = len(first) + 200 * 3
        await wait_for(lambda: writer.duplicates_skipped == dups, 15, what="duplicates skipped")
    assert await count_rows(db_dsn, chans.values()) == expected
    rows = await fetch(db_dsn, "SELECT count(*) AS n, count(DISTINCT (channel_id, time)) AS d FROM telemetry"
                       " WHERE channel_id = ANY($1::int[])", list(chans.values()))
    assert rows[0]["n"] == rows[0]["d"] == expected
    if not await is_timescale(db_dsn):
        # the rollup counted only the rows really inserted
        await assert_rollup_matches_raw(db_dsn, chans.values())


async def test_a_poison_row_is_quarantined_and_the_rest_flows(db_dsn: str, tmp_path: Path) -> None:
    chans = channels("inc3", 300, 2)
    conn = await db.connect(db_dsn)
    # a rule the data breaks: the database rejects the row, whatever path the writer takes
    await conn.execute(
        "ALTER TABLE telemetry ADD CONSTRAINT test_no_minus_999 CHECK (value IS DISTINCT FROM -999)"
    )
    try:
        buf = ReadingBuffer(100_000)
        writer = TelemetryWriter(db_dsn, buf, chans, spool_path=tmp_path / "spool.sqlite3", batch_size=200,
                                 flush_interval=0.05)
        good = readings(chans, 0, 100)
        poison = Reading("inc3.ch1", -999.0, T0 + timedelta(seconds=50, milliseconds=500))
        later = readings(chans, 100, 100)
        async with running(writer):
            for r in good[:100]:
                buf.put_nowait(r)
            buf.put_nowait(poison)
            for r in good[100:]:
                buf.put_nowait(r)
            await wait_for(lambda: writer.spool.quarantined_rows == 1, 20, what="poison row quarantined")
            for r in later:
                buf.put_nowait(r)
            await wait_for(lambda: writer.rows_written == len(good) + len(later), 15, what="the rest written")
            quarantined = await writer.spool.quarantined()
        assert [q.rows for q in quarantined] == [[(poison.source_time, 301, -999.0, 0)]]
        assert "test_no_minus_999" in quarantined[0].error
        assert writer.stats()["quarantined"] == 1
        assert await count_rows(db_dsn, chans.values()) == len(good) + len(later)
        if not await is_timescale(db_dsn):
            await assert_rollup_matches_raw(db_dsn, chans.values())
    finally:
        await conn.execute("ALTER TABLE telemetry DROP CONSTRAINT test_no_minus_999")
        await conn.close()


# -- outages: our own server, stopped and restarted ---------------------------------------------------------




async def test_database_down_under_load_loses_nothing(own_pg: OwnServer, tmp_path: Path) -> None:
    chans = channels("cs1", 1000, 20)
    buf = ReadingBuffer(200_000)
    # short replay slices, so the replay interleaves with new data (and order could break)
    writer = TelemetryWriter(own_pg.dsn, buf, chans, spool_path=tmp_path / "spool.sqlite3", batch_size=2000,
                             flush_interval=0.1, reconnect_max=0.5, replay_rows=2000, drain_slice=0.02)
    generated = 0
    tick = 0
    rate_ticks = 50  # per second; 20 channels x 5 readings per tick = 5000 readings/s

    async def produce(seconds: float) -> None:
        nonlocal generated, tick
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            batch = readings(chans, tick * 5, 5, step=0.01)
            for r in batch:
                buf.put_nowait(r)
            generated += len(batch)
            tick += 1
            await asyncio.sleep(1 / rate_ticks)

    async with running(writer):
        await produce(1.0)
        await wait_for(lambda: writer.rows_written > 0, 10, what="first commits")
        producer = asyncio.create_task(produce(6.0))
        await own_pg.stop()
        down_at = time.monotonic()
        await wait_for(lambda: not writer.db_up, 10, what="writer noticing the outage")
        assert time.monotonic() - down_at < 30  # the "historian unavailable" signal
        await wait_for(lambda: writer.spool.rows > 0, 10, what="batches spooled")
        await asyncio.sleep(1.5)  # keep the outage going under load (not a synchronisation)
        await own_pg.start()
        await wait_for(lambda: writer.db_up, 15, what="reconnect")
        await producer
        await wait_for(lambda: writer.spool.batches == 0 and buf.depth == 0, 30, what="backlog drained")
        await wait_for(lambda: writer.rows_written == generated, 15, what="every generated row committed")
        stats = writer.stats()
    assert buf.dropped == 0
    assert stats["spooled_rows"] > 0 and stats["replayed_rows"] > 0 and stats["reconnects"] >= 1
    assert await count_rows(own_pg.dsn, chans.values()) == generated
    await assert_no_duplicates_and_order(own_pg.dsn, chans.values())
    if not await is_timescale(own_pg.dsn):
        await assert_rollup_matches_raw(own_pg.dsn, chans.values())


async def test_spool_full_records_gaps_written_when_the_database_returns(
    own_pg: OwnServer, tmp_path: Path
) -> None:
    chans = channels("cs2", 2000, 2)
    buf = ReadingBuffer(100_000)
    writer = TelemetryWriter(own_pg.dsn, buf, chans, spool_path=tmp_path / "spool.sqlite3", batch_size=100,
                             flush_interval=0.05, spool_capacity=400, reconnect_max=0.5)
    await own_pg.stop()
    try:
        async with running(writer):
            kept = readings(chans, 0, 200)  # 400 rows: fills the spool exactly
            lost = readings(chans, 200, 100)  # 200 rows past capacity
            for r in kept:
                buf.put_nowait(r)
            await wait_for(lambda: writer.spool.rows == 400, 15, what="spool full")
            assert writer.spool_level == "critical"
            for r in lost:
                buf.put_nowait(r)
            await wait_for(lambda: writer.gap_rows == 200, 15, what="overflow recorded as gaps")
            assert writer.stats()["gap_records"] == 2 and writer.spool.gap_count == 2
            await own_pg.start()
            await wait_for(lambda: writer.spool.rows == 0 and writer.spool.gap_count == 0, 20,
                           what="spool replayed and gaps written")
            assert writer.spool_level == "ok"
    finally:
        await own_pg.start()
    assert await count_rows(own_pg.dsn, chans.values()) == 400
    gaps = await fetch(own_pg.dsn, "SELECT channel_id, start_time, end_time, cause FROM telemetry_gap"
                       " WHERE channel_id = ANY($1::int[]) ORDER BY channel_id", list(chans.values()))
    lost_from, lost_to = T0 + timedelta(seconds=200), T0 + timedelta(seconds=299)
    assert [(g["channel_id"], g["start_time"], g["end_time"], g["cause"]) for g in gaps] == [
        (cid, lost_from, lost_to, "spool_full") for cid in chans.values()
    ]


_CHILD = """
import asyncio, sys
from datetime import UTC, datetime, timedelta
from app.ingest.buffer import ReadingBuffer
from app.ingest.writer import TelemetryWriter
from drivers.base import Reading

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

async def main() -> None:
    dsn, spool, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    chans = {f"cs3.ch{i}": 3000 + i for i in range(4)}
    buf = ReadingBuffer(n * 4 + 1)
    w = TelemetryWriter(dsn, buf, chans, spool_path=spool, batch_size=500, flush_interval=0.02,
                        replay_rows=500, drain_slice=0.01, reconnect_max=0.2,
                        on_commit=lambda rows: print("commit", rows, flush=True))
    task = asyncio.create_task(w.run())
    for i in range(n):
        for key, cid in chans.items():
            buf.put_nowait(Reading(key, float(i), T0 + timedelta(seconds=i)))
    while True:
        print("spool", w.spool.rows, flush=True)
        await asyncio.sleep(0.05)

asyncio.run(main())
"""


async def _child_until(own_pg: OwnServer, spool: Path, n: int, done: Callable[[str], bool]) -> None:
    """Run a writer process until its output satisfies `done`, then SIGKILL it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, own_pg.dsn, str(spool), str(n),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=REPO,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "the writer process ended early"
                if done(line.strip()):
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


async def test_sigkill_during_an_outage_and_mid_replay_loses_and_duplicates_nothing(
    own_pg: OwnServer, tmp_path: Path
) -> None:
    n = 3000  # per channel, 4 channels: 12000 rows
    ids = range(3000, 3004)
    spool = tmp_path / "spool.sqlite3"
    await own_pg.stop()
    try:
        # 1: database down, everything spooled, then the process is killed
        await _child_until(own_pg, spool, n, lambda line: line == f"spool {4 * n}")
    finally:
        await own_pg.start()
    # 2: database back, killed in the middle of the replay (after some commits, before the end)
    commits = 0

    def mid_replay(line: str) -> bool:
        nonlocal commits
        commits += line.startswith("commit")
        return commits >= 3

    await _child_until(own_pg, spool, 0, mid_replay)
    stored = await count_rows(own_pg.dsn, ids)
    assert 0 < stored < 4 * n, "the kill was meant to land mid-replay"
    # 3: a fresh writer finishes the job from the same spool
    buf = ReadingBuffer(10)
    writer = TelemetryWriter(own_pg.dsn, buf, {}, spool_path=spool, flush_interval=0.05)
    async with running(writer):
        await wait_for(lambda: writer.db_up and writer.spool.rows == 0, 20, what="spool replayed")
    assert await count_rows(own_pg.dsn, ids) == 4 * n
    await assert_no_duplicates_and_order(own_pg.dsn, ids)
    if not await is_timescale(own_pg.dsn):
        await assert_rollup_matches_raw(own_pg.dsn, ids)
