"""Deviations: comment, close by QA with a signature; open deviations hold release; a completed run never changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from app import db
from app.core.clock import ManualClock
from app.protocol import deviations
from tests.api.conftest import Service, running_service
from tests.api.protocol_support import INPUTS, create_run_api, ensure_recipe, post_step, review_exceptions

START = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(scope="module")
async def service(db_dsn: str, tmp_path_factory: pytest.TempPathFactory, clock: ManualClock) -> AsyncIterator[Service]:
    async with running_service(db_dsn, tmp_path_factory.mktemp("deviations"), clock=clock) as svc:
        await ensure_recipe(svc)
        yield svc


async def test_a_whole_run_release_held_by_a_deviation_until_qa_closes_it(service: Service,
                                                                          clock: ManualClock) -> None:
    _, _, opw, op = await service.user("operator")
    t0 = START + timedelta(hours=20)
    run_id = await create_run_api(service, op, t0)
    plan = [("coat_vessels", -18), ("receive_cells", -3), ("incubator_ready", -2), ("seed", 0), ("feed_day3", 72),
            ("mycoplasma_sample", 132), ("harvest", 168), ("formulate", 172)]
    dev_id = None
    for key, at in plan:
        clock.set(t0 + timedelta(hours=at))
        inputs = dict(INPUTS[key])
        if key == "formulate":
            inputs["cd7_cells_formulated"] = 2.0e8  # 2e8 x 98/100 mL = 1.96e8: 70 % of 2.8e8, a deviation
        r = await post_step(service, op, run_id, key, inputs)
        assert r.status_code == 201, (key, r.text)
        if key == "formulate":
            [dev] = r.json()["deviations"]
            assert dev["rule"] == "dose_out_of_range"
            dev_id = dev["id"]
        if key == "harvest":
            harvest = r.json()["dose"]["harvest"]
            assert harvest["cd7_cells"] == pytest.approx(1.0e9 * 0.60)
            assert harvest["needed"] == pytest.approx(4.0e6 * 70 * 1.25)
            assert harvest["enough"] and r.json()["deviations"] == []
    assert dev_id is not None
    clock.set(t0 + timedelta(hours=174))
    _, _, qpw, qa = await service.user("qa")
    for test, result in (("gram_stain", {"result": "negative"}), ("endotoxin", {"eu_per_ml": 0.5}),
                         ("mycoplasma", {"result": "negative"})):  # release waits for these
        r = await service.client.post(f"/api/v1/runs/{run_id}/qc-results/{test}", json=result, headers=qa)
        assert r.status_code == 200 and r.json()["passed"], r.text
    release = {"inputs": INPUTS["release"], "signature": {"meaning": "approved", "password": qpw}}
    r = await service.client.post(f"/api/v1/runs/{run_id}/steps/release", json=release, headers=qa)
    assert r.status_code == 409 and r.json()["rule"] == "open_deviations" and r.json()["deviation_ids"] == [dev_id]
    assert str(dev_id) in r.json()["detail"]
    # the operator cannot release; QA needs the signature
    assert (await post_step(service, op, run_id, "release")).status_code == 403
    # comments by anyone signed in; closing is QA's, signed
    r = await service.client.post(f"/api/v1/deviations/{dev_id}/comments", json={"text": "retest ordered"},
                                  headers=op)
    assert r.status_code == 201 and r.json()["comments"][0]["text"] == "retest ordered"
    _, _, spw, sup = await service.user("supervisor")
    close = {"reason": "recount: 2.8e8 CD7+ cells, counting error",
             "signature": {"meaning": "approved", "password": spw}}
    assert (await service.client.post(f"/api/v1/deviations/{dev_id}/close", json=close,
                                      headers=sup)).status_code == 403
    close["signature"]["password"] = qpw
    # classified major, it needs its impact and its corrective actions: each missing one named where it belongs
    r = await service.client.post(f"/api/v1/deviations/{dev_id}/close", headers=qa,
                                  json={**close, "classification": "major", "impact": "none: recounted"})
    assert r.status_code == 422, r.text
    assert [(e["loc"][-1], e["type"]) for e in r.json()["errors"]] == [("actions", "assessment_required")]
    assert (await service.client.get(f"/api/v1/deviations/{dev_id}", headers=op)).json()["status"] == "open"
    r = await service.client.post(f"/api/v1/deviations/{dev_id}/close", json=close, headers=qa)
    assert r.status_code == 200 and r.json()["status"] == "closed" and r.json()["close_reason"] == close["reason"]
    sigs = (await service.client.get("/api/v1/signatures", params={"entity_type": "deviation",
                                                                     "entity_id": str(dev_id)}, headers=qa)).json()
    assert [(s["meaning"], s["valid"]) for s in sigs] == [("approved", True)]
    again = await service.client.post(f"/api/v1/deviations/{dev_id}/close", json=close, headers=qa)
    assert again.status_code == 409
    # Every recorded step still lacks the signatures its recipe step requires: release names them.
    r = await service.client.post(f"/api/v1/runs/{run_id}/steps/release", json=release, headers=qa)
    assert r.status_code == 409 and r.json()["rule"] == "signatures_missing", r.text
    missing = r.json()["missing"]
    assert missing["coat_vessels"] == ["performed", "verified"] and "harvest" in missing
    signer = {"performed": (opw, op), "verified": (spw, sup), "reviewed": (qpw, qa), "approved": (qpw, qa)}
    view = (await service.client.get(f"/api/v1/runs/{run_id}", headers=op)).json()
    record_ids = {s["key"]: s["step_record_id"] for s in view["schedule"]}
    for key, meanings in missing.items():
        for meaning in meanings:
            pw, headers = signer[meaning]
            r = await service.client.post("/api/v1/signatures", headers=headers, json={
                "entity_type": "step_record", "entity_id": str(record_ids[key]), "meaning": meaning, "password": pw})
            assert r.status_code == 201, (key, meaning, r.text)
    # then QA's review of the batch record's exceptions (the closed deviation among them)
    r = await service.client.post(f"/api/v1/runs/{run_id}/steps/release", json=release, headers=qa)
    assert r.status_code == 409 and r.json()["rule"] == "exceptions_not_reviewed", r.text
    assert f"deviation:{dev_id}" in r.json()["exceptions"]
    await review_exceptions(service, run_id)
    # released, then infused: the infusion completes the run, which never changes again
    r = await service.client.post(f"/api/v1/runs/{run_id}/steps/release", json=release, headers=qa)
    assert r.status_code == 201 and r.json()["run"]["status"] == "running", r.text
    clock.set(t0 + timedelta(hours=178))
    start = clock.now() - timedelta(minutes=40)
    r = await post_step(service, op, run_id, "infuse", {
        "patient_id_scanned": "P-200", "product_id_scanned": view["code"], "infusion_start": start.isoformat(),
        "infusion_end": (start + timedelta(minutes=30)).isoformat(), "infused_volume": 98},
        signature={"meaning": "performed", "password": opw})
    assert r.status_code == 201 and r.json()["run"]["status"] == "completed", r.text
    view = (await service.client.get(f"/api/v1/runs/{run_id}", headers=op)).json()
    assert view["status"] == "completed" and view["ended_at"] and view["open_deviations"] == 0
    assert (await post_step(service, op, run_id, "feed_day5")).json()["rule"] == "run_not_running"
    for verb in ("hold", "abort"):
        r = await service.client.post(f"/api/v1/runs/{run_id}/{verb}", json={"reason": "x"}, headers=qa)
        assert r.status_code == 409
    one = (await service.client.get(f"/api/v1/deviations/{dev_id}", headers=op)).json()
    assert one["status"] == "closed" and one["rule"] == "dose_out_of_range"
    closed = (await service.client.get("/api/v1/deviations", params={"status": "closed", "run_id": run_id},
                                       headers=op)).json()
    assert [d["id"] for d in closed] == [dev_id]
    assert (await service.client.get("/api/v1/deviations/999999", headers=op)).status_code == 404


async def test_qa_work_order_open_first_graver_first_oldest_first_with_filters_and_pages(
        service: Service, clock: ManualClock) -> None:
    op = await service.login("operator")
    run_id = await create_run_api(service, op, START + timedelta(days=9))
    code = (await service.client.get(f"/api/v1/runs/{run_id}", headers=op)).json()["code"]
    conn = await db.connect(service.dsn)
    try:  # as the rules open them (app.protocol.deviations), at set times; one closed before the others opened
        made = {}
        for name, severity, hours in (("old", "deviation", 1), ("new", "deviation", 5), ("grave", "critical", 9),
                                      ("closed", "deviation", 0)):
            made[name] = await deviations.open_deviation(
                conn, run_id, step_key=None, rule=f"work_{name}", severity=severity, description=name, facts=None,
                at=START + timedelta(hours=hours), opened_by="test")
        await conn.execute("UPDATE deviation SET status = 'closed', closed_at = opened_at, closed_by = 'test' "
                           "WHERE id = $1", made["closed"])
    finally:
        await conn.close()

    async def listed(**params: object) -> list[int]:
        r = await service.client.get("/api/v1/deviations", params={"run_code": code.lower(), **params}, headers=op)
        assert r.status_code == 200, r.text
        assert all(d["run_code"] == code for d in r.json())
        return [int(d["id"]) for d in r.json()]

    assert await listed() == sorted(made.values())  # the default: oldest first by id, as before
    work = [made["grave"], made["old"], made["new"], made["closed"]]
    assert await listed(order="work") == work
    assert await listed(order="work", limit=2) == work[:2]
    first = (await service.client.get("/api/v1/deviations", headers=op, params={
        "run_code": code, "order": "work", "limit": 2})).json()
    assert [d["id"] for d in first] == work[:2]
    # QA closes the last one of the first page meanwhile: the next page still starts where that page ended
    conn = await db.connect(service.dsn)
    try:
        await conn.execute("UPDATE deviation SET status = 'closed', closed_at = opened_at, closed_by = 'test' "
                           "WHERE id = $1", work[1])
    finally:
        await conn.close()
    assert await listed(order="work", after=first[-1]["work_cursor"]) == [made["new"], made["closed"], made["old"]]
    r = await service.client.get("/api/v1/deviations", params={"order": "work", "after": "12~x"}, headers=op)
    assert r.status_code == 422 and r.json()["field"] == "after", r.text
    assert await listed(order="work", status="open", severity="deviation") == [made["new"]]
    assert await listed(rule="work_new") == [made["new"]]
    r = await service.client.get("/api/v1/deviations", params={"order": "severity"}, headers=op)
    assert r.status_code == 422 and "order" in r.json()["errors"][0]["loc"]
