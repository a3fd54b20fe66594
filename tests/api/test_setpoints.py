"""Setpoint commands over the API against a scripted device (no simulator): every rule in its order, the
confirmation by read-back, the command row and its single audit record, and the failures that are recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app import db
from app.auth.principal import Role
from app.core.clock import ManualClock
from tests.api.conftest import Service, running_service
from tests.api.protocol_support import make_run
from tests.api.setpoint_support import DEVICE, attach_device, hub_of

URL = f"/api/v1/devices/{DEVICE}/setpoints"
CULTURE_URL = "/api/v1/devices/culture-system-1/setpoints"


@pytest.fixture(scope="module")
async def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 22, 8, 0, tzinfo=UTC))


@pytest.fixture(scope="module")
async def service(db_dsn: str, tmp_path_factory: pytest.TempPathFactory,
                  clock: ManualClock) -> AsyncIterator[Service]:
    """The service with no device connected, on a manual clock (the rate rule counts clock seconds)."""
    async with running_service(db_dsn, tmp_path_factory.mktemp("setpoints"), clock=clock,
                               setpoint_timeout=0.5) as svc:
        yield svc


async def _fetch(service: Service, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await db.connect(service.dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _counts(service: Service) -> tuple[int, int]:
    rows = await _fetch(service, "SELECT (SELECT count(*) FROM setpoint_command) AS c, "
                                 "(SELECT count(*) FROM audit_log WHERE action LIKE 'device.setpoint%') AS a")
    return int(rows[0]["c"]), int(rows[0]["a"])


def _body(value: float, point: str = "temperature_setpoint", **extra: Any) -> dict[str, Any]:
    return {"point": point, "value": value, "reason": "test: setpoint", **extra}


async def _bind(service: Service, clock: ManualClock, status: str, device: str = DEVICE) -> int:
    run_id = await make_run(service, clock.now(), status=status)
    column = "incubator_device_id" if device == DEVICE else "culture_system_device_id"
    await _fetch(service, f"UPDATE culture_run SET {column} = (SELECT id FROM device WHERE name = $2) WHERE id = $1",
                 run_id, device)
    return run_id


async def _release(service: Service, run_id: int) -> None:
    await _fetch(service, "UPDATE culture_run SET status = 'completed' WHERE id = $1", run_id)


async def test_no_credentials_401_and_roles_that_may_not_write_403(service: Service) -> None:
    before = await _counts(service)
    r = await service.client.post(URL, json=_body(37.5))
    assert r.status_code == 401, r.text
    for headers in (await service.login(Role.QA), await service.login(Role.AUTOMATION),
                    await service.login(Role.ADMIN), (await service.api_key(Role.AUTOMATION))[2]):
        r = await service.client.post(URL, json=_body(37.5), headers=headers)
        assert r.status_code == 403, r.text
        assert "operator, supervisor" in r.json()["detail"]
    assert await _counts(service) == before


async def test_refusals_before_any_write_name_the_rule_and_leave_no_trace(service: Service,
                                                                          clock: ManualClock) -> None:
    op = await service.login(Role.OPERATOR)
    before = await _counts(service)
    r = await service.client.post("/api/v1/devices/freezer-9/setpoints", json=_body(37.0), headers=op)
    assert r.status_code == 404 and r.json()["rule"] == "unknown_device", r.text
    r = await service.client.post(URL, json=_body(37.0, point="heater_power"), headers=op)
    assert r.status_code == 422 and r.json()["rule"] == "unknown_point", r.text
    assert "temperature_setpoint" in r.json()["detail"]
    r = await service.client.post(URL, json=_body(37.0, point="temperature"), headers=op)
    assert r.status_code == 422 and r.json()["rule"] == "point_not_writable", r.text
    for value in (40.5, 29.0):
        r = await service.client.post(URL, json=_body(value), headers=op)
        assert r.status_code == 422 and r.json()["rule"] == "point_limit", r.text
        assert (r.json()["min"], r.json()["max"]) == (30.0, 40.0) and "30..40 degC" in r.json()["detail"]
    r = await service.client.post(URL, json={**_body(37.0), "actor": "someone-else"}, headers=op)
    assert r.status_code == 422, r.text
    r = await service.client.post(URL, json={"point": "temperature_setpoint", "value": 37.0}, headers=op)
    assert r.status_code == 422 and "reason" in r.text  # every command says why
    # No device connected in this service: the device state refuses it (after every other rule passed).
    r = await service.client.post(CULTURE_URL, json=_body(5.0, point="pump_rate_setpoint"), headers=op)
    assert r.status_code == 503 and r.json()["rule"] == "device_unavailable", r.text
    assert "not online" in r.json()["detail"]
    assert await _counts(service) == before


async def test_held_run_refuses_manual_setpoints_for_everyone(service: Service, clock: ManualClock) -> None:
    op, sup = await service.login(Role.OPERATOR), await service.login(Role.SUPERVISOR)
    run_id = await _bind(service, clock, "held", device="culture-system-1")
    try:
        before = await _counts(service)
        for role, headers in (("operator", op), ("supervisor", sup)):
            r = await service.client.post(CULTURE_URL, json=_body(5.0, point="pump_rate_setpoint"), headers=headers)
            assert r.status_code == 409 and r.json()["rule"] == "run_held", r.text
            assert r.json()["run_ids"] == [run_id] and r.json()["allowed_roles"] == []
            assert f"{role} may not change them by hand" in r.json()["detail"]
        assert await _counts(service) == before
    finally:
        await _release(service, run_id)
    # A completed run does not bind the device: the operator passes the run rule.
    r = await service.client.post(CULTURE_URL, json=_body(5.0, point="pump_rate_setpoint"), headers=op)
    assert r.json()["rule"] == "device_unavailable", r.text
    r = await service.client.post(CULTURE_URL, json=_body(5.0, point="pump_rate_setpoint", run_id=run_id),
                                  headers=op)
    assert r.status_code == 422 and r.json()["rule"] == "run_device_mismatch", r.text


async def test_accepted_command_is_confirmed_recorded_audited_once(service: Service, clock: ManualClock) -> None:
    driver = await attach_device(service)
    op_id, op_name, _, op = await service.user(Role.OPERATOR)
    run_id = await _bind(service, clock, "running")
    try:
        before = await _counts(service)
        r = await service.client.post(URL, json=_body(37.5), headers=op)
        assert r.status_code == 200, r.text
        cmd = r.json()
        assert (cmd["result"], cmd["requested"], cmd["read_back"], cmd["previous"]) == ("confirmed", 37.5, 37.5, 37.0)
        assert (cmd["run_id"], cmd["source"], cmd["actor"]) == (run_id, "api", f"user:{op_name}")
        assert driver.values["temperature_setpoint"] == 37.5
        assert await _counts(service) == (before[0] + 1, before[1] + 1)
        audit = await _fetch(service, "SELECT actor_id, old, new, reason FROM audit_log WHERE action = "
                                      "'device.setpoint' ORDER BY seq DESC LIMIT 1")
        assert audit[0]["actor_id"] == op_id and audit[0]["reason"] == "test: setpoint"
        assert '"result": "confirmed"' in audit[0]["new"] and '"value": 37.0' in audit[0]["old"]
        # The history lists it, newest first, for any signed-in principal.
        r = await service.client.get(URL, headers=(await service.api_key(Role.AUTOMATION))[2])
        assert r.status_code == 200 and r.json()[0]["id"] == cmd["id"], r.text

        # Rate of change: a second command within 60 clock seconds, then a step larger than 1.0 C.
        clock.advance(30)
        r = await service.client.post(URL, json=_body(37.0), headers=op)
        assert r.status_code == 409 and r.json()["rule"] == "rate_of_change", r.text
        assert r.json()["retry_after_s"] == 30 and "60 s" in r.json()["detail"]
        clock.advance(31)
        r = await service.client.post(URL, json=_body(39.0), headers=op)
        assert r.status_code == 409 and r.json()["rule"] == "rate_of_change", r.text
        assert r.json()["max_step"] == 1.0 and "37.5 -> 39" in r.json()["detail"]
        assert await _counts(service) == (before[0] + 1, before[1] + 1)
        # Another point is not bound by this point's interval.
        r = await service.client.post(URL, json=_body(5.5, point="co2_setpoint"), headers=op)
        assert r.status_code == 200 and r.json()["result"] == "confirmed", r.text
    finally:
        await _release(service, run_id)


async def test_held_run_supervisor_write_never_reaches_the_device(service: Service, clock: ManualClock) -> None:
    driver = await attach_device(service)
    clock.advance(120)
    sup = await service.login(Role.SUPERVISOR)
    run_id = await _bind(service, clock, "held")
    old = driver.values["temperature_setpoint"]
    try:
        before = await _counts(service)
        r = await service.client.post(URL, json=_body(36.8, reason="hold: try 36.8 C"), headers=sup)
        assert r.status_code == 409 and r.json()["rule"] == "run_held" and r.json()["run_ids"] == [run_id], r.text
        assert await _counts(service) == before and driver.values["temperature_setpoint"] == old
    finally:
        await _release(service, run_id)


async def test_device_that_does_not_follow_or_times_out_is_recorded(service: Service, clock: ManualClock) -> None:
    driver = await attach_device(service)
    op = await service.login(Role.OPERATOR)
    try:
        driver.mode = "ignore"
        clock.advance(120)
        before = await _counts(service)
        old = driver.values["temperature_setpoint"]  # what the earlier tests left on the device
        r = await service.client.post(URL, json=_body(37.8), headers=op)
        assert r.status_code == 502 and r.json()["rule"] == "device_did_not_follow", r.text
        body = r.json()
        assert (body["requested"], body["read_back"]) == (37.8, old) and f"read back {old:g}" in body["detail"]
        assert body["command"]["result"] == "did_not_follow"
        driver.mode = "stall"
        clock.advance(120)
        r = await service.client.post(URL, json=_body(37.8), headers=op)
        assert r.status_code == 504 and r.json()["rule"] == "device_timeout", r.text
        assert r.json()["command"]["result"] == "timeout" and r.json()["command"]["read_back"] is None
        assert await _counts(service) == (before[0] + 2, before[1] + 2)  # recorded and audited, once each
        rows = await _fetch(service, "SELECT result, completed_at FROM setpoint_command ORDER BY id DESC LIMIT 2")
        assert [r["result"] for r in rows] == ["timeout", "did_not_follow"]
        assert all(r["completed_at"] is not None for r in rows)
    finally:
        driver.mode = "follow"


async def test_history_unknown_device_404(service: Service) -> None:
    r = await service.client.get("/api/v1/devices/freezer-9/setpoints", headers=await service.login(Role.QA))
    assert r.status_code == 404, r.text
    assert hub_of(service) is not None
