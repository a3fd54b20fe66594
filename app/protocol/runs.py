"""Culture runs: planning from a released recipe, their state, and the run view with its schedule and dose.

Run states: planned -> running (the recipe's t0_step is recorded; it sets T0) -> held -> running (QA, signed)
-> completed (the release step is recorded) or aborted (with a reason). Completed and aborted runs never change.
Each state change is one transaction with exactly one audit record (a signed one adds the signature's own).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, tzinfo
from typing import Any, Literal

import asyncpg
from sqlalchemy import func, or_, select

from app.auth.principal import Principal
from app.core.problems import Problem
from app.db import DBConnection, query, schema
from app.devices import calibration
from app.devices.registry import device_id, device_roles
from app.protocol import derive, deviations, dose, identity, planner
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
    "r.transplant_type, r.arm, r.graft_din, r.vessels, "
    "inc.name AS incubator, cs.name AS culture_system"
)
RUN_FROM = ("culture_run r LEFT JOIN device inc ON inc.id = r.incubator_device_id "
            "LEFT JOIN device cs ON cs.id = r.culture_system_device_id")


async def create_run(conn: DBConnection, body: RunCreate, *, principal: Principal, now: datetime,
                     client: str | None, devices: Mapping[str, DeviceConfig] | None = None) -> dict[str, Any]:
    """Plan a run: checks the dose and weight against the recipe, proposes T0 from the HSCT, warns about infusion."""
    rrow = await find_recipe(conn, body.recipe_key, body.recipe_version)
    recipe = recipe_of(rrow)
    graft_din, vessels = _check_identity(recipe, body)
    try:
        target = dose.check_target_dose(recipe, body.target_dose_per_kg, body.arm)
    except ValueError as exc:
        raise invalid("dose_not_allowed", str(exc), "target_dose_per_kg") from None
    try:
        dose.check_weight(recipe, body.patient_weight_kg, body.arm)
    except ValueError as exc:
        raise invalid("weight_out_of_range", str(exc), "patient_weight_kg") from None
    for v in vessels:
        v["incubator"] = v["incubator"] or body.incubator
        if v["incubator"] is not None:
            await device_id(conn, v["incubator"], "incubator")
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
            "vessel_ids, created_by, transplant_type, arm, graft_din, vessels) "
            "VALUES ($1, 'planned', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17::jsonb) "
            "RETURNING id",
            code, rrow["id"], body.donor_id, body.patient_id, body.patient_weight_kg, target, body.cell_source,
            body.hsct_at, planned_t0, incubator, culture, body.vessel_ids or [v["id"] for v in vessels],
            principal.label, body.transplant_type, body.arm, graft_din, json.dumps(vessels) if vessels else None)
        await audit.record(conn, actor=principal, action="run.create", entity_type="culture_run", entity_id=run_id,
                           old=None, new={**body.model_dump(mode="json", exclude={"reason"}), "code": code,
                                          "planned_t0": planned_t0, "recipe_id": rrow["id"], "status": "planned"},
                           reason=body.reason, client=client)
    view = await run_view(conn, int(run_id), now)
    view["t0_proposal"] = json_ready(asdict(proposal))
    return view


def _check_identity(recipe: Recipe, body: RunCreate) -> tuple[str | None, list[dict[str, Any]]]:
    """The run's graft DIN (canonical) and typed vessels; 422 naming the field when the recipe needs what is missing."""
    if recipe.transplant_types and body.transplant_type is None:
        raise invalid("transplant_type_required", "the recipe constrains infusion and the T-cell limit by transplant "
                      f"type: give one of {', '.join(recipe.transplant_types)}", "transplant_type")
    if body.transplant_type is not None and recipe.transplant_types and \
            body.transplant_type not in recipe.transplant_types:
        raise invalid("transplant_type_unknown", f"{body.transplant_type} is not a transplant type of this recipe",
                      "transplant_type")
    if recipe.arms and body.arm is None:
        raise invalid("arm_required", f"give the arm: one of {', '.join(recipe.arms)}", "arm")
    if recipe.arms and body.arm not in recipe.arms:
        raise invalid("arm_unknown", f"{body.arm} is not an arm of this recipe: {', '.join(recipe.arms)}", "arm")
    din = None
    needs_din = any(i.expected_from == "graft_din" for s in recipe.steps for i in s.inputs)
    if body.graft_din is not None:
        try:
            din = identity.keyed(identity.parse_din(body.graft_din))
        except identity.DinError as exc:
            raise invalid(exc.rule, f"graft_din: {exc}", "graft_din") from None
    elif needs_din:
        raise invalid("graft_din_required", "the receive step checks the graft's ISBT 128 donation identification "
                      "number: give graft_din (with its check character)", "graft_din")
    vessels: list[dict[str, Any]] = []
    for i, v in enumerate(body.vessels):
        vt = recipe.vessel_types.get(v.type)
        if vt is None:
            raise invalid("vessel_type_unknown", f"vessels[{i}] {v.id}: type {v.type!r} is not a vessel type of this "
                          f"recipe; types: {', '.join(recipe.vessel_types) or 'none'}", f"vessels.{i}.type")
        vessels.append({"id": v.id, "type": v.type, "area_cm2": vt.area_cm2, "incubator": v.incubator})
    ids = [str(v["id"]) for v in vessels]
    if dup := sorted({x for x in ids if ids.count(x) > 1}):
        raise invalid("vessel_duplicate", f"vessels: duplicate ids {dup}", "vessels")
    if recipe.seeding is not None and not vessels:
        raise invalid("vessels_required", "the recipe computes the seeding density from the vessels' DL-4 area: give "
                      f"vessels with a type ({', '.join(recipe.vessel_types)})", "vessels")
    return din, vessels


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


async def open_run(conn: DBConnection, run_id: int, what: str) -> tuple[asyncpg.Record, Recipe]:
    """The run (locked, inside the caller's transaction) and its recipe; 409 run_not_running naming `what` when the
    run is completed or aborted, or was not planned from a recipe."""
    run = await run_row(conn, run_id, lock=True)
    if run["recipe_id"] is None or run["status"] in CLOSED:
        raise Problem(409, "run-not-running", "Run is closed",
                      f"{what}: run {run['code']} is {run['status']}" + ("" if run["recipe_id"] is not None
                                                                          else " and has no recipe"),
                      rule="run_not_running", run_status=run["status"])
    return run, recipe_of(await recipe_row(conn, int(run["recipe_id"])))


async def step_records(conn: DBConnection, run_id: int) -> dict[str, asyncpg.Record]:
    """The recorded steps of a run by key (read here for the run's plan; app.protocol.steps writes them)."""
    rows = await conn.fetch("SELECT id, step_key, posted_at, inputs, actor_name, override, override_reason, "
                            "deviation_ids, dose, lots, provenance FROM step_record WHERE run_id = $1 "
                            "ORDER BY posted_at, id", run_id)
    return {r["step_key"]: r for r in rows}


async def corrections_of(conn: DBConnection, run_id: int) -> dict[str, list[asyncpg.Record]]:
    """The corrections of a run's recorded steps by step key, oldest first (app.protocol.corrections writes them)."""
    out: dict[str, list[asyncpg.Record]] = {}
    for r in await conn.fetch("SELECT id, step_record_id, step_key, corrected_at, before, after, reason, actor_name, "
                              "deviation_ids, dose FROM step_correction WHERE run_id = $1 ORDER BY id", run_id):
        out.setdefault(str(r["step_key"]), []).append(r)
    return out


async def effective_records(conn: DBConnection, run_id: int,
                            records: Mapping[str, asyncpg.Record]) -> dict[str, derive.Recorded]:
    """Each recorded step's values with its corrections applied, its time, and its newest derived facts."""
    values: dict[str, dict[str, Any]] = {k: dict(json.loads(r["inputs"])) for k, r in records.items()}
    facts: dict[str, dict[str, Any]] = {k: json.loads(r["dose"]) if r["dose"] is not None else {}
                                        for k, r in records.items()}
    fixes = sorted((c for cs in (await corrections_of(conn, run_id)).values() for c in cs), key=lambda c: c["id"])
    for c in fixes:  # in order: a correction's re-evaluated facts replace its step's and its dependents'
        key = str(c["step_key"])
        if key not in values:
            continue
        values[key].update(json.loads(c["after"]))
        if c["dose"] is not None:
            derived = dict(json.loads(c["dose"]))
            for dep, dep_facts in derived.pop(DEPENDENTS, {}).items():
                if dep in facts:
                    facts[dep] = dep_facts
            facts[key] = derived
    return {k: derive.Recorded(values[k], r["posted_at"], facts[k]) for k, r in records.items()}


# In a correction's derived facts: the re-evaluated facts of the recorded steps that depend on the corrected one.
DEPENDENTS = "_dependents"


def vessel_area(recipe: Recipe, vessels: Sequence[Mapping[str, Any]]) -> float | None:
    """The DL-4 area of a run's typed vessels (cm2), or None when it has none."""
    if not vessels:
        return None
    return sum(recipe.vessel_types[v["type"]].area_cm2 for v in vessels if v["type"] in recipe.vessel_types)


async def run_facts(conn: DBConnection, run: Mapping[str, Any], recipe: Recipe) -> derive.RunFacts:
    """What the derived values of a step need of its run: patient, dose, source, vessels, QA's dose decision and
    the reported endotoxin (dose_decision and qc_result: app.protocol.product writes them)."""
    decision = await conn.fetchrow("SELECT decision, dose_per_kg FROM dose_decision WHERE run_id = $1", run["id"])
    endotoxin = await conn.fetchval("SELECT (result->>'eu_per_ml')::float8 FROM qc_result WHERE run_id = $1 "
                                    "AND test = 'endotoxin' AND status = 'reported'", run["id"])
    vessels = json.loads(run["vessels"]) if run["vessels"] is not None else []
    return derive.RunFacts(
        weight_kg=run["patient_weight_kg"], target_per_kg=run["target_dose_per_kg"], cell_source=run["cell_source"],
        transplant_type=run["transplant_type"], vessel_area_cm2=vessel_area(recipe, vessels),
        t0=t0_of(run, recipe), decision=None if decision is None else str(decision["decision"]),
        decision_dose_per_kg=None if decision is None else decision["dose_per_kg"], endotoxin_eu_per_ml=endotoxin,
        arm=run["arm"])


def product_id(run: Mapping[str, Any]) -> str:
    """The id on the product bag's label: the run code (the bedside check scans it)."""
    return str(run["code"])


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
        "created_at", "ended_at", "transplant_type", "arm", "graft_din")}
    out["vessel_ids"] = list(run["vessel_ids"] or [])
    out["vessels"] = json.loads(run["vessels"]) if run["vessels"] is not None else []
    out["product_id"] = product_id(run)
    out["disposition"] = (f"held for QA disposition: {run['hold_reason']}" if run["status"] == "held" else None)
    out["now"] = now
    out["open_deviations"] = await deviations.count_open(conn, run_id)
    if run["recipe_id"] is None:
        out.update(recipe=None, schedule=[], next_due=None, dose=None, infusion=None, product=None)
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
    effective = await effective_records(conn, run_id, records)
    out["dose"] = _dose_view(recipe, run, effective)
    hsct = run["hsct_at"]
    rule = recipe.transplant_types.get(run["transplant_type"]) if run["transplant_type"] else None
    if hsct is not None:
        lo, hi = recipe.planning.infusion_window_days
        first = lo if rule is None else max(lo, rule.earliest_infusion_day)
        warning = planner.infusion_check(recipe, t0, hsct)
        at = planner.infusion_at(recipe, t0)
        day = (at - hsct).total_seconds() / 86400
        text = None if warning is None else warning.message
        if text is None and day < first:
            text = (f"infusion at {at.isoformat(timespec='seconds')} is HSCT day {day:+.2f}, before day {first:+g} "
                    f"({run['transplant_type']})")
        out["infusion"] = {"at": at, "hsct_day": day, "window_days": [first, hi], "warning": text}
    else:
        out["infusion"] = None
    out["product"] = await product_view(conn, recipe, run, effective)
    return dict(json_ready(out))


async def run_calibrations(conn: DBConnection, run_id: int, now: datetime, zone: tzinfo,
                           warn_days: int) -> list[dict[str, Any]]:
    """The calibration records in force of the run's devices' points, with their status at the site on the run's
    T0 (planned T0 before it starts) and now (the batch record; app.devices.calibration owns the records)."""
    run = await run_row(conn, run_id)
    start = run["t0"] or run["planned_t0"] or run["created_at"]
    rows = await calibration.for_devices(conn, [run["incubator"], run["culture_system"]],
                                         calibration.site_today(start, zone), calibration.site_today(now, zone),
                                         warn_days)
    return list(json_ready(rows))


async def product_view(conn: DBConnection, recipe: Recipe, run: Mapping[str, Any],
                        effective: Mapping[str, derive.Recorded]) -> dict[str, Any]:
    """The product's identity, status (in specification, lower dose level, out of specification), expiry, QA's
    dose decision and the QC results with their status (qc_result, dose_decision: read here, written by
    app.protocol.product)."""
    formulated = effective.get(recipe.key_of("formulation") or "")
    achieved = formulated.facts.get("achieved") if formulated is not None else None
    decision = await decision_view(conn, int(run["id"]))
    status = "not_formulated" if achieved is None else achieved.get("product_status")
    if decision is not None and decision["decision"] == "out_of_specification":
        status = "out_of_specification"
    return {"product_id": product_id(run), "graft_din": run["graft_din"], "status": status,
            "expiry": formulated.facts.get("expiry") if formulated is not None else None,
            "decision": decision, "qc": await qc_view(conn, recipe, int(run["id"]))}


def _dose_view(recipe: Recipe, run: Mapping[str, Any],
               effective: Mapping[str, derive.Recorded]) -> dict[str, Any] | None:
    """The required CD7+ cells and every derived fact of the recorded steps (seeding, forecast bands, harvest,
    the formulated dose, the expiry, the post-infusion endotoxin figure), corrections applied."""
    weight, target = run["patient_weight_kg"], run["target_dose_per_kg"]
    if weight is None or target is None:
        return None
    out: dict[str, Any] = {"required_cd7_cells": dose.required_cd7(recipe, target, weight),
                           "target_per_kg": target, "seed": None, "day3": None, "harvest": None, "achieved": None}
    for rec in effective.values():
        out.update(rec.facts)
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


@dataclass(frozen=True)
class RunFilter:
    """What GET /api/v1/runs and the runs archive (/runs) select: each field given narrows the list.

    Texts match whole and case-insensitively (a graft DIN also without its spaces); `device` is the run's incubator
    or culture system; `start`/`end` bound the run's date, its creation or its T0 (`date_of`), start included, end
    not. Pages are keyset on the id, newest first: `before_id` the next older page, `after_id` the next newer one.
    """

    status: str | None = None
    code: str | None = None
    recipe: str | None = None
    donor_id: str | None = None
    patient_id: str | None = None
    graft_din: str | None = None
    device: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    date_of: Literal["created", "t0"] = "created"
    before_id: int | None = None
    after_id: int | None = None


def din_key(text: str) -> str:
    """A DIN as culturectl stores it (its check character computed when missing); the bare text if it is none."""
    try:
        return identity.keyed(identity.parse_din(text, require_check=False))
    except identity.DinError:
        return "".join(text.split()).upper()


async def list_runs(conn: DBConnection, status: str | None = None, limit: int = 100,
                    filters: RunFilter | None = None) -> list[dict[str, Any]]:
    """Runs, newest first, as `filters` (and `status`, when given) select them, with their recipe, open deviation
    count and the number of their batch record's newest issued version (None before release)."""
    f = filters or RunFilter()
    if status is not None:
        f = replace(f, status=status)
    r, rc, d, v = schema.culture_run, schema.recipe, schema.deviation, schema.batch_record_version
    inc, cs = schema.device.alias("inc"), schema.device.alias("cs")
    open_deviations = (select(func.count()).select_from(d)
                       .where(d.c.run_id == r.c.id, d.c.status == "open").scalar_subquery())
    record_version = select(func.max(v.c.number)).where(v.c.run_id == r.c.id).scalar_subquery()
    q = (select(r.c.id, r.c.code, r.c.status, rc.c.key.label("recipe_key"), rc.c.version.label("recipe_version"),
                r.c.donor_id, r.c.patient_id, r.c.graft_din, r.c.cell_source, r.c.planned_t0, r.c.t0, r.c.hsct_at,
                inc.c.name.label("incubator"), cs.c.name.label("culture_system"), r.c.created_by, r.c.created_at,
                r.c.ended_at, open_deviations.label("open_deviations"), record_version.label("record_version"))
         .select_from(r.outerjoin(inc, inc.c.id == r.c.incubator_device_id)
                      .outerjoin(cs, cs.c.id == r.c.culture_system_device_id)
                      .outerjoin(rc, rc.c.id == r.c.recipe_id)))
    same = {r.c.code: f.code, rc.c.key: f.recipe, r.c.donor_id: f.donor_id, r.c.patient_id: f.patient_id}
    for column, value in same.items():
        if value is not None:
            q = q.where(func.lower(column) == value.lower())
    if f.status is not None:
        q = q.where(r.c.status == f.status)
    if f.graft_din is not None:
        q = q.where(r.c.graft_din == din_key(f.graft_din))
    if f.device is not None:
        q = q.where(or_(func.lower(inc.c.name) == f.device.lower(), func.lower(cs.c.name) == f.device.lower()))
    when = r.c.created_at if f.date_of == "created" else func.coalesce(r.c.t0, r.c.planned_t0)
    if f.start is not None:
        q = q.where(when >= f.start)
    if f.end is not None:
        q = q.where(when < f.end)
    if f.before_id is not None:
        q = q.where(r.c.id < f.before_id)
    if f.after_id is not None:  # the newer page: the nearest ones above the cursor, shown newest first
        q = q.where(r.c.id > f.after_id)
        rows = list(reversed(await query.fetch(conn, q.order_by(r.c.id.asc()).limit(limit))))
    else:
        rows = list(await query.fetch(conn, q.order_by(r.c.id.desc()).limit(limit)))
    return [json_ready(dict(row)) for row in rows]


async def decision_view(conn: DBConnection, run_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT id, decision, dose_per_kg, reason, decided_at, decided_by FROM dose_decision "
                              "WHERE run_id = $1", run_id)
    if row is None:
        return None
    out = dict(row)
    out["signatures"] = [s.model_dump(mode="json") for s in
                         await signatures.list_signatures(conn, "dose_decision", str(row["id"]))]
    return dict(json_ready(out))


async def qc_view(conn: DBConnection, recipe: Recipe, run_id: int) -> list[dict[str, Any]]:
    """Every QC test of the recipe with its status (not_sampled, pending, reported), outcome and result."""
    rows = {str(r["test"]): r for r in await conn.fetch(
        "SELECT test, status, sampled_at, step_key, result, passed, reported_at, reported_by FROM qc_result "
        "WHERE run_id = $1", run_id)}
    out = []
    for t in recipe.release.tests if recipe.release is not None else ():
        r = rows.get(t.key)
        out.append({"test": t.key, "title": t.title, "sampled_at_step": t.sampled_at,
                    "before_release": t.before_release, "status": "not_sampled" if r is None else r["status"],
                    "sampled_at": None if r is None else r["sampled_at"],
                    "result": None if r is None or r["result"] is None else json.loads(r["result"]),
                    "passed": None if r is None else r["passed"],
                    "reported_at": None if r is None else r["reported_at"],
                    "reported_by": None if r is None else r["reported_by"]})
    return list(json_ready(out))
