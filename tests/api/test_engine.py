"""The schedule engine in the service, on a hand-moved clock: transitions persisted, audited and published;
a restart after a step's hard_latest opens the missed-step deviation exactly once and holds the run; the
schedule continues after QA resumes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app import db
from app.core.clock import ManualClock
from app.protocol.engine import MISSED_RULE
from tests.api.conftest import Service, running_service
from tests.api.protocol_support import create_run_api, ensure_recipe, post_step
from tests.support import wait_for

START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
ENGINE = {"engine_enabled": True, "engine_interval": 0.05}


async def _fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await db.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def _statuses(dsn: str, run_id: int) -> dict[str, str]:
    rows = await _fetch(dsn, "SELECT step_key, status FROM step_status WHERE run_id = $1", run_id)
    return {r["step_key"]: r["status"] for r in rows}


async def _has(dsn: str, run_id: int, key: str, status: str) -> bool:
    return (await _statuses(dsn, run_id)).get(key) == status


async def test_restart_past_hard_latest_opens_one_deviation_and_holds_then_the_schedule_continues(
        db_dsn: str, tmp_path: Path) -> None:
    clock = ManualClock(START)
    t0 = START + timedelta(hours=20)
    async with running_service(db_dsn, tmp_path / "one", clock=clock, **ENGINE) as svc:
        await ensure_recipe(svc)
        op = await svc.login("operator")
        run_id = await create_run_api(svc, op, t0)
        await wait_for(lambda: _has(db_dsn, run_id, "seed", "pending"), timeout=10, what="the first statuses")
        for key, at in (("coat_vessels", -18), ("receive_cells", -3), ("incubator_ready", -2), ("seed", 0)):
            clock.set(t0 + timedelta(hours=at))
            r = await post_step(svc, op, run_id, key)
            assert r.status_code == 201, r.text
        await wait_for(lambda: _has(db_dsn, run_id, "seed", "done"), timeout=10, what="seed done persisted")
        clock.set(t0 + timedelta(hours=70))
        await wait_for(lambda: _has(db_dsn, run_id, "feed_day3", "open"), timeout=10, what="feed_day3 open")
        events = [e for e in list(svc.app.state.runtime.live._history) if e.kind == "step"]
        assert any(e.data["step"] == "seed" and e.data["new"] == "done" and e.data["run_id"] == run_id
                   for e in events)
        # incubator_ready's on_open setpoints were tried; no device is connected here: audited failures, no crash.
        failed = await _fetch(db_dsn, "SELECT new FROM audit_log WHERE action = 'device.setpoint_failed'")
        assert failed, "a setpoint that cannot be written is audited"
    # The service is down while feed_day3 passes its hard latest (t0 + 84 h).
    clock.set(t0 + timedelta(hours=85))
    async with running_service(db_dsn, tmp_path / "two", clock=clock, **ENGINE) as svc:
        await wait_for(lambda: _has(db_dsn, run_id, "feed_day3", "missed"), timeout=10, what="feed_day3 missed")
        for _ in range(3):  # more passes change nothing
            await svc.app.state.runtime.engine.tick()
        devs = await _fetch(db_dsn, "SELECT id, step_key, opened_by FROM deviation WHERE run_id = $1 AND rule = $2",
                            run_id, MISSED_RULE)
        assert [(d["step_key"], d["opened_by"]) for d in devs] == [("feed_day3", "system:culturectl")]
        holds = await _fetch(db_dsn, "SELECT actor_kind FROM audit_log WHERE action = 'run.hold' AND entity_id = $1",
                             str(run_id))
        assert holds == [{"actor_kind": "system"}]
        missed = await _fetch(db_dsn, "SELECT count(*) AS n FROM audit_log WHERE action = 'step.status' AND "
                                      "entity_id = $1 AND new->>'step' = 'feed_day3' AND new->>'status' = 'missed'",
                              str(run_id))
        assert missed == [{"n": 1}]
        op = await svc.login("operator")  # the clock moved past the old token's lifetime
        view = (await svc.client.get(f"/api/v1/runs/{run_id}", headers=op)).json()
        assert view["status"] == "held" and view["open_deviations"] == 1
        await _continue(svc, run_id, t0, clock, op)


async def _continue(svc: Service, run_id: int, t0: datetime, clock: ManualClock, op: dict[str, str]) -> None:
    """QA resumes, a supervisor records the missed count late (override), the mycoplasma sample and the harvest follow
    on time."""
    _, _, qa_password, qa = await svc.user("qa")
    r = await svc.client.post(f"/api/v1/runs/{run_id}/resume", headers=qa, json={
        "reason": "missed count reviewed", "signature": {"meaning": "approved", "password": qa_password}})
    assert r.status_code == 200, r.text
    sup = await svc.login("supervisor")
    r = await post_step(svc, sup, run_id, "feed_day3", override=True, override_reason="count done late, reviewed")
    assert r.status_code == 201, r.text
    clock.set(t0 + timedelta(hours=132))
    op = await svc.login("operator")
    r = await post_step(svc, op, run_id, "mycoplasma_sample")
    assert r.status_code == 201, r.text
    clock.set(t0 + timedelta(hours=168))
    op = await svc.login("operator")
    r = await post_step(svc, op, run_id, "harvest")
    assert r.status_code == 201, r.text
    await wait_for(lambda: _has(svc.dsn, run_id, "harvest", "done"), timeout=10, what="harvest done persisted")
    statuses = await _statuses(svc.dsn, run_id)
    assert statuses["feed_day3"] == "done" and statuses["feed_day5"] == "skipped"
    view = (await svc.client.get(f"/api/v1/runs/{run_id}", headers=op)).json()
    assert view["status"] == "running"
    n = await _fetch(svc.dsn, "SELECT count(*) AS n FROM deviation WHERE run_id = $1 AND rule = $2", run_id,
                     MISSED_RULE)
    assert n == [{"n": 1}], "the restart, the resume and the late post opened no second missed-step deviation"
