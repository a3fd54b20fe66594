"""Culture runs over the API on a hand-moved clock: planning from the HSCT, the schedule, hold, resume, abort."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from app.core.clock import ManualClock
from tests.api.conftest import Service, running_service
from tests.api.protocol_support import RECIPE, create_run_api, ensure_recipe, post_step, run_body

START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(scope="module")
async def service(db_dsn: str, tmp_path_factory: pytest.TempPathFactory, clock: ManualClock) -> AsyncIterator[Service]:
    async with running_service(db_dsn, tmp_path_factory.mktemp("runs"), clock=clock) as svc:
        await ensure_recipe(svc)
        yield svc


async def test_create_proposes_t0_from_the_hsct_and_shows_the_schedule(service: Service, clock: ManualClock) -> None:
    clock.set(START)
    op = await service.login("operator")
    hsct = START + timedelta(days=3)
    r = await service.client.post("/api/v1/runs", json=run_body(hsct, vessel_ids=["V1"]), headers=op)
    assert r.status_code == 201, r.text
    run = r.json()
    t0 = hsct + timedelta(days=RECIPE.planning.planned_infusion_day) - timedelta(
        hours=RECIPE.planning.infusion_after_t0_hours)
    assert datetime.fromisoformat(run["planned_t0"]) == t0
    assert datetime.fromisoformat(run["t0_proposal"]["t0"]) == t0
    assert run["status"] == "planned" and run["t0"] is None and run["infusion"]["warning"] is None
    assert run["recipe"]["key"] == RECIPE.key and run["open_deviations"] == 0
    assert [s["key"] for s in run["schedule"]] == list(RECIPE.step_keys)
    coat = run["schedule"][0]
    assert datetime.fromisoformat(coat["window"]["earliest"]) == t0 - timedelta(hours=24)
    assert run["next_due"]["key"] == "coat_vessels"
    assert run["dose"]["required_cd7_cells"] == pytest.approx(4.0e6 * 70)
    got = await service.client.get(f"/api/v1/runs/{run['id']}", headers=(await service.api_key("automation"))[2])
    assert got.status_code == 200 and got.json()["code"] == run["code"]
    listed = (await service.client.get("/api/v1/runs", params={"status": "planned"}, headers=op)).json()
    assert any(x["id"] == run["id"] for x in listed)


async def test_infusion_outside_the_hsct_window_warns(service: Service, clock: ManualClock) -> None:
    clock.set(START)
    op = await service.login("operator")
    hsct = START + timedelta(days=3)
    r = await service.client.post("/api/v1/runs", json=run_body(hsct, planned_t0=(hsct + timedelta(days=5))
                                                                .isoformat()), headers=op)
    assert r.status_code == 201, r.text
    warning = r.json()["infusion"]["warning"]
    assert warning and "outside the allowed day +4 .. +10" in warning


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("target_dose_per_kg", 5.0e6, "dose_not_allowed"),
    ("patient_weight_kg", 400, "weight_out_of_range"),
])
async def test_create_refuses_a_dose_or_weight_the_recipe_does_not_allow(
        service: Service, field: str, value: float, rule: str) -> None:
    op = await service.login("operator")
    r = await service.client.post("/api/v1/runs", json=run_body(START, **{field: value}), headers=op)
    assert r.status_code == 422 and r.json()["rule"] == rule, r.text
    assert field in r.text


async def test_create_needs_an_offset_a_known_recipe_and_a_known_device(service: Service) -> None:
    op = await service.login("operator")
    naive = run_body(START)
    naive["hsct_at"] = "2026-03-04T08:00:00"
    assert (await service.client.post("/api/v1/runs", json=naive, headers=op)).status_code == 422
    r = await service.client.post("/api/v1/runs", json=run_body(START, recipe_key="nope"), headers=op)
    assert r.status_code == 404
    r = await service.client.post("/api/v1/runs", json=run_body(START, incubator="no-such"), headers=op)
    assert r.status_code == 422 and r.json()["rule"] == "unknown_device"
    r = await service.client.post("/api/v1/runs", json=run_body(START, incubator="incubator-1",
                                                                culture_system="culture-system-1"), headers=op)
    assert r.status_code == 201 and r.json()["incubator"] == "incubator-1", r.text
    qa = await service.login("qa")
    assert (await service.client.post("/api/v1/runs", json=run_body(START), headers=qa)).status_code == 403


async def _running(service: Service, clock: ManualClock) -> tuple[int, datetime]:
    t0 = clock.now() + timedelta(hours=20)
    op = await service.login("operator")
    run_id = await create_run_api(service, op, t0)
    for key, at in (("coat_vessels", -18), ("receive_cells", -3), ("incubator_ready", -2), ("seed", 0)):
        clock.set(t0 + timedelta(hours=at))
        r = await post_step(service, op, run_id, key)
        assert r.status_code == 201, r.text
    return run_id, t0


async def test_seed_starts_the_run_then_hold_resume_abort(service: Service, clock: ManualClock) -> None:
    clock.set(START)
    run_id, t0 = await _running(service, clock)
    view = (await service.client.get(f"/api/v1/runs/{run_id}", headers=await service.login("operator"))).json()
    assert view["status"] == "running" and datetime.fromisoformat(view["t0"]) == t0
    assert view["dose"]["seed"]["below_target"] is True
    sup = await service.login("supervisor")
    assert (await service.client.post(f"/api/v1/runs/{run_id}/hold", json={"reason": "incubator alarm"},
                                      headers=await service.login("operator"))).status_code == 403
    r = await service.client.post(f"/api/v1/runs/{run_id}/hold", json={"reason": "incubator alarm"}, headers=sup)
    assert r.status_code == 200 and r.json()["status"] == "held" and r.json()["hold_reason"] == "incubator alarm"
    # a hold is QA's disposition of the product: the culture's steps go on in their windows
    refused = await post_step(service, sup, run_id, "feed_day3")
    assert refused.status_code == 409 and refused.json()["rule"] == "before_earliest", refused.text
    _, _, password, qa = await service.user("qa")
    r = await service.client.post(f"/api/v1/runs/{run_id}/resume", json={"reason": "alarm reviewed"}, headers=qa)
    assert r.status_code == 422  # the signature is required
    r = await service.client.post(f"/api/v1/runs/{run_id}/resume", json={
        "reason": "alarm reviewed", "signature": {"meaning": "approved", "password": password}}, headers=qa)
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    r = await service.client.post(f"/api/v1/runs/{run_id}/abort", json={"reason": "contamination"}, headers=qa)
    assert r.status_code == 200 and r.json()["status"] == "aborted" and r.json()["abort_reason"] == "contamination"
    for verb in ("hold", "abort"):
        again = await service.client.post(f"/api/v1/runs/{run_id}/{verb}", json={"reason": "again"}, headers=qa)
        assert again.status_code == 409 and again.json()["rule"] == "run_not_running", again.text
    r = await post_step(service, sup, run_id, "feed_day3")
    assert r.status_code == 409 and r.json()["rule"] == "run_not_running"


async def test_the_list_filters_and_pages_newest_first(service: Service, clock: ManualClock) -> None:
    clock.set(START)
    op = await service.login("operator")
    t0 = START + timedelta(days=4)
    ids = [await create_run_api(service, op, t0 + timedelta(hours=i), donor_id=f"D-ARCH-{i}", patient_id="P-ARCH")
           for i in range(3)]
    await service.client.post(f"/api/v1/runs/{ids[0]}/abort", json={"reason": "archive test"},
                              headers=await service.login("supervisor"))

    async def listed(**params: object) -> list[int]:
        r = await service.client.get("/api/v1/runs", params=params, headers=op)
        assert r.status_code == 200, r.text
        return [int(x["id"]) for x in r.json()]

    assert await listed(patient_id="p-arch") == ids[::-1]  # whole and any case, newest first
    assert await listed(donor_id="D-ARCH-1") == [ids[1]]
    assert await listed(patient_id="P-ARCH", status="aborted") == [ids[0]]
    assert await listed(patient_id="P-ARCH", recipe=RECIPE.key, device="Incubator-1") == ids[::-1]
    assert await listed(patient_id="P-ARCH", device="no-such-device") == []
    spaced = "W1234 26 123456 7"  # the DIN as typed, with its spaces; stored as W1234261234567
    assert await listed(patient_id="P-ARCH", graft_din=spaced) == ids[::-1]
    assert await listed(patient_id="P-ARCH", graft_din="W9999 26 000001") == []
    # the T0 bounds: from included, to not (naive times are UTC)
    at = (t0 + timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert await listed(patient_id="P-ARCH", date_of="t0", **{"from": at, "to": (t0 + timedelta(hours=2))
                                                                 .isoformat()}) == [ids[1]]
    assert await listed(patient_id="P-ARCH", **{"to": "2000-01-01T00:00:00Z"}) == []  # created long after
    # keyset pages on the id: older, then newer again from the last one
    assert await listed(patient_id="P-ARCH", limit=2) == [ids[2], ids[1]]
    assert await listed(patient_id="P-ARCH", limit=2, before_id=ids[1]) == [ids[0]]
    assert await listed(patient_id="P-ARCH", limit=1, after_id=ids[0]) == [ids[1]]
    assert await listed(patient_id="P-ARCH", limit=2, after_id=ids[0]) == [ids[2], ids[1]]
    row = (await service.client.get("/api/v1/runs", params={"donor_id": "D-ARCH-2"}, headers=op)).json()[0]
    assert row["graft_din"] == "W1234261234567" and row["record_version"] is None and row["open_deviations"] == 0
    # a bad filter: 422 naming the parameter
    for params, name in (({"status": "lost"}, "status"), ({"from": "yesterday"}, "from"),
                         ({"before_id": "x"}, "before_id"), ({"date_of": "ended"}, "date_of"),
                         ({"donor_id": "D\x00"}, "donor_id")):
        r = await service.client.get("/api/v1/runs", params=params, headers=op)
        assert r.status_code == 422 and name in [str(p) for p in r.json()["errors"][0]["loc"]], r.text
