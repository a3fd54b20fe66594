"""Helpers of the protocol API tests: the default recipe released by a QA user, runs planned through
app.protocol.runs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from app import db
from app.auth.principal import Principal, Role, cli_principal
from app.protocol import recipes, runs, schemas
from app.protocol.recipe import default_recipe
from tests.api.conftest import Service

RECIPE = default_recipe()

INPUTS: dict[str, dict[str, Any]] = {
    "coat_vessels": {"dl4_lot": "DL4-1", "dl4_expiry": "2027-01-01", "medium_lot": "M-1", "cytokines_lot": "C-1",
                     "tnfa_lot": "T-1", "coat_hours": 18, "coat_temperature": 37.0},
    "incubator_ready": {"temperature": 37.0, "co2": 5.0, "humidity": 92, "trend_hours": 4,
                        "calibration_valid": True, "calibration_due": "2027-03-01"},
    "receive_cells": {"donor_id": "D-100", "cell_source": "mobilized", "viable_cd34_cells": 2.0e6,
                      "viability": 95, "cd34_purity": 92},
    "seed": {"viable_cells_seeded": 2.0e6, "seeding_density": 3.0e4, "volume": 40, "vessel_ids": "V1,V2"},
    "feed_day3": {"viable_cells": 8.0e6, "viable_density": 5.0e5, "viability": 90},
    "feed_day5": {"viable_cells": 2.0e7, "viable_density": 1.0e6, "viability": 90},
    "harvest": {"total_viable_cells": 5.0e8, "viability": 90, "cd7_percent": 60, "cd34_percent": 5,
                "cd3_percent": 0.2},
    "formulate": {"cd7_cells_formulated": 3.0e7, "endotoxin": 0.5, "gram_stain": "negative",
                  "mycoplasma": "negative"},
    "release": {"comment": "released"},
}


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
                            "hsct_at": hsct.isoformat()}
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


async def post_step(service: Service, headers: dict[str, str], run_id: int, key: str,
                    inputs: dict[str, Any] | None = None, **extra: Any) -> Any:
    body = {"inputs": INPUTS[key] if inputs is None else inputs, **extra}
    return await service.client.post(f"/api/v1/runs/{run_id}/steps/{key}", json=body, headers=headers)


async def create_run_api(service: Service, headers: dict[str, str], t0: datetime, **over: Any) -> int:
    r = await service.client.post("/api/v1/runs", json=run_body(t0 - timedelta(days=2), planned_t0=t0.isoformat(),
                                                                 **over), headers=headers)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])
