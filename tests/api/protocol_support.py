"""Helpers of the protocol API tests: the default recipe released by a QA user, runs planned through
app.protocol.runs, and the calibration records the incubator check reads."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from app import db
from app.auth.principal import Principal, Role, cli_principal
from app.devices import calibration
from app.protocol import recipes, runs, schemas
from app.protocol.recipe import default_recipe
from tests.api.conftest import Service

RECIPE = default_recipe()
GRAFT_DIN = "W1234 26 123456 7"  # ISBT 128 DIN with its check character
VESSELS = [{"id": "V1", "type": "T75-DL4"}]  # 2e6 cells on 75 cm2: 2.7e4 cells/cm2

INPUTS: dict[str, dict[str, Any]] = {
    "coat_vessels": {"coat_hours": 18, "coat_temperature": 37.0},
    # calibration_valid and calibration_due are read from the calibration records of the run's incubator
    "incubator_ready": {"temperature": 37.0, "co2": 5.0, "humidity": 92, "trend_hours": 4},
    "receive_cells": {"donor_id": "D-100", "graft_din": GRAFT_DIN, "cell_source": "mobilized",
                      "viable_cd34_cells": 2.0e6, "viability": 95, "cd34_purity": 92},
    "seed": {"viable_cells_seeded": 2.0e6, "volume": 40},
    "feed_day3": {"viable_cells": 8.0e6, "viable_density": 5.0e5, "viability": 90},
    "feed_day5": {"viable_cells": 2.0e7, "viable_density": 1.0e6, "viability": 90},
    "mycoplasma_sample": {"sample_id": "MYC-1", "volume": 1.0},
    "harvest": {"total_viable_cells": 1.0e9, "viability": 90, "cd7_percent": 60, "cd34_percent": 5,
                "cd3_percent": 0.2},
    "formulate": {"cd7_cells_formulated": 2.8e8, "product_volume": 100, "qc_sample_volume": 2},
    "release": {"comment": "released"},
}
INCUBATOR = "incubator-1"
CALIBRATED = ("temperature", "co2", "humidity")  # the points incubator_ready reads (its channels' roles)
# One lot and expiry per reagent each step uses (the recipe's materials); all far from expiring.
LOTS: dict[str, dict[str, dict[str, str]]] = {
    s.key: {m: {"lot": f"{m.upper()}-1", "expiry": "2099-12-31"} for m in s.materials}
    for s in RECIPE.steps if s.materials}


async def ensure_recipe(service: Service) -> int:
    """The id of the default recipe, released (signed by a fresh QA user) when it is not yet."""
    conn = await db.connect(service.dsn)
    try:
        row = await conn.fetchrow("SELECT id FROM recipe WHERE key = $1 AND version = $2", RECIPE.key,
                                  RECIPE.version)
        if row is not None:
            return int(row["id"])
    finally:
        await conn.close()
    user_id, username, password = await service.create_user(Role.QA)
    conn = await db.connect(service.dsn)
    try:
        qa = Principal(kind="user", id=user_id, name=username, role=Role.QA)
        view, _ = await recipes.release_recipe_as(conn, RECIPE, qa, password)
        return int(view["id"])
    finally:
        await conn.close()


def run_body(hsct: datetime, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"recipe_key": RECIPE.key, "donor_id": "D-100", "patient_id": "P-200",
                            "patient_weight_kg": 70, "target_dose_per_kg": 4.0e6, "cell_source": "mobilized",
                            "hsct_at": hsct.isoformat(), "transplant_type": "t_cell_depleted", "arm": "adult",
                            "graft_din": GRAFT_DIN, "vessels": VESSELS}
    body.update(over)
    return body


async def make_run(service: Service, now: datetime, *, t0: datetime | None = None,
                   status: str | None = None) -> int:
    """A planned run (through app.protocol.runs, as the command line) whose T0 is `t0` (default: 10 h after `now`)."""
    await ensure_recipe(service)
    t0 = t0 or now + timedelta(hours=10)
    body = schemas.RunCreate.model_validate(run_body(t0 - timedelta(days=3), planned_t0=t0.isoformat()))
    conn = await db.connect(service.dsn)
    try:
        view = await runs.create_run(conn, body, principal=cli_principal(), now=now, client=None)
        if status is not None:
            await conn.execute("UPDATE culture_run SET status = $2, t0 = coalesce(t0, planned_t0) WHERE id = $1",
                               view["id"], status)
        return int(view["id"])
    finally:
        await conn.close()


async def open_deviation(service: Service, run_id: int) -> int:
    conn = await db.connect(service.dsn)
    try:
        return int(await conn.fetchval(
            "INSERT INTO deviation (run_id, rule, severity, description, opened_at, opened_by) "
            "VALUES ($1, 'test', 'deviation', 'made by a test', now(), 'test') RETURNING id", run_id))
    finally:
        await conn.close()


async def calibrate(service: Service, device: str = INCUBATOR, points: tuple[str, ...] = CALIBRATED, *,
                    calibrated_on: date = date(2026, 1, 2), due_on: date = date(2099, 12, 31),
                    certificate: str = "CAL-TEST") -> list[dict[str, Any]]:
    """A calibration record of each point (through app.devices.calibration, as the command line's principal)."""
    conn = await db.connect(service.dsn)
    try:
        return [await calibration.record(conn, device=device, point=p, calibrated_on=calibrated_on, due_on=due_on,
                                         certificate=f"{certificate}-{p}", performed_by="Metrology Ltd",
                                         reason="test calibration", principal=cli_principal(),
                                         now=datetime.now(UTC), today=calibrated_on, client=None) for p in points]
    finally:
        await conn.close()


async def ensure_calibrated(service: Service, device: str = INCUBATOR) -> None:
    """The incubator check's points of `device` have a record in force (recorded once, valid until 2099)."""
    conn = await db.connect(service.dsn)
    try:
        have = {r["point"] for r in await calibration.current(conn, device) if r["due_on"] >= date(2099, 1, 1)}
    finally:
        await conn.close()
    if missing := tuple(p for p in CALIBRATED if p not in have):
        await calibrate(service, device, missing)


_REVIEWERS: dict[int, tuple[dict[str, str], str]] = {}


async def review_exceptions(service: Service, run_id: int) -> list[str]:
    """QA reviews every exception of the run's batch record that is not reviewed (as the release needs); the keys
    reviewed."""
    if id(service) not in _REVIEWERS:
        _, username, password = await service.create_user(Role.QA)
        r = await service.login_as(username, password)
        assert r.status_code == 200, r.text
        _REVIEWERS[id(service)] = ({"Authorization": f"Bearer {r.json()['access_token']}"}, password)
    headers, password = _REVIEWERS[id(service)]
    r = await service.client.get(f"/api/v1/runs/{run_id}/record", headers=headers)
    assert r.status_code == 200, r.text
    done = [e["key"] for e in r.json()["exceptions"] if e["review"] is None]
    if done:
        rr = await service.client.post(f"/api/v1/runs/{run_id}/record/reviews", headers=headers, json={
            "keys": done, "comment": "reviewed in the test", "signature": {"meaning": "reviewed",
                                                                            "password": password}})
        assert rr.status_code == 200, rr.text
    return done


async def post_step(service: Service, headers: dict[str, str], run_id: int, key: str,
                    inputs: dict[str, Any] | None = None, review: bool = True, **extra: Any) -> Any:
    if key == "incubator_ready":
        await ensure_calibrated(service)  # the step reads its calibration inputs from the run's incubator
    if key == "release" and review:
        await review_exceptions(service, run_id)  # the release waits for QA's review of the batch record
    body = {"inputs": INPUTS[key] if inputs is None else inputs, **extra}
    if key in LOTS and "lots" not in body:
        body["lots"] = LOTS[key]
    return await service.client.post(f"/api/v1/runs/{run_id}/steps/{key}", json=body, headers=headers)


async def create_run_api(service: Service, headers: dict[str, str], t0: datetime, **over: Any) -> int:
    """A run planned through the API, on incubator-1 unless `over` says otherwise."""
    over.setdefault("incubator", INCUBATOR)
    r = await service.client.post("/api/v1/runs", json=run_body(t0 - timedelta(days=2), planned_t0=t0.isoformat(),
                                                                 **over), headers=headers)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])
