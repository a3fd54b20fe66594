"""Disk spool for telemetry batches that could not be committed to PostgreSQL.

One SQLite file in WAL mode with synchronous=FULL: a batch appended here is on disk (fsync'd) when
`append` returns, so it survives a process kill. Batches come back oldest first and leave the spool
only when the writer calls `delete` after the batch's COMMIT in PostgreSQL. The same file keeps a
quarantine (batches or rows the database rejected), gap records (data lost because the spool was
full) and records the service writes on its own (the alarm journal and what goes with it: `append_records`),
which wait here in order while the database is down and leave only after their owner committed them.
Every SQLite call runs on one dedicated thread, so nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeVar

log = logging.getLogger("culturectl.ingest")

T = TypeVar("T")

# A telemetry row in the column order of the telemetry table: (time, channel_id, value, quality).
Row = tuple[datetime, int, float | None, int]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# time in microseconds since 1970 UTC, channel id, quality, 1 if value is NULL, value
_ROW = struct.Struct("<qihBd")
_FORMAT = 1

WARN_RATIO = 0.80
CRITICAL_RATIO = 0.95

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    n_rows INTEGER NOT NULL,
    format INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    quarantined_at REAL NOT NULL,
    n_rows INTEGER NOT NULL,
    error TEXT NOT NULL,
    format INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS record (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS record_quarantine (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS gap (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id INTEGER,
    start_us INTEGER NOT NULL,
    end_us INTEGER NOT NULL,
    cause TEXT NOT NULL,
    n_rows INTEGER NOT NULL
);
"""


def encode_rows(rows: Sequence[Row]) -> bytes:
    """Pack rows into the spool's binary format."""
    pack = _ROW.pack
    parts = []
    for t, channel_id, value, quality in rows:
        us = (t - _EPOCH) // _US
        if value is None:
            parts.append(pack(us, channel_id, quality, 1, 0.0))
        else:
            parts.append(pack(us, channel_id, quality, 0, value))
    return b"".join(parts)


def decode_rows(data: bytes) -> list[Row]:
    """Unpack rows written by `encode_rows`."""
    out: list[Row] = []
    append = out.append
    for us, channel_id, quality, is_null, value in _ROW.iter_unpack(data):
        append((_EPOCH + timedelta(microseconds=us), channel_id, None if is_null else value, quality))
    return out


def _oldest_batch_time(db: sqlite3.Connection) -> float | None:
    """created_at of the oldest batch waiting (None when there is none)."""
    value = db.execute("SELECT min(created_at) FROM batch").fetchone()[0]
    return None if value is None else float(value)


def level_of(ratio: float) -> str:
    """"ok" below 80 % full, "warn" from 80 %, "critical" from 95 %."""
    if ratio >= CRITICAL_RATIO:
        return "critical"
    if ratio >= WARN_RATIO:
        return "warn"
    return "ok"


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    """A batch read back from the spool."""

    id: int
    rows: list[Row]
    created_at: float


@dataclass(frozen=True, slots=True)
class Gap:
    """A period of one channel's data known to be lost."""

    id: int
    channel_id: int | None
    start: datetime
    end: datetime
    cause: str
    n_rows: int


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """A record the service wrote on its own while the database was down: its kind and JSON payload."""

    id: int
    kind: str
    payload: str
    created_at: float


@dataclass(frozen=True, slots=True)
class QuarantinedBatch:
    """Rows the database rejected, kept with the error."""

    id: int
    rows: list[Row]
    error: str
    quarantined_at: float


class SpoolClosed(RuntimeError):
    """The spool was used before `open` or after `close`."""


class Spool:
    """SQLite-backed FIFO of row batches with a capacity in rows.

    `append` refuses (returns None) a batch that would take the spool past `capacity_rows`; the caller
    then records a gap. Counters are for /metrics; `rows`, `batches` and `fill_ratio` describe the
    backlog now.
    """

    def __init__(self, path: Path | str, capacity_rows: int = 5_000_000) -> None:
        if capacity_rows < 1:
            raise ValueError(f"spool capacity must be >= 1 row, got {capacity_rows}")
        self.path = Path(path)
        self.capacity_rows = capacity_rows
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._rows = 0
        self._batches = 0
        self._quarantined_rows = 0
        self._quarantined_batches = 0
        self._gap_count = 0
        self._records = 0
        self._oldest_at: float | None = None  # created_at of the oldest batch waiting
        # counters since open
        self.appended_batches = 0
        self.appended_rows = 0
        self.deleted_batches = 0
        self.deleted_rows = 0
        self.refused_batches = 0
        self.refused_rows = 0
        self.quarantined_records = 0

    # -- life cycle -------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or reopen the spool file and count what it holds."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each call is one explicit transaction
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: fsync the WAL on every commit, so an appended batch survives power loss and SIGKILL
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db
        self._rows, self._batches = db.execute(
            "SELECT coalesce(sum(n_rows), 0), count(*) FROM batch"
        ).fetchone()
        self._quarantined_rows, self._quarantined_batches = db.execute(
            "SELECT coalesce(sum(n_rows), 0), count(*) FROM quarantine"
        ).fetchone()
        (self._gap_count,) = db.execute("SELECT count(*) FROM gap").fetchone()
        (self._records,) = db.execute("SELECT count(*) FROM record").fetchone()
        self._oldest_at = _oldest_batch_time(db)
        if self._records:
            log.info("spool %s holds %d records of the service to write", self.path, self._records)
        if self._batches:
            log.info("spool %s holds %d batches (%d rows) to replay", self.path, self._batches, self._rows)

    async def close(self) -> None:
        """Close the file; the spool can be opened again."""
        if self._executor is None:
            return
        try:
            await self._call(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise SpoolClosed(f"spool {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolClosed(f"spool {self.path} is not open")
        return self._db

    # -- state --------------------------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def batches(self) -> int:
        return self._batches

    @property
    def fill_ratio(self) -> float:
        return self._rows / self.capacity_rows

    @property
    def level(self) -> str:
        return level_of(self.fill_ratio)

    @property
    def quarantined_rows(self) -> int:
        return self._quarantined_rows

    @property
    def quarantined_batches(self) -> int:
        return self._quarantined_batches

    @property
    def gap_count(self) -> int:
        return self._gap_count

    @property
    def record_count(self) -> int:
        return self._records

    @property
    def age(self) -> float:
        """Seconds the oldest waiting batch has been in the spool (0 when it is empty)."""
        return 0.0 if self._oldest_at is None or not self._batches else max(0.0, time.time() - self._oldest_at)

    def stats(self) -> dict[str, object]:
        """Counters for /metrics and /readyz."""
        return {
            "spool_rows": self._rows,
            "spool_batches": self._batches,
            "spool_capacity_rows": self.capacity_rows,
            "spool_fill_ratio": self.fill_ratio,
            "spool_level": self.level,
            "spool_appended_batches": self.appended_batches,
            "spool_appended_rows": self.appended_rows,
            "spool_deleted_batches": self.deleted_batches,
            "spool_refused_batches": self.refused_batches,
            "spool_refused_rows": self.refused_rows,
            "quarantined": self._quarantined_rows,
            "quarantined_batches": self._quarantined_batches,
            "spool_gaps_pending": self._gap_count,
            "spool_age_seconds": self.age,
            "spool_records": self._records,
            "spool_quarantined_records": self.quarantined_records,
        }

    # -- batches ------------------------------------------------------------------------------------------

    def has_room(self, n_rows: int) -> bool:
        """Whether a batch of `n_rows` would fit."""
        return self._rows + n_rows <= self.capacity_rows

    async def append(self, rows: Sequence[Row]) -> int | None:
        """Store a batch durably and return its id; None (nothing stored) if it does not fit."""
        n = len(rows)
        if n == 0:
            raise ValueError("cannot spool an empty batch")
        if not self.has_room(n):
            self.refused_batches += 1
            self.refused_rows += n
            return None
        data = encode_rows(rows)
        created = time.time()

        def work() -> int:
            db = self._conn()
            cur = db.execute(
                "INSERT INTO batch (created_at, n_rows, format, data) VALUES (?, ?, ?, ?)",
                (created, n, _FORMAT, data),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        batch_id = await self._call(work)
        if not self._batches:
            self._oldest_at = created
        self._rows += n
        self._batches += 1
        self.appended_batches += 1
        self.appended_rows += n
        return batch_id

    async def oldest(self, limit: int = 1, max_rows: int | None = None) -> list[SpooledBatch]:
        """The oldest batches, in order: at most `limit`, and past the first one at most `max_rows` rows."""

        def work() -> list[tuple[int, float, int, bytes]]:
            return self._conn().execute(
                "SELECT id, created_at, n_rows, data FROM batch ORDER BY id LIMIT ?", (limit,)
            ).fetchall()

        out: list[SpooledBatch] = []
        total = 0
        for batch_id, created_at, n_rows, data in await self._call(work):
            if out and max_rows is not None and total + n_rows > max_rows:
                break
            total += n_rows
            out.append(SpooledBatch(batch_id, decode_rows(data), created_at))
        return out

    async def delete(self, batch_ids: Iterable[int]) -> None:
        """Remove committed batches (call only after their COMMIT in PostgreSQL)."""
        ids = list(batch_ids)
        if not ids:
            return

        def work() -> tuple[int, int]:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                marks = ",".join("?" * len(ids))
                (n_rows,) = db.execute(
                    f"SELECT coalesce(sum(n_rows), 0) FROM batch WHERE id IN ({marks})", ids
                ).fetchone()
                cur = db.execute(f"DELETE FROM batch WHERE id IN ({marks})", ids)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._oldest_at = _oldest_batch_time(db)
            return cur.rowcount, n_rows

        n_batches, n_rows = await self._call(work)
        self._batches -= n_batches
        self._rows -= n_rows
        self.deleted_batches += n_batches
        self.deleted_rows += n_rows

    # -- the service's own records ----------------------------------------------------------------------

    async def append_records(self, records: Sequence[tuple[str, str]]) -> None:
        """Store (kind, JSON payload) records durably, in order, in one fsync'd transaction."""
        if not records:
            return

        def work() -> None:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                db.executemany("INSERT INTO record (created_at, kind, payload) VALUES (?, ?, ?)",
                               [(now, kind, payload) for kind, payload in records])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._call(work)
        self._records += len(records)

    async def oldest_records(self, limit: int = 1000, after_id: int = 0) -> list[SpooledRecord]:
        """The oldest waiting records after `after_id`, in the order they were appended (page with the last id)."""

        def work() -> list[tuple[int, str, str, float]]:
            return self._conn().execute(
                "SELECT id, kind, payload, created_at FROM record WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()

        return [SpooledRecord(i, k, p, at) for i, k, p, at in await self._call(work)]

    async def _delete(self, table: Literal["record", "gap"], row_ids: Iterable[int]) -> int:
        """Delete rows of `table` by id; returns how many went."""
        ids = list(row_ids)
        if not ids:
            return 0

        def work() -> int:
            marks = ",".join("?" * len(ids))
            return self._conn().execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids).rowcount

        return await self._call(work)

    async def delete_records(self, record_ids: Iterable[int]) -> None:
        """Forget records once their owner committed them to PostgreSQL."""
        self._records -= await self._delete("record", record_ids)

    async def quarantine_records(self, refused: Sequence[tuple[int, str]]) -> None:
        """Move records the database refused to `record_quarantine` with the error, in one transaction."""
        if not refused:
            return

        def work() -> int:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                moved = 0
                for record_id, error in refused:
                    cur = db.execute("INSERT INTO record_quarantine (id, created_at, kind, payload, error, "
                                     "quarantined_at) SELECT id, created_at, kind, payload, ?, ? FROM record "
                                     "WHERE id = ?", (error, time.time(), record_id))
                    db.execute("DELETE FROM record WHERE id = ?", (record_id,))
                    moved += cur.rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return moved

        self._records -= await self._call(work)
        self.quarantined_records += len(refused)

    # -- quarantine -------------------------------------------------------------------------------------

    async def quarantine(
        self, parts: Sequence[tuple[Sequence[Row], str]], delete_batch_id: int | None = None
    ) -> None:
        """Keep rejected rows with their errors; optionally delete their spooled batch in the same commit."""
        encoded = [(len(rows), error, encode_rows(rows)) for rows, error in parts if rows]

        def work() -> tuple[int, int]:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                db.executemany(
                    "INSERT INTO quarantine (quarantined_at, n_rows, error, format, data)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(now, n, error, _FORMAT, data) for n, error, data in encoded],
                )
                deleted = (0, 0)
                if delete_batch_id is not None:
                    row = db.execute("SELECT n_rows FROM batch WHERE id = ?", (delete_batch_id,)).fetchone()
                    if row is not None:
                        db.execute("DELETE FROM batch WHERE id = ?", (delete_batch_id,))
                        deleted = (1, row[0])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._oldest_at = _oldest_batch_time(db)
            return deleted

        n_batches, n_rows = await self._call(work)
        self._quarantined_batches += len(encoded)
        self._quarantined_rows += sum(n for n, _, _ in encoded)
        self._batches -= n_batches
        self._rows -= n_rows
        self.deleted_batches += n_batches
        self.deleted_rows += n_rows

    async def quarantined(self) -> list[QuarantinedBatch]:
        """Everything in quarantine, oldest first (for inspection and tests)."""

        def work() -> list[tuple[int, float, str, bytes]]:
            return self._conn().execute(
                "SELECT id, quarantined_at, error, data FROM quarantine ORDER BY id"
            ).fetchall()

        return [QuarantinedBatch(i, decode_rows(d), e, at) for i, at, e, d in await self._call(work)]

    # -- gaps -----------------------------------------------------------------------------------------------

    async def record_gap(
        self, channel_id: int | None, start: datetime, end: datetime, cause: str, n_rows: int,
        gap_id: int | None = None,
    ) -> int:
        """Store a gap, or widen gap `gap_id` to cover [start, end] too; return its id."""
        start_us = (start - _EPOCH) // _US
        end_us = (end - _EPOCH) // _US

        def work() -> tuple[int, bool]:
            db = self._conn()
            if gap_id is not None:
                cur = db.execute(
                    "UPDATE gap SET start_us = min(start_us, ?), end_us = max(end_us, ?), n_rows = n_rows + ?"
                    " WHERE id = ?",
                    (start_us, end_us, n_rows, gap_id),
                )
                if cur.rowcount:
                    return gap_id, False
            cur = db.execute(
                "INSERT INTO gap (channel_id, start_us, end_us, cause, n_rows) VALUES (?, ?, ?, ?, ?)",
                (channel_id, start_us, end_us, cause, n_rows),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid, True

        new_id, created = await self._call(work)
        if created:
            self._gap_count += 1
        return new_id

    async def gaps(self) -> list[Gap]:
        """Gap records not yet written to the database, oldest first."""

        def work() -> list[tuple[int, int | None, int, int, str, int]]:
            return self._conn().execute(
                "SELECT id, channel_id, start_us, end_us, cause, n_rows FROM gap ORDER BY id"
            ).fetchall()

        return [
            Gap(i, c, _EPOCH + timedelta(microseconds=s), _EPOCH + timedelta(microseconds=e), cause, n)
            for i, c, s, e, cause, n in await self._call(work)
        ]

    async def delete_gaps(self, gap_ids: Iterable[int]) -> None:
        """Forget gaps once they are committed to telemetry_gap."""
        self._gap_count -= await self._delete("gap", gap_ids)
