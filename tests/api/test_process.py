"""The v2 process through the API on a hand-moved clock: a held run's execution steps, supervisor corrections,
lots, the graft DIN, QA's dose decision, QC results before release, the bedside check at infusion, a positive
sterility after infusion and counts imported from a cell counter."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from app import db
from app.core.clock import ManualClock
from tests.api.conftest import Service, running_service
from tests.api.protocol_support import INPUTS, LOTS, create_run_api, ensure_recipe, post_step, run_body
from tests.support import wait_for

START = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
PREP = (("coat_vessels", -18), ("receive_cells", -3), ("incubator_ready", -2), ("seed", 0))
CULTURE = (("feed_day3", 72), ("mycoplasma_sample", 132), ("harvest", 168))
# A generic-format counter export: one sample, viable density and viability (tests/unit/test_counter.py).
COUNTER_CSV = b"Sample,Viable cells/mL,Viability\nD3,500000,91.5%\n"


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(scope="module")
async def service(db_dsn: str, tmp_path_factory: pytest.TempPathFactory, clock: ManualClock) -> AsyncIterator[Service]:
    async with running_service(db_dsn, tmp_path_factory.mktemp("process"), clock=clock) as svc:
        await ensure_recipe(svc)
        yield svc


class People:
    """One person of each role, with the password they sign with."""

    def __init__(self, users: dict[str, tuple[str, dict[str, str]]]) -> None:
        self.users = users

    def headers(self, role: str) -> dict[str, str]:
        return self.users[role][1]

    def sign(self, role: str, meaning: str) -> dict[str, str]:
        return {"meaning": meaning, "password": self.users[role][0]}


async def _people(service: Service) -> People:
    users = {}
    for role in ("operator", "supervisor", "qa"):
        _, _, password, headers = await service.user(role)
        users[role] = (password, headers)
    return People(users)


async def _ok(service: Service, people: People, run_id: int, key: str, inputs: dict[str, Any] | None = None,
              **extra: Any) -> dict[str, Any]:
    r = await post_step(service, people.headers("operator"), run_id, key, inputs, **extra)
    assert r.status_code == 201, (key, r.text)
    out: dict[str, Any] = r.json()
    return out


async def _run_until(service: Service, clock: ManualClock, people: People, steps: tuple[tuple[str, int], ...],
                     *, signed: bool = False) -> tuple[int, datetime]:
    """A new run (T0 20 h from START) with `steps` posted at their hours after T0 (signed as the recipe asks)."""
    clock.set(START)
    t0 = START + timedelta(hours=20)
    run_id = await create_run_api(service, people.headers("operator"), t0)
    for key, at in steps:
        clock.set(t0 + timedelta(hours=at))
        extra = {"signature": people.sign("operator", "performed")} if signed else {}
        out = await _ok(service, people, run_id, key, **extra)
        if signed and "verified" in out["signatures_required"]:
            r = await service.client.post("/api/v1/signatures", headers=people.headers("supervisor"), json={
                "entity_type": "step_record", "entity_id": str(out["step_record"]["id"]), "meaning": "verified",
                "password": people.users["supervisor"][0]})
            assert r.status_code == 201, (key, r.text)
    return run_id, t0


async def _report(service: Service, people: People, run_id: int, test: str, **body: Any) -> Any:
    return await service.client.post(f"/api/v1/runs/{run_id}/qc-results/{test}", json=body,
                                     headers=people.headers("qa"))


def _refused(r: Any, status: int, rule: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["rule"] == rule, body
    return body


async def test_a_held_run_accepts_its_execution_steps_but_not_release(service: Service, clock: ManualClock) -> None:
    people = await _people(service)
    run_id, t0 = await _run_until(service, clock, people, PREP)
    r = await service.client.post(f"/api/v1/runs/{run_id}/hold", json={"reason": "CO2 alarm under review"},
                                  headers=people.headers("supervisor"))
    assert r.status_code == 200 and r.json()["status"] == "held", r.text
    for key, at in CULTURE:
        clock.set(t0 + timedelta(hours=at))
        out = await _ok(service, people, run_id, key)
        assert out["run"]["status"] == "held"
    clock.set(t0 + timedelta(hours=170))
    await _ok(service, people, run_id, "formulate")
    clock.set(t0 + timedelta(hours=174))
    r = await post_step(service, people.headers("qa"), run_id, "release",
                        signature=people.sign("qa", "approved"))
    body = _refused(r, 409, "run_held")
    assert "CO2 alarm under review" in body["detail"]
    view = (await service.client.get(f"/api/v1/runs/{run_id}", headers=people.headers("operator"))).json()
    assert view["status"] == "held"
    assert {s["key"]: s["status"] for s in view["schedule"]}["harvest"] == "done"


async def test_a_supervisor_corrects_a_harvest_count_keeping_the_original(service: Service,
                                                                           clock: ManualClock) -> None:
    people = await _people(service)
    run_id, _t0 = await _run_until(service, clock, people, PREP + CULTURE)
    url = f"/api/v1/runs/{run_id}/steps/harvest"
    recorded = (await service.client.get(url, headers=people.headers("operator"))).json()
    assert recorded["deviation_ids"] == [] and recorded["corrections"] == []
    correction = {"inputs": {"total_viable_cells": 5.0e8}, "reason": "count re-read from the counter printout",
                  "signature": people.sign("operator", "approved")}
    r = await service.client.post(f"{url}/corrections", json=correction, headers=people.headers("operator"))
    assert r.status_code == 403, r.text
    correction["signature"] = people.sign("supervisor", "approved")
    r = await service.client.post(f"{url}/corrections", json=correction, headers=people.headers("supervisor"))
    assert r.status_code == 201, r.text
    view = (await service.client.get(url, headers=people.headers("operator"))).json()
    assert view["inputs"]["total_viable_cells"] == pytest.approx(1.0e9)  # the record as posted
    assert view["effective_inputs"]["total_viable_cells"] == pytest.approx(5.0e8)
    [fix] = view["corrections"]
    assert fix["before"] == {"total_viable_cells": pytest.approx(1.0e9)}
    assert fix["after"] == {"total_viable_cells": pytest.approx(5.0e8)}
    assert fix["reason"] == correction["reason"]
    assert [(s["meaning"], s["valid"]) for s in fix["signatures"]] == [("approved", True)]
    # 5e8 x 60 % = 3e8 CD7+ cells, below 2.8e8 x 1.25 = 3.5e8
    [dev_id] = fix["deviation_ids"]
    dev = (await service.client.get(f"/api/v1/deviations/{dev_id}", headers=people.headers("operator"))).json()
    assert dev["rule"] == "harvest_below_required" and dev["status"] == "open" and dev["step_key"] == "harvest"
    harvest = (await service.client.get(f"/api/v1/runs/{run_id}",
                                        headers=people.headers("operator"))).json()["dose"]["harvest"]
    assert harvest["enough"] is False and harvest["needed"] == pytest.approx(3.5e8)


async def test_an_expired_lot_is_refused_naming_the_reagent(service: Service, clock: ManualClock) -> None:
    people = await _people(service)
    run_id, _t0 = await _run_until(service, clock, people, ())
    lots = {**LOTS["coat_vessels"], "dl4": {"lot": "DL4-OLD", "expiry": "2026-01-31"}}
    r = await post_step(service, people.headers("operator"), run_id, "coat_vessels", lots=lots)
    body = _refused(r, 422, "lot_expired")
    assert [(e["field"], e["rule"]) for e in body["errors"]] == [("lots.dl4", "lot_expired")]
    assert "DL-4-Fc" in body["detail"] and "DL4-OLD" in body["detail"]


async def test_a_wrong_din_check_character_is_refused_at_run_creation(service: Service) -> None:
    people = await _people(service)
    r = await service.client.post("/api/v1/runs", headers=people.headers("operator"), json={
        **run_body(START + timedelta(days=1)), "graft_din": "W1234 26 123456 8"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "graft_din"] and "graft_din" in r.json()["detail"]


async def test_qa_decides_a_lower_dose_and_the_product_says_so(service: Service, clock: ManualClock) -> None:
    people = await _people(service)
    low = {**INPUTS["harvest"], "total_viable_cells": 4.0e8}  # 2.4e8 CD7+ cells: below 3.5e8
    run_id, t0 = await _run_until(service, clock, people, PREP + CULTURE[:2])
    clock.set(t0 + timedelta(hours=168))
    out = await _ok(service, people, run_id, "harvest", low)
    assert [d["rule"] for d in out["deviations"]] == ["harvest_below_required"]
    assert "harvest_below_required" in [a["rule"] for a in out["alerts"]]
    decision = {"decision": "lower_dose", "dose_per_kg": 1.5e6, "reason": "harvest holds too few CD7+ cells",
                "signature": people.sign("qa", "approved")}
    url = f"/api/v1/runs/{run_id}/dose-decision"
    assert (await service.client.post(url, json=decision, headers=people.headers("supervisor"))).status_code == 403
    r = await service.client.post(url, json=decision, headers=people.headers("qa"))
    assert r.status_code == 201 and r.json()["decision"] == "lower_dose", r.text
    clock.set(t0 + timedelta(hours=170))
    # 1.5e6/kg x 70 kg = 1.05e8 CD7+; 1.07e8 x 98/100 mL net of the QC samples = 1.049e8 (99.9 %)
    out = await _ok(service, people, run_id, "formulate", {**INPUTS["formulate"], "cd7_cells_formulated": 1.07e8})
    achieved = out["dose"]["achieved"]
    assert achieved["within_acceptance"] is True and out["deviations"] == []
    assert achieved["dose_level_per_kg"] == pytest.approx(1.5e6)
    assert achieved["percent_of_level"] == pytest.approx(1.07e8 * 0.98 / 1.05e8 * 100)
    assert achieved["product_status"] == "lower_dose_level"
    view = (await service.client.get(f"/api/v1/runs/{run_id}", headers=people.headers("operator"))).json()
    assert view["product"]["status"] == "lower_dose_level"
    assert view["dose"]["achieved"]["product_status"] == "lower_dose_level"


async def test_release_waits_for_qc_then_the_bedside_check_completes_the_run(service: Service,
                                                                              clock: ManualClock) -> None:
    people = await _people(service)
    run_id, t0 = await _run_until(service, clock, people,
                                  PREP + CULTURE + (("formulate", 170),), signed=True)
    harvest_at = t0 + timedelta(hours=168)
    clock.set(harvest_at + timedelta(hours=3))
    release = {"signature": people.sign("qa", "approved")}
    r = await post_step(service, people.headers("qa"), run_id, "release", **release)
    body = _refused(r, 409, "qc_results_pending")
    assert set(body["facts"]["tests"]) == {"gram_stain", "endotoxin", "mycoplasma"}
    # sterility is reported after infusion; it cannot be reported before its sample's step
    assert (await _report(service, people, run_id, "gram_stain", result="negative")).status_code == 200
    r = await _report(service, people, run_id, "endotoxin", eu_per_ml=0.5)  # 0.5 x 98 / 70 / 0.5 = 1.4 EU/kg/h
    assert r.status_code == 200 and r.json()["passed"] is True, r.text
    r = await post_step(service, people.headers("qa"), run_id, "release", **release)
    assert _refused(r, 409, "qc_results_pending")["facts"]["tests"] == ["mycoplasma"]
    assert (await _report(service, people, run_id, "mycoplasma", result="negative")).status_code == 200
    r = await post_step(service, people.headers("qa"), run_id, "release", **release)
    assert r.status_code == 201, r.text
    assert r.json()["run"]["status"] == "running"  # release no longer completes the run
    view = (await service.client.get(f"/api/v1/runs/{run_id}", headers=people.headers("operator"))).json()
    code = view["code"]
    assert view["product"]["product_id"] == code and view["product"]["expiry"]
    at = harvest_at + timedelta(hours=6)
    clock.set(at + timedelta(minutes=40))
    infusion = {"patient_id_scanned": "P-999", "product_id_scanned": code,
                "infusion_start": at.isoformat(), "infusion_end": (at + timedelta(minutes=30)).isoformat(),
                "infused_volume": 98}
    r = await post_step(service, people.headers("operator"), run_id, "infuse", infusion)
    _refused(r, 422, "signature_required")  # the bedside check is signed by the person who does it
    bedside = {"signature": people.sign("operator", "performed")}
    r = await post_step(service, people.headers("operator"), run_id, "infuse", infusion, **bedside)
    body = _refused(r, 409, "bedside_mismatch")
    assert body["facts"]["mismatch"] == ["patient"]
    infusion["patient_id_scanned"] = "P-200"
    early = {**infusion, "infusion_start": (harvest_at + timedelta(hours=2)).isoformat()}  # before the release
    r = await post_step(service, people.headers("operator"), run_id, "infuse", early, **bedside)
    assert "before the release" in _refused(r, 409, "infusion_times")["detail"]
    r = await post_step(service, people.headers("operator"), run_id, "infuse", infusion, **bedside)
    assert r.status_code == 201 and r.json()["run"]["status"] == "completed", r.text
    view = (await service.client.get(f"/api/v1/runs/{run_id}", headers=people.headers("operator"))).json()
    assert view["status"] == "completed" and view["ended_at"]

    # sterility, sampled at formulation, comes back positive after infusion: notified and a deviation
    clock.set(at + timedelta(days=14))
    r = await _report(service, people, run_id, "sterility", result="positive")
    assert r.status_code == 200 and r.json()["passed"] is False, r.text
    devs = (await service.client.get("/api/v1/deviations", params={"run_id": run_id},
                                     headers=people.headers("qa"))).json()
    [dev] = [d for d in devs if d["rule"] == "post_infusion_positive"]
    assert dev["status"] == "open" and dev["facts"]["test"] == "sterility"
    trail = (await service.client.get("/api/v1/audit", params={"action": "qc.positive_notified",
                                                                 "entity_type": "culture_run",
                                                                 "entity_id": run_id},
                                      headers=people.headers("qa"))).json()["items"]
    [notified] = trail
    assert notified["new"]["test"] == "sterility" and notified["new"]["deviation_id"] == dev["id"]
    # ... and an alarm reaches a person: active until QA closes the deviation
    alarm = await service.client.get(f"/api/v1/alarms/run:{code}:sterility", headers=people.headers("operator"))
    assert alarm.status_code == 200, alarm.text
    assert (alarm.json()["status"], alarm.json()["run_id"]) == ("active_unack", run_id), alarm.json()


async def test_a_count_import_fills_the_day3_count_with_its_provenance(service: Service,
                                                                       clock: ManualClock) -> None:
    people = await _people(service)
    run_id, t0 = await _run_until(service, clock, people, PREP)
    clock.set(t0 + timedelta(hours=72))
    r = await service.client.post(f"/api/v1/runs/{run_id}/count-imports", headers=people.headers("operator"), json={
        "step_key": "feed_day3", "filename": "day3.csv", "instrument_id": "CT3-0001",
        "content_base64": base64.b64encode(COUNTER_CSV).decode()})
    assert r.status_code == 201, r.text
    imported = r.json()
    sha = hashlib.sha256(COUNTER_CSV).hexdigest()
    assert imported["sha256"] == sha and imported["format"] == "generic"
    out = await _ok(service, people, run_id, "feed_day3", {"cd7_percent": 40}, count_import=imported["id"])
    inputs, provenance = out["step_record"]["inputs"], out["step_record"]["provenance"]
    assert inputs["viable_density"] == pytest.approx(5.0e5) and inputs["viability"] == pytest.approx(91.5)
    for name in ("viable_density", "viability"):
        assert provenance[name]["source"] == "counter", provenance
        assert provenance[name]["sha256"] == sha and provenance[name]["count_import"] == imported["id"]
        assert provenance[name]["instrument_id"] == "CT3-0001"
    assert provenance["cd7_percent"] == {"source": "typed"}
    view = (await service.client.get(f"/api/v1/runs/{run_id}/steps/feed_day3",
                                     headers=people.headers("operator"))).json()
    assert view["provenance"] == provenance


async def _released(service: Service, clock: ManualClock, people: People) -> tuple[int, datetime]:
    """A run formulated, its QC results reported and released by QA (3 h after harvest)."""
    run_id, t0 = await _run_until(service, clock, people, PREP + CULTURE + (("formulate", 170),), signed=True)
    for test, body in (("gram_stain", {"result": "negative"}), ("endotoxin", {"eu_per_ml": 0.1}),
                       ("mycoplasma", {"result": "negative"})):
        assert (await _report(service, people, run_id, test, **body)).status_code == 200
    clock.set(t0 + timedelta(hours=171))
    r = await post_step(service, people.headers("qa"), run_id, "release", signature=people.sign("qa", "approved"))
    assert r.status_code == 201, r.text
    return run_id, t0


async def test_a_positive_result_after_release_stops_the_infusion_and_records_are_not_corrected(
        service: Service, clock: ManualClock) -> None:
    people = await _people(service)
    run_id, t0 = await _released(service, clock, people)
    r = await service.client.post(f"/api/v1/runs/{run_id}/steps/harvest/corrections", json={
        "inputs": {"cd7_percent": 55}, "reason": "transcription", "signature": people.sign("supervisor", "approved")},
        headers=people.headers("supervisor"))
    _refused(r, 409, "released")
    assert (await _report(service, people, run_id, "sterility", result="positive")).status_code == 200
    code = (await service.client.get(f"/api/v1/runs/{run_id}", headers=people.headers("qa"))).json()["code"]
    at = t0 + timedelta(hours=172)
    clock.set(at + timedelta(minutes=45))
    r = await post_step(service, people.headers("operator"), run_id, "infuse", {
        "patient_id_scanned": "P-200", "product_id_scanned": code, "infusion_start": at.isoformat(),
        "infusion_end": (at + timedelta(minutes=30)).isoformat(), "infused_volume": 98},
        signature=people.sign("operator", "performed"))
    assert "sterility" in _refused(r, 409, "qc_result_failed")["detail"]


async def test_a_corrected_harvest_panel_re_evaluates_the_formulation(service: Service, clock: ManualClock) -> None:
    people = await _people(service)
    run_id, _ = await _run_until(service, clock, people, PREP + CULTURE + (("formulate", 170),))
    # 2.8e8 CD7+ at 60 % = 4.67e8 cells; 2 % CD3+ = 9.3e6 x 0.98 / 70 kg = 1.3e5/kg > 2.5e4 (T-cell-depleted)
    r = await service.client.post(f"/api/v1/runs/{run_id}/steps/harvest/corrections", json={
        "inputs": {"cd3_percent": 2.0}, "reason": "flow panel re-gated", "signature":
            people.sign("supervisor", "approved")}, headers=people.headers("supervisor"))
    assert r.status_code == 201, r.text
    devs = (await service.client.get("/api/v1/deviations", params={"run_id": run_id},
                                     headers=people.headers("qa"))).json()
    [cd3] = [d for d in devs if d["rule"] == "cd3_limit"]
    assert cd3["step_key"] == "formulate" and "after the correction of harvest" in cd3["description"]
    view = (await service.client.get(f"/api/v1/runs/{run_id}", headers=people.headers("operator"))).json()
    assert view["dose"]["achieved"]["cd3_within_limit"] is False
    assert view["dose"]["achieved"]["cd3_per_kg"] == pytest.approx(2.8e8 / 0.6 * 0.02 * 0.98 / 70)
    record = (await service.client.get(f"/api/v1/runs/{run_id}/steps/harvest",
                                       headers=people.headers("operator"))).json()
    assert record["effective_provenance"]["cd3_percent"]["source"] == "correction"
    # values valid one by one but impossible together are a 422, not an error
    r = await service.client.post(f"/api/v1/runs/{run_id}/steps/formulate/corrections", json={
        "inputs": {"qc_sample_volume": 100}, "reason": "typo", "signature": people.sign("supervisor", "approved")},
        headers=people.headers("supervisor"))
    _refused(r, 422, "inconsistent_inputs")


async def test_qa_lowers_the_dose_only_for_a_short_harvest_and_out_of_specification_is_a_deviation(
        service: Service, clock: ManualClock) -> None:
    people = await _people(service)
    run_id, _ = await _run_until(service, clock, people, PREP + CULTURE)  # the harvest holds the target
    url = f"/api/v1/runs/{run_id}/dose-decision"
    r = await service.client.post(url, json={"decision": "lower_dose", "dose_per_kg": 1.5e6, "reason": "low",
                                             "signature": people.sign("qa", "approved")}, headers=people.headers("qa"))
    _refused(r, 409, "harvest_sufficient")
    r = await service.client.post(url, json={"decision": "out_of_specification", "reason": "physician informed",
                                             "signature": people.sign("qa", "approved")}, headers=people.headers("qa"))
    assert r.status_code == 201, r.text
    devs = (await service.client.get("/api/v1/deviations", params={"run_id": run_id},
                                     headers=people.headers("qa"))).json()
    assert [d["rule"] for d in devs if d["status"] == "open"] == ["out_of_specification"]
    view = (await service.client.get(f"/api/v1/runs/{run_id}", headers=people.headers("operator"))).json()
    assert view["product"]["status"] == "out_of_specification"


async def test_a_corrected_product_volume_evaluates_the_endotoxin_result_again(service: Service,
                                                                                clock: ManualClock) -> None:
    people = await _people(service)
    run_id, _ = await _run_until(service, clock, people, PREP + CULTURE + (("formulate", 170),))
    # 1.7 EU/mL x 98 mL / 70 kg / 0.5 h = 4.76 EU/kg/h: within the limit of 5
    r = await _report(service, people, run_id, "endotoxin", eu_per_ml=1.7)
    assert r.status_code == 200 and r.json()["passed"] is True, r.text
    r = await service.client.post(f"/api/v1/runs/{run_id}/steps/formulate/corrections", json={
        "inputs": {"product_volume": 110}, "reason": "bag weighed again",
        "signature": people.sign("supervisor", "approved")}, headers=people.headers("supervisor"))
    assert r.status_code == 201, r.text
    devs = (await service.client.get("/api/v1/deviations", params={"run_id": run_id},
                                     headers=people.headers("qa"))).json()
    [failed] = [d for d in devs if d["rule"] == "qc_result_failed"]  # 1.7 x 108 / 70 / 0.5 = 5.25 EU/kg/h
    assert failed["facts"]["eu_per_kg_h"] == pytest.approx(1.7 * 108 / 70 / 0.5)
    assert "corrected volume" in failed["description"]


async def test_release_waits_for_the_review_signs_the_record_and_later_events_issue_new_versions(
        service: Service, clock: ManualClock) -> None:
    """Review by exception, the release signing the record's content hash, version 1 as issued, and a result
    after release (a positive sterility test) issuing version 2 that points to 1 and re-opens the review."""
    people = await _people(service)
    run_id, t0 = await _run_until(service, clock, people, PREP + CULTURE + (("formulate", 170),), signed=True)
    for test, body in (("gram_stain", {"result": "negative"}), ("endotoxin", {"eu_per_ml": 0.1}),
                       ("mycoplasma", {"result": "negative"})):
        assert (await _report(service, people, run_id, test, **body)).status_code == 200
    clock.set(t0 + timedelta(hours=171))
    qa = people.headers("qa")
    record = (await service.client.get(f"/api/v1/runs/{run_id}/record", headers=qa)).json()
    keys = [e["key"] for e in record["exceptions"]]
    assert keys and all(e["review"] is None for e in record["exceptions"])
    r = await post_step(service, qa, run_id, "release", signature=people.sign("qa", "approved"), review=False)
    refused = _refused(r, 409, "exceptions_not_reviewed")
    assert set(keys) <= set(refused["exceptions"])  # (an alarm flushed meanwhile may add one)
    base = f"/api/v1/runs/{run_id}/record/exceptions"
    r = await service.client.post(f"{base}/{quote(keys[0], safe='')}/review", headers=qa, json={
        "comment": "seen", "signature": people.sign("qa", "approved")})
    _refused(r, 422, "signature_meaning")
    r = await service.client.post(f"{base}/no-such-thing/review", headers=qa, json={
        "comment": "seen", "signature": people.sign("qa", "reviewed")})
    assert keys[0] in _refused(r, 404, "unknown_exception")["exceptions"]
    r = await service.client.post(f"{base}/{quote(keys[0], safe='')}/review", headers=people.headers("supervisor"),
                                  json={"comment": "seen", "signature": people.sign("supervisor", "reviewed")})
    assert r.status_code == 403  # QA reviews
    r = await service.client.post(f"{base}/{quote(keys[0], safe='')}/review", headers=qa, json={
        "comment": "acceptable: within the validated range", "signature": people.sign("qa", "reviewed")})
    assert r.status_code == 200 and r.json()["review"]["signature"]["meaning"] == "reviewed", r.text
    r = await post_step(service, qa, run_id, "release", signature=people.sign("qa", "approved"), review=False)
    left = _refused(r, 409, "exceptions_not_reviewed")["exceptions"]
    assert left and keys[0] not in left  # the reviewed one no longer
    r = await post_step(service, qa, run_id, "release", signature=people.sign("qa", "approved"))
    assert r.status_code == 201, r.text
    signed = r.json()["step_record"]["provenance"]["record_content_hash"]

    runtime = service.app.state.runtime

    async def issued(n: int) -> list[dict[str, Any]] | None:
        await runtime.record_keeper.pass_once()  # the keeper's own task may have issued it already
        got = (await service.client.get(f"/api/v1/runs/{run_id}/record/versions", headers=qa)).json()
        return got if len(got) >= n else None

    versions = await wait_for(lambda: issued(1), timeout=30, what="version 1 of the batch record")
    assert [(v["number"], v["previous"], v["signed_hash"]) for v in versions] == [(1, None, signed)]
    v1 = (await service.client.get(f"/api/v1/runs/{run_id}/record/versions/1", headers=qa)).json()
    assert v1["version"]["number"] == 1 and not v1["version"]["draft"]
    assert v1["release"]["released"] and v1["audit_chain"]["seq"] > 0
    pdf = await service.client.get(f"/api/v1/runs/{run_id}/record/versions/1/pdf", headers=qa)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF") and "v1.pdf" in pdf.headers["content-disposition"]
    assert await runtime.record_keeper.pass_once() == 0  # nothing changed: no new version

    conn = await db.connect(service.dsn)
    try:
        for sql in ("UPDATE batch_record_version SET reason = 'edited'", "DELETE FROM batch_record_version"):
            with pytest.raises(asyncpg.PostgresError, match="issued batch record is permanent"):
                await conn.execute(sql)
    finally:
        await conn.close()

    assert (await _report(service, people, run_id, "sterility", result="positive")).status_code == 200
    versions = await wait_for(lambda: issued(2), timeout=30, what="version 2 of the batch record")
    assert [(v["number"], v["previous"]) for v in versions] == [(1, None), (2, 1)]
    v2 = (await service.client.get(f"/api/v1/runs/{run_id}/record/versions/2", headers=qa)).json()
    late = [e for e in v2["exceptions"] if e["review"] is None]
    assert late and any("sterility" in e["key"] for e in late)  # the late result re-opens the review
    assert (await service.client.get(f"/api/v1/runs/{run_id}/record/versions/3", headers=qa)).status_code == 404
