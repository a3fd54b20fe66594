"""Culture runs: planning from a released recipe, their state, and the run view with its schedule and dose.

Run states: planned -> running (the recipe's t0_step is recorded; it sets T0) -> held -> running (QA, signed)
-> completed (the release step is recorded) or aborted (with a reason). Completed and aborted runs never change.
Each state change is one transaction with exactly one audit record (a signed one adds the signature's own).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, Literal

import asyncpg
from sqlalchemy import func, select

from app.auth.principal import Principal
from app.core.problems import Problem
from app.db import DBConnection, query, schema
from app.devices.registry import device_id, device_roles
from app.protocol import deviations, dose, planner
from app.protocol.common import invalid, json_ready, not_found, require_meaning
from app.protocol.recipe import Recipe
from app.protocol.recipes import find_recipe, recipe_of, recipe_row
from app.protocol.schemas import RunCreate, SignedReason
from app.records import audit, signatures
from app.records.signatures import SignatureInput, Signer
from drivers.devices import DeviceConfig


@signatures.register_signable("culture_run", description="a culture run: code, status, devices, t0, end")
async def _load_culture_run(conn: DBConnection, entity_id: str) -> Mapping[str, Any] | None:
    if not entity_id.isdigit():
        return None
    row = await conn.fetchrow(
        "SELECT id, code, status, incubator_device_id, culture_system_device_id, t0, created_at, ended_at "
        "FROM culture_run WHERE id = $1", int(entity_id))
    return dict(row) if row is not None else None


RunStatus = Literal["planned", "running", "held", "completed", "aborted"]
CLOSED: frozenset[str] = frozenset({"completed", "aborted"})


RUN_COLUMNS = (
    "r.id, r.code, r.status, r.recipe_id, r.donor_id, r.patient_id, r.patient_weight_kg, r.target_dose_per_kg, "
    "r.cell_source, r.hsct_at, r.planned_t0, r.t0, r.incubator_device_id, r.culture_system_device_id, "
    "r.vessel_ids, r.hold_reason, r.abort_reason, r.created_by, r.created_at, r.ended_at, "
    "inc.name AS incubator, cs.name AS culture_system"
)
RUN_FROM = ("culture_run r LEFT JOIN device inc ON inc.id = r.incubator_device_id "
            "LEFT JOIN device cs ON cs.id = r.culture_system_device_id")


async def create_run(conn: DBConnection, body: RunCreate, *, principal: Principal, now: datetime,
                     client: str | None, devices: Mapping[str, DeviceConfig] | None = None) -> dict[str, Any]:
    """Plan a run: checks the dose and weight against the recipe, proposes T0 from the HSCT, warns about infusion."""
    rrow = await find_recipe(conn, body.recipe_key, body.recipe_version)
    recipe = recipe_of(rrow)
    try:
        target = dose.check_target_dose(recipe, body.target_dose_per_kg)
    except ValueError as exc:
        raise invalid("dose_not_allowed", str(exc), "target_dose_per_kg") from None
    try:
        dose.check_weight(recipe, body.patient_weight_kg)
    except ValueError as exc:
        raise invalid("weight_out_of_range", str(exc), "patient_weight_kg") from None
    incubator = await device_id(conn, body.incubator, "incubator")
    culture = await device_id(conn, body.culture_system, "culture-system")
    await _check_roles(conn, recipe, {"incubator": (body.incubator, incubator),
                                      "culture-system": (body.culture_system, culture)})
    if devices is not None:
        _check_setpoint_limits(recipe, {"incubator": devices.get(body.incubator or ""),
                                        "culture-system": devices.get(body.culture_system or "")})
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
            body.hsct_at, planned_t0, incubator, culture, body.vessel_ids, principal.label)
        await audit.record(conn, actor=principal, action="run.create", entity_type="culture_run", entity_id=run_id,
                           old=None, new={**body.model_dump(mode="json", exclude={"reason"}), "code": code,
                                          "planned_t0": planned_t0, "recipe_id": rrow["id"], "status": "planned"},
                           reason=body.reason, client=client)
    view = await run_view(conn, int(run_id), now)
    view["t0_proposal"] = json_ready(asdict(proposal))
    return view


async def _check_roles(conn: DBConnection, recipe: Recipe,
                       bound: Mapping[str, tuple[str | None, int | None]]) -> None:
    """409 naming the missing roles when a device lacks a role the recipe uses (by its profile)."""
    required = recipe.required_roles()
    missing: dict[str, list[str]] = {}
    for kind, (name, dev_id) in bound.items():
        if dev_id is None or name is None:
            continue
        lacking = sorted(required.get(kind, frozenset()) - await device_roles(conn, dev_id))
        if lacking:
            missing[name] = [f"{kind}.{r}" for r in lacking]
    if missing:
        text = "; ".join(f"{dev} lacks {', '.join(roles)}" for dev, roles in missing.items())
        raise Problem(409, "device-lacks-roles", "Device lacks roles",
                      f"the recipe uses roles its device's profile does not provide: {text}",
                      rule="device_lacks_roles", missing_roles=missing)


def _check_setpoint_limits(recipe: Recipe, bound: Mapping[str, DeviceConfig | None]) -> None:
    """409 when a recipe setpoint is outside the limits of the bound device's point that would take it."""
    outside = []
    for step in recipe.steps:
        for sp in step.setpoints:
            dev = bound.get(sp.device_kind)
            point = dev.role_point(sp.point) if dev is not None else None
            if point is None or dev is None:
                continue
            if (point.min is not None and sp.value < point.min) or (point.max is not None and sp.value > point.max):
                outside.append({"step": step.key, "device": dev.name, "point": point.name, "role": sp.point,
                                "value": sp.value, "min": point.min, "max": point.max, "unit": point.unit})
    if outside:
        text = "; ".join(f"step {o['step']}: {o['role']} = {o['value']:g} is outside {o['device']}.{o['point']} "
                         f"{o['min']:g}..{o['max']:g} {o['unit']}" for o in outside)
        raise Problem(409, "setpoint-outside-device-limits", "Setpoint outside the device's limits",
                      f"the recipe's setpoints do not fit the bound devices: {text}",
                      rule="setpoint_outside_device_limits", setpoints=outside)


async def run_row(conn: DBConnection, run_id: int, *, lock: bool = False) -> asyncpg.Record:
    lock_sql = " FOR UPDATE OF r" if lock else ""
    row = await conn.fetchrow(f"SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE r.id = $1{lock_sql}", run_id)
    if row is None:
        raise not_found("run", f"there is no culture run with id {run_id}")
    return row


async def step_records(conn: DBConnection, run_id: int) -> dict[str, asyncpg.Record]:
    """The recorded steps of a run by key (read here for the run's plan; app.protocol.steps writes them)."""
    rows = await conn.fetch("SELECT id, step_key, posted_at, inputs, actor_name, override, override_reason, "
                            "deviation_ids, dose FROM step_record WHERE run_id = $1 ORDER BY posted_at, id", run_id)
    return {r["step_key"]: r for r in rows}


def plan_records(records: Mapping[str, asyncpg.Record]) -> dict[str, planner.StepRecord]:
    return {k: planner.StepRecord(r["posted_at"], bool(r["override"])) for k, r in records.items()}


def t0_of(run: Mapping[str, Any], proposal_from: Recipe) -> datetime:
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
    out["open_deviations"] = await deviations.count_open(conn, run_id)
    if run["recipe_id"] is None:
        out.update(recipe=None, schedule=[], next_due=None, dose=None, infusion=None)
        return dict(json_ready(out))
    rrow = await recipe_row(conn, int(run["recipe_id"]))
    recipe = recipe_of(rrow)
    out["recipe"] = {"id": rrow["id"], "key": rrow["key"], "version": rrow["version"],
                     "content_hash": rrow["content_hash"]}
    records = await step_records(conn, run_id)
    t0 = t0_of(run, recipe)
    plan = planner.plan(recipe, t0, now, plan_records(records))
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
    return dict(json_ready(out))


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
    require_meaning(body.signature, "approved", "resuming a held run")
    return await _set_status(conn, run_id, principal=principal, client=client, action="run.resume",
                             allowed_from=("held",), to="running", reason=body.reason, signer=signer,
                             signature=body.signature, now=now)


async def abort_run(conn: DBConnection, run_id: int, reason: str, *, principal: Principal, now: datetime,
                    client: str | None) -> dict[str, Any]:
    return await _set_status(conn, run_id, principal=principal, client=client, action="run.abort",
                             allowed_from=("planned", "running", "held"), to="aborted", reason=reason, now=now)


async def newest_active(conn: DBConnection) -> asyncpg.Record | None:
    """The newest planned, running or held run planned from a recipe."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE r.status IN ('planned', 'running', 'held') "
        "AND r.recipe_id IS NOT NULL ORDER BY r.id DESC LIMIT 1")
    return row


async def runs_on_device(conn: DBConnection, device: str, statuses: Sequence[str]) -> list[asyncpg.Record]:
    """The runs in `statuses` that have `device` bound (as incubator or culture system), oldest first."""
    return list(await conn.fetch(
        "SELECT r.id, r.code, r.status FROM culture_run r JOIN device d "
        "ON d.id = r.incubator_device_id OR d.id = r.culture_system_device_id "
        "WHERE d.name = $1 AND r.status = ANY($2::text[]) ORDER BY r.id", device, list(statuses)))


async def bound_runs(conn: DBConnection, statuses: Sequence[str], in_window: Sequence[str]) -> list[asyncpg.Record]:
    """Runs in `statuses` with their recipe content, bound devices and the steps whose status is in `in_window`."""
    return list(await conn.fetch(
        "SELECT r.id, r.status, r.recipe_id, rc.content, inc.name AS incubator, cs.name AS culture_system, "
        "coalesce((SELECT array_agg(s.step_key) FROM step_status s WHERE s.run_id = r.id "
        "AND s.status = ANY($2::text[])), '{}') AS in_window "
        "FROM culture_run r JOIN recipe rc ON rc.id = r.recipe_id "
        "LEFT JOIN device inc ON inc.id = r.incubator_device_id "
        "LEFT JOIN device cs ON cs.id = r.culture_system_device_id "
        "WHERE r.status = ANY($1::text[]) ORDER BY r.id", list(statuses), list(in_window)))


async def list_runs(conn: DBConnection, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Runs, newest first, of one status when given, with their recipe and open deviation count."""
    r, rc, d = schema.culture_run, schema.recipe, schema.deviation
    inc, cs = schema.device.alias("inc"), schema.device.alias("cs")
    open_deviations = (select(func.count()).select_from(d)
                       .where(d.c.run_id == r.c.id, d.c.status == "open").scalar_subquery())
    q = (select(r.c.id, r.c.code, r.c.status, rc.c.key.label("recipe_key"), rc.c.version.label("recipe_version"),
                r.c.donor_id, r.c.patient_id, r.c.cell_source, r.c.planned_t0, r.c.t0, r.c.hsct_at,
                inc.c.name.label("incubator"), cs.c.name.label("culture_system"), r.c.created_by, r.c.created_at,
                r.c.ended_at, open_deviations.label("open_deviations"))
         .select_from(r.outerjoin(inc, inc.c.id == r.c.incubator_device_id)
                      .outerjoin(cs, cs.c.id == r.c.culture_system_device_id)
                      .outerjoin(rc, rc.c.id == r.c.recipe_id)))
    if status is not None:
        q = q.where(r.c.status == status)
    return [json_ready(dict(row)) for row in await query.fetch(conn, q.order_by(r.c.id.desc()).limit(limit))]
