"""A whole 7-day run against the simulators and a real uvicorn on a fast clock: its first step is posted with
`culturectl step post`, the demo automation client posts the rest inside
their windows (lots, the mycoplasma sample, QC results, formulation at the dose level, release, infusion with the
bedside check), and the run ends infused with the formulated dose; the SSE stream carries the step events."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import jsonschema
import pypdf
import pytest
from pydantic import SecretStr

from app import db
from app.auth.principal import Role
from app.core.clock import ScaledClock
from app.demo.client import DemoAutomation
from app.demo.setup import DEMO_PASSWORD, ensure_demo_accounts, ensure_demo_recipe
from app.demo.stack import open_door, simulators
from app.runtime import Runtime
from app.settings import Settings
from simulators.incubator import IncubatorSimulator
from tests.e2e.conftest import demo_bearer, serve
from tests.support import free_port, sse_events

SCALE = 20_000.0  # 1 wall second = 5.6 clock hours: T0 - 23 h .. harvest at T0 + 168 h in about 35 s
# After harvest the formulation, the QC results, release and infusion (each signed: an Argon2 check per signature)
# must fit the product's 12 h shelf life and the release window (harvest + 10 h): the clock slows to this.
PRODUCT_SCALE = 4_000.0
CULTURECTL = [sys.executable, "-m", "app.cli"]


@dataclass
class FastStack:
    base_url: str
    clock: ScaledClock
    runtime: Runtime
    key: str
    t0_offset: timedelta
    incubator: IncubatorSimulator


@pytest.fixture
async def fast(db_dsn: str, tmp_path: Path) -> AsyncIterator[FastStack]:
    clock = ScaledClock(scale=SCALE)
    t0_offset = timedelta(hours=23)
    conn = await db.connect(db_dsn)
    try:
        accounts = await ensure_demo_accounts(conn, tmp_path)
        await ensure_demo_recipe(conn)
    finally:
        await conn.close()
    async with simulators(clock, tmp_path / "devices.yaml", seed=3, culture_t0=clock.now() + t0_offset,
                          poll_interval=0.05) as sims:
        settings = Settings(database_url=SecretStr(db_dsn), data_dir=tmp_path / "data", devices_file=sims.devices_file,
                            time_scale=SCALE, port=free_port(), ingest_flush_interval=0.2, token_ttl_minutes=24 * 60,
                            engine_interval=0.05)
        async with serve(settings, clock) as (base_url, runtime):
            yield FastStack(base_url, clock, runtime, accounts.automation_key, t0_offset, sims.incubator)


async def _cli(stack: FastStack, *args: str) -> tuple[int, str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CULTURECTL_")},
           "CULTURECTL_URL": stack.base_url, "CULTURECTL_API_KEY": stack.key}
    proc = await asyncio.create_subprocess_exec(*CULTURECTL, *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _listen(stack: FastStack, run_id: int, seen: set[tuple[str, str]], listening: asyncio.Event) -> None:
    """Collect the run's step events from the SSE stream until the release is done."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=None,
                                 headers={"Authorization": f"Bearer {stack.key}"}) as http, \
            http.stream("GET", "/api/v1/stream", params={"kinds": "step,deviation"}) as r:
        assert r.status_code == 200
        listening.set()
        async for ev in sse_events(r):
            data = ev.json()
            assert isinstance(data, dict)
            if ev.event == "step" and data["run_id"] == run_id:
                seen.add((data["step"], data["new"]))
            if ("infuse", "done") in seen:
                return


async def test_a_whole_run_from_create_to_infusion_in_under_three_minutes(fast: FastStack) -> None:
    started = time.monotonic()
    t0 = fast.clock.now() + fast.t0_offset
    async with httpx.AsyncClient(base_url=fast.base_url, timeout=10) as http:  # automation keys do not plan runs
        r = await http.post("/api/v1/auth/login", json={"username": "supervisor", "password": DEMO_PASSWORD})
        r = await http.post("/api/v1/runs", headers={"Authorization": f"Bearer {r.json()['access_token']}"}, json={
            "recipe_key": "htlp-dl4-tnfa", "donor_id": "D-900", "patient_id": "P-900", "patient_weight_kg": 20,
            "target_dose_per_kg": 4.0e6, "cell_source": "mobilized", "hsct_at": (t0 - timedelta(days=0.4)).isoformat(),
            "planned_t0": t0.isoformat(), "incubator": "incubator-1", "culture_system": "culture-system-1",
            "vessels": [{"id": "BAG-1", "type": "BAG-DL4-500"}], "transplant_type": "t_cell_depleted",
            "arm": "paediatric", "graft_din": "W1234 26 123456 7"})
        assert r.status_code == 201, r.text
        run_id = int(r.json()["id"])
    code, out = await _cli(fast, "step", "post", str(run_id), "coat_vessels", "--lot", "dl4=DL4-9@2099-01-01",
                           "--lot", "medium=M-9@2099-01-01", "-v", "coat_hours=16", "-v", "coat_temperature=37.0")
    assert code == 0, out
    seen: set[tuple[str, str]] = set()
    listening = asyncio.Event()
    listener = asyncio.create_task(_listen(fast, run_id, seen, listening))
    await asyncio.wait_for(listening.wait(), timeout=10)
    alarms = fast.runtime.alarms
    assert alarms is not None

    async def door(step: str) -> None:  # the door opens at seeding, each feed, the mycoplasma sample and harvest
        await open_door(fast.clock, fast.incubator, sync=alarms.sync)
        if step == "harvest":
            fast.clock.retime(PRODUCT_SCALE)

    client = DemoAutomation(fast.base_url, fast.key, DEMO_PASSWORD, run_id, poll=0.02, door=door)
    view = await asyncio.wait_for(client.run(), timeout=170)
    assert view["status"] == "completed", view
    assert time.monotonic() - started < 180
    done = {s["key"] for s in view["schedule"] if s["status"] == "done"}
    assert done >= {"coat_vessels", "incubator_ready", "receive_cells", "seed", "feed_day3", "mycoplasma_sample",
                    "harvest", "formulate", "release", "infuse"}
    achieved = view["dose"]["achieved"]  # formulated at the dose level, net of the QC samples
    assert 80 <= achieved["percent_of_level"] <= 120 and achieved["within_acceptance"], achieved
    assert view["product"]["status"] == "in_specification", view["product"]
    qc = {q["test"]: q["status"] for q in view["product"]["qc"]}
    assert qc["gram_stain"] == qc["endotoxin"] == qc["mycoplasma"] == "reported", qc
    code, out = await _cli(fast, "run", "list", "--json")
    assert code == 0 and any(r["id"] == run_id and r["status"] == "completed" for r in json.loads(out)), out
    await asyncio.wait_for(listener, timeout=10)
    assert {("seed", "done"), ("feed_day3", "open"), ("harvest", "done"), ("release", "done"),
            ("infuse", "done")} <= seen
    # Setpoints went to the incubator through the one write path, each audited with the read-back.
    conn = await db.connect(fast.runtime.dsn)
    try:
        writes = await conn.fetch("SELECT new FROM audit_log WHERE action = 'device.setpoint' AND entity_id = $1",
                                  "incubator-1")
    finally:
        await conn.close()
    assert writes and all("read_back" in json.loads(w["new"]) for w in writes)
    # Each planned door opening is in the run's batch-record report with its recovery; none opened a deviation.
    await alarms.sync()
    async with httpx.AsyncClient(base_url=fast.base_url, timeout=10,
                                 headers={"Authorization": f"Bearer {fast.key}"}) as http:
        report = (await http.get(f"/api/v1/runs/{run_id}/excursions")).json()
        devs = (await http.get("/api/v1/deviations", params={"run_id": run_id})).json()
        check = (await http.get(f"/api/v1/runs/{run_id}/steps/incubator_ready")).json()
    # the incubator check read the calibration records the demo's supervisor recorded for the incubator's points
    assert check["inputs"]["calibration_valid"] is True and check["deviation_ids"] == [], check
    assert check["provenance"]["calibration_due"]["source"] == "calibration", check
    openings = report["door_openings"]
    assert {o["step_key"] for o in openings} >= {"seed", "feed_day3", "mycoplasma_sample", "harvest"}, openings
    assert all(o["outcome"] == "planned" and 0 < o["recovery_min"] <= 20 for o in openings), openings
    assert all(o["min_temperature"] < 35.0 for o in openings), openings  # the chamber did cool: it was opened
    assert not [d["rule"] for d in devs if d["rule"].startswith("excursion") or d["rule"] == "door_recovery"], devs
    # The batch record: issued at release (version 1, signed), again after the infusion; every step, signature,
    # deviation and alarm in it; the JSON valid against its schema; the PDF with its pages and its JSON embedded.
    keeper = fast.runtime.record_keeper
    assert keeper is not None
    await keeper.pass_once()
    async with httpx.AsyncClient(base_url=fast.base_url, timeout=60) as http:
        await demo_bearer(http, Role.QA)
        versions = (await http.get(f"/api/v1/runs/{run_id}/record/versions")).json()
        assert versions and versions[0]["number"] == 1 and versions[0]["signed_hash"], versions
        record = (await http.get(f"/api/v1/runs/{run_id}/record")).json()
        jsonschema.validate(record, (await http.get("/api/v1/records/schema")).json())
        v1 = (await http.get(f"/api/v1/runs/{run_id}/record/versions/1")).json()
        pdf = (await http.get(f"/api/v1/runs/{run_id}/record/versions/1/pdf")).content
    assert {s["key"] for s in record["steps"]} >= done
    assert all(e["review"] is not None for e in v1["exceptions"]), [e["key"] for e in v1["exceptions"]]
    release = next(s for s in record["steps"] if s["key"] == "release")
    assert {g["meaning"] for g in release["signatures"]} >= {"approved"}
    assert {d["id"] for d in record["deviations"]} == {d["id"] for d in devs}
    assert record["alarms"] and record["charts"] and record["audit"]
    assert record["audit_chain"]["seq"] >= v1["audit_chain"]["seq"] > 0
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) > 1 and "Page 1 of" in (reader.pages[0].extract_text() or "")
    [(name, [embedded])] = list(reader.attachments.items())
    assert name.endswith("-v1.json") and json.loads(embedded) == v1

