"""Telemetry writer: readings from the buffer -> COPY into PostgreSQL, with a disk spool for outages.

One task (`run`) owns one asyncpg connection and does everything in order:

- take a batch from the buffer, map channel keys to ids (unknown keys are counted, logged once each);
- fast path: COPY straight into `telemetry` and, on the plain (non-TimescaleDB) schema, upsert the
  batch's 5-minute aggregates into `telemetry_5m`, both in ONE transaction;
- a unique violation means a replay: redo the batch idempotently (COPY into a temp table, then
  INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING, rolling up only the rows really inserted);
- database unreachable (or read-only: a failover under way): the batch goes to the spool (fsync'd SQLite); the
  writer reconnects with capped backoff (a multi-host DSN: to whichever host is the primary now, see
  docs/high-availability.md) and then replays the spool oldest first, before newer data, deleting each batch
  only after its COMMIT. While a backlog exists new batches join the end of the spool, so order is kept;
- a batch the database rejects (data or constraint error) is tried 3 times, then split in halves until
  the offending rows are isolated; those go to the spool's quarantine table, the rest is written;
- spool full (and database down): the batch is not stored, a gap record per channel is kept in the
  spool and written to `telemetry_gap` when the database returns. Every loss is counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from app import db
from app.core.histogram import LATENCY_BUCKETS, Histogram
from app.ingest.buffer import ReadingBuffer
from app.ingest.spool import Row, Spool, level_of
from drivers.base import MAX_MAGNITUDE, Quality, Reading
from drivers.supervisor import backoff_delay

log = logging.getLogger("culturectl.ingest")

COLUMNS = ("time", "channel_id", "value", "quality")
BATCH_ROW_BUCKETS = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000)
_BUCKET = timedelta(minutes=5)
# Rollup buckets are aligned like date_bin('5 minutes', time, '2000-01-01 00:00:00+00').
_BUCKET_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
_GOOD = int(Quality.GOOD)
_BAD = int(Quality.BAD)
_IMPLAUSIBLE = int(Quality.IMPLAUSIBLE)

_CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS telemetry_in (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_ROLLUP_CONFLICT = """
    ON CONFLICT (channel_id, bucket) DO UPDATE SET
        n = r.n + excluded.n,
        sum = CASE WHEN r.sum IS NULL THEN excluded.sum
                   WHEN excluded.sum IS NULL THEN r.sum
                   ELSE r.sum + excluded.sum END,
        min = least(r.min, excluded.min),
        max = greatest(r.max, excluded.max)
"""
_UPSERT_ROLLUP = (
    """
    INSERT INTO telemetry_5m AS r (channel_id, bucket, n, sum, min, max)
    SELECT * FROM unnest($1::int[], $2::timestamptz[], $3::bigint[], $4::float8[], $5::float8[], $6::float8[])
    """
    + _ROLLUP_CONFLICT
)
_MERGE = """
    WITH ins AS (
        INSERT INTO telemetry (time, channel_id, value, quality)
        SELECT time, channel_id, value, quality FROM telemetry_in
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) FROM ins
"""
_MERGE_WITH_ROLLUP = (
    """
    WITH ins AS (
        INSERT INTO telemetry (time, channel_id, value, quality)
        SELECT time, channel_id, value, quality FROM telemetry_in
        ON CONFLICT DO NOTHING
        RETURNING channel_id, time, value, quality
    ), rollup AS (
        INSERT INTO telemetry_5m AS r (channel_id, bucket, n, sum, min, max)
        SELECT channel_id, date_bin('5 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
               count(value), sum(value), min(value), max(value)
        FROM ins WHERE quality = 0 AND value IS NOT NULL GROUP BY 1, 2
    """
    + _ROLLUP_CONFLICT
    + """
    )
    SELECT count(*) FROM ins
"""
)
_INSERT_GAP = """
    INSERT INTO telemetry_gap (channel_id, start_time, end_time, cause)
    SELECT $1::int, $2::timestamptz, $3::timestamptz, $4::text
    WHERE NOT EXISTS (
        SELECT 1 FROM telemetry_gap
        WHERE channel_id IS NOT DISTINCT FROM $1::int AND start_time = $2 AND end_time = $3 AND cause = $4
    )
"""


class _Unavailable(Exception):
    """The database cannot take the batch now (connection lost, refused, timed out, shutting down)."""


class _Rejected(Exception):
    """The database refused the data itself (data exception or constraint violation)."""


def _is_rejection(exc: BaseException) -> bool:
    """Data errors the database (or asyncpg's encoder) raises for this batch's content."""
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return True  # asyncpg could not encode a value: the data is bad, the connection is fine
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        # 22: data exception, 23: integrity constraint violation
        return state[:2] in ("22", "23")
    return False


RollupRow = tuple[int, datetime, int, float | None, float | None, float | None]


def rollup_rows(rows: Iterable[Row]) -> list[RollupRow]:
    """5-minute aggregates (channel_id, bucket, n, sum, min, max) of the GOOD rows, as PostgreSQL would compute them.

    Only GOOD values count: BAD rows have none, and implausible or uncertain ones are kept in `telemetry` but never
    averaged. GOOD values are finite and bounded by MAX_MAGNITUDE (see `_map`), so a sum cannot overflow.
    """
    acc: dict[tuple[int, int], list[Any]] = {}
    for t, cid, v, q in rows:
        if v is None or q != _GOOD:
            continue
        key = (cid, (t - _BUCKET_ORIGIN) // _BUCKET)
        a = acc.get(key)
        if a is None:
            acc[key] = [1, v, v, v]
            continue
        a[0] += 1
        a[1] += v
        if v < a[2]:
            a[2] = v
        if v > a[3]:
            a[3] = v
    return [(cid, _BUCKET_ORIGIN + b * _BUCKET, a[0], a[1], a[2], a[3]) for (cid, b), a in acc.items()]


class TelemetryWriter:
    """Moves readings from a ReadingBuffer into the telemetry table; never loses one silently."""

    def __init__(
        self,
        dsn: str,
        buffer: ReadingBuffer,
        channel_ids: Mapping[str, int],
        *,
        spool_path: Path | str,
        batch_size: int = 5_000,
        flush_interval: float = 0.5,
        spool_capacity: int = 5_000_000,
        max_attempts: int = 3,
        replay_rows: int = 20_000,
        reconnect_min: float = 0.2,
        reconnect_max: float = 5.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        health_interval: float = 5.0,
        drain_slice: float = 0.5,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._dsn = dsn
        self._buffer = buffer
        self._channel_ids: dict[str, int] = dict(channel_ids)
        self._spool = Spool(spool_path, spool_capacity)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_attempts = max(1, max_attempts)
        self._replay_rows = max(replay_rows, batch_size)
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._health_interval = health_interval
        self._drain_slice = drain_slice
        self.on_commit = on_commit

        self._conn: asyncpg.Connection | None = None
        self._timescale: bool | None = None
        self._failed_connects = 0  # in a row: the reconnect delay grows with it
        self._next_connect = 0.0
        self._last_activity = 0.0
        self._down_since: float | None = None
        self._running = False
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()
        # channel_id -> gap id of the overflow episode in progress (spool full, database down)
        self._open_gaps: dict[int, int] = {}
        self._unknown_seen: set[str] = set()
        self._invalid_seen: set[str] = set()
        self._last_level = "ok"

        self.rows_written = 0
        self.batches = 0
        self.batch_seconds = Histogram(LATENCY_BUCKETS)  # one committed batch: COPY (+ rollup) and COMMIT
        self.batch_rows = Histogram(BATCH_ROW_BUCKETS)
        self.last_commit_time: float | None = None
        self.duplicates_skipped = 0
        self.unknown_channel = 0
        self.invalid = 0
        self.replayed_rows = 0
        self.replayed_batches = 0
        self.spooled_rows = 0
        self.spooled_batches = 0
        self.gap_rows = 0
        self.gap_records = 0
        self.rejected_attempts = 0
        self.reconnects = 0
        self.last_error: str | None = None

    # -- public state ---------------------------------------------------------------------------------

    @property
    def db_up(self) -> bool:
        return self._conn is not None

    @property
    def timescale(self) -> bool | None:
        """Whether the database took the TimescaleDB path (None until the first connection)."""
        return self._timescale

    @property
    def spool(self) -> Spool:
        return self._spool

    @property
    def spool_level(self) -> str:
        """"ok", "warn" (spool >= 80 % full) or "critical" (>= 95 %)."""
        return self._spool.level

    def stats(self) -> dict[str, Any]:
        """Counters for /readyz and /metrics."""
        out: dict[str, Any] = {
            "rows_written": self.rows_written,
            "batches": self.batches,
            "batch_seconds": self.batch_seconds.snapshot(),
            "batch_rows": self.batch_rows.snapshot(),
            "last_commit_time": self.last_commit_time,
            "db_up": self.db_up,
            "db_down_since": self._down_since,
            "timescale": self._timescale,
            "duplicates_skipped": self.duplicates_skipped,
            "unknown_channel": self.unknown_channel,
            "invalid": self.invalid,
            "replayed_rows": self.replayed_rows,
            "replayed_batches": self.replayed_batches,
            "spooled_rows": self.spooled_rows,
            "spooled_batches": self.spooled_batches,
            "gap_rows": self.gap_rows,
            "gap_records": self.gap_records,
            "rejected_attempts": self.rejected_attempts,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }
        out.update(self._spool.stats())
        out.update({f"buffer_{k}": v for k, v in self._buffer.stats().items()})
        return out

    # -- life cycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write until `stop()`; then drain the buffer (to the database or the spool) and return."""
        if self._running:
            raise RuntimeError("TelemetryWriter.run() is already running")
        self._running = True
        self._done.clear()
        try:
            await self._spool.open()
            await self._connect()
            while True:
                stopping = self._stop_requested.is_set()
                # with a backlog to replay, do not idle waiting for a full batch
                backlog = self._conn is not None and self._spool.batches > 0
                idle = 0.0 if stopping or backlog else self._flush_interval
                readings = await self._buffer.get_batch(self._batch_size, idle)
                if readings:
                    await self._take(readings)
                # catch up when a slow step (a replay slice, a reconnect) let the buffer fill
                while self._buffer.depth >= self._batch_size:
                    await self._take(self._buffer.get_nowait(self._batch_size))
                if stopping:
                    if self._buffer.depth == 0:
                        break
                    continue
                await self._service()
        finally:
            await self._disconnect()
            with contextlib.suppress(Exception):
                await self._spool.close()
            self._running = False
            self._done.set()

    async def stop(self) -> None:
        """Drain what is in the buffer (write it or spool it), then return once `run` has finished."""
        self._stop_requested.set()
        if self._running:
            await self._done.wait()

    # -- one batch ----------------------------------------------------------------------------------------

    async def _take(self, readings: Sequence[Reading]) -> None:
        rows = self._map(readings)
        if rows:
            await self._handle_new(rows)

    def _map(self, readings: Sequence[Reading]) -> list[Row]:
        ids = self._channel_ids
        rows: list[Row] = []
        append = rows.append
        for r in readings:
            cid = ids.get(r.channel)
            if cid is None:
                self._unknown(r.channel)
                continue
            t = r.source_time
            q = int(r.quality)
            v = r.value
            if q == _BAD:
                v = None  # BAD means nothing was measured
            elif v is None:
                q = _BAD
            else:
                if type(v) is not float:
                    try:
                        v = float(v)
                    except (TypeError, ValueError):
                        self._invalid(r, "value is not a number")
                        continue
                # The drivers judge quality at the edge (drivers.base.judge); a reading from anywhere else still
                # cannot bring a non-finite or overflowing value into the rollups.
                if not math.isfinite(v):
                    v, q = None, _BAD
                elif q == _GOOD and abs(v) > MAX_MAGNITUDE:
                    q = _IMPLAUSIBLE
            if t.tzinfo is None or not -32768 <= q <= 32767:
                self._invalid(r, "naive source_time" if t.tzinfo is None else "quality out of range")
                continue
            append((t, cid, v, q))
        return rows

    def _unknown(self, channel: str) -> None:
        self.unknown_channel += 1
        if channel not in self._unknown_seen:
            self._unknown_seen.add(channel)
            log.warning("readings of unknown channel %r are dropped (no channel row); counted", channel)

    def _invalid(self, reading: Reading, why: str) -> None:
        self.invalid += 1
        if reading.channel not in self._invalid_seen:
            self._invalid_seen.add(reading.channel)
            log.warning("invalid reading of %r dropped (%s): %r; counted", reading.channel, why, reading)

    async def _handle_new(self, rows: list[Row]) -> None:
        if self._conn is not None and not self._spool.batches:
            try:
                poison = await self._deliver(rows, replay=False)
            except _Unavailable:
                await self._spool_or_gap(rows)
                return
            if poison:
                await self._quarantine(poison, None)
            return
        await self._spool_or_gap(rows)

    async def _spool_or_gap(self, rows: list[Row]) -> None:
        try:
            batch_id = await self._spool.append(rows)
        except Exception as exc:  # a disk error must not kill the writer; the loss is recorded below
            log.error("spool write failed: %s", exc)
            self.last_error = f"spool: {exc}"
            batch_id = None
        if batch_id is not None:
            self.spooled_rows += len(rows)
            self.spooled_batches += 1
            self._open_gaps.clear()  # data is being kept again: the next loss is a new gap
            self._check_level()
            return
        if self._conn is not None:
            # the database is up but the backlog fills the spool: write now rather than lose it
            try:
                poison = await self._deliver(rows, replay=True)
            except _Unavailable:
                pass
            else:
                if poison:
                    await self._quarantine(poison, None)
                return
        await self._record_gap(rows, "spool_full")

    async def _deliver(self, rows: list[Row], *, replay: bool) -> list[tuple[list[Row], str]]:
        """Commit rows, retrying rejections; return the rows finally rejected (to quarantine).

        Raises _Unavailable when the database went away (nothing of it is quarantined then).
        """
        error = ""
        for attempt in range(self._max_attempts):
            try:
                await self._commit(rows, replay=replay or attempt > 0)
                return []
            except _Rejected as exc:
                error = str(exc)
                self.rejected_attempts += 1
                log.warning(
                    "database rejected a batch of %d rows (attempt %d of %d): %s",
                    len(rows), attempt + 1, self._max_attempts, error,
                )
                if attempt + 1 < self._max_attempts:
                    await asyncio.sleep(0.05 * (attempt + 1))
        return await self._isolate(rows, error)

    async def _isolate(self, rows: list[Row], error: str) -> list[tuple[list[Row], str]]:
        """Split a rejected batch until the rows the database refuses are alone; write the others."""
        if len(rows) == 1:
            return [(rows, error)]
        mid = len(rows) // 2
        poison: list[tuple[list[Row], str]] = []
        for half in (rows[:mid], rows[mid:]):
            try:
                await self._commit(half, replay=True)
            except _Rejected as exc:
                poison.extend(await self._isolate(half, str(exc)))
        return poison

    async def _quarantine(self, poison: list[tuple[list[Row], str]], batch_id: int | None) -> None:
        n = sum(len(rows) for rows, _ in poison)
        log.error("%d rows quarantined after %d rejected attempts: %s", n, self._max_attempts, poison[0][1])
        await self._spool.quarantine(poison, delete_batch_id=batch_id)
        self._check_level()

    async def _commit(self, rows: list[Row], *, replay: bool) -> int:
        """One transaction; return the rows really inserted. Raises _Unavailable or _Rejected."""
        conn = self._conn
        if conn is None:
            raise _Unavailable("not connected")
        started = time.perf_counter()
        try:
            if replay:
                inserted = await self._write_idempotent(conn, rows)
            else:
                try:
                    inserted = await self._write_fast(conn, rows)
                except asyncpg.UniqueViolationError:
                    # some rows are stored already (a replay of a committed batch): redo without duplicates
                    inserted = await self._write_idempotent(conn, rows)
        except Exception as exc:
            if _is_rejection(exc) and not conn.is_closed():
                raise _Rejected(f"{type(exc).__name__}: {exc}") from exc
            await self._mark_down(exc)
            raise _Unavailable(str(exc)) from exc
        self.rows_written += inserted
        self.batches += 1
        self.batch_seconds.observe(time.perf_counter() - started)  # committed transactions only
        self.batch_rows.observe(len(rows))
        self.last_commit_time = time.time()
        self._last_activity = time.monotonic()
        if self.on_commit is not None and inserted:
            try:
                self.on_commit(inserted)
            except Exception:
                log.exception("on_commit hook failed")
        return inserted

    async def _write_fast(self, conn: asyncpg.Connection, rows: list[Row]) -> int:
        aggregates = None if self._timescale else rollup_rows(rows)
        async with conn.transaction():
            await conn.copy_records_to_table(
                "telemetry", records=rows, columns=COLUMNS, timeout=self._command_timeout
            )
            if aggregates:
                await conn.execute(_UPSERT_ROLLUP, *(list(col) for col in zip(*aggregates, strict=True)))
        return len(rows)

    async def _write_idempotent(self, conn: asyncpg.Connection, rows: list[Row]) -> int:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "telemetry_in", records=rows, columns=COLUMNS, timeout=self._command_timeout
            )
            inserted = int(await conn.fetchval(_MERGE if self._timescale else _MERGE_WITH_ROLLUP))
        self.duplicates_skipped += len(rows) - inserted
        return inserted

    # -- spool full: gaps ---------------------------------------------------------------------------------

    async def _record_gap(self, rows: list[Row], cause: str) -> None:
        spans: dict[int, list[Any]] = {}
        for t, cid, _v, _q in rows:
            s = spans.get(cid)
            if s is None:
                spans[cid] = [t, t, 1]
            else:
                if t < s[0]:
                    s[0] = t
                if t > s[1]:
                    s[1] = t
                s[2] += 1
        if not self._open_gaps:
            log.error(
                "spool full (%d rows) and database down: %d readings NOT stored, recording gaps",
                self._spool.rows, len(rows),
            )
        for cid, (start, end, n) in spans.items():
            known = self._open_gaps.get(cid)
            try:
                gap_id = await self._spool.record_gap(cid, start, end, cause, n, gap_id=known)
            except Exception as exc:
                log.error("could not record a gap of channel %d (%s .. %s, %d rows): %s",
                          cid, start, end, n, exc)
                continue
            if known is None:
                self.gap_records += 1
            self._open_gaps[cid] = gap_id
        self.gap_rows += len(rows)

    async def _flush_gaps(self) -> None:
        conn = self._conn
        if conn is None:
            return
        open_ids = set(self._open_gaps.values())
        gaps = [g for g in await self._spool.gaps() if g.id not in open_ids]
        if not gaps:
            return
        try:
            async with conn.transaction():
                await conn.executemany(
                    _INSERT_GAP, [(g.channel_id, g.start, g.end, g.cause) for g in gaps]
                )
        except Exception as exc:
            if _is_rejection(exc) and not conn.is_closed():
                log.error("database rejected gap records, keeping them in the spool: %s", exc)
                return
            await self._mark_down(exc)
            return
        await self._spool.delete_gaps(g.id for g in gaps)
        log.warning("%d gap records written to telemetry_gap", len(gaps))

    # -- connection and replay ---------------------------------------------------------------------------

    async def _service(self) -> None:
        now = time.monotonic()
        if self._conn is None and now >= self._next_connect:
            await self._connect()
        if self._conn is None:
            return
        if self._spool.gap_count:
            await self._flush_gaps()
        if self._spool.batches:
            await self._drain(self._drain_slice)
        elif now - self._last_activity > self._health_interval:
            await self._ping()

    async def _drain(self, budget: float) -> None:
        """Replay spooled batches, oldest first, for about `budget` seconds."""
        deadline = time.monotonic() + budget
        while self._conn is not None and self._spool.batches and time.monotonic() < deadline:
            batches = await self._spool.oldest(limit=64, max_rows=self._replay_rows)
            if not batches:
                return
            try:
                if len(batches) > 1:
                    try:
                        inserted = await self._commit([r for b in batches for r in b.rows], replay=True)
                    except _Rejected:
                        batches = batches[:1]  # find the bad one alone, below
                    else:
                        await self._replayed(batches, inserted)
                        continue
                batch = batches[0]
                before = self.rows_written
                poison = await self._deliver(batch.rows, replay=True)
            except _Unavailable:
                return
            if poison:
                await self._quarantine(poison, batch.id)
                self.replayed_batches += 1
                self.replayed_rows += self.rows_written - before
                continue
            await self._replayed(batches, self.rows_written - before)
        if not self._spool.batches:
            log.info("spool drained: backlog replayed (%d rows so far)", self.replayed_rows)

    async def _replayed(self, batches: Sequence[Any], inserted: int) -> None:
        # the batches are committed: only now may they leave the spool
        await self._spool.delete(b.id for b in batches)
        self.replayed_batches += len(batches)
        self.replayed_rows += inserted
        self._check_level()

    async def _connect(self) -> bool:
        conn: asyncpg.Connection | None = None
        try:
            conn = await db.connect(
                self._dsn, timeout=self._connect_timeout, command_timeout=self._command_timeout
            )
            await db.assume_app_role(conn)
            if db.server_read_only(conn):  # it cannot take telemetry: keep spooling, try the hosts again later
                raise db.NoUsableServer("the database server is read-only (a standby, or a demoted primary)")
            if self._timescale is None:
                self._timescale = await db.timescale_enabled(conn)
                log.info("telemetry writer: TimescaleDB path %s", "on" if self._timescale else "off")
            await conn.execute(_CREATE_STAGING)
        except Exception as exc:
            if conn is not None:
                conn.terminate()
            self._note_failure(exc)
            self._failed_connects += 1
            self._next_connect = time.monotonic() + backoff_delay(
                self._failed_connects, self._reconnect_min, self._reconnect_max, jitter=0.2)
            return False
        self._conn = conn
        self._open_gaps.clear()  # the database is back: an overflow episode in progress is over
        self._failed_connects = 0
        self._last_activity = time.monotonic()
        if self._down_since is not None:
            self.reconnects += 1
            self.last_error = None  # /readyz shows the state now, not the last outage
            log.info(
                "database reachable again after %.1f s; replaying %d spooled batches (%d rows)",
                time.monotonic() - self._down_since, self._spool.batches, self._spool.rows,
            )
            self._down_since = None
        return True

    def _note_failure(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "database unavailable, spooling telemetry to %s: %s", self._spool.path, self.last_error
            )

    async def _mark_down(self, exc: BaseException) -> None:
        self._note_failure(exc)
        await self._disconnect()
        self._failed_connects = 0
        self._next_connect = time.monotonic() + self._reconnect_min

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=1.0)
            except Exception:
                conn.terminate()

    async def _ping(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            await conn.fetchval("SELECT 1", timeout=min(5.0, self._command_timeout))
            if db.server_read_only(conn):  # demoted while idle: follow the primary before the next batch fails
                raise db.NoUsableServer("the database server became read-only (a failover?)")
        except Exception as exc:
            await self._mark_down(exc)
            return
        self._last_activity = time.monotonic()

    def _check_level(self) -> None:
        level = level_of(self._spool.fill_ratio)
        if level != self._last_level:
            pct = 100.0 * self._spool.fill_ratio
            if level == "ok":
                log.info("spool back below 80 %% full (%.1f %%)", pct)
            else:
                log.warning("spool level %s: %.1f %% of %d rows", level, pct, self._spool.capacity_rows)
            self._last_level = level
