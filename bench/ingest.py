"""Ingest benchmark: our buffer -> writer path against raw COPY, SQLAlchemy ORM bulk and per-row INSERT.

Run `python -m bench.ingest` (or `python bench/ingest.py`); `--help` lists the size flags. Uses
DATABASE_URL when set (a scratch database is created on that server and dropped afterwards), else an
embedded PostgreSQL in a temporary directory. Every method writes the same telemetry table, emptied
before each repetition; figures are medians over the repetitions. It prints, it does not assert.

Targets: (a) our path >= 1/2 of (b) raw COPY, and (a) >= 50x (d) per-row INSERT + commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
import sqlalchemy
from sqlalchemy import DateTime, SmallInteger, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app import db
from app.ingest.buffer import ReadingBuffer
from app.ingest.spool import Row
from app.ingest.writer import COLUMNS, TelemetryWriter
from bench._stack import scratch_database
from drivers.base import Quality, Reading

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class TelemetryRow(Base):
    __tablename__ = "telemetry"

    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    channel_id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[float | None]
    quality: Mapped[int] = mapped_column(SmallInteger)


def make_readings(n: int, channels: int) -> tuple[dict[str, int], list[Reading]]:
    """n readings spread over `channels` channels at 1 Hz each, like the drivers produce them."""
    chans = {f"dev{c // 10}.ch{c}": c + 1 for c in range(channels)}
    keys = list(chans)
    out = []
    for i in range(n):
        key = keys[i % channels]
        t = T0 + timedelta(seconds=i // channels)
        out.append(Reading(key, 20.0 + (i % 1000) * 0.01, t, Quality.GOOD))
    return chans, out


def to_rows(chans: dict[str, int], readings: list[Reading]) -> list[Row]:
    return [(r.source_time, chans[r.channel], r.value, int(r.quality)) for r in readings]


async def truncate(dsn: str, timescale: bool) -> None:
    conn = await db.connect(dsn)
    try:
        if timescale:
            await conn.execute("TRUNCATE telemetry")
        else:
            await conn.execute("TRUNCATE telemetry, telemetry_5m")
        await conn.execute("VACUUM ANALYZE telemetry")
    finally:
        await conn.close()


async def check_count(dsn: str, expected: int) -> None:
    conn = await db.connect(dsn)
    try:
        n = await conn.fetchval("SELECT count(*) FROM telemetry")
    finally:
        await conn.close()
    if n != expected:
        print(f"  WARNING: {n} rows in telemetry, expected {expected}")


# -- the methods: each returns the wall seconds of the measured part -------------------------------------


async def run_ours(
    dsn: str, chans: dict[str, int], readings: list[Reading], batch: int, spool_dir: Path
) -> float:
    """(a) readings put into the buffer -> TelemetryWriter -> committed (COPY + rollup in one transaction)."""
    buf = ReadingBuffer(len(readings) + 1)
    committed = 0
    done = asyncio.Event()
    total = len(readings)

    def on_commit(n: int) -> None:
        nonlocal committed
        committed += n
        if committed >= total:
            done.set()

    spool = spool_dir / f"spool-{uuid.uuid4().hex[:8]}.sqlite3"
    writer = TelemetryWriter(dsn, buf, chans, spool_path=spool, batch_size=batch, flush_interval=0.05,
                             on_commit=on_commit)
    task = asyncio.create_task(writer.run())
    # connected and idle before the clock starts
    deadline = time.monotonic() + 30
    while not writer.db_up:
        if time.monotonic() > deadline:
            raise RuntimeError("the writer did not connect within 30 s")
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    # feed in slices, as drivers do, so producing overlaps with the writer's I/O
    put = buf.put_nowait
    for i in range(0, total, 1000):
        for r in readings[i:i + 1000]:
            put(r)
        await asyncio.sleep(0)
    await done.wait()
    elapsed = time.perf_counter() - started
    await writer.stop()
    await task
    if writer.spool.rows or buf.dropped:
        print(f"  WARNING: spool {writer.spool.rows} rows, buffer dropped {buf.dropped}")
    return elapsed


async def run_copy(dsn: str, rows: list[Row], batch: int) -> float:
    """(b) raw asyncpg copy_records_to_table, one COPY (= one transaction) per batch."""
    conn = await db.connect(dsn)
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            await conn.copy_records_to_table("telemetry", records=rows[i:i + batch], columns=COLUMNS)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def run_orm(dsn: str, rows: list[Row], batch: int) -> float:
    """(c) SQLAlchemy 2 ORM bulk INSERT (session.execute(insert(Model), dicts)), one commit per batch."""
    engine = db.create_engine(dsn)
    dicts = [{"time": t, "channel_id": c, "value": v, "quality": q} for t, c, v, q in rows]
    try:
        sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        async with sessions() as session:
            await session.execute(sqlalchemy.text("SELECT 1"))  # connect before the clock starts
            await session.commit()
            started = time.perf_counter()
            for i in range(0, len(dicts), batch):
                await session.execute(insert(TelemetryRow), dicts[i:i + batch])
                await session.commit()
            return time.perf_counter() - started
    finally:
        await engine.dispose()


async def run_per_row(dsn: str, rows: list[Row]) -> float:
    """(d) one INSERT and one commit per row."""
    conn = await db.connect(dsn)
    try:
        stmt = await conn.prepare(
            "INSERT INTO telemetry (time, channel_id, value, quality) VALUES ($1, $2, $3, $4)"
        )
        started = time.perf_counter()
        for r in rows:
            await stmt.fetch(*r)  # autocommit: each statement is its own transaction
        return time.perf_counter() - started
    finally:
        await conn.close()


# -- driver -----------------------------------------------------------------------------------------------


async def measure(
    name: str, n_rows: int, reps: int, dsn: str, timescale: bool, fn: Callable[[], Awaitable[float]]
) -> list[float]:
    rates = []
    for rep in range(reps):
        await truncate(dsn, timescale)
        seconds = await fn()
        await check_count(dsn, n_rows)
        rates.append(n_rows / seconds)
        print(f"  {name} rep {rep + 1}: {n_rows} rows in {seconds:.3f} s = {n_rows / seconds:,.0f} rows/s",
              flush=True)
    return rates


async def main_async(args: argparse.Namespace) -> None:
    async with scratch_database("bench_ingest") as scratch:
        dsn, tmp, where, version = scratch.dsn, scratch.tmp, scratch.where, scratch.version
        conn = await db.connect(dsn)
        try:
            timescale = await db.timescale_enabled(conn)
        finally:
            await conn.close()
        print("culturectl ingest benchmark")
        print(f"  machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
              f"{platform.release()}, Python {platform.python_version()}")
        rollup = "continuous aggregate" if timescale else "rollup upserted by the writer"
        print(f"  database: {where}, PostgreSQL {version}, TimescaleDB {'on' if timescale else 'off'}"
              f" ({rollup})")
        print(f"  asyncpg {asyncpg.__version__}, SQLAlchemy {sqlalchemy.__version__}")
        print(f"  rows {args.rows:,} (per-row method {args.per_row_rows:,}), batch {args.batch:,}, "
              f"{args.channels} channels, {args.reps} repetitions, medians reported\n")

        chans, readings = make_readings(args.rows, args.channels)
        rows = to_rows(chans, readings)
        few = rows[: args.per_row_rows]
        results: dict[str, tuple[int, list[float]]] = {}
        results["(a) ours: buffer -> writer"] = (args.rows, await measure(
            "(a)", args.rows, args.reps, dsn, timescale,
            lambda: run_ours(dsn, chans, readings, args.batch, tmp)))
        results["(b) raw asyncpg COPY"] = (args.rows, await measure(
            "(b)", args.rows, args.reps, dsn, timescale, lambda: run_copy(dsn, rows, args.batch)))
        if not args.skip_orm:
            results["(c) SQLAlchemy ORM bulk"] = (args.rows, await measure(
                "(c)", args.rows, args.reps, dsn, timescale, lambda: run_orm(dsn, rows, args.batch)))
        results["(d) per-row INSERT+commit"] = (len(few), await measure(
            "(d)", len(few), args.reps, dsn, timescale, lambda: run_per_row(dsn, few)))

        copy_rate = statistics.median(results["(b) raw asyncpg COPY"][1])
        print(f"\n{'method':<28} {'rows':>9} {'median rows/s':>14} {'min..max rows/s':>22}"
              f" {'vs COPY':>8}")
        for label, (n, rates) in results.items():
            med = statistics.median(rates)
            print(f"{label:<28} {n:>9,} {med:>14,.0f} {min(rates):>10,.0f}..{max(rates):<11,.0f}"
                  f" {med / copy_rate:>7.2f}x")
        ours = statistics.median(results["(a) ours: buffer -> writer"][1])
        per_row = statistics.median(results["(d) per-row INSERT+commit"][1])
        r1, r2 = ours / copy_rate, ours / per_row
        print(f"\n(a)/(b) = {r1:.2f}  (target >= 0.50: {'met' if r1 >= 0.5 else 'NOT met'})")
        print(f"(a)/(d) = {r2:.0f}x (target >= 50x: {'met' if r2 >= 50 else 'NOT met'})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000, help="rows for methods (a), (b), (c)")
    p.add_argument("--per-row-rows", type=int, default=2_000, help="rows for method (d), the slow one")
    p.add_argument("--batch", type=int, default=5_000, help="rows per COPY / commit")
    p.add_argument("--channels", type=int, default=50, help="channels the rows are spread over")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each method")
    p.add_argument("--skip-orm", action="store_true", help="leave out (c)")
    args = p.parse_args(argv)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
