"""The batch record of a whole run through the API on a hand-moved clock (app/records/record_collect.py): a deviation,
a correction, an override, a high-priority alarm, a setpoint command, telemetry and QC results; the record validates
against its published schema, shows every step with its inputs and pass/fail, lists what QA reviews as exceptions
with stable keys, keeps the corrected value's original, carries the chain head of its snapshot, and hashes the same
when only its generation time differs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from app import db
from app.alarms.service import AlarmService
from app.core.clock import ManualClock
from app.records import record_collect, record_rules
from app.records.record_model import BatchRecord
from drivers.base import Quality, Reading
from tests.api.conftest import Service, running_service
from tests.api.protocol_support import INPUTS, RECIPE, create_run_api, ensure_recipe, make_run, post_step
from tests.api.setpoint_support import attach_device
from tests.support import wait_for

START = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
T0 = START + timedelta(hours=20)
TEMP = "incubator-1.temperature"
ALARM = f"{TEMP}:limit"
VERIFIED = {"coat_vessels", "receive_cells", "seed", "harvest", "formulate"}  # steps signed performed + verified


@dataclass
class Built:
    service: Service
    clock: ManualClock
    run_id: int
    qa: dict[str, str]
    deviation_ids: list[int]
    correction_id: int
    record: dict[str, Any]


class People:
    def __init__(self) -> None:
        self.users: dict[str, tuple[str, dict[str, str]]] = {}

    async def add(self, service: Service, role: str) -> None:
        _, _, password, headers = await service.user(role)
        self.users[role] = (password, headers)

    def headers(self, role: str) -> dict[str, str]:
        return self.users[role][1]

    def sign(self, role: str, meaning: str) -> dict[str, str]:
        return {"meaning": meaning, "password": self.users[role][0]}


def _alarms(service: Service) -> AlarmService:
    alarms = service.app.state.runtime.alarms
    assert alarms is not None
    return alarms


async def _step(service: Service, clock: ManualClock, people: People, run_id: int, key: str, hours: float,
                inputs: dict[str, Any] | None = None, *, role: str = "operator", **extra: Any) -> dict[str, Any]:
    """Post a step `hours` after T0, signed by its poster (and verified by a supervisor when the recipe asks)."""
    clock.set(T0 + timedelta(hours=hours))
    meaning = "approved" if key == "release" else "performed"
    r = await post_step(service, people.headers(role), run_id, key, inputs, signature=people.sign(role, meaning),
                        **extra)
    assert r.status_code == 201, (key, r.text)
    out: dict[str, Any] = r.json()
    if key in VERIFIED:
        v = await service.client.post("/api/v1/signatures", headers=people.headers("supervisor"), json={
            "entity_type": "step_record", "entity_id": str(out["step_record"]["id"]), "meaning": "verified",
            "password": people.users["supervisor"][0]})
        assert v.status_code == 201, (key, v.text)
    return out


async def _high_alarm(service: Service, clock: ManualClock, people: People) -> None:
    """The chamber above HH (high priority) for a minute, acknowledged with a comment, back in range."""
    alarms = _alarms(service)
    clock.set(T0 + timedelta(hours=24))
    alarms.on_reading(Reading(TEMP, 37.0, clock.now()))
    clock.advance(30)
    alarms.on_reading(Reading(TEMP, 39.6, clock.now()))
    clock.advance(61)
    alarms.tick()
    assert alarms.alarms[ALARM].priority() == "high"
    r = await service.client.post(f"/api/v1/alarms/{ALARM}/acknowledge", headers=people.headers("operator"),
                                  json={"comment": "door seal checked, heater reset"})
    assert r.status_code == 200, r.text
    for _ in range(3):  # back inside: normal after the off-delay
        alarms.on_reading(Reading(TEMP, 37.0, clock.now()))
        clock.advance(61)
        alarms.tick()
    await alarms.sync()


async def _telemetry(service: Service) -> None:
    """Two hours of chamber temperature, one reading a minute, through the ingest buffer and writer."""
    runtime = service.app.state.runtime
    assert runtime.buffer is not None and runtime.writer is not None
    before = runtime.writer.rows_written
    for minute in range(120):
        runtime.buffer.put_nowait(Reading(TEMP, 37.0 + (minute % 10) / 100, T0 + timedelta(hours=30, minutes=minute),
                                          Quality.GOOD))
    await wait_for(lambda: runtime.writer.rows_written >= before + 120, timeout=10, what="telemetry written")


@pytest.fixture(scope="module")
async def built(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Built]:
    clock = ManualClock(START)
    async with running_service(db_dsn, tmp_path_factory.mktemp("record"), clock=clock) as service:
        await ensure_recipe(service)
        people = People()
        for role in ("operator", "supervisor", "qa"):
            await people.add(service, role)
        run_id = await create_run_api(service, people.headers("operator"), T0, culture_system="culture-system-1")
        await _alarms(service).sync()
        await _step(service, clock, people, run_id, "coat_vessels", -18)
        low = {**INPUTS["receive_cells"], "viability": 75}  # below 80 %: recorded, a deviation and an exception
        await _step(service, clock, people, run_id, "receive_cells", -3, low)
        await _step(service, clock, people, run_id, "incubator_ready", -2)
        await _step(service, clock, people, run_id, "seed", 0)
        await _alarms(service).sync()  # the run is running: its excursions are accounted
        await _high_alarm(service, clock, people)
        await attach_device(service)
        r = await service.client.post("/api/v1/devices/incubator-1/setpoints", headers=people.headers("operator"),
                                      json={"point": "temperature_setpoint", "value": 37.5, "run_id": run_id,
                                            "reason": "chamber runs cold after the door seal check"})
        assert r.status_code == 200, r.text
        # the day-3 count 6 h before its window opens: a supervisor's override with its deviation
        await _step(service, clock, people, run_id, "feed_day3", 60, role="supervisor", override=True,
                    override_reason="cell counter booked for maintenance on day 3")
        await _step(service, clock, people, run_id, "mycoplasma_sample", 132)
        await _step(service, clock, people, run_id, "harvest", 168)
        clock.set(T0 + timedelta(hours=169))
        r = await service.client.post(f"/api/v1/runs/{run_id}/steps/harvest/corrections",
                                      headers=people.headers("supervisor"), json={
                                          "inputs": {"total_viable_cells": 9.0e8},
                                          "reason": "count re-read from the counter printout",
                                          "signature": people.sign("supervisor", "approved")})
        assert r.status_code == 201, r.text
        correction_id = int(r.json()["corrections"][0]["id"])
        await _step(service, clock, people, run_id, "formulate", 170)
        for test, body in (("gram_stain", {"result": "negative"}), ("endotoxin", {"eu_per_ml": 0.1}),
                           ("mycoplasma", {"result": "negative"})):
            r = await service.client.post(f"/api/v1/runs/{run_id}/qc-results/{test}", json=body,
                                          headers=people.headers("qa"))
            assert r.status_code == 200, r.text
        devs = (await service.client.get("/api/v1/deviations", params={"run_id": run_id},
                                         headers=people.headers("qa"))).json()
        for d in devs:
            if d["status"] == "open":
                r = await service.client.post(f"/api/v1/deviations/{d['id']}/close", headers=people.headers("qa"),
                                              json={"reason": "assessed: no impact on the product",
                                                    "signature": people.sign("qa", "approved")})
                assert r.status_code == 200, r.text
        await _step(service, clock, people, run_id, "release", 171, role="qa")
        code = (await service.client.get(f"/api/v1/runs/{run_id}", headers=people.headers("qa"))).json()["code"]
        at = T0 + timedelta(hours=172)
        await _step(service, clock, people, run_id, "infuse", 173, {
            "patient_id_scanned": "P-200", "product_id_scanned": code, "infusion_start": at.isoformat(),
            "infusion_end": (at + timedelta(minutes=30)).isoformat(), "infused_volume": 98})
        await _telemetry(service)
        clock.set(T0 + timedelta(hours=180))
        r = await service.client.get(f"/api/v1/runs/{run_id}/record", headers=people.headers("qa"))
        assert r.status_code == 200, r.text
        yield Built(service, clock, run_id, people.headers("qa"), [int(d["id"]) for d in devs], correction_id,
                    r.json())


async def test_the_record_validates_against_its_published_schema(built: Built) -> None:
    r = await built.service.client.get("/api/v1/records/schema")  # public: no credentials
    assert r.status_code == 200, r.text
    schema = r.json()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["title"] == "BatchRecord"
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(built.record)
    assert built.record["version"]["draft"] is True and built.record["version"]["number"] is None


async def test_every_step_appears_with_its_inputs_and_pass_fail(built: Built) -> None:
    record = built.record
    steps = {s["key"]: s for s in record["steps"]}
    assert list(steps) == list(RECIPE.step_keys)
    assert steps["feed_day5"]["status"] == "skipped" and steps["feed_day5"]["inputs"] == []
    for step in RECIPE.steps:
        if step.key == "feed_day5":
            continue
        s = steps[step.key]
        assert s["status"] == "done" and s["recorded_by"], step.key
        assert [i["name"] for i in s["inputs"]] == [i.name for i in step.inputs], step.key
        for inp, shown in zip(step.inputs, s["inputs"], strict=True):
            assert shown["unit"] == inp.unit
            if inp.has_limit and shown["value"] is not None:
                assert shown["limit"] and shown["passed"] in (True, False), (step.key, shown)
            else:
                assert shown["passed"] is None, (step.key, shown)
    viability = next(i for i in steps["receive_cells"]["inputs"] if i["name"] == "viability")
    assert (viability["value"], viability["limit"], viability["passed"]) == (75, ">= 80 %", False)
    coat = {i["name"]: i for i in steps["coat_vessels"]["inputs"]}
    assert coat["coat_temperature"]["passed"] is True and coat["coat_temperature"]["limit"] == ">= 36.5 degC and " \
        "<= 37.5 degC"
    ready = {i["name"]: i for i in steps["incubator_ready"]["inputs"]}
    assert ready["calibration_valid"]["source"].startswith("calibration records on ")
    assert ready["temperature"]["source"] == "typed"
    assert [m["meaning"] for m in steps["harvest"]["signatures"]] == ["performed", "verified"]
    assert steps["feed_day3"]["override"] is True and "maintenance" in steps["feed_day3"]["override_reason"]
    materials = {(m["step_key"], m["lot"]) for m in record["materials"]}
    assert ("coat_vessels", "DL4-1") in materials and all(m["expired_at_use"] is False for m in record["materials"])


async def test_the_corrected_input_keeps_its_original(built: Built) -> None:
    harvest = next(s for s in built.record["steps"] if s["key"] == "harvest")
    cells = next(i for i in harvest["inputs"] if i["name"] == "total_viable_cells")
    assert cells["value"] == pytest.approx(9.0e8) and cells["changed_after_entry"] is True
    assert cells["original"] == pytest.approx(1.0e9) and cells["source"] == f"correction {built.correction_id}"
    [fix] = harvest["corrections"]
    assert fix["id"] == built.correction_id and fix["original"] == {"total_viable_cells": pytest.approx(1.0e9)}
    assert [s["meaning"] for s in fix["signatures"]] == ["approved"]
    others = [i for i in harvest["inputs"] if i["name"] != "total_viable_cells"]
    assert all(not i["changed_after_entry"] and i["original"] is None for i in others)
    corrected = [a for a in built.record["audit"] if a["action"] == "step.correct"]
    assert len(corrected) == 1 and corrected[0]["changed_after_entry"] is True
    assert not any(a["changed_after_entry"] for a in built.record["audit"] if a["action"] == "step.record")


async def test_deviations_override_correction_and_alarm_are_exceptions_with_stable_keys(built: Built) -> None:
    record = built.record
    keys = [e["key"] for e in record["exceptions"]]
    assert len(keys) == len(set(keys))
    assert {f"deviation:{d}" for d in built.deviation_ids} <= set(keys)
    assert {"override:feed_day3", f"correction:{built.correction_id}", "out_of_limit:receive_cells.viability",
            "pending_result:sterility", f"excursion:{TEMP}"} <= set(keys)
    # the HH activation, once (the channels nobody feeds in this test go stale: high priority too)
    [alarm] = [e for e in record["exceptions"] if e["key"].startswith(f"high_alarm:{ALARM}@")]
    activated = next(a for a in record["alarms"] if a["alarm_id"] == ALARM and a["reason"] == "activated")
    assert alarm["key"] == f"high_alarm:{ALARM}@{activated['at'].replace('Z', '.000000Z')}"
    assert "door seal checked" in alarm["detail"]
    assert [k.split(":")[0] for k in keys] == sorted((k.split(":")[0] for k in keys), key=[
        "deviation", "override", "correction", "late_step", "missed_step", "high_alarm", "excursion", "out_of_limit",
        "pending_result", "failed_result", "calibration"].index)
    devs = {d["id"]: d for d in record["deviations"]}
    assert all(devs[d]["status"] == "closed" and devs[d]["signatures"][0]["meaning"] == "approved"
               for d in built.deviation_ids)
    assert {devs[d]["rule"] for d in built.deviation_ids} >= {"acceptance_limit", "before_earliest"}
    # built again later: the same exceptions, the same fingerprints
    built.clock.advance(3600)
    again = await built.service.client.get(f"/api/v1/runs/{built.run_id}/record", headers=built.qa)
    assert [(e["key"], e["fingerprint"]) for e in again.json()["exceptions"]] == \
        [(e["key"], e["fingerprint"]) for e in record["exceptions"]]


async def test_alarms_setpoints_charts_product_release_and_audit(built: Built) -> None:
    record = built.record
    journal = [(a["alarm_id"], a["reason"]) for a in record["alarms"] if a["alarm_id"] == ALARM]
    assert journal[:1] == [(ALARM, "activated")] and (ALARM, "acknowledge") in journal
    ack = next(a for a in record["alarms"] if a["alarm_id"] == ALARM and a["reason"] == "acknowledge")
    assert ack["actor"] and ack["comment"] == "door seal checked, heater reset"
    [command] = record["setpoints"]
    assert (command["device"], command["point"], command["requested"], command["result"]) == \
        ("incubator-1", "temperature_setpoint", 37.5, "confirmed")
    charts = {c["role"]: c for c in record["charts"]}
    assert set(charts) == {"temperature", "co2", "humidity", "viable_cell_density", "viability", "cd7_percent"}
    temp = charts["temperature"]
    # the run spans 191 h: more than 2,100 buckets of 5 min, so 10-min buckets; 2 h of readings in 12
    assert temp["channel"] == TEMP and temp["band"] == [36.0, 38.0] and len(temp["points"]) == 12
    first, second = (datetime.fromisoformat(p[0]) for p in temp["points"][:2])
    assert second - first == timedelta(minutes=10) and temp["points"][0][1] == pytest.approx(37.045)
    assert charts["humidity"]["band"] == [80.0, None] and charts["co2"]["band"] == [4.0, 6.0]
    [excursion] = [x for x in record["excursions"] if x["channel"] == TEMP]
    assert excursion["episodes"] >= 1 and excursion["band"] == [36.0, 38.0]
    qc = {q["test"]: q for q in record["product"]["qc"]}
    assert qc["gram_stain"]["status"] == "passed" and qc["sterility"]["status"] == "pending"
    assert record["product"]["dose"]["achieved"]["product_status"] == "in_specification"
    assert [(f["step"], f["basis"]) for f in record["product"]["forecasts"]] == [("seed", "seed"),
                                                                                ("feed_day3", "count")]
    release = record["release"]
    assert release["released"] is True and [s["meaning"] for s in release["signatures"]] == ["approved"]
    assert release["refusals"] == []
    [incubator, culture] = record["equipment"]
    assert (incubator["device"], incubator["role_in_run"], culture["role_in_run"]) == \
        ("incubator-1", "incubator", "culture_system")
    assert {c["point"] for c in incubator["calibrations"]} >= {"temperature", "co2", "humidity"}
    assert all(c["status_at_end"] == "valid" for c in incubator["calibrations"])
    actions = {a["action"] for a in record["audit"]}
    assert {"run.create", "step.record", "step.correct", "signature.create", "deviation.open", "deviation.close",
            "qc.result", "device.setpoint", "alarm.acknowledge"} <= actions
    seqs = [a["seq"] for a in record["audit"]]
    assert seqs == sorted(seqs) and seqs[-1] <= record["audit_chain"]["seq"]
    assert record["identity"]["status"] == "completed" and record["identity"]["run_id"] == built.run_id


async def test_the_chain_head_is_the_snapshots_and_the_hash_ignores_the_generation_time(built: Built) -> None:
    runtime = built.service.app.state.runtime
    context = record_collect.RecordContext.of(runtime)
    conn = await db.connect(built.service.dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            first = await record_collect.build_record(conn, built.run_id, now=runtime.clock.now(),
                                                      runtime_view=context)
            head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
        assert (first.audit_chain.seq, first.audit_chain.hash) == (head["seq"], head["hash"])
        later = await record_collect.build_record(conn, built.run_id, now=runtime.clock.now() + timedelta(days=400),
                                                  runtime_view=context)
    finally:
        await conn.close()
    assert later.generated_at != first.generated_at
    assert record_rules.content_hash(later) == record_rules.content_hash(first) == first.version.content_hash
    assert later.model_dump(exclude={"generated_at", "audit_chain"}) == \
        first.model_dump(exclude={"generated_at", "audit_chain"})
    assert BatchRecord.model_validate(built.record).version.content_hash == first.version.content_hash


async def test_an_unknown_run_is_a_404_naming_the_rule(built: Built) -> None:
    r = await built.service.client.get("/api/v1/runs/999999/record", headers=built.qa)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", r.text
    assert r.json()["rule"] == "unknown_run"


async def test_a_planned_run_and_a_run_without_a_recipe_have_a_record_too(built: Built) -> None:
    schema = (await built.service.client.get("/api/v1/records/schema")).json()
    planned = await make_run(built.service, built.clock.now())
    conn = await db.connect(built.service.dsn)
    try:
        bare = int(await conn.fetchval("INSERT INTO culture_run (code) VALUES ('BARE-1') RETURNING id"))
    finally:
        await conn.close()
    for run_id in (planned, bare):
        r = await built.service.client.get(f"/api/v1/runs/{run_id}/record", headers=built.qa)
        assert r.status_code == 200, r.text
        jsonschema.Draft202012Validator(schema).validate(r.json())
        record = r.json()
        assert record["release"]["released"] is False and record["release"]["refusals"], record["release"]
        assert record["alarms"] == [] or run_id == planned
    planned_record = (await built.service.client.get(f"/api/v1/runs/{planned}/record", headers=built.qa)).json()
    assert [s["status"] for s in planned_record["steps"]][:1] == ["due"]  # T0 in 10 h: coating is due
    assert all(s["inputs"] == [] for s in planned_record["steps"])
