"""Calibration records through the API, at a site in Pacific/Auckland (UTC+13: its date is a day ahead of UTC's at
the start): recording (audited, by role), the history and the list with their status, each refusal naming its rule
and field; the calibration alarm (advisory when due soon, high when overdue, normal after a new record); the
incubator check reading its calibration from the records; the batch record showing them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from app import db
from app.alarms.service import AlarmService
from app.core.clock import ManualClock
from tests.api.conftest import Service, running_service
from tests.api.protocol_support import INPUTS, create_run_api, ensure_recipe

START = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SITE_TODAY = date(2026, 11, 23)  # 2026-11-23 01:00 in Auckland
DEVICE = "incubator-1"


def _path(point: str, device: str = DEVICE) -> str:
    return f"/api/v1/devices/{device}/points/{point}/calibrations"


def _body(calibrated_on: date = SITE_TODAY - timedelta(days=10), due_on: date = SITE_TODAY + timedelta(days=365),
          **over: Any) -> dict[str, Any]:
    return {"calibrated_on": calibrated_on.isoformat(), "due_on": due_on.isoformat(), "certificate": "CERT-2026-001",
            "performed_by": "Metrology Ltd", "reason": "annual calibration", **over}


@dataclass
class Env:
    svc: Service
    clock: ManualClock
    supervisor: dict[str, str]
    operator: dict[str, str]
    qa: dict[str, str]

    @property
    def alarms(self) -> AlarmService:
        svc = self.svc.app.state.runtime.alarms
        assert svc is not None
        return svc

    async def record(self, point: str, **body: Any) -> dict[str, Any]:
        r = await self.svc.client.post(_path(point), json=_body(**body), headers=self.supervisor)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    async def audit_seq(self) -> int:
        conn = await db.connect(self.svc.dsn)
        try:
            return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log"))
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def env(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    clock = ManualClock(START)
    async with running_service(db_dsn, tmp_path_factory.mktemp("calibrations"), clock=clock,
                               site_timezone="Pacific/Auckland", calibration_warn_days=30, alarm_interval=10) as svc:
        await ensure_recipe(svc)
        yield Env(svc, clock, await svc.login("supervisor"), await svc.login("operator"), await svc.login("qa"))


async def test_record_supersedes_the_point_s_record_in_force_with_one_audit_record(env: Env) -> None:
    first = await env.record("temperature", certificate="CERT-T-1")
    assert first["device"] == DEVICE and first["point"] == "temperature" and first["status"] == "valid"
    assert first["days_left"] == 365 and first["in_force"] is True
    assert first["recorded_by"].startswith("user:supervisor")
    before = await env.audit_seq()
    second = await env.record("temperature", certificate="CERT-T-2", calibrated_on=SITE_TODAY,
                              due_on=SITE_TODAY + timedelta(days=20))
    assert second["status"] == "due_soon" and second["days_left"] == 20
    assert await env.audit_seq() == before + 1
    r = await env.svc.client.get("/api/v1/audit", params={"action": "calibration.record", "entity_id": DEVICE,
                                                          "after_seq": before}, headers=env.qa)
    [row] = r.json()["items"]
    assert row["old"]["certificate"] == "CERT-T-1" and row["new"]["certificate"] == "CERT-T-2"
    assert row["reason"] == "annual calibration" and row["new"]["point"] == "temperature"
    history = (await env.svc.client.get(_path("temperature"), headers=env.operator)).json()
    assert [(h["certificate"], h["in_force"]) for h in history[:2]] == [("CERT-T-2", True), ("CERT-T-1", False)]
    listed = (await env.svc.client.get("/api/v1/calibrations", params={"device": DEVICE},
                                       headers=env.operator)).json()
    assert [c["certificate"] for c in listed if c["point"] == "temperature"] == ["CERT-T-2"]
    due_soon = (await env.svc.client.get("/api/v1/calibrations", params={"status": "due_soon"},
                                         headers=env.operator)).json()
    assert "CERT-T-2" in {c["certificate"] for c in due_soon}
    assert all(c["status"] == "due_soon" for c in due_soon)
    # a point may be named by the role it plays; the site's today (a day ahead of UTC) is not in the future
    r = await env.svc.client.post(_path("co2"), json=_body(calibrated_on=SITE_TODAY), headers=env.supervisor)
    assert r.status_code == 201 and r.json()["calibrated_on"] == SITE_TODAY.isoformat(), r.text


@pytest.mark.parametrize(("path", "body", "status", "rule", "field"), [
    (_path("temperature", "incubator-9"), _body(), 404, "unknown_device", None),
    (_path("ph"), _body(), 404, "unknown_point", "point"),
    (_path("temperature"), _body(calibrated_on=SITE_TODAY, due_on=SITE_TODAY), 422, "due_not_after_calibration",
     "due_on"),
    (_path("temperature"), _body(calibrated_on=SITE_TODAY + timedelta(days=1)), 422, "calibrated_in_future",
     "calibrated_on"),
    (_path("temperature"), _body(certificate=" "), 422, "certificate_required", "certificate"),
    (_path("temperature"), _body(certificate="C" * 201), 422, "certificate_too_long", "certificate"),
    (_path("temperature"), _body(performed_by=""), 422, "performed_by_required", "performed_by"),
])
async def test_a_bad_record_is_refused_naming_the_rule_and_field(env: Env, path: str, body: dict[str, Any],
                                                                 status: int, rule: str, field: str | None) -> None:
    before = await env.audit_seq()
    r = await env.svc.client.post(path, json=body, headers=env.supervisor)
    assert r.status_code == status and r.headers["content-type"] == "application/problem+json", r.text
    problem = r.json()
    assert problem["rule"] == rule and problem.get("field") == field
    if rule == "unknown_point":
        assert "temperature" in problem["points"] and "temperature" in problem["detail"]
    assert await env.audit_seq() == before


async def test_only_supervisors_and_admins_record_and_unknown_fields_are_refused(env: Env) -> None:
    key = (await env.svc.api_key("automation"))[2]
    before = await env.audit_seq()
    for headers in (env.operator, env.qa, key):
        r = await env.svc.client.post(_path("temperature"), json=_body(), headers=headers)
        assert r.status_code == 403, r.text
    r = await env.svc.client.post(_path("temperature"), json={**_body(), "recorded_by": "someone"},
                                  headers=env.supervisor)
    assert r.status_code == 422 and "recorded_by" in r.text
    assert await env.audit_seq() == before
    assert (await env.svc.client.get(_path("temperature"), headers=env.operator)).status_code == 200


async def test_the_alarm_is_advisory_when_due_soon_high_when_overdue_and_normal_after_a_new_record(env: Env) -> None:
    aid = f"{DEVICE}.humidity:calibration"
    try:
        await env.record("humidity", calibrated_on=SITE_TODAY - timedelta(days=355),
                         due_on=SITE_TODAY + timedelta(days=10))
        await env.alarms.sync()
        alarm = (await env.svc.client.get(f"/api/v1/alarms/{aid}", headers=env.operator)).json()
        assert (alarm["status"], alarm["severity"], alarm["priority"], alarm["value"]) == (
            "active_unack", "l", "advisory", 10)
        assert alarm["channel"] == f"{DEVICE}.humidity" and alarm["device"] == DEVICE
        assert "30 days" in alarm["description"]
        # a run on the incubator re-installs its channels' process alarms: the calibration alarm stays
        await create_run_api(env.svc, env.operator, env.clock.now() + timedelta(days=2))
        await env.alarms.sync()
        assert aid in env.alarms.alarms
        env.clock.advance(11 * 86400)  # one day past the due date
        await env.alarms.sync()
        alarm = (await env.svc.client.get(f"/api/v1/alarms/{aid}", headers=env.operator)).json()
        assert (alarm["status"], alarm["severity"], alarm["priority"], alarm["value"]) == (
            "active_unack", "ll", "high", -1)
        listed = (await env.svc.client.get("/api/v1/calibrations", params={"status": "overdue"},
                                           headers=env.operator)).json()
        assert [c["days_left"] for c in listed if c["point"] == "humidity"] == [-1]
        r = await env.svc.client.post(f"/api/v1/alarms/{aid}/acknowledge", json={"comment": "calibration booked"},
                                      headers=env.operator)
        assert r.status_code == 200 and r.json()["status"] == "active_ack", r.text
        await env.record("humidity", calibrated_on=SITE_TODAY + timedelta(days=11),
                         due_on=SITE_TODAY + timedelta(days=376))
        await env.alarms.sync()
        alarm = (await env.svc.client.get(f"/api/v1/alarms/{aid}", headers=env.operator)).json()
        assert (alarm["status"], alarm["severity"]) == ("normal", None)
        journal = (await env.svc.client.get("/api/v1/alarms/history", params={"alarm_id": aid},
                                            headers=env.operator)).json()
        assert [(e["to_state"], e["reason"]) for e in reversed(journal)] == [
            ("active_unack", "activated"), ("active_unack", "escalated"), ("active_ack", "acknowledge"),
            ("normal", "returned")]
    finally:
        env.clock.set(START)


async def _incubator_check(env: Env, inputs: dict[str, Any] | None = None) -> tuple[int, Any]:
    """A run on incubator-1 planned to start in 2 h (its incubator check is open) and the check posted."""
    run_id = await create_run_api(env.svc, env.operator, env.clock.now() + timedelta(hours=2))
    r = await env.svc.client.post(f"/api/v1/runs/{run_id}/steps/incubator_ready",
                                  json={"inputs": INPUTS["incubator_ready"] if inputs is None else inputs},
                                  headers=env.operator)
    return run_id, r


async def _calibrate_all(env: Env, co2_due: date) -> None:
    await env.record("temperature", certificate="CAL-T", due_on=SITE_TODAY + timedelta(days=200))
    await env.record("co2", certificate="CAL-C", due_on=co2_due)
    await env.record("humidity", certificate="CAL-H", due_on=SITE_TODAY + timedelta(days=300))


async def test_the_incubator_check_reads_its_calibration_from_the_records(env: Env) -> None:
    await _calibrate_all(env, SITE_TODAY + timedelta(days=100))
    run_id, r = await _incubator_check(env)
    assert r.status_code == 201, r.text
    out = r.json()
    rec = out["step_record"]
    assert rec["inputs"]["calibration_valid"] is True
    assert rec["inputs"]["calibration_due"] == (SITE_TODAY + timedelta(days=100)).isoformat()  # the earliest
    assert out["deviations"] == []
    source = rec["provenance"]["calibration_due"]
    assert source["source"] == "calibration" and source["on"] == SITE_TODAY.isoformat()
    assert [(p["point"], p["certificate"], p["result"]) for p in source["points"]] == [
        ("temperature", "CAL-T", "in_force"), ("co2", "CAL-C", "in_force"), ("humidity", "CAL-H", "in_force")]
    assert rec["provenance"]["calibration_valid"] == source and rec["provenance"]["temperature"] == {"source": "typed"}
    # the batch record shows the records in force of the run's devices' points
    view = (await env.svc.client.get(f"/api/v1/runs/{run_id}", headers=env.operator)).json()
    shown = {c["point"]: c for c in view["calibrations"]}
    assert shown["co2"]["certificate"] == "CAL-C" and shown["co2"]["status_now"] == "valid"
    assert shown["co2"]["status_at_start"] == "valid" and shown["co2"]["performed_by"] == "Metrology Ltd"
    html = (await env.svc.client.get(f"/runs/{run_id}/fragments/record", headers=env.operator)).text
    assert f'data-point="{DEVICE}.co2"' in html and "CAL-C" in html


@pytest.mark.parametrize("field", ["calibration_valid", "calibration_due"])
async def test_a_typed_calibration_value_is_refused(env: Env, field: str) -> None:
    await _calibrate_all(env, SITE_TODAY + timedelta(days=100))
    typed = {"calibration_valid": True, "calibration_due": "2099-01-01"}[field]
    run_id, r = await _incubator_check(env, {**INPUTS["incubator_ready"], field: typed})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
    problem = r.json()
    assert problem["rule"] == "calibration_from_records" and problem["field"] == field and field in problem["detail"]
    assert [e["field"] for e in problem["errors"]] == [field]
    r = await env.svc.client.get(f"/api/v1/runs/{run_id}/steps/incubator_ready", headers=env.operator)
    assert r.status_code == 404  # nothing recorded


async def test_an_overdue_point_makes_the_check_invalid_and_opens_a_deviation(env: Env) -> None:
    # due yesterday at the site: still "today" in UTC, overdue at the site
    await _calibrate_all(env, SITE_TODAY - timedelta(days=1))
    run_id, r = await _incubator_check(env)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["step_record"]["inputs"]["calibration_valid"] is False
    assert out["step_record"]["inputs"]["calibration_due"] == (SITE_TODAY - timedelta(days=1)).isoformat()
    [dev] = out["deviations"]
    assert dev["rule"] == "acceptance_limit" and dev["facts"]["field"] == "calibration_valid"
    assert dev["facts"]["label"] == "calibration overdue"
    points = {p["point"]: p for p in out["step_record"]["provenance"]["calibration_valid"]["points"]}
    assert points["co2"]["result"] == "overdue" and points["co2"]["days_left"] == -1
    assert points["temperature"]["result"] == "in_force"
    view = (await env.svc.client.get(f"/api/v1/runs/{run_id}", headers=env.operator)).json()
    assert view["open_deviations"] == 1
    assert {c["point"]: c["status_now"] for c in view["calibrations"]}["co2"] == "overdue"
