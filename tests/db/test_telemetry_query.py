"""History queries on known data: raw rows, exact bucket aggregates, rollup == raw, point limits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from app import db
from app.devices.registry import sync_devices
from app.ingest import history
from app.ingest.history import BucketPoint, RawPoint, TooManyPoints, latest_values, query_telemetry
from drivers.base import Quality
from drivers.devices import DeviceConfig

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # on the 5-minute grid
STEP = timedelta(seconds=10)
COUNT = 2 * 360  # two hours at 0.1 Hz
CH = 7001  # telemetry has no foreign key: any id works for query tests


def _value(i: int) -> float | None:
    if i % 97 == 13:
        return None  # a BAD reading: stored with NULL value
    return 36.0 + (i % 37) * 0.05 + (i // 60) * 0.01


DATA = [(T0 + i * STEP, _value(i)) for i in range(COUNT)]


Bucket = tuple[datetime, float, float, float, int]


def _expected(bucket: timedelta, lo: datetime, hi: datetime) -> list[Bucket]:
    """Per-bucket (time, avg, min, max, n) computed in Python on the same grid."""
    origin = datetime(2000, 1, 1, tzinfo=UTC)
    groups: dict[datetime, list[float]] = defaultdict(list)
    for t, v in DATA:
        if lo <= t < hi and v is not None:
            groups[origin + ((t - origin) // bucket) * bucket].append(v)
    return [(b, sum(vs) / len(vs), min(vs), max(vs), len(vs)) for b, vs in sorted(groups.items())]


def _assert_buckets(got: list[RawPoint] | list[BucketPoint], want: list[Bucket]) -> None:
    assert all(isinstance(p, BucketPoint) for p in got)
    assert [p.time for p in got] == [w[0] for w in want]
    for p, (_t, avg, lo, hi, n) in zip(got, want, strict=True):
        assert isinstance(p, BucketPoint)
        assert p.n == n
        assert p.min == lo and p.max == hi
        assert p.avg == pytest.approx(avg, rel=1e-12)
        assert dict(p) == {"time": p.time, "avg": p.avg, "min": p.min, "max": p.max, "n": p.n}


@pytest.fixture(scope="module")
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await db.connect(db_dsn)
    await c.executemany(
        "INSERT INTO telemetry (time, channel_id, value, quality) VALUES ($1, $2, $3, $4)",
        [(t, CH, v, int(Quality.BAD if v is None else Quality.GOOD)) for t, v in DATA],
    )
    if not await db.timescale_enabled(c):
        # what the ingest writer does on the plain path; the continuous aggregate does it with TimescaleDB
        await c.execute(
            """
            INSERT INTO telemetry_5m (channel_id, bucket, n, sum, min, max)
            SELECT channel_id, date_bin('5 minutes', time, '2000-01-01 00:00:00+00'),
                   count(value), sum(value), min(value), max(value)
            FROM telemetry WHERE channel_id = $1 GROUP BY 1, 2
            """,
            CH,
        )
    try:
        yield c
    finally:
        await c.close()


async def test_raw_rows_in_half_open_range(conn: asyncpg.Connection) -> None:
    start, end = T0 + 5 * STEP, T0 + 25 * STEP
    got = await query_telemetry(conn, CH, start, end, None, 1000)
    raw = [p for p in got if isinstance(p, RawPoint)]
    assert len(raw) == len(got)
    assert [(p.time, p.value) for p in raw] == DATA[5:25]  # end excluded
    bad = [p for p in raw if p.value is None]
    assert bad and all(p.quality is Quality.BAD for p in bad)


async def test_one_minute_buckets_exact(conn: asyncpg.Connection) -> None:
    got = await query_telemetry(conn, CH, T0, T0 + timedelta(minutes=30), timedelta(minutes=1), 1000)
    assert len(got) == 30
    _assert_buckets(got, _expected(timedelta(minutes=1), T0, T0 + timedelta(minutes=30)))


@pytest.mark.parametrize("minutes", [5, 15, 60])
async def test_rollup_and_raw_paths_agree(conn: asyncpg.Connection, minutes: int) -> None:
    bucket = timedelta(minutes=minutes)
    start, end = T0, T0 + timedelta(hours=2)
    rollup = await query_telemetry(conn, CH, start, end, bucket, 1000, source="rollup")
    raw = await query_telemetry(conn, CH, start, end, bucket, 1000, source="raw")
    auto = await query_telemetry(conn, CH, start, end, bucket, 1000)
    want = _expected(bucket, start, end)
    assert len(want) == 120 // minutes
    _assert_buckets(rollup, want)
    _assert_buckets(raw, want)
    assert auto == rollup


async def test_unaligned_range_covers_whole_buckets(conn: asyncpg.Connection) -> None:
    bucket = timedelta(minutes=15)
    start, end = T0 + timedelta(minutes=7), T0 + timedelta(minutes=31)
    rollup = await query_telemetry(conn, CH, start, end, bucket, 1000, source="rollup")
    raw = await query_telemetry(conn, CH, start, end, bucket, 1000, source="raw")
    want = _expected(bucket, T0, T0 + timedelta(minutes=45))
    assert [p.time for p in rollup] == [T0, T0 + bucket, T0 + 2 * bucket]
    _assert_buckets(rollup, want)
    _assert_buckets(raw, want)


async def test_empty_range_returns_nothing(conn: asyncpg.Connection) -> None:
    later = T0 + timedelta(days=3)
    assert await query_telemetry(conn, CH, later, later + timedelta(hours=1), timedelta(minutes=5), 100) == []
    assert await query_telemetry(conn, CH, later, later + timedelta(hours=1), None, 100) == []


async def test_too_many_points(conn: asyncpg.Connection) -> None:
    week = timedelta(days=7)
    with pytest.raises(TooManyPoints) as exc:
        await query_telemetry(conn, CH, T0, T0 + week, timedelta(minutes=1), 10_000)
    assert (exc.value.requested, exc.value.limit) == (10_080, 10_000)
    assert "10000" in str(exc.value)
    # the same week at 5-minute buckets fits
    assert len(await query_telemetry(conn, CH, T0, T0 + week, timedelta(minutes=5), 10_000)) == 24

    with pytest.raises(TooManyPoints) as exc:
        await query_telemetry(conn, CH, T0, T0 + timedelta(hours=2), None, 100)
    assert exc.value.limit == 100
    exactly = await query_telemetry(conn, CH, T0, T0 + 100 * STEP, None, 100)
    assert len(exactly) == 100


@pytest.mark.parametrize(
    ("start", "end", "bucket"),
    [
        (T0, T0, None),
        (T0 + STEP, T0, timedelta(minutes=1)),
        (T0, T0 + STEP, timedelta(0)),
        (T0, T0 + STEP, timedelta(seconds=-60)),
        (T0.replace(tzinfo=None), T0 + STEP, None),
    ],
)
async def test_bad_arguments(
    conn: asyncpg.Connection, start: datetime, end: datetime, bucket: timedelta | None
) -> None:
    with pytest.raises(ValueError):
        await query_telemetry(conn, CH, start, end, bucket, 100)


async def test_latest_values(conn: asyncpg.Connection, db_dsn: str) -> None:
    dev = DeviceConfig(name="inc-latest", kind="incubator", protocol="opcua", endpoint="opc.tcp://127.0.0.1:1/x")
    ids = await sync_devices(conn, [dev])
    temp, co2 = ids["inc-latest.temperature"], ids["inc-latest.co2"]
    await conn.executemany(
        "INSERT INTO telemetry (time, channel_id, value, quality) VALUES ($1, $2, $3, $4)",
        [(T0, temp, 36.5, 0), (T0 + STEP, temp, 37.1, 1), (T0, co2, None, 2)],
    )
    latest = {v.channel: v for v in await latest_values(conn)}
    assert latest["inc-latest.temperature"].value == 37.1
    assert latest["inc-latest.temperature"].time == T0 + STEP
    assert latest["inc-latest.temperature"].quality is Quality.UNCERTAIN
    assert latest["inc-latest.temperature"].unit == "degC"
    assert latest["inc-latest.co2"].value is None and latest["inc-latest.co2"].quality is Quality.BAD
    assert "inc-latest.humidity" not in latest  # no reading yet, no entry
    # rows read like asyncpg records too (the API builds responses from either)
    assert latest["inc-latest.temperature"]["channel_id"] == temp
    assert dict(latest["inc-latest.co2"])["quality"] is Quality.BAD
    assert await history.last_telemetry_time(db_dsn) == T0 + STEP


async def test_bucketed_queries_average_good_values_only_and_never_overflow(conn: asyncpg.Connection) -> None:
    """Rows stored before quality was judged at the edge (NaN and 1.5e308 marked good) and implausible rows stay out
    of the averages: the raw-bucket query answers, with the good values only."""
    ch, t = CH + 1, T0 + timedelta(days=3)
    rows = [(t, 37.0, 0), (t + STEP, float("nan"), 0), (t + 2 * STEP, 1.5e308, 0), (t + 3 * STEP, 1.5e308, 0),
            (t + 4 * STEP, 250.0, int(Quality.IMPLAUSIBLE)), (t + 5 * STEP, 36.0, int(Quality.UNCERTAIN)),
            (t + 6 * STEP, 38.0, 0)]
    await conn.executemany("INSERT INTO telemetry (time, channel_id, value, quality) VALUES ($1, $2, $3, $4)",
                           [(when, ch, v, q) for when, v, q in rows])
    got = await query_telemetry(conn, ch, t, t + timedelta(minutes=5), timedelta(seconds=30), 100, source="raw")
    assert [(p.avg, p.min, p.max, p.n) for p in got if isinstance(p, BucketPoint)] == [(37.0, 37.0, 37.0, 1),
                                                                                      (38.0, 38.0, 38.0, 1)]
    raw = await query_telemetry(conn, ch, t, t + timedelta(minutes=5), None, 100)
    assert [p.quality for p in raw if isinstance(p, RawPoint)][4] is Quality.IMPLAUSIBLE  # kept for the record
