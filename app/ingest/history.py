"""Telemetry history queries: raw readings or time buckets (from the 5-minute rollup when it fits).

Buckets are aligned like `date_bin(bucket, time, '2000-01-01 00:00:00+00')`. A bucketed query covers
whole buckets: `start` is rounded down and `end` rounded up to the bucket grid, so the first and last
buckets are complete and the raw and rollup paths return the same numbers. Buckets without any
GOOD value are omitted (gaps stay gaps): BAD, uncertain and implausible readings are never averaged.
The same SQL runs on plain PostgreSQL and TimescaleDB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from app import db
from app.db import DBConnection
from drivers.base import MAX_MAGNITUDE, Quality

BIN_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
ROLLUP_BUCKET = timedelta(minutes=5)


class TooManyPoints(ValueError):
    """The request would return more than `limit` points."""

    def __init__(self, requested: int, limit: int) -> None:
        self.requested = requested
        self.limit = limit
        super().__init__(
            f"the request would return {requested} points or more; the limit is {limit}: "
            "narrow the time range or use a larger bucket"
        )


class _RowLike:
    """Mapping-style access (`p["time"]`, `dict(p)`) besides attributes, like an asyncpg Record."""

    __slots__ = ()

    def keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True, slots=True)
class RawPoint(_RowLike):
    """One stored reading."""

    time: datetime
    value: float | None
    quality: Quality


@dataclass(frozen=True, slots=True)
class BucketPoint(_RowLike):
    """Aggregate of one bucket; `n` counts the non-NULL values in it."""

    time: datetime
    avg: float | None
    min: float | None
    max: float | None
    n: int


@dataclass(frozen=True, slots=True)
class LatestValue(_RowLike):
    """The last stored reading of one channel."""

    channel_id: int
    channel: str
    unit: str
    time: datetime
    value: float | None
    quality: Quality


def floor_to_bucket(t: datetime, bucket: timedelta) -> datetime:
    """Start of the bucket holding `t` (same grid as date_bin with origin 2000-01-01 UTC)."""
    return BIN_ORIGIN + ((t - BIN_ORIGIN) // bucket) * bucket


def ceil_to_bucket(t: datetime, bucket: timedelta) -> datetime:
    """`t` if it is on the grid, else the start of the next bucket."""
    floor = floor_to_bucket(t, bucket)
    return floor if floor == t else floor + bucket


def uses_rollup(bucket: timedelta) -> bool:
    """True when the bucket is a whole multiple of the 5-minute rollup."""
    return bucket >= ROLLUP_BUCKET and bucket % ROLLUP_BUCKET == timedelta(0)


_RAW_SQL = """
SELECT time, value, quality FROM telemetry
WHERE channel_id = $1 AND time >= $2 AND time < $3
ORDER BY time
LIMIT $4
"""

# Only GOOD values are aggregated; the magnitude bound also keeps rows stored before quality was judged at the edge
# (NaN or huge values marked good) out of the sums, so an average can never overflow.
_BUCKET_RAW_SQL = """
SELECT date_bin($4::interval, time, $5::timestamptz) AS time,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(value) AS n
FROM telemetry
WHERE channel_id = $1 AND time >= $2 AND time < $3 AND quality = 0 AND abs(value) <= $6
GROUP BY 1
ORDER BY 1
"""

# Re-bins the 5-minute rollup: avg from sums and counts, not an average of averages.
_BUCKET_ROLLUP_SQL = """
SELECT date_bin($4::interval, bucket, $5::timestamptz) AS time,
       sum(sum) / sum(n) AS avg, min(min) AS min, max(max) AS max, sum(n)::bigint AS n
FROM telemetry_5m
WHERE channel_id = $1 AND bucket >= $2 AND bucket < $3
GROUP BY 1
HAVING sum(n) > 0
ORDER BY 1
"""


def _stored(value: float | None, quality: int) -> tuple[float | None, Quality]:
    """A stored value as the API shows it: a non-finite value (rows stored before quality was judged at the edge
    may hold NaN marked good) is no measurement."""
    if value is not None and not math.isfinite(value):
        return None, Quality.BAD
    return value, Quality(quality)


def _check_range(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if not start < end:
        raise ValueError(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")


async def query_telemetry(
    conn: DBConnection,
    channel_id: int,
    start: datetime,
    end: datetime,
    bucket: timedelta | None,
    max_points: int,
    source: Literal["auto", "raw", "rollup"] = "auto",
) -> list[RawPoint] | list[BucketPoint]:
    """Readings of one channel in [start, end): raw when `bucket` is None, else per-bucket aggregates.

    Raises ValueError on a bad range or bucket and TooManyPoints when the answer would exceed
    `max_points` (bucketed: number of grid buckets covering the range; raw: counted with a LIMIT).
    `source` forces the raw table or the rollup for bucketed queries (tests, diagnostics); "auto" uses
    the rollup whenever the bucket is a whole multiple of 5 minutes.
    """
    _check_range(start, end)
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    if bucket is None:
        rows = await conn.fetch(_RAW_SQL, channel_id, start, end, max_points + 1)
        if len(rows) > max_points:
            raise TooManyPoints(len(rows), max_points)
        return [RawPoint(r["time"], *_stored(r["value"], r["quality"])) for r in rows]

    if bucket <= timedelta(0):
        raise ValueError("bucket must be a positive duration")
    lo = floor_to_bucket(start, bucket)
    hi = ceil_to_bucket(end, bucket)
    requested = math.ceil((hi - lo) / bucket)
    if requested > max_points:
        raise TooManyPoints(requested, max_points)
    if source == "rollup" and not uses_rollup(bucket):
        raise ValueError("the 5-minute rollup serves only buckets that are whole multiples of 5 minutes")
    rollup = source == "rollup" or (source == "auto" and uses_rollup(bucket))
    if rollup:
        rows = await conn.fetch(_BUCKET_ROLLUP_SQL, channel_id, lo, hi, bucket, BIN_ORIGIN)
    else:
        rows = await conn.fetch(_BUCKET_RAW_SQL, channel_id, lo, hi, bucket, BIN_ORIGIN, MAX_MAGNITUDE)
    return [BucketPoint(r["time"], r["avg"], r["min"], r["max"], int(r["n"])) for r in rows]


async def latest_values(conn: DBConnection) -> list[LatestValue]:
    """The last stored reading of every channel that has one, ordered by channel key."""
    rows = await conn.fetch(
        """
        SELECT c.id, d.name || '.' || c.name AS key, c.unit, t.time, t.value, t.quality
        FROM channel c
        JOIN device d ON d.id = c.device_id
        CROSS JOIN LATERAL (
            SELECT time, value, quality FROM telemetry
            WHERE channel_id = c.id
            ORDER BY time DESC
            LIMIT 1
        ) t
        ORDER BY key
        """
    )
    return [LatestValue(int(r["id"]), r["key"], r["unit"], r["time"], *_stored(r["value"], r["quality"])) for r in rows]


async def last_telemetry_time(dsn: str) -> datetime | None:
    """Time of the newest stored reading of any registered channel (None when there is none)."""
    conn = await db.connect(dsn)
    try:
        # per channel through the primary key: max(time) over the whole plain table would scan it
        value = await conn.fetchval(
            """
            SELECT max(t.time) FROM channel c
            CROSS JOIN LATERAL (
                SELECT time FROM telemetry WHERE channel_id = c.id ORDER BY time DESC LIMIT 1
            ) t
            """
        )
    finally:
        await conn.close()
    return value if isinstance(value, datetime) else None


async def first_reading(conn: DBConnection, channel_ids: list[int], since: datetime) -> datetime | None:
    """The first reading at or after `since` of any of the channels (one index probe per channel)."""
    found = [t for t in [await conn.fetchval("SELECT time FROM telemetry WHERE channel_id = $1 AND time >= $2 "
                                             "ORDER BY time LIMIT 1", cid, since) for cid in channel_ids]
             if t is not None]
    return min(found) if found else None
