"""The foundation migration: upgrade, full downgrade, upgrade again, on a fresh database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil
import pytest

from app import db

HEAD = "20261201_0017"  # the newest migration
TABLES = {"schema_info", "device", "channel", "culture_run", "telemetry", "telemetry_gap", "recipe", "step_record",
          "deviation", "deviation_comment", "idempotency_key", "step_status", "setpoint_command", "alarm",
          "alarm_event", "excursion", "live_event_batch", "password_history"}


@pytest.fixture(scope="module")
async def fresh_dsn(pg_server: str) -> AsyncIterator[str]:
    """An empty database, never migrated."""
    name = f"t_migrations_{uuid.uuid4().hex[:8]}"
    dsn = await db.create_database(pg_server, name)
    try:
        yield dsn
    finally:
        await db.drop_database(pg_server, name)


async def _relations(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'p')"
    )
    return {r["relname"] for r in rows}


async def _timescale_loadable(conn: asyncpg.Connection) -> bool:
    available = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
    )
    preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries', true)") or ""
    return bool(available) and "timescaledb" in preload


async def test_upgrade_downgrade_upgrade(fresh_dsn: str) -> None:
    await db.upgrade_async(fresh_dsn)
    conn = await db.connect(fresh_dsn)
    try:
        assert await db.current_revision(conn) == HEAD
        assert await _relations(conn) >= TABLES | {"telemetry_5m"}
        # schema_info tells which path was taken, and it matches what the server can do
        assert await db.timescale_enabled(conn) == await _timescale_loadable(conn)

        await db.downgrade_async(fresh_dsn, "base")
        # A session that had TimescaleDB loaded keeps stale catalog caches after another session drops
        # the extension: look with a new connection, as a client would after a downgrade.
        await conn.close()
        conn = await db.connect(fresh_dsn)
        left = await _relations(conn)
        assert left & (TABLES | {"telemetry_5m"}) == set(), f"left behind: {left}"
        assert await db.current_revision(conn) is None
        assert await db.timescale_enabled(conn) is False
        # no sequences or types of ours survive either
        seqs = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relkind = 'S' AND relname LIKE '%_id_seq'"
        )
        assert [r["relname"] for r in seqs] == []
        ext = await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
        assert ext == 0

        await db.upgrade_async(fresh_dsn)
        assert await _relations(conn) >= TABLES | {"telemetry_5m"}
        # the schema is usable after the round trip
        dev = await conn.fetchval(
            "INSERT INTO device (name, kind, protocol, endpoint) "
            "VALUES ('d', 'incubator', 'opcua', 'x') RETURNING id"
        )
        ch = await conn.fetchval(
            "INSERT INTO channel (device_id, name, unit, kind) VALUES ($1, 'temperature', 'degC', 'analog') "
            "RETURNING id",
            dev,
        )
        t = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
        await conn.execute("INSERT INTO telemetry (time, channel_id, value) VALUES ($1, $2, 37.0)", t, ch)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO telemetry (time, channel_id, value) VALUES ($1, $2, 36.0)", t, ch)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO culture_run (code, status) VALUES ('R1', 'paused')")
    finally:
        await conn.close()


async def test_upgrade_is_idempotent(db_dsn: str) -> None:
    await db.upgrade_async(db_dsn)  # already at head: nothing to do, nothing fails
    conn = await db.connect(db_dsn)
    try:
        assert await db.current_revision(conn) == HEAD
        assert await conn.fetchval("SELECT count(*) FROM schema_info WHERE key = 'timescale'") == 1
    finally:
        await conn.close()


def test_migrations_found_through_the_package() -> None:
    cfg = db.alembic_config("postgresql://u:p%40ss@/d?host=/sock%2Fdir")
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(cfg)
    assert script.get_current_head() == HEAD
    # the % of the encoded socket path and password survive ConfigParser interpolation
    assert cfg.get_main_option("sqlalchemy.url") == db.sqlalchemy_url("postgresql://u:p%40ss@/d?host=/sock%2Fdir")


@pytest.mark.timescale
async def test_timescale_objects(db_dsn: str) -> None:
    conn = await db.connect(db_dsn)
    try:
        assert await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'telemetry'"
        ) == 1
        assert await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates "
            "WHERE view_name = 'telemetry_5m'"
        ) == 1
        jobs = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.jobs "
            "WHERE proc_name IN ('policy_compression', 'policy_refresh_continuous_aggregate')"
        )
        assert jobs == 2
    finally:
        await conn.close()


def test_embedded_server_keeps_data_and_leaves_no_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"

    async def write(dsn: str) -> None:
        conn = await db.connect(dsn)
        try:
            await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        finally:
            await conn.close()

    async def read(dsn: str) -> int:
        conn = await db.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT v FROM kept"))
        finally:
            await conn.close()

    server = db.EmbeddedPostgres(data_dir)
    asyncio.run(write(server.start()))
    pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    server.stop()
    assert not (psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    assert not (data_dir / "postmaster.pid").exists()

    with db.EmbeddedPostgres(data_dir) as dsn:  # a restart of the service finds its data again
        assert asyncio.run(read(dsn)) == 42
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    assert not (psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)


async def test_profiles_migration_keeps_devices_channels_and_history(pg_server: str) -> None:
    """A database from before device profiles: after the upgrade and the next device sync every channel keeps its id
    and history, gets its role, and the device records its profile and version (audited)."""
    from app.devices.registry import sync_devices
    from drivers.devices import load_devices

    name = f"t_profiles_{uuid.uuid4().hex[:8]}"
    dsn = await db.create_database(pg_server, name)
    try:
        await db.upgrade_async(dsn, "20261201_0008")
        conn = await asyncpg.connect(dsn)
        try:  # what the service wrote before: devices and channels without profile or role, and telemetry
            dev = await conn.fetchval("INSERT INTO device (name, kind, protocol, endpoint) VALUES "
                                      "('incubator-1', 'incubator', 'opcua', 'opc.tcp://127.0.0.1:1/x') RETURNING id")
            old = {}
            for point, unit, kind in (("temperature", "degC", "analog"), ("door_open", "bool", "boolean"),
                                      ("retired_probe", "degC", "analog")):
                old[point] = await conn.fetchval("INSERT INTO channel (device_id, name, unit, kind) VALUES "
                                                 "($1, $2, $3, $4) RETURNING id", dev, point, unit, kind)
            await conn.execute("INSERT INTO telemetry (channel_id, time, value, quality) VALUES ($1, now(), 37.0, 0)",
                               old["temperature"])
        finally:
            await conn.close()
        await db.upgrade_async(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            devices = [d for d in load_devices() if d.name == "incubator-1"]
            ids = await sync_devices(conn, devices)
            assert ids["incubator-1.temperature"] == old["temperature"]
            assert ids["incubator-1.door_open"] == old["door_open"]
            rows = {r["name"]: r for r in await conn.fetch("SELECT id, name, role FROM channel WHERE device_id = $1",
                                                           dev)}
            assert rows["temperature"]["role"] == "temperature" and rows["retired_probe"]["role"] is None
            assert rows["retired_probe"]["id"] == old["retired_probe"]  # a point that left keeps its channel
            assert await conn.fetchval("SELECT count(*) FROM telemetry WHERE channel_id = $1", old["temperature"]) == 1
            prof = await conn.fetchrow("SELECT profile, profile_version FROM device WHERE id = $1", dev)
            assert tuple(prof) == ("culturectl-sim-incubator", "1.0")
            audited = await conn.fetchval("SELECT new->>'profile' FROM audit_log WHERE action = 'device.update' "
                                          "AND entity_id = $1", str(dev))
            assert audited == "culturectl-sim-incubator"
        finally:
            await conn.close()
    finally:
        await db.drop_database(pg_server, name)
