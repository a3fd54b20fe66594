"""The audit trail in the database: chain, append-only enforcement, the service's role, and tampering.

Tampering is done the way an intruder with the database superuser would do it: triggers disabled, rows
edited, deleted, inserted or reordered directly. `verify` must name the first broken row every time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from app import db
from app.auth.principal import SYSTEM, Principal, Role
from app.records import audit

ALICE = Principal(kind="user", id=7, name="alice", role=Role.SUPERVISOR, display_name="Alice Smith")
SCRIPT = Principal(kind="apikey", id=3, name="feeder", role=Role.AUTOMATION, display_name="API key feeder")
N = 10


@pytest.fixture(scope="module")
async def owner(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the login user (the schema owner; a superuser on the test servers)."""
    conn = await db.connect(db_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def app_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """The service's pool: connections act as culturectl_app."""
    pool = await db.create_pool(db_dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def _write(pool: asyncpg.Pool, n: int, start: int = 0) -> None:
    async with pool.acquire() as conn:
        for i in range(start, start + n):
            async with conn.transaction():
                await audit.record(
                    conn, actor=ALICE if i % 2 else SCRIPT, action="culture_run.update", entity_type="culture_run",
                    entity_id=i, old={"status": "planned", "i": i}, new={"status": "running", "i": i,
                                                                         "ratio": i / 3},
                    reason=f"change {i}", client="10.0.0.7")


async def _verify(conn: asyncpg.Connection) -> audit.VerifyResult:
    return await audit.verify(conn)


async def _snapshot(owner: asyncpg.Connection) -> tuple[list[asyncpg.Record], asyncpg.Record]:
    rows = await owner.fetch(f"SELECT {audit.AUDIT_COLUMNS} FROM audit_log ORDER BY seq")
    head = await owner.fetchrow("SELECT seq, hash FROM audit_head")
    assert head is not None
    return list(rows), head


async def _tamper(owner: asyncpg.Connection, sql: str, *args: object) -> None:
    """Run SQL as the superuser with the audit triggers off, as an intruder would."""
    async with owner.transaction():
        await owner.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await owner.execute(sql, *args)
        await owner.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


async def _restore(owner: asyncpg.Connection, rows: list[asyncpg.Record], head: asyncpg.Record) -> None:
    async with owner.transaction():
        await owner.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await owner.execute("DELETE FROM audit_log")
        await owner.executemany(
            f"INSERT INTO audit_log ({audit.AUDIT_COLUMNS}) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            [tuple(r) for r in rows])
        await owner.execute("UPDATE audit_head SET seq = $1, hash = $2", head["seq"], head["hash"])
        await owner.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    assert (await _verify(owner)).ok


@pytest.fixture(scope="module")
async def chain(app_pool: asyncpg.Pool, owner: asyncpg.Connection) -> tuple[list[asyncpg.Record], asyncpg.Record]:
    """N rows written by the service; the snapshot every tampering test restores afterwards."""
    if await owner.fetchval("SELECT count(*) FROM audit_log") == 0:
        await _write(app_pool, N)
    return await _snapshot(owner)


async def _tampered(
    owner: asyncpg.Connection, chain: tuple[list[asyncpg.Record], asyncpg.Record],
    do: Callable[[], Awaitable[None]],
) -> audit.VerifyResult:
    rows, head = chain
    try:
        await do()
        return await _verify(owner)
    finally:
        await _restore(owner, rows, head)


# --------------------------------------------------------------------------------------------------
# Canonical JSON and the chain
# --------------------------------------------------------------------------------------------------


def test_canonical_json_is_stable_across_jsonb_spellings() -> None:
    # what Python writes and what jsonb gives back spell the same value differently
    assert audit.canonical_json({"b": 1e20, "a": 1.0}) == audit.canonical_json(
        json.loads('{"a": 1.0, "b": 100000000000000000000}'))
    assert audit.canonical_json({"x": [1, 2.50, "é", None, True]}) == '{"x":[1,2.5,"é",null,true]}'
    assert audit.canonical_json({"t": datetime(2026, 11, 21, 10, 0, tzinfo=UTC)}) == \
        '{"t":"2026-11-21T10:00:00.000000Z"}'
    assert audit.canonical_json({"d": Decimal("0.10"), "f": 0.1}) == '{"d":0.1,"f":0.1}'
    assert audit.canonical_json({"d": Decimal("0.1000000000000000000001")}) == '{"d":"0.1000000000000000000001"}'
    assert audit.canonical_json({"nan": float("nan")}) == '{"nan":"nan"}'


async def test_rows_round_trip_through_the_database(app_pool: asyncpg.Pool, owner: asyncpg.Connection,
                                                    chain: tuple[list[asyncpg.Record], asyncpg.Record]) -> None:
    rows, head = chain
    assert [r["seq"] for r in rows] == list(range(1, N + 1))
    assert rows[0]["prev_hash"] == audit.GENESIS_HASH
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, N))
    assert head["seq"] == N and head["hash"] == rows[-1]["hash"]
    # server UTC time, increasing; the actor as given
    assert all(r["at"].utcoffset().total_seconds() == 0 for r in rows)
    assert all(rows[i]["at"] >= rows[i - 1]["at"] for i in range(1, N))
    assert (rows[1]["actor_kind"], rows[1]["actor_id"], rows[1]["actor_name"], rows[1]["actor_role"]) == \
        ("user", 7, "alice", "supervisor")
    assert (rows[0]["actor_kind"], rows[0]["actor_name"], rows[0]["actor_role"]) == ("apikey", "feeder", "automation")
    result = await _verify(owner)
    assert result.ok and result.rows == N and result.first_broken is None, result


async def test_awkward_values_hash_the_same_after_storage(app_pool: asyncpg.Pool, owner: asyncpg.Connection,
                                                          chain: tuple[list[asyncpg.Record], asyncpg.Record]) -> None:
    rows, head = chain
    try:
        async with app_pool.acquire() as conn, conn.transaction():
            await audit.record(
                conn, actor=SYSTEM, action="device.update", entity_type="device", entity_id="incubator-1",
                old={"big": 1e20, "tiny": 1e-7, "one": 1.0, "text": "ü\n\"x\"", "nested": {"z": [1, {"y": None}]}},
                new={"when": datetime(2026, 11, 21, 12, 0, tzinfo=UTC), "d": Decimal("12.3400"), "neg0": -0.0},
                reason="calibration", client=None)
        assert (await _verify(owner)).ok
    finally:
        await _restore(owner, rows, head)


async def test_record_needs_a_transaction_and_a_reason_for_changes(app_pool: asyncpg.Pool) -> None:
    async with app_pool.acquire() as conn:
        with pytest.raises(audit.AuditError, match="inside the transaction"):
            await audit.record(conn, actor=ALICE, action="culture_run.create", entity_type="culture_run",
                               entity_id=1, old=None, new={"code": "R1"}, reason=None)
        async with conn.transaction():
            with pytest.raises(audit.AuditError, match="reason is required"):
                await audit.record(conn, actor=ALICE, action="culture_run.delete", entity_type="culture_run",
                                   entity_id=1, old={"code": "R1"}, new=None, reason="  ")


async def test_concurrent_writers_and_rollbacks_leave_one_gapless_chain(
    app_pool: asyncpg.Pool, owner: asyncpg.Connection, chain: tuple[list[asyncpg.Record], asyncpg.Record],
) -> None:
    rows, head = chain

    async def writer(i: int) -> None:
        async with app_pool.acquire() as conn:
            for j in range(5):
                tx = conn.transaction()
                await tx.start()
                await audit.record(conn, actor=ALICE, action="culture_run.update", entity_type="culture_run",
                                   entity_id=i, old={"j": j}, new={"j": j + 1}, reason="concurrency")
                # every third change is abandoned: its seq must be reused, never left as a hole
                await (tx.rollback() if (i + j) % 3 == 0 else tx.commit())

    try:
        await asyncio.gather(*(writer(i) for i in range(8)))
        seqs = [r["seq"] for r in await owner.fetch("SELECT seq FROM audit_log ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) == N + sum(1 for i in range(8) for j in range(5) if (i + j) % 3)
        assert (await _verify(owner)).ok
    finally:
        await _restore(owner, rows, head)


# --------------------------------------------------------------------------------------------------
# Append-only: the trigger and the service's role
# --------------------------------------------------------------------------------------------------


async def test_app_role_cannot_update_delete_or_truncate(app_pool: asyncpg.Pool,
                                                         chain: tuple[list[asyncpg.Record], asyncpg.Record]) -> None:
    async with app_pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == db.APP_ROLE
        for sql in ("UPDATE audit_log SET reason = 'x' WHERE seq = 1", "DELETE FROM audit_log WHERE seq = 1",
                    "TRUNCATE audit_log", "UPDATE audit_head SET seq = 0",
                    "UPDATE signature SET comment = 'x'", "DELETE FROM signature"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(sql)
        # and it cannot slip a row past the chain either
        with pytest.raises(asyncpg.SerializationError, match="does not extend the head"):
            await conn.execute(
                "INSERT INTO audit_log (seq, at, actor_kind, actor_name, actor_role, action, entity_type, "
                "prev_hash, hash) VALUES (1000, clock_timestamp(), 'user', 'mallory', 'admin', 'user.create', "
                "'user', repeat('0', 64), repeat('1', 64))")
        # the role is still what the pool hands out after a release (asyncpg resets with RESET ALL)
    async with app_pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == db.APP_ROLE
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == N  # it can read


async def test_the_trigger_stops_even_the_owner(owner: asyncpg.Connection,
                                                chain: tuple[list[asyncpg.Record], asyncpg.Record]) -> None:
    assert await owner.fetchval("SELECT current_user") != db.APP_ROLE
    for sql in ("UPDATE audit_log SET reason = 'x' WHERE seq = 1", "DELETE FROM audit_log WHERE seq = 1",
                "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute(sql)
    assert await owner.fetchval("SELECT count(*) FROM audit_log") == N


async def test_app_role_keeps_working_rights_on_the_other_tables(app_pool: asyncpg.Pool) -> None:
    async with app_pool.acquire() as conn, conn.transaction():
        dev = await conn.fetchval("INSERT INTO device (name, kind, protocol, endpoint) "
                                  "VALUES ('role-check', 'incubator', 'opcua', 'x') RETURNING id")
        run = await conn.fetchval("INSERT INTO culture_run (code, incubator_device_id) VALUES ('RC-1', $1) "
                                  "RETURNING id", dev)
        await conn.execute("UPDATE culture_run SET status = 'running' WHERE id = $1", run)
        await conn.execute("DELETE FROM culture_run WHERE id = $1", run)
        await conn.execute("DELETE FROM device WHERE id = $1", dev)
        # the telemetry writer's staging table is a temp table
        await conn.execute("CREATE TEMP TABLE role_check (x int) ON COMMIT DROP")


@pytest.mark.timescale
async def test_app_role_writes_telemetry_into_new_hypertable_chunks(app_pool: asyncpg.Pool) -> None:
    """TimescaleDB creates chunks as the hypertable owner; the service's role inserts and reads the aggregate."""
    async with app_pool.acquire() as conn:
        dev = await conn.fetchval("INSERT INTO device (name, kind, protocol, endpoint) "
                                  "VALUES ('ts-role', 'incubator', 'opcua', 'x') RETURNING id")
        ch = await conn.fetchval("INSERT INTO channel (device_id, name, unit, kind) "
                                 "VALUES ($1, 'temperature', 'degC', 'analog') RETURNING id", dev)
        chunks_before = await conn.fetchval("SELECT count(*) FROM show_chunks('telemetry')")
        base = datetime(2031, 3, 1, tzinfo=UTC)
        rows = [(base.replace(day=d, hour=h), ch, 37.0 + h / 100, 0) for d in (1, 2, 3) for h in (0, 12)]
        await conn.copy_records_to_table("telemetry", records=rows, columns=["time", "channel_id", "value", "quality"])
        assert await conn.fetchval("SELECT count(*) FROM show_chunks('telemetry')") >= chunks_before + 3
        assert await conn.fetchval("SELECT count(*) FROM telemetry WHERE channel_id = $1", ch) == 6
        assert await conn.fetchval("SELECT sum(n) FROM telemetry_5m WHERE channel_id = $1", ch) == 6


# --------------------------------------------------------------------------------------------------
# Tampering: verify names the first broken row, every time
# --------------------------------------------------------------------------------------------------


async def test_edit_any_row_is_found_at_that_row(owner: asyncpg.Connection,
                                                 chain: tuple[list[asyncpg.Record], asyncpg.Record]) -> None:
    edits = [
        "UPDATE audit_log SET new = jsonb_set(new, '{status}', '\"completed\"') WHERE seq = $1",
        "UPDATE audit_log SET reason = reason || '.' WHERE seq = $1",
        "UPDATE audit_log SET actor_name = 'mallory' WHERE seq = $1",
        "UPDATE audit_log SET at = at - interval '1 second' WHERE seq = $1",
        "UPDATE audit_log SET old = NULL WHERE seq = $1",
    ]
    for seq in range(1, N + 1):
        sql = edits[seq % len(edits)]

        async def edit(sql: str = sql, seq: int = seq) -> None:
            await _tamper(owner, sql, seq)

        result = await _tampered(owner, chain, edit)
        assert not result.ok and result.first_broken is not None
        assert (result.first_broken.seq, result.first_broken.kind) == (seq, "edited"), (sql, result)


async def test_edit_with_a_recomputed_hash_is_found_at_the_next_row(
    owner: asyncpg.Connection, chain: tuple[list[asyncpg.Record], asyncpg.Record],
) -> None:
    rows, _ = chain
    for seq in (1, 5, N - 1):
        forged = dict(rows[seq - 1])
        forged["reason"] = "nothing to see"
        forged_hash = audit.chain_hash(forged["prev_hash"], forged)

        async def edit(seq: int = seq, h: str = forged_hash) -> None:
            await _tamper(owner, "UPDATE audit_log SET reason = 'nothing to see', hash = $2 WHERE seq = $1", seq, h)

        result = await _tampered(owner, chain, edit)
        assert result.first_broken is not None
        assert (result.first_broken.seq, result.first_broken.kind) == (seq + 1, "reordered_or_inserted"), result


async def test_delete_any_row_is_found_at_that_seq(owner: asyncpg.Connection,
                                                   chain: tuple[list[asyncpg.Record], asyncpg.Record]) -> None:
    for seq in range(1, N + 1):  # the first, the middle ones and the last
        async def delete(seq: int = seq) -> None:
            await _tamper(owner, "DELETE FROM audit_log WHERE seq = $1", seq)

        result = await _tampered(owner, chain, delete)
        assert result.first_broken is not None
        assert (result.first_broken.seq, result.first_broken.kind) == (seq, "deleted"), result
    # several at once: the first one is named
    result = await _tampered(owner, chain, lambda: _tamper(owner, "DELETE FROM audit_log WHERE seq IN (4, 5, 8)"))
    assert result.first_broken is not None and (result.first_broken.seq, result.first_broken.kind) == (4, "deleted")
    # everything
    result = await _tampered(owner, chain, lambda: _tamper(owner, "DELETE FROM audit_log"))
    assert result.first_broken is not None and (result.first_broken.seq, result.first_broken.kind) == (1, "deleted")


async def test_inserted_rows_are_found(owner: asyncpg.Connection,
                                       chain: tuple[list[asyncpg.Record], asyncpg.Record]) -> None:
    rows, _ = chain
    for at in (1, 5, N):
        # a forged row at seq `at`, later rows renumbered; the forger even computes a valid hash for it
        prev = audit.GENESIS_HASH if at == 1 else rows[at - 2]["hash"]
        forged = dict(rows[at - 1])
        forged.update(seq=at, actor_name="mallory", reason="backdated approval", prev_hash=prev)
        forged["hash"] = audit.chain_hash(prev, forged)

        async def insert(at: int = at, forged: dict[str, object] = forged) -> None:
            await _tamper(owner, "UPDATE audit_log SET seq = seq + 100000 WHERE seq >= $1", at)
            await _tamper(owner, "UPDATE audit_log SET seq = seq - 99999 WHERE seq >= 100000")
            await _tamper(owner, f"INSERT INTO audit_log ({audit.AUDIT_COLUMNS}) VALUES "
                                 "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                          *[forged[c.strip()] for c in audit.AUDIT_COLUMNS.split(",")])

        result = await _tampered(owner, chain, insert)
        assert result.first_broken is not None
        assert (result.first_broken.seq, result.first_broken.kind) == (at + 1, "reordered_or_inserted"), result

    # a forged row with a made-up hash is found at itself
    async def crude() -> None:
        await _tamper(owner, "UPDATE audit_log SET seq = seq + 100000 WHERE seq >= 3")
        await _tamper(owner, "UPDATE audit_log SET seq = seq - 99999 WHERE seq >= 100000")
        await _tamper(owner, "INSERT INTO audit_log (seq, at, actor_kind, actor_name, actor_role, action, "
                             "entity_type, prev_hash, hash) VALUES (3, now(), 'user', 'mallory', 'qa', "
                             "'culture_run.approve', 'culture_run', $1, repeat('f', 64))", rows[1]["hash"])

    result = await _tampered(owner, chain, crude)
    assert result.first_broken is not None and (result.first_broken.seq, result.first_broken.kind) == (3, "edited")

    # a row appended after the head, bypassing the writer
    async def append() -> None:
        forged = dict(rows[-1])
        forged.update(seq=N + 1, prev_hash=rows[-1]["hash"])
        forged["hash"] = audit.chain_hash(forged["prev_hash"], forged)
        await _tamper(owner, f"INSERT INTO audit_log ({audit.AUDIT_COLUMNS}) VALUES "
                             "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                      *[forged[c.strip()] for c in audit.AUDIT_COLUMNS.split(",")])

    result = await _tampered(owner, chain, append)
    assert result.first_broken is not None
    assert (result.first_broken.seq, result.first_broken.kind) == (N + 1, "appended"), result


async def test_reordered_rows_are_found_at_the_first_moved_row(
    owner: asyncpg.Connection, chain: tuple[list[asyncpg.Record], asyncpg.Record],
) -> None:
    for a, b in ((1, 2), (3, 7), (N - 1, N), (2, N)):
        async def swap(a: int = a, b: int = b) -> None:
            await _tamper(owner, "UPDATE audit_log SET seq = 999999 WHERE seq = $1", a)
            await _tamper(owner, "UPDATE audit_log SET seq = $1 WHERE seq = $2", a, b)
            await _tamper(owner, "UPDATE audit_log SET seq = $1 WHERE seq = 999999", b)

        result = await _tampered(owner, chain, swap)
        assert result.first_broken is not None
        assert (result.first_broken.seq, result.first_broken.kind) == (a, "reordered_or_inserted"), (a, b, result)


async def test_untouched_chain_verifies_after_all_that(owner: asyncpg.Connection,
                                                       chain: tuple[list[asyncpg.Record], asyncpg.Record]) -> None:
    result = await _verify(owner)
    assert result.ok and result.rows == N and result.last_hash == chain[1]["hash"]


# --------------------------------------------------------------------------------------------------
# The migration
# --------------------------------------------------------------------------------------------------


async def test_downgrade_and_upgrade_again(db_dsn: str, owner: asyncpg.Connection,
                                           chain: tuple[list[asyncpg.Record], asyncpg.Record]) -> None:
    await db.downgrade_async(db_dsn, "20261121_0002")
    left = await owner.fetchval("SELECT count(*) FROM pg_class WHERE relname IN ('audit_log', 'audit_head', "
                                "'signature') AND relnamespace = 'public'::regnamespace")
    assert left == 0
    grants = await owner.fetchval(
        "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = $1", db.APP_ROLE)
    assert grants == 0
    await db.upgrade_async(db_dsn)
    assert await owner.fetchval("SELECT count(*) FROM audit_log") == 0
    assert (await _verify(owner)).ok
    pool = await db.create_pool(db_dsn, min_size=1, max_size=1)
    try:
        await _write(pool, 2)
    finally:
        await pool.close()
    assert (await _verify(owner)).rows == 2
