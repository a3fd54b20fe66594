"""Demo accounts: one user per role and an automation key, created (audited) on the demo's first start."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg

from app.auth import apikeys, users
from app.auth.principal import Principal, Role
from app.core.problems import Problem
from app.protocol import recipes, runs, schemas
from app.protocol.recipe import default_recipe

DEMO_PASSWORD = "demo-Culture-7"
DEMO_USERS: tuple[tuple[str, str, Role], ...] = (
    ("operator", "Olga Operator", Role.OPERATOR),
    ("supervisor", "Sam Supervisor", Role.SUPERVISOR),
    ("qa", "Quinn QA", Role.QA),
    ("admin", "Ada Admin", Role.ADMIN),
)
DEMO_ACTOR = Principal(kind="system", id=None, name="culturectl-demo", role=Role.ADMIN,
                       display_name="culturectl demo set-up")
KEY_FILE = "demo-automation.key"
DEMO_DIN = "W0000 26 000001 F"  # the demo graft's ISBT 128 DIN with its check character


@dataclass(frozen=True)
class DemoAccounts:
    users: tuple[tuple[str, Role], ...]
    password: str
    automation_key: str


def _read_key(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip() if path.exists() else ""


def _write_key(path: Path, secret: str) -> None:
    path.write_text(secret + "\n", encoding="utf-8")
    os.chmod(path, 0o600)


async def ensure_demo_accounts(conn: asyncpg.Connection, data_dir: Path) -> DemoAccounts:
    """Create the demo users and automation key unless they exist; the key's secret is kept in data_dir."""
    for username, display_name, role in DEMO_USERS:
        if await users.get_user_by_name(conn, username) is None:
            await users.create_user(conn, username=username, display_name=display_name, role=role,
                                       password=DEMO_PASSWORD, actor=DEMO_ACTOR, reason="demo set-up")
    key_path = data_dir / KEY_FILE
    secret = await asyncio.to_thread(_read_key, key_path)
    try:
        if secret:
            await apikeys.principal_for_api_key(conn, secret)
    except Problem:
        secret = ""
    if not secret:
        # The secret is shown once and only its hash is stored: a lost key file means a new key.
        n = await apikeys.count_named(conn, "demo-automation")
        _, secret = await apikeys.create_api_key(conn, name=f"demo-automation-{n + 1}", role=Role.AUTOMATION,
                                                  actor=DEMO_ACTOR, reason="demo set-up")
        await asyncio.to_thread(_write_key, key_path, secret)
    return DemoAccounts(tuple((u, r) for u, _, r in DEMO_USERS), DEMO_PASSWORD, secret)


async def ensure_demo_recipe(conn: asyncpg.Connection) -> int:
    """The id of the default recipe, released (signed 'approved' by the demo QA user) unless it is released."""

    recipe = default_recipe()
    with contextlib.suppress(Problem):
        return int((await recipes.find_recipe(conn, recipe.key, recipe.version))["id"])
    user = await users.get_user_by_name(conn, "qa")
    if user is None:
        raise LookupError("the demo QA user does not exist: call ensure_demo_accounts first")
    qa = Principal(kind="user", id=int(user["id"]), name="qa", role=Role.QA)
    view, _ = await recipes.release_recipe_as(conn, recipe, qa, DEMO_PASSWORD, comment="demo: default recipe")
    return int(view["id"])


@dataclass(frozen=True)
class DemoRun:
    id: int
    code: str
    t0: datetime


DEMO_T0_AFTER = timedelta(hours=6)  # the preparation steps (coating, cells, incubator check) fit before T0


async def active_demo_run(conn: asyncpg.Connection) -> DemoRun | None:
    """The newest planned, running or held run, if any."""
    row = await runs.newest_active(conn)
    return None if row is None else DemoRun(int(row["id"]), str(row["code"]), row["t0"] or row["planned_t0"])


async def create_demo_run(conn: asyncpg.Connection, now: datetime, t0: datetime) -> DemoRun:
    """A demo run on the demo devices, planned T0 `t0`: a child of 20 kg at 4e6 CD7+ cells/kg (8e7 cells; the
    simulated harvest of 2e7 seeded cells holds them with the overage)."""

    recipe = default_recipe()
    hsct = t0 + timedelta(hours=recipe.planning.infusion_after_t0_hours) - timedelta(
        days=recipe.planning.planned_infusion_day)
    body = schemas.RunCreate(recipe_key=recipe.key, donor_id="DEMO-DONOR-1", patient_id="DEMO-PATIENT-1",
                           patient_weight_kg=20, target_dose_per_kg=4.0e6, cell_source="mobilized", hsct_at=hsct,
                           planned_t0=t0, incubator="incubator-1", culture_system="culture-system-1",
                           vessels=[schemas.VesselIn(id="DEMO-BAG-1", type="BAG-DL4-500")],
                           transplant_type="t_cell_depleted", arm="paediatric", graft_din=DEMO_DIN,
                           reason="demo run")
    view = await runs.create_run(conn, body, principal=DEMO_ACTOR, now=now, client=None)
    return DemoRun(int(view["id"]), str(view["code"]), t0)
