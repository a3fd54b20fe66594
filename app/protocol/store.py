"""Protocol persistence and services: released recipes, culture runs, recorded steps and deviations.

Every database access of the protocol goes through here; the routers only translate HTTP. Each state change
is one transaction with exactly one `audit.record` (a change that is also signed adds the signature's own
`signature.create` record, written by `app.signatures.sign_within` in the same transaction).

Run states: planned -> running (the recipe's t0_step is recorded; it sets T0) -> held -> running (QA, signed)
-> completed (the release step is recorded) or aborted (with a reason). Completed and aborted runs never change.

Decision: on a planned run, the t0 step and the steps it depends on (its predecessors, transitively: coating,
incubator check, cell receipt) may be posted, since the process does them before seeding; every other step
needs a running run (409 run_not_running).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from app.auth.principal import Principal, Role
from app.core.problems import Problem
from app.db import DBConnection
from app.protocol import acceptance, dose, planner
from app.protocol.recipe import Recipe, Step, default_recipe
from app.records import audit, signatures
from app.records.signatures import SignatureInput, Signer

RunStatus = Literal["planned", "running", "held", "completed", "aborted"]
CLOSED: frozenset[str] = frozenset({"completed", "aborted"})


# --------------------------------------------------------------------------------------------------
# Signable records of this module
# --------------------------------------------------------------------------------------------------


@signatures.register_signable("recipe", description="a released protocol recipe: key, version, content hash",
                              requires={"release": ("approved",)})
async def _load_recipe(conn: DBConnection, entity_id: str) -> Mapping[str, Any] | None:
    if not entity_id.isdigit():
        return None
    row = await conn.fetchrow("SELECT id, key, version, title, content_hash, released_at, released_by FROM recipe "
                              "WHERE id = $1", int(entity_id))
    return dict(row) if row is not None else None


@signatures.register_signable(
    "step_record", description="a recorded protocol step: run, step, inputs, time, actor, override",
    requires={s.key: s.signatures for s in default_recipe().steps if s.signatures})
async def _load_step_record(conn: DBConnection, entity_id: str) -> Mapping[str, Any] | None:
    if not entity_id.isdigit():
        return None
    row = await conn.fetchrow(
        "SELECT id, run_id, step_key, posted_at, inputs, actor_kind, actor_id, actor_name, override, "
        "override_reason, deviation_ids FROM step_record WHERE id = $1", int(entity_id))
    if row is None:
        return None
    out = dict(row)
    out["inputs"] = json.loads(out["inputs"])
    out["deviation_ids"] = list(out["deviation_ids"])
    return out


@signatures.register_signable("deviation", description="a deviation of a culture run: rule, status, closure",
                              requires={"close": ("approved",)})
async def _load_deviation(conn: DBConnection, entity_id: str) -> Mapping[str, Any] | None:
    if not entity_id.isdigit():
        return None
    row = await conn.fetchrow(
        "SELECT id, run_id, step_key, rule, severity, description, opened_at, opened_by, status, closed_at, "
        "closed_by, close_reason FROM deviation WHERE id = $1", int(entity_id))
    return dict(row) if row is not None else None


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _who(principal: Principal) -> str:
    return principal.label


def _json(value: Any) -> Any:
    """A JSON-ready copy (times as ISO text) for API bodies and jsonb columns."""
    return json.loads(audit.to_json_text(value))


def _problem_404(kind: str, what: str) -> Problem:
    return Problem(404, f"{kind}-not-found", "Not found", what)


# --------------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------------

RECIPE_COLUMNS = "id, key, version, title, content, content_hash, released_at, released_by"
_RECIPES: dict[int, Recipe] = {}


def recipe_view(row: Mapping[str, Any], *, with_content: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {k: row[k] for k in ("id", "key", "version", "title", "content_hash", "released_at",
                                               "released_by")}
    out["steps"] = [s["key"] for s in json.loads(row["content"])["steps"]]
    if with_content:
        out["content"] = json.loads(row["content"])
    return dict(_json(out))


def recipe_of(row: Mapping[str, Any]) -> Recipe:
    """The validated recipe of a recipe row (cached by id: a released recipe never changes)."""
    rid = int(row["id"])
    if rid not in _RECIPES:
        _RECIPES[rid] = Recipe.model_validate(json.loads(row["content"]))
    return _RECIPES[rid]


async def recipe_row(conn: DBConnection, recipe_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {RECIPE_COLUMNS} FROM recipe WHERE id = $1", recipe_id)
    if row is None:
        raise _problem_404("recipe", f"there is no recipe with id {recipe_id}")
    return row


async def find_recipe(conn: DBConnection, key: str, version: int | None = None) -> asyncpg.Record:
    """A released recipe by key and version (the newest version when None); 404 names what was asked."""
    if version is None:
        row = await conn.fetchrow(f"SELECT {RECIPE_COLUMNS} FROM recipe WHERE key = $1 ORDER BY version DESC "
                                  "LIMIT 1", key)
    else:
        row = await conn.fetchrow(f"SELECT {RECIPE_COLUMNS} FROM recipe WHERE key = $1 AND version = $2",
                                  key, version)
    if row is None:
        v = "any version" if version is None else f"version {version}"
        raise _problem_404("recipe", f"recipe {key!r} {v} is not released")
    return row


async def list_recipes(conn: DBConnection) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {RECIPE_COLUMNS} FROM recipe ORDER BY key, version")
    return [recipe_view(r) for r in rows]


async def release_recipe(conn: DBConnection, recipe: Recipe, *, principal: Principal, signer: Signer,
                         signature: SignatureInput, client: str | None) -> tuple[dict[str, Any], bool]:
    """Release `recipe`, signed: (view, True) when released now; (view, False) when this exact content is
    already released; 409 rule recipe_version_conflict when key + version is released with other content."""
    if signature.meaning != "approved":
        raise Problem(422, "signature-meaning", "Wrong signature meaning",
                      f"a recipe release is signed with the meaning 'approved', not {signature.meaning!r}",
                      rule="signature_meaning")
    async with conn.transaction():
        # No row lock (the service role may not UPDATE recipe, and FOR UPDATE needs that): the unique key decides
        # between concurrent releases (ON CONFLICT DO NOTHING), then the existing row is compared.
        row = await conn.fetchrow(
            f"INSERT INTO recipe (key, version, title, content, content_hash, released_by) "
            f"VALUES ($1, $2, $3, $4::jsonb, $5, $6) ON CONFLICT (key, version) DO NOTHING RETURNING {RECIPE_COLUMNS}",
            recipe.key, recipe.version, recipe.title, json.dumps(recipe.model_dump(mode="json")),
            recipe.content_hash, _who(principal))
        if row is None:
            existing = await conn.fetchrow(f"SELECT {RECIPE_COLUMNS} FROM recipe WHERE key = $1 AND version = $2",
                                           recipe.key, recipe.version)
            assert existing is not None
            if existing["content_hash"] != recipe.content_hash:
                raise Problem(409, "recipe-version-conflict", "Recipe version already released",
                              f"recipe {recipe.key!r} version {recipe.version} is already released with content "
                              f"hash {existing['content_hash']}, not {recipe.content_hash}: a released version "
                              "never changes; release the change as a new version", rule="recipe_version_conflict",
                              released_hash=existing["content_hash"], posted_hash=recipe.content_hash)
            return recipe_view(existing, with_content=True), False
        assert row is not None
        await audit.record(conn, actor=principal, action="recipe.release", entity_type="recipe", entity_id=row["id"],
                           old=None, new={"key": recipe.key, "version": recipe.version,
                                          "content_hash": recipe.content_hash, "title": recipe.title},
                           reason=signature.comment or "recipe released", client=client)
        await signatures.sign_within(conn, signer, signature, entity_type="recipe", entity_id=str(row["id"]),
                                     client=client)
        return recipe_view(row, with_content=True), True


async def release_recipe_as(conn: DBConnection, recipe: Recipe, principal: Principal, password: str, *,
                            comment: str | None = None, client: str | None = None) -> tuple[dict[str, Any], bool]:
    """Release a recipe signed by a QA (or admin) user with their password: the CLI, the demo and tests."""
    if principal.role not in (Role.QA, Role.ADMIN):
        raise Problem(403, "forbidden", "Forbidden", f"a recipe is released by QA or admin, not {principal.role.value}")
    sig = SignatureInput(meaning="approved", password=password, comment=comment)
    signer = await signatures.authenticate_signer(conn, principal, sig, entity_type="recipe",
                                                  entity_id=f"{recipe.key}/{recipe.version}", client=client)
    return await release_recipe(conn, recipe, principal=principal, signer=signer, signature=sig, client=client)


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


class RunCreate(BaseModel):
    """A culture run to plan from a released recipe."""

    model_config = ConfigDict(extra="forbid")

    recipe_key: str = Field(min_length=1, max_length=64, description="a released recipe's key")
    recipe_version: int | None = Field(default=None, ge=1, description="unset: the newest released version")
    code: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                             description="the run's code; unset: generated")
    donor_id: str = Field(min_length=1, max_length=100)
    patient_id: str = Field(min_length=1, max_length=100)
    patient_weight_kg: float = Field(gt=0, allow_inf_nan=False, description="kg; the recipe gives the range")
    target_dose_per_kg: float = Field(gt=0, allow_inf_nan=False,
                                      description="CD7+ cells/kg, one of the recipe's allowed doses")
    cell_source: Literal["mobilized", "cord"]
    hsct_at: AwareDatetime = Field(description="planned transplant (HSCT) time, with a UTC offset")
    planned_t0: AwareDatetime | None = Field(default=None, description="unset: proposed from the HSCT")
    incubator: str | None = Field(default=None, max_length=100, description="incubator device name")
    culture_system: str | None = Field(default=None, max_length=100, description="culture-system device name")
    vessel_ids: list[str] = Field(default_factory=list, max_length=100)
    reason: str | None = Field(default=None, max_length=2000)


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="why (recorded in the audit trail)")


class SignedReason(Reason):
    signature: SignatureInput = Field(description="the signer's password again, meaning 'approved'")


RUN_COLUMNS = (
    "r.id, r.code, r.status, r.recipe_id, r.donor_id, r.patient_id, r.patient_weight_kg, r.target_dose_per_kg, "
    "r.cell_source, r.hsct_at, r.planned_t0, r.t0, r.incubator_device_id, r.culture_system_device_id, "
    "r.vessel_ids, r.hold_reason, r.abort_reason, r.created_by, r.created_at, r.ended_at, "
    "inc.name AS incubator, cs.name AS culture_system"
)
RUN_FROM = ("culture_run r LEFT JOIN device inc ON inc.id = r.incubator_device_id "
            "LEFT JOIN device cs ON cs.id = r.culture_system_device_id")


async def _device_id(conn: DBConnection, name: str | None, kind: str) -> int | None:
    if name is None:
        return None
    row = await conn.fetchrow("SELECT id, kind FROM device WHERE name = $1", name)
    if row is None or row["kind"] != kind:
        known = [r["name"] for r in await conn.fetch("SELECT name FROM device WHERE kind = $1 ORDER BY name", kind)]
        raise Problem(422, "unknown-device", "Unknown device",
                      f"{name!r} is not a registered {kind} device; known: {', '.join(known) or 'none'}",
                      rule="unknown_device")
    return int(row["id"])


def _invalid(rule: str, detail: str, field: str) -> Problem:
    return Problem(422, "validation-error", "Request is not valid", detail, rule=rule,
                   errors=[{"loc": ["body", field], "msg": detail, "type": rule}])


async def create_run(conn: DBConnection, body: RunCreate, *, principal: Principal, now: datetime,
                     client: str | None) -> dict[str, Any]:
    """Plan a run: checks the dose and weight against the recipe, proposes T0 from the HSCT, warns about infusion."""
    rrow = await find_recipe(conn, body.recipe_key, body.recipe_version)
    recipe = recipe_of(rrow)
    try:
        target = dose.check_target_dose(recipe, body.target_dose_per_kg)
    except ValueError as exc:
        raise _invalid("dose_not_allowed", str(exc), "target_dose_per_kg") from None
    try:
        dose.check_weight(recipe, body.patient_weight_kg)
    except ValueError as exc:
        raise _invalid("weight_out_of_range", str(exc), "patient_weight_kg") from None
    incubator = await _device_id(conn, body.incubator, "incubator")
    culture = await _device_id(conn, body.culture_system, "culture-system")
    proposal = planner.propose_t0(recipe, body.hsct_at)
    planned_t0 = body.planned_t0 or proposal.t0
    code = body.code or f"RUN-{now:%Y%m%d}-{uuid.uuid4().hex[:6].upper()}"
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM culture_run WHERE code = $1", code):
            raise Problem(409, "run-code-taken", "Run code taken", f"a run with code {code!r} exists",
                          rule="run_code_taken")
        run_id = await conn.fetchval(
            "INSERT INTO culture_run (code, status, recipe_id, donor_id, patient_id, patient_weight_kg, "
            "target_dose_per_kg, cell_source, hsct_at, planned_t0, incubator_device_id, culture_system_device_id, "
            "vessel_ids, created_by) VALUES ($1, 'planned', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
            "RETURNING id",
            code, rrow["id"], body.donor_id, body.patient_id, body.patient_weight_kg, target, body.cell_source,
            body.hsct_at, planned_t0, incubator, culture, body.vessel_ids, _who(principal))
        await audit.record(conn, actor=principal, action="run.create", entity_type="culture_run", entity_id=run_id,
                           old=None, new={**body.model_dump(mode="json", exclude={"reason"}), "code": code,
                                          "planned_t0": planned_t0, "recipe_id": rrow["id"], "status": "planned"},
                           reason=body.reason, client=client)
    view = await run_view(conn, int(run_id), now)
    view["t0_proposal"] = _json(asdict(proposal))
    return view


async def run_row(conn: DBConnection, run_id: int, *, lock: bool = False) -> asyncpg.Record:
    lock_sql = " FOR UPDATE OF r" if lock else ""
    row = await conn.fetchrow(f"SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE r.id = $1{lock_sql}", run_id)
    if row is None:
        raise _problem_404("run", f"there is no culture run with id {run_id}")
    return row


async def _records(conn: DBConnection, run_id: int) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch("SELECT id, step_key, posted_at, inputs, actor_name, override, override_reason, "
                            "deviation_ids, dose FROM step_record WHERE run_id = $1 ORDER BY posted_at, id", run_id)
    return {r["step_key"]: r for r in rows}


def _plan_records(records: Mapping[str, asyncpg.Record]) -> dict[str, planner.StepRecord]:
    return {k: planner.StepRecord(r["posted_at"], bool(r["override"])) for k, r in records.items()}


def _t0(run: Mapping[str, Any], proposal_from: Recipe) -> datetime:
    t0 = run["t0"] or run["planned_t0"]
    if t0 is None:  # a run made before recipes (no plan): plan from its creation
        t0 = run["created_at"]
    assert isinstance(t0, datetime)
    return t0


async def run_view(conn: DBConnection, run_id: int, now: datetime) -> dict[str, Any]:
    """A run with its schedule (each step's window, status, done time), the next due step, dose and deviations."""
    run = await run_row(conn, run_id)
    out: dict[str, Any] = {k: run[k] for k in (
        "id", "code", "status", "donor_id", "patient_id", "patient_weight_kg", "target_dose_per_kg", "cell_source",
        "hsct_at", "planned_t0", "t0", "incubator", "culture_system", "hold_reason", "abort_reason", "created_by",
        "created_at", "ended_at")}
    out["vessel_ids"] = list(run["vessel_ids"] or [])
    out["now"] = now
    n_open = await conn.fetchval("SELECT count(*) FROM deviation WHERE run_id = $1 AND status = 'open'", run_id)
    out["open_deviations"] = int(n_open or 0)
    if run["recipe_id"] is None:
        out.update(recipe=None, schedule=[], next_due=None, dose=None, infusion=None)
        return dict(_json(out))
    rrow = await recipe_row(conn, int(run["recipe_id"]))
    recipe = recipe_of(rrow)
    out["recipe"] = {"id": rrow["id"], "key": rrow["key"], "version": rrow["version"],
                     "content_hash": rrow["content_hash"]}
    records = await _records(conn, run_id)
    t0 = _t0(run, recipe)
    plan = planner.plan(recipe, t0, now, _plan_records(records))
    titles = {s.key: s.title for s in recipe.steps}
    out["schedule"] = [
        {"key": p.key, "title": titles[p.key], "status": p.status, "window": p.window.as_dict(),
         "optional": p.optional, "predecessors": list(p.predecessors), "blocked_by": list(p.blocked_by),
         "done_at": p.done_at, "overridden": p.overridden,
         "step_record_id": records[p.key]["id"] if p.key in records else None}
        for p in plan]
    nxt = planner.next_due(plan)
    out["next_due"] = None if nxt is None else {"key": nxt.key, "status": nxt.status, "window": nxt.window.as_dict()}
    out["dose"] = _dose_view(recipe, run, records)
    hsct = run["hsct_at"]
    if hsct is not None:
        warning = planner.infusion_check(recipe, t0, hsct)
        at = planner.infusion_at(recipe, t0)
        out["infusion"] = {"at": at, "hsct_day": (at - hsct).total_seconds() / 86400,
                           "window_days": list(recipe.planning.infusion_window_days),
                           "warning": None if warning is None else warning.message}
    else:
        out["infusion"] = None
    return dict(_json(out))


def _dose_view(recipe: Recipe, run: Mapping[str, Any], records: Mapping[str, asyncpg.Record]) -> dict[str, Any] | None:
    weight, target = run["patient_weight_kg"], run["target_dose_per_kg"]
    if weight is None or target is None:
        return None
    out: dict[str, Any] = {"required_cd7_cells": dose.required_cd7(recipe, target, weight),
                           "target_per_kg": target, "seed": None, "day3": None, "achieved": None}
    for rec in records.values():
        if rec["dose"] is not None:
            out.update(json.loads(rec["dose"]))
    return out


async def _set_status(conn: DBConnection, run_id: int, *, principal: Principal, client: str | None, action: str,
                      allowed_from: Sequence[str], to: RunStatus, reason: str,
                      signer: Signer | None = None, signature: SignatureInput | None = None,
                      now: datetime) -> dict[str, Any]:
    async with conn.transaction():
        run = await run_row(conn, run_id, lock=True)
        if run["status"] not in allowed_from:
            raise Problem(409, "run-state", "Run state does not allow this",
                          f"run {run['code']} is {run['status']}: {action.split('.')[1]} needs a run that is "
                          f"{' or '.join(allowed_from)}" + (" (completed and aborted runs never change)"
                                                            if run["status"] in CLOSED else ""),
                          rule="run_not_running" if run["status"] in CLOSED else "run_state", run_status=run["status"])
        sets = {"held": "hold_reason = $3", "aborted": "abort_reason = $3, ended_at = $4",
                "running": "hold_reason = NULL"}[to]
        args: list[Any] = [run_id, to]
        if "$3" in sets:
            args.append(reason)
        if "$4" in sets:
            args.append(now)
        await conn.execute(f"UPDATE culture_run SET status = $2, {sets} WHERE id = $1", *args)
        await audit.record(conn, actor=principal, action=action, entity_type="culture_run", entity_id=run_id,
                           old={"status": run["status"]}, new={"status": to}, reason=reason, client=client)
        if signer is not None and signature is not None:
            await signatures.sign_within(conn, signer, signature, entity_type="culture_run", entity_id=str(run_id),
                                         client=client)
    return await run_view(conn, run_id, now)


async def hold_run(conn: DBConnection, run_id: int, reason: str, *, principal: Principal, now: datetime,
                   client: str | None) -> dict[str, Any]:
    return await _set_status(conn, run_id, principal=principal, client=client, action="run.hold",
                             allowed_from=("running",), to="held", reason=reason, now=now)


async def resume_run(conn: DBConnection, run_id: int, body: SignedReason, *, principal: Principal, signer: Signer,
                     now: datetime, client: str | None) -> dict[str, Any]:
    _require_meaning(body.signature, "approved", "resuming a held run")
    return await _set_status(conn, run_id, principal=principal, client=client, action="run.resume",
                             allowed_from=("held",), to="running", reason=body.reason, signer=signer,
                             signature=body.signature, now=now)


async def abort_run(conn: DBConnection, run_id: int, reason: str, *, principal: Principal, now: datetime,
                    client: str | None) -> dict[str, Any]:
    return await _set_status(conn, run_id, principal=principal, client=client, action="run.abort",
                             allowed_from=("planned", "running", "held"), to="aborted", reason=reason, now=now)


async def list_runs(conn: DBConnection, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {RUN_COLUMNS}, rc.key AS recipe_key, rc.version AS recipe_version, "
        "(SELECT count(*) FROM deviation d WHERE d.run_id = r.id AND d.status = 'open') AS open_deviations "
        f"FROM {RUN_FROM} LEFT JOIN recipe rc ON rc.id = r.recipe_id "
        "WHERE ($1::text IS NULL OR r.status = $1) ORDER BY r.id DESC LIMIT $2", status, limit)
    keys = ("id", "code", "status", "recipe_key", "recipe_version", "donor_id", "patient_id", "cell_source",
            "planned_t0", "t0", "hsct_at", "incubator", "culture_system", "created_by", "created_at", "ended_at",
            "open_deviations")
    return [_json({k: r[k] for k in keys}) for r in rows]


def _require_meaning(signature: SignatureInput, meaning: str, what: str) -> None:
    if signature.meaning != meaning:
        raise Problem(422, "signature-meaning", "Wrong signature meaning",
                      f"{what} is signed with the meaning {meaning!r}, not {signature.meaning!r}",
                      rule="signature_meaning")


# --------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------


class StepPost(BaseModel):
    """A step's recorded values, an optional supervisor override, and the performer's signature."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict,
                                   description="the step's inputs: a value, or {value, unit} with the recipe's unit")
    override: bool = Field(default=False, description="supervisor only: accept an out-of-window step (deviation)")
    override_reason: str | None = Field(default=None, min_length=1, max_length=2000)
    signature: SignatureInput | None = Field(default=None,
                                             description="the performer signs with one of the step's meanings")

    @model_validator(mode="after")
    def _reason(self) -> StepPost:
        if self.override and not (self.override_reason or "").strip():
            raise ValueError("override needs override_reason")
        if self.override_reason is not None and not self.override:
            raise ValueError("override_reason is only given with override: true")
        return self


def release_step(recipe: Recipe) -> Step:
    """The step whose record completes the run: the one of operation 'release', else the last one."""
    return next((s for s in recipe.steps if s.operation == "release"), recipe.steps[-1])


def _pre_t0_steps(recipe: Recipe) -> set[str]:
    """The t0 step and every step it depends on (transitively)."""
    out: set[str] = set()
    todo = [recipe.t0_step]
    while todo:
        key = todo.pop()
        if key in out:
            continue
        out.add(key)
        todo.extend(recipe.step(key).predecessors)
    return out


@dataclass(frozen=True, slots=True)
class _Checked:
    run: asyncpg.Record
    recipe: Recipe
    step: Step
    values: dict[str, acceptance.Value]
    decision: planner.Decision
    records: dict[str, asyncpg.Record]
    t0: datetime


async def _check_step(conn: DBConnection, run_id: int, step_key: str, body: StepPost, principal: Principal,
                      now: datetime, *, lock: bool) -> _Checked:
    """Every check of a step post, in order: run state, inputs, the planner's rules, signature rules."""
    run = await run_row(conn, run_id, lock=lock)
    if run["recipe_id"] is None:
        raise Problem(409, "run-not-running", "Run has no recipe", f"run {run['code']} was not planned from a recipe",
                      rule="run_not_running", run_status=run["status"])
    recipe = recipe_of(await recipe_row(conn, int(run["recipe_id"])))
    try:
        step = recipe.step(step_key)
    except KeyError:
        raise _problem_404("step", f"{recipe.key} v{recipe.version} has no step {step_key!r}; steps: "
                           f"{', '.join(recipe.step_keys)}") from None
    status = run["status"]
    if not (status == "running" or (status == "planned" and step_key in _pre_t0_steps(recipe))):
        why = {"planned": f"the run starts with the {recipe.t0_step} step (T0); only it and its preparation steps "
                          "may be posted before",
               "held": "the run is held: QA resumes it (POST /api/v1/runs/{id}/resume)",
               "completed": "a completed run never changes", "aborted": "an aborted run never changes"}[status]
        raise Problem(409, "run-not-running", "Run is not running", f"{step_key}: run {run['code']} is {status}; {why}",
                      rule="run_not_running", run_status=status, step=step_key)
    # The release is QA's decision, so QA (not a supervisor) records a late release, with its deviation.
    overrider = Role.QA if step_key == release_step(recipe).key else Role.SUPERVISOR
    if body.override and principal.role is not overrider:
        raise Problem(403, "override-needs-supervisor", f"Override needs {overrider.value}",
                      f"only {overrider.value} may override the window of {step_key}; {principal.label} is "
                      f"{principal.role.value}", rule="override_needs_supervisor")
    values, errors = acceptance.validate_inputs(step, body.inputs)
    if errors:
        first = errors[0]
        raise Problem(422, "step-inputs", "Step inputs are not valid", first.message, rule="invalid_inputs",
                      errors=[_json(e.as_dict()) for e in errors])
    records = await _records(conn, run_id)
    t0 = _t0(run, recipe)
    plan = planner.plan(recipe, t0, now, _plan_records(records))
    decision = planner.check_step_post(recipe, plan, step_key, now, body.override)
    if not decision.accepted:
        d = decision.as_dict()
        raise Problem(409, "step-refused", "Step refused", decision.message, rule=decision.rule,
                      step=step_key, window=d["window"], now=d["now"], step_status=d["status"],
                      overridable=d["overridable"], how_to_override=d["how_to_override"], blocked_by=d["blocked_by"])
    if body.signature is not None and body.signature.meaning not in step.signatures:
        raise Problem(422, "signature-meaning", "Wrong signature meaning",
                      f"{step_key} is signed with {', '.join(step.signatures) or 'no signature'}, not "
                      f"{body.signature.meaning!r}", rule="signature_meaning")
    if step.key == release_step(recipe).key:
        if principal.role is not Role.QA:
            raise Problem(403, "release-needs-qa", "Release needs QA",
                          f"{step_key} is QA's decision; {principal.label} is {principal.role.value}",
                          rule="release_needs_qa")
        if "approved" in step.signatures and (body.signature is None or body.signature.meaning != "approved"):
            raise Problem(422, "signature-required", "Signature required",
                          f"{step_key} is signed by QA in the same request: signature with meaning 'approved'",
                          rule="signature_required")
        open_ids = [int(r["id"]) for r in await conn.fetch(
            "SELECT id FROM deviation WHERE run_id = $1 AND status = 'open' ORDER BY id", run_id)]
        if open_ids:
            raise Problem(409, "open-deviations", "Open deviations hold release",
                          f"{step_key}: run {run['code']} has open deviations {', '.join(map(str, open_ids))}; "
                          "QA closes them before release", rule="open_deviations", deviation_ids=open_ids)
        unsigned = await missing_step_signatures(conn, recipe, records)
        if unsigned:
            listed = "; ".join(f"{k}: {', '.join(m)}" for k, m in unsigned.items())
            raise Problem(409, "signatures-missing", "Step signatures missing",
                          f"{step_key}: run {run['code']} has recorded steps without the signatures the recipe "
                          f"requires ({listed}); sign them with POST /api/v1/signatures (entity_type step_record)",
                          rule="signatures_missing", missing=unsigned)
    return _Checked(run, recipe, step, values, decision, records, t0)


async def missing_step_signatures(conn: DBConnection, recipe: Recipe,
                                  records: Mapping[str, asyncpg.Record]) -> dict[str, list[str]]:
    """Per recorded step, the meanings its recipe step requires that have no valid signature on the record now."""
    release = release_step(recipe).key
    out: dict[str, list[str]] = {}
    for key, rec in records.items():
        required = recipe.step(key).signatures
        if key == release or not required:
            continue
        have = {s.meaning for s in await signatures.list_signatures(conn, "step_record", str(rec["id"])) if s.valid}
        missing: list[str] = [m for m in required if m not in have]
        if missing:
            out[key] = missing
    return out


def _dose_for(c: _Checked, now: datetime) -> tuple[dict[str, Any] | None, list[tuple[str, str, dict[str, Any]]]]:
    """(the dose facts this step adds, deviations they call for as (rule, description, facts))."""
    run, recipe, step, values = c.run, c.recipe, c.step, c.values
    weight, target, source = run["patient_weight_kg"], run["target_dose_per_kg"], run["cell_source"]
    if weight is None or target is None or source is None:
        return None, []
    required = dose.required_cd7(recipe, target, weight)
    if step.key == recipe.t0_step and "viable_cells_seeded" in values:
        band = dose.projection_at_seed(recipe, source, float(values["viable_cells_seeded"]), required)
        return {"seed": {**_json(asdict(band)), "below_target": band.alert}}, []
    if step.key == "feed_day3" and "viable_cells" in values:
        seed = c.records.get(recipe.t0_step)
        seeded = json.loads(seed["inputs"]).get("viable_cells_seeded") if seed is not None else None
        hours = (now - c.t0).total_seconds() / 3600
        if seeded and hours > 0:
            band = dose.projection_at_day3(recipe, source, float(seeded), float(values["viable_cells"]), hours,
                                           required)
            return {"day3": {**_json(asdict(band)), "below_target": band.alert}}, []
        return None, []
    if step.key == "harvest" and "total_viable_cells" in values and "cd7_percent" in values:
        cells = dose.harvest_cd7(float(values["total_viable_cells"]), float(values["cd7_percent"]))
        result = dose.achieved_dose(recipe, cells, weight, target)
        facts = _json(asdict(result))
        devs = [] if result.within_acceptance else [("dose_out_of_range", result.message, facts)]
        return {"achieved": facts}, devs
    return None, []


async def _open_deviation(conn: DBConnection, run_id: int, step_key: str | None, rule: str, severity: str,
                          description: str, facts: Any, now: datetime, principal: Principal) -> int:
    return int(await conn.fetchval(
        "INSERT INTO deviation (run_id, step_key, rule, severity, description, facts, opened_at, opened_by) "
        "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8) RETURNING id",
        run_id, step_key, rule, severity, description, audit.to_json_text(facts), now, _who(principal)))


async def post_step(conn: DBConnection, run_id: int, step_key: str, body: StepPost, *, principal: Principal,
                    now: datetime, client: str | None, threshold: int,
                    idempotency: tuple[str, str] | None = None) -> dict[str, Any]:
    """Record a step (see the module docstring and the README); returns the 201 body.

    `idempotency` is (key, body hash): the answer is stored with the record, in the same transaction.
    """
    await _check_step(conn, run_id, step_key, body, principal, now, lock=False)  # refusals before the password
    signer: Signer | None = None
    if body.signature is not None:
        signer = await signatures.authenticate_signer(conn, principal, body.signature, entity_type="step_record",
                                                      entity_id=f"{run_id}/{step_key}", client=client,
                                                      threshold=threshold)
    async with conn.transaction():
        c = await _check_step(conn, run_id, step_key, body, principal, now, lock=True)
        recipe, step = c.recipe, c.step
        ctx = {"donor_id": c.run["donor_id"], "patient_id": c.run["patient_id"], "cell_source": c.run["cell_source"]}
        failures = acceptance.evaluate_limits(step, c.values, ctx)
        dose_facts, dose_devs = _dose_for(c, now)
        pending: list[tuple[str, str, str, Any]] = []  # rule, severity, description, facts
        if c.decision.outcome == "accept_with_deviation":
            pending.append((str(c.decision.rule), "deviation",
                            f"{c.decision.message}; reason: {body.override_reason}", c.decision.as_dict()))
        pending += [("acceptance_limit", f.severity, f.message, f.as_dict()) for f in failures
                    if f.severity == "deviation"]
        pending += [(rule, "deviation", text, facts) for rule, text, facts in dose_devs]
        dev_ids = [await _open_deviation(conn, run_id, step_key, rule, sev, text, facts, now, principal)
                   for rule, sev, text, facts in pending]
        rec = await conn.fetchrow(
            "INSERT INTO step_record (run_id, step_key, posted_at, inputs, actor_kind, actor_id, actor_name, "
            "actor_role, override, override_reason, deviation_ids, dose) "
            "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12::jsonb) RETURNING id, posted_at",
            run_id, step_key, now, audit.to_json_text(c.values), principal.kind, principal.id, principal.name,
            principal.role.value, body.override, body.override_reason, dev_ids,
            None if dose_facts is None else audit.to_json_text(dose_facts))
        assert rec is not None
        old_status = c.run["status"]
        new_status = old_status
        if step_key == recipe.t0_step:
            new_status = "running"
            await conn.execute("UPDATE culture_run SET status = 'running', t0 = $2 WHERE id = $1", run_id, now)
        elif step_key == release_step(recipe).key:
            new_status = "completed"
            await conn.execute("UPDATE culture_run SET status = 'completed', ended_at = $2 WHERE id = $1", run_id, now)
        alerts = [f.as_dict() for f in failures if f.severity == "alert"]
        new: dict[str, Any] = {"run_id": run_id, "step_key": step_key, "posted_at": now, "inputs": c.values,
                               "override": body.override, "deviation_ids": dev_ids, "alerts": alerts,
                               "dose": dose_facts}
        if new_status != old_status:
            new["run_status"] = {"from": old_status, "to": new_status}
        await audit.record(conn, actor=principal, action="step.record", entity_type="step_record", entity_id=rec["id"],
                           old=None, new=new, reason=body.override_reason, client=client)
        signed = None
        if signer is not None and body.signature is not None:
            signed = await signatures.sign_within(conn, signer, body.signature, entity_type="step_record",
                                                  entity_id=str(rec["id"]), client=client)
        deviations = [await deviation_view(conn, d, comments=False) for d in dev_ids]
        out = _json({
            "step_record": {"id": rec["id"], "run_id": run_id, "step_key": step_key, "posted_at": rec["posted_at"],
                            "inputs": c.values, "actor": principal.label, "override": body.override,
                            "override_reason": body.override_reason, "deviation_ids": dev_ids},
            "run": {"id": run_id, "status": new_status},
            "decision": c.decision.as_dict(),
            "deviations": deviations, "alerts": alerts, "dose": dose_facts,
            "signature": None if signed is None else signed.model_dump(mode="json"),
            "signatures_required": list(step.signatures),
        })
        if idempotency is not None:
            await conn.execute(
                "INSERT INTO idempotency_key (principal, key, method, path, body_hash, status, response) "
                "VALUES ($1, $2, 'POST', $3, $4, 201, $5::jsonb)",
                principal.label, idempotency[0], f"/api/v1/runs/{run_id}/steps/{step_key}", idempotency[1],
                json.dumps(out))
        return dict(out)


async def idempotent_reply(conn: DBConnection, principal: Principal, key: str, path: str,
                           body_hash: str) -> tuple[int, Any] | None:
    """The stored answer for this key (same request), None when unseen; 422 when the key was used otherwise."""
    row = await conn.fetchrow("SELECT path, body_hash, status, response FROM idempotency_key "
                              "WHERE principal = $1 AND key = $2", principal.label, key)
    if row is None:
        return None
    if row["path"] != path or row["body_hash"] != body_hash:
        raise Problem(422, "idempotency-key-reused", "Idempotency-Key reused",
                      f"Idempotency-Key {key!r} was used for another request ({row['path']}, another body); "
                      "use a new key for a new request", rule="idempotency_key_mismatch", idempotency_key=key)
    return int(row["status"]), json.loads(row["response"])


# --------------------------------------------------------------------------------------------------
# Deviations
# --------------------------------------------------------------------------------------------------

DEVIATION_COLUMNS = ("id, run_id, step_key, rule, severity, description, facts, opened_at, opened_by, status, "
                     "closed_at, closed_by, close_reason")


class CommentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=5000)


async def deviation_view(conn: DBConnection, deviation_id: int, *, comments: bool = True) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT {DEVIATION_COLUMNS} FROM deviation WHERE id = $1", deviation_id)
    if row is None:
        raise _problem_404("deviation", f"there is no deviation with id {deviation_id}")
    out: dict[str, Any] = dict(row)
    out["facts"] = None if row["facts"] is None else json.loads(row["facts"])
    if comments:
        out["comments"] = [dict(c) for c in await conn.fetch(
            "SELECT id, at, author, text FROM deviation_comment WHERE deviation_id = $1 ORDER BY id", deviation_id)]
    return dict(_json(out))


async def list_deviations(conn: DBConnection, run_id: int | None, status: str | None,
                          limit: int = 200) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {DEVIATION_COLUMNS} FROM deviation WHERE ($1::bigint IS NULL OR run_id = $1) "
        "AND ($2::text IS NULL OR status = $2) ORDER BY id LIMIT $3", run_id, status, limit)
    out = []
    for r in rows:
        d = dict(r)
        d["facts"] = None if r["facts"] is None else json.loads(r["facts"])
        out.append(_json(d))
    return out


async def comment_deviation(conn: DBConnection, deviation_id: int, text: str, *, principal: Principal,
                            client: str | None) -> dict[str, Any]:
    async with conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM deviation WHERE id = $1", deviation_id):
            raise _problem_404("deviation", f"there is no deviation with id {deviation_id}")
        cid = await conn.fetchval("INSERT INTO deviation_comment (deviation_id, author, text) VALUES ($1, $2, $3) "
                                  "RETURNING id", deviation_id, _who(principal), text)
        await audit.record(conn, actor=principal, action="deviation.comment", entity_type="deviation",
                           entity_id=deviation_id, old=None, new={"comment_id": cid, "text": text}, reason=None,
                           client=client)
    return await deviation_view(conn, deviation_id)


async def close_deviation(conn: DBConnection, deviation_id: int, body: SignedReason, *, principal: Principal,
                          signer: Signer, now: datetime, client: str | None) -> dict[str, Any]:
    _require_meaning(body.signature, "approved", "closing a deviation")
    async with conn.transaction():
        row = await conn.fetchrow("SELECT status FROM deviation WHERE id = $1 FOR UPDATE", deviation_id)
        if row is None:
            raise _problem_404("deviation", f"there is no deviation with id {deviation_id}")
        if row["status"] != "open":
            raise Problem(409, "deviation-closed", "Deviation already closed",
                          f"deviation {deviation_id} is already closed", rule="deviation_closed")
        await conn.execute("UPDATE deviation SET status = 'closed', closed_at = $2, closed_by = $3, close_reason = $4 "
                           "WHERE id = $1", deviation_id, now, _who(principal), body.reason)
        await audit.record(conn, actor=principal, action="deviation.close", entity_type="deviation",
                           entity_id=deviation_id, old={"status": "open"},
                           new={"status": "closed", "closed_at": now}, reason=body.reason, client=client)
        await signatures.sign_within(conn, signer, body.signature, entity_type="deviation",
                                     entity_id=str(deviation_id), client=client)
    return await deviation_view(conn, deviation_id)
