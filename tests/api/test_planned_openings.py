"""Planned door openings against PostgreSQL: the incubator simulator's physics feeds the running service's alarms;
a planned opening is recorded in `door_opening` with its recovery and opens no deviation; an exceeded one opens a
`door_recovery` deviation, and both its row and its deviation come through a database outage by the disk spool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app import db
from app.alarms import journal
from app.alarms.service import AlarmService
from app.auth.principal import Role, cli_principal
from app.core.clock import ManualClock
from app.protocol import runs, schemas
from simulators.physics import IncubatorModel
from tests.api.conftest import Service, running_service
from tests.api.protocol_support import ensure_recipe, run_body
from tests.unit.test_planned_openings import Chamber

START = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
INC = "incubator-1"


@dataclass
class Env:
    svc: Service
    clock: ManualClock
    model: IncubatorModel

    @property
    def alarms(self) -> AlarmService:
        rt = self.svc.app.state.runtime
        assert rt.alarms is not None
        return rt.alarms

    def chamber(self) -> Chamber:
        """The incubator's physics feeding the service (the unit tests' chamber)."""
        return Chamber(self.alarms, self.clock, device=INC, model=self.model)

    def run(self, seconds: float) -> None:
        """The chamber's temperature, CO2 and RH every 10 s, a service pass after each."""
        self.chamber().run(seconds)

    def door(self, is_open: bool) -> None:
        self.chamber().door(is_open)


@pytest.fixture(scope="module")
async def env(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    clock = ManualClock(START)
    data_dir: Path = tmp_path_factory.mktemp("openings")
    async with running_service(db_dsn, data_dir, clock=clock, alarm_interval=10) as svc:
        yield Env(svc, clock, IncubatorModel(clock.now(), seed=11))


async def _run(env: Env, in_window: list[str]) -> int:
    await ensure_recipe(env.svc)
    t0 = env.clock.now()
    body = schemas.RunCreate.model_validate(run_body(t0 - timedelta(days=3), planned_t0=t0.isoformat(),
                                                   incubator=INC, culture_system="culture-system-1"))
    conn = await db.connect(env.svc.dsn)
    try:
        await conn.execute("UPDATE culture_run SET status = 'completed' WHERE status IN ('planned','running','held')")
        view = await runs.create_run(conn, body, principal=cli_principal(), now=env.clock.now(), client=None)
        run_id = int(view["id"])
        await conn.execute("UPDATE culture_run SET status = 'running', t0 = planned_t0 WHERE id = $1", run_id)
        for key in in_window:
            await conn.execute("INSERT INTO step_status (run_id, step_key, status, changed_at, \"window\") "
                               "VALUES ($1, $2, 'open', $3, '{}'::jsonb)", run_id, key, env.clock.now())
        return run_id
    finally:
        await conn.close()


async def _openings(env: Env, run_id: int) -> list[dict[str, Any]]:
    conn = await db.connect(env.svc.dsn)
    try:
        return await journal.run_door_openings(conn, run_id)
    finally:
        await conn.close()


async def _deviations(env: Env, run_id: int) -> list[dict[str, Any]]:
    op = await env.svc.login(Role.OPERATOR)
    r = await env.svc.client.get("/api/v1/deviations", params={"run_id": run_id}, headers=op)
    assert r.status_code == 200, r.text
    return list(r.json())


async def test_a_planned_opening_is_recorded_with_its_recovery_and_opens_no_deviation(env: Env) -> None:
    run_id = await _run(env, ["feed_day3"])
    await env.alarms.sync()
    env.door(False)
    env.run(10 * 60)
    opened = env.clock.now()
    env.door(True)
    env.run(60)
    env.door(False)
    env.run(40 * 60)
    await env.alarms.sync()

    [row] = await _openings(env, run_id)
    assert (row["device"], row["step_key"], row["outcome"], row["reason"]) == (INC, "feed_day3", "planned", None)
    assert (row["opened_at"], row["closed_at"]) == (opened, opened + timedelta(seconds=60))
    assert row["exceeded_at"] is None and 10 < row["recovery_min"] < 14
    assert 33.4 < row["min_temperature"] < 34.0 and 1.5 < row["min_co2"] < 2.2
    assert row["planned"] == {"max_open_s": 90.0, "temperature_min": 32.0, "co2_min": 1.0, "recovery_min": 20.0}
    assert await _deviations(env, run_id) == []
    op = await env.svc.login(Role.OPERATOR)
    r = await env.svc.client.get(f"/api/v1/runs/{run_id}/excursions", headers=op)
    assert r.status_code == 200, r.text
    assert all(c["minutes_outside"] == 0 and c["hard_limit_episodes"] == 0 for c in r.json()["channels"])
    for alarm in ("temperature:limit", "co2:limit", "door_open:limit"):
        a = (await env.svc.client.get(f"/api/v1/alarms/{INC}.{alarm}", headers=op)).json()
        assert a["status"] == "normal", a


async def test_an_exceeded_opening_during_an_outage_reaches_the_database_by_the_spool(env: Env) -> None:
    run_id = await _run(env, ["harvest"])
    await env.alarms.sync()
    env.run(60)
    spool = env.alarms.spool
    assert spool is not None
    historian = env.alarms.historian
    env.alarms.historian = lambda: {"db_down_since": 1.0}  # the writer says: the database is down
    try:
        opened = env.clock.now()
        env.door(True)
        env.run(5 * 60)
        env.door(False)
        await env.alarms.flush()  # to the spool, not the database
        assert spool.record_count > 0
        assert await _openings(env, run_id) == [] and await _deviations(env, run_id) == []
    finally:
        env.alarms.historian = historian
    env.run(40 * 60)
    await env.alarms.flush()  # the spool first, in order, then what came after the outage

    [row] = await _openings(env, run_id)
    assert (row["step_key"], row["outcome"], row["reason"]) == ("harvest", "exceeded", "door open 100 s > 90 s")
    assert row["exceeded_at"] == opened + timedelta(seconds=100)
    assert row["closed_at"] == opened + timedelta(seconds=300) and row["recovered_at"] is not None
    devs = {d["rule"]: d for d in await _deviations(env, run_id)}
    assert "door_recovery" in devs and "excursion_hard_limit" in devs
    facts = devs["door_recovery"]["facts"]
    assert (facts["step"], facts["reason"], facts["recovery"]) == ("harvest", "door open 100 s > 90 s",
                                                                  "not recovered")
    assert facts["opened_at"] == opened.isoformat() and facts["planned"]["max_open_s"] == 90.0
    assert spool.record_count == 0
