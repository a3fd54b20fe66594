"""The alarm journal's way through the disk spool, against a real PostgreSQL: a backlog larger than one page is
written in one pass and in order, a record the database refuses goes to the spool's quarantine instead of blocking
the others, and a replayed older snapshot never overwrites a newer alarm state."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app import db
from app.alarms import journal
from app.alarms.evaluate import Transition
from app.alarms.model import AlarmStatus, Severity
from app.alarms.service import AlarmService
from app.core.clock import ManualClock
from app.core.live import LiveHub
from app.devices.registry import sync_devices
from app.ingest.spool import Spool
from drivers.devices import DeviceConfig

DEVICES = [DeviceConfig(name="sp-inc", kind="incubator", protocol="opcua", endpoint="opc.tcp://127.0.0.1:1/x")]
ALARM = "sp-inc.temperature:limit"
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(db_dsn)
    async with p.acquire() as conn:
        await sync_devices(conn, DEVICES)
    try:
        yield p
    finally:
        await p.close()


async def test_a_large_backlog_is_written_in_order_a_refused_record_is_quarantined_and_no_snapshot_goes_back(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    await spool.open()
    historian: dict[str, Any] = {"db_down_since": 1.0}  # the writer says: down
    clock = ManualClock(T0)
    svc = AlarmService(clock, LiveHub(), DEVICES, pool=pool, spool=spool, historian=lambda: historian)
    alarm = svc.alarms[ALARM]
    try:
        # newer state first, then an older snapshot of the same alarm (as a replay after a crash would bring it)
        newer = replace(alarm, changed_at=T0 + timedelta(hours=2))
        newer.state = replace(newer.state, active=Severity.HH, unacked=True)
        older = replace(alarm, changed_at=T0)
        records = [("alarm", journal.pack(journal.alarm_args(newer)))]
        events = []
        for i in range(1500):
            tr = Transition(ALARM, AlarmStatus.NORMAL, AlarmStatus.ACTIVE_UNACK, Severity.H, 38.5,
                            T0 + timedelta(seconds=i), "activated")
            key = str(uuid.uuid4())
            events.append(key)
            records.append(("alarm_event", journal.pack(journal.event_args(newer, tr, None, None, key))))
            if i == 700:  # a journal row for an alarm the database does not know: refused (foreign key)
                ghost = replace(newer, id="no-such-alarm")
                records.append(("alarm_event", journal.pack(journal.event_args(ghost, tr, None, None,
                                                                               str(uuid.uuid4())))))
        records.append(("alarm", journal.pack(journal.alarm_args(older))))
        await spool.append_records(records)
        assert spool.record_count == 1503

        historian["db_down_since"] = None  # back
        await svc.flush()

        async with pool.acquire() as conn:
            keys = [str(k) for k in await conn.fetchval(
                "SELECT array_agg(record_key ORDER BY id) FROM alarm_event WHERE alarm_id = $1", ALARM)]
            row = await conn.fetchrow("SELECT status, severity, changed_at FROM alarm WHERE id = $1", ALARM)
        assert keys == events  # every one, once, in the order they happened
        assert row is not None and (row["status"], row["severity"], row["changed_at"]) == (
            "active_unack", "hh", T0 + timedelta(hours=2))  # the older snapshot did not win
        assert spool.record_count == 0 and spool.quarantined_records == 1
    finally:
        await spool.close()
    with sqlite3.connect(tmp_path / "spool.sqlite3") as raw:
        quarantined = raw.execute("SELECT kind, error FROM record_quarantine").fetchall()
    assert len(quarantined) == 1 and quarantined[0][0] == "alarm_event" and "ForeignKey" in quarantined[0][1]


async def test_an_alarm_that_activates_while_a_flush_writes_is_written_whole_by_the_next(
        pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transition emitted during a flush's awaits (a reading, the timed pass, an operator's action) must not
    send its journal row without its alarm row: the next flush writes both."""
    clock = ManualClock(T0 + timedelta(days=3))
    svc = AlarmService(clock, LiveHub(), DEVICES, pool=pool)
    svc.service_condition("flush_race_a", False, clock.now(), "first")
    original = journal.upsert_alarm
    fired: list[bool] = []

    async def upsert_and_meanwhile(conn: asyncpg.Connection, a: Any) -> None:
        if not fired:
            fired.append(True)
            svc.service_condition("flush_race_b", False, clock.now(), "activates during the flush")
        await original(conn, a)

    monkeypatch.setattr(journal, "upsert_alarm", upsert_and_meanwhile)
    await svc.flush()  # was: ForeignKeyViolation, the journal row of flush_race_b without its alarm row
    await svc.flush()
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT a.id, count(e.id) AS n FROM alarm a JOIN alarm_event e ON e.alarm_id = a.id "
                                "WHERE a.id LIKE 'culturectl:flush_race_%' GROUP BY a.id ORDER BY a.id")
    assert [(r["id"], r["n"]) for r in rows] == [("culturectl:flush_race_a", 1), ("culturectl:flush_race_b", 1)]
