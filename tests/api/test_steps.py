"""Step posts on a hand-moved clock: every refusal rule with its window and time, overrides, input errors,
acceptance failures, signatures, idempotency and the dose."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.core.clock import ManualClock
from tests.api.conftest import Service, running_service
from tests.api.protocol_support import INPUTS, LOTS, create_run_api, ensure_recipe, post_step

START = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(scope="module")
async def service(db_dsn: str, tmp_path_factory: pytest.TempPathFactory, clock: ManualClock) -> AsyncIterator[Service]:
    async with running_service(db_dsn, tmp_path_factory.mktemp("steps"), clock=clock) as svc:
        await ensure_recipe(svc)
        yield svc


async def _planned(service: Service, clock: ManualClock) -> tuple[int, datetime, dict[str, str]]:
    clock.set(START)
    op = await service.login("operator")
    t0 = START + timedelta(hours=20)
    return await create_run_api(service, op, t0), t0, op


async def _seeded(service: Service, clock: ManualClock) -> tuple[int, datetime, dict[str, str]]:
    run_id, t0, op = await _planned(service, clock)
    for key, at in (("coat_vessels", -18), ("receive_cells", -3), ("incubator_ready", -2), ("seed", 0)):
        clock.set(t0 + timedelta(hours=at))
        r = await post_step(service, op, run_id, key)
        assert r.status_code == 201, r.text
    return run_id, t0, op


def _refused(r: Any, rule: str) -> dict[str, Any]:
    assert r.status_code == 409, r.text
    body: dict[str, Any] = r.json()
    assert body["rule"] == rule and r.headers["content-type"] == "application/problem+json"
    return body


def _names_window(body: dict[str, Any], now: datetime) -> None:
    assert set(body["window"]) == {"earliest", "target", "latest", "hard_latest"}
    assert datetime.fromisoformat(body["now"]) == now
    assert body["now"][:19] in body["detail"]


async def test_out_of_order_before_earliest_and_already_done(service: Service, clock: ManualClock) -> None:
    run_id, _t0, op = await _planned(service, clock)
    body = _refused(await post_step(service, op, run_id, "seed"), "out_of_order")
    _names_window(body, START)
    assert set(body["blocked_by"]) == {"coat_vessels", "incubator_ready", "receive_cells"}
    assert body["overridable"] is False
    body = _refused(await post_step(service, op, run_id, "incubator_ready"), "before_earliest")
    _names_window(body, START)
    assert body["overridable"] is True and "override" in body["how_to_override"]
    assert (await post_step(service, op, run_id, "coat_vessels")).status_code == 201
    body = _refused(await post_step(service, op, run_id, "coat_vessels"), "already_done")
    _names_window(body, START)


async def test_not_running_then_after_latest_and_missed(service: Service, clock: ManualClock) -> None:
    run_id, t0, op = await _planned(service, clock)
    body = _refused(await post_step(service, op, run_id, "feed_day3"), "run_not_running")
    assert body["run_status"] == "planned" and "seed" in body["detail"]
    run_id, t0, op = await _seeded(service, clock)
    clock.set(t0 + timedelta(hours=80))  # feed_day3: latest 78, hard latest 84
    body = _refused(await post_step(service, op, run_id, "feed_day3"), "after_latest")
    _names_window(body, t0 + timedelta(hours=80))
    assert datetime.fromisoformat(body["window"]["latest"]) == t0 + timedelta(hours=78)
    clock.set(t0 + timedelta(hours=85))
    _refused(await post_step(service, op, run_id, "feed_day3"), "after_hard_latest")


async def test_override_by_a_supervisor_opens_a_deviation_an_operator_gets_403(
        service: Service, clock: ManualClock) -> None:
    run_id, t0, op = await _seeded(service, clock)
    clock.set(t0 + timedelta(hours=80))
    body = {"override": True, "override_reason": "count delayed by a blocked hood"}
    r = await post_step(service, op, run_id, "feed_day3", **body)
    assert r.status_code == 403 and r.json()["rule"] == "override_needs_supervisor"
    r = await post_step(service, op, run_id, "feed_day3", override=True)
    assert r.status_code == 422 and "override_reason" in r.text
    sup = await service.login("supervisor")
    r = await post_step(service, sup, run_id, "feed_day3", **body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["decision"]["outcome"] == "accept_with_deviation"
    [dev] = out["deviations"]
    assert dev["rule"] == "after_latest" and dev["status"] == "open" and body["override_reason"] in dev["description"]
    assert out["step_record"]["deviation_ids"] == [dev["id"]]
    view = (await service.client.get(f"/api/v1/runs/{run_id}", headers=op)).json()
    assert view["open_deviations"] == 1
    feed = next(s for s in view["schedule"] if s["key"] == "feed_day3")
    assert feed["status"] == "done" and feed["overridden"] is True
    assert view["dose"]["day3"]["observed_fold"] == pytest.approx(4.0)


@pytest.mark.parametrize(("value", "rule"), [
    (float("nan"), "not_finite"),
    (float("inf"), "not_finite"),
    ({"value": 18, "unit": "min"}, "unit"),
    (100, "above_max"),
    ("long", "type"),
])
async def test_bad_inputs_are_422_naming_field_and_limit(service: Service, clock: ManualClock, value: Any,
                                                         rule: str) -> None:
    run_id, _t0, op = await _planned(service, clock)
    body = json.dumps({"inputs": {**INPUTS["coat_vessels"], "coat_hours": value},  # NaN/Infinity as JS writes them
                       "lots": LOTS["coat_vessels"]})
    r = await service.client.post(f"/api/v1/runs/{run_id}/steps/coat_vessels", content=body,
                                  headers={**op, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert [(e["field"], e["rule"]) for e in errors] == [("coat_hours", rule)]
    if rule == "above_max":
        assert errors[0]["limit"] == 48 and "48" in r.json()["detail"]


async def test_unknown_input_and_unknown_body_field_are_422(service: Service, clock: ManualClock) -> None:
    run_id, _t0, op = await _planned(service, clock)
    r = await post_step(service, op, run_id, "coat_vessels", {**INPUTS["coat_vessels"], "colour": "red"})
    assert r.status_code == 422 and r.json()["errors"][0]["rule"] == "unknown_field"
    r = await post_step(service, op, run_id, "coat_vessels", posted_at="2026-01-01T00:00:00Z")
    assert r.status_code == 422 and "posted_at" in r.text
    r = await post_step(service, op, run_id, "no_such_step", {})
    assert r.status_code == 404


async def test_acceptance_failure_records_the_step_and_opens_a_deviation(service: Service,
                                                                         clock: ManualClock) -> None:
    run_id, t0, op = await _planned(service, clock)
    r = await post_step(service, op, run_id, "coat_vessels", {**INPUTS["coat_vessels"], "coat_temperature": 35.0})
    assert r.status_code == 201, r.text
    [dev] = r.json()["deviations"]
    assert dev["rule"] == "acceptance_limit" and "coat_temperature" in dev["description"]
    clock.set(t0 - timedelta(hours=3))
    r = await post_step(service, op, run_id, "receive_cells", {**INPUTS["receive_cells"], "donor_id": "D-999"})
    assert r.status_code == 201 and "chain of identity" in r.json()["deviations"][0]["facts"]["label"], r.text
    listed = (await service.client.get("/api/v1/deviations", params={"run_id": run_id, "status": "open"},
                                       headers=op)).json()
    assert len(listed) == 2


async def test_signatures_in_the_post_and_automation_cannot_sign(service: Service, clock: ManualClock) -> None:
    run_id, t0, _ = await _planned(service, clock)
    _, _, password, op = await service.user("operator")
    r = await post_step(service, op, run_id, "coat_vessels", signature={"meaning": "performed", "password": password})
    assert r.status_code == 201, r.text
    sig = r.json()["signature"]
    assert sig["meaning"] == "performed" and sig["valid"] and r.json()["signatures_required"] == ["performed",
                                                                                                  "verified"]
    _, _, key = await service.api_key("automation")
    clock.set(t0 - timedelta(hours=3))
    r = await post_step(service, key, run_id, "receive_cells", signature={"meaning": "performed", "password": "x"})
    assert r.status_code == 403 and "cannot sign" in r.text
    r = await post_step(service, key, run_id, "receive_cells")
    assert r.status_code == 201, r.text
    # a person signs later, as verifier, on the step record
    _, _, spw, sup = await service.user("supervisor")
    r2 = await service.client.post("/api/v1/signatures", json={
        "entity_type": "step_record", "entity_id": str(r.json()["step_record"]["id"]), "meaning": "verified",
        "password": spw}, headers=sup)
    assert r2.status_code == 201 and r2.json()["valid"], r2.text


async def test_idempotency_key_replays_and_refuses_another_body(service: Service, clock: ManualClock) -> None:
    run_id, _t0, op = await _planned(service, clock)
    headers = {**op, "Idempotency-Key": "count-42"}
    first = await post_step(service, headers, run_id, "coat_vessels")
    assert first.status_code == 201, first.text
    again = await post_step(service, headers, run_id, "coat_vessels")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await post_step(service, headers, run_id, "coat_vessels", {**INPUTS["coat_vessels"], "coat_hours": 19})
    assert other.status_code == 422 and "count-42" in other.json()["detail"]
    assert other.json()["rule"] == "idempotency_key_mismatch"


async def test_dose_projection_at_seed_and_day3(service: Service, clock: ManualClock) -> None:
    run_id, t0, op = await _planned(service, clock)
    for key, at in (("coat_vessels", -18), ("receive_cells", -3), ("incubator_ready", -2)):
        clock.set(t0 + timedelta(hours=at))
        assert (await post_step(service, op, run_id, key)).status_code == 201
    clock.set(t0 + timedelta(minutes=30))
    r = await post_step(service, op, run_id, "seed")
    assert r.status_code == 201 and r.json()["run"]["status"] == "running"
    seed = r.json()["dose"]["seed"]
    assert seed["required"] == pytest.approx(2.8e8) and seed["observed_fold"] is None
    assert seed["low"] < seed["median"] < seed["high"] and seed["fold_low"] < seed["fold_high"]
    assert seed["below_target"] is True and seed["alert"] is True and seed["low"] < seed["required"]
    clock.set(t0 + timedelta(hours=72, minutes=30))
    r = await post_step(service, op, run_id, "feed_day3", {**INPUTS["feed_day3"], "viable_cells": 6.0e7})
    day3 = r.json()["dose"]["day3"]
    assert day3["observed_fold"] == pytest.approx(30.0) and day3["below_target"] is False
    assert day3["low"] >= day3["required"]
