"""Recorded protocol steps: every check of a step post, the record, its deviations, dose facts and signature.

A step post is checked in order (run state, inputs, the planner's window and order rules, signature rules), then
recorded in one transaction with its deviations (app.protocol.deviations), one audit record and, when signed, the
signature. Decision: on a planned run, the t0 step and the steps it depends on (its predecessors, transitively:
coating, incubator check, cell receipt) may be posted, since the process does them before seeding; every other step
needs a running run (409 run_not_running).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.auth.principal import Principal, Role
from app.core.problems import Problem
from app.db import DBConnection
from app.protocol import acceptance, deviations, dose, planner
from app.protocol.common import json_ready, not_found
from app.protocol.recipe import Recipe, Step, default_recipe
from app.protocol.recipes import recipe_of, recipe_row
from app.protocol.runs import plan_records, run_row, step_records, t0_of
from app.protocol.schemas import StepPost
from app.records import audit, signatures
from app.records.signatures import Signer

# Called inside the step's transaction with its 201 body (the API stores the Idempotency-Key answer there).
Reply = Callable[[DBConnection, dict[str, Any]], Awaitable[None]]


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
        raise not_found("step", f"{recipe.key} v{recipe.version} has no step {step_key!r}; steps: "
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
                      errors=[json_ready(e.as_dict()) for e in errors])
    records = await step_records(conn, run_id)
    t0 = t0_of(run, recipe)
    plan = planner.plan(recipe, t0, now, plan_records(records))
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
        open_ids = await deviations.open_ids(conn, run_id)
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
        return {"seed": {**json_ready(asdict(band)), "below_target": band.alert}}, []
    if step.key == "feed_day3" and "viable_cells" in values:
        seed = c.records.get(recipe.t0_step)
        seeded = json.loads(seed["inputs"]).get("viable_cells_seeded") if seed is not None else None
        hours = (now - c.t0).total_seconds() / 3600
        if seeded and hours > 0:
            band = dose.projection_at_day3(recipe, source, float(seeded), float(values["viable_cells"]), hours,
                                           required)
            return {"day3": {**json_ready(asdict(band)), "below_target": band.alert}}, []
        return None, []
    if step.key == "harvest" and "total_viable_cells" in values and "cd7_percent" in values:
        cells = dose.harvest_cd7(float(values["total_viable_cells"]), float(values["cd7_percent"]))
        result = dose.achieved_dose(recipe, cells, weight, target)
        facts = json_ready(asdict(result))
        devs = [] if result.within_acceptance else [("dose_out_of_range", result.message, facts)]
        return {"achieved": facts}, devs
    return None, []


async def post_step(conn: DBConnection, run_id: int, step_key: str, body: StepPost, *, principal: Principal,
                    now: datetime, client: str | None, threshold: int, reply: Reply | None = None) -> dict[str, Any]:
    """Record a step (see the module docstring); returns the 201 body, also given to `reply` in the transaction."""
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
        dev_ids: list[int] = []
        for rule, sev, text, facts in pending:
            dev_id = await deviations.open_deviation(conn, run_id, step_key=step_key, rule=rule, severity=sev,
                                                     description=text, facts=facts, at=now,
                                                     opened_by=principal.label)
            assert dev_id is not None  # no record key: always new
            dev_ids.append(dev_id)
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
        opened = [await deviations.deviation_view(conn, d, comments=False) for d in dev_ids]
        out = json_ready({
            "step_record": {"id": rec["id"], "run_id": run_id, "step_key": step_key, "posted_at": rec["posted_at"],
                            "inputs": c.values, "actor": principal.label, "override": body.override,
                            "override_reason": body.override_reason, "deviation_ids": dev_ids},
            "run": {"id": run_id, "status": new_status},
            "decision": c.decision.as_dict(),
            "deviations": opened, "alerts": alerts, "dose": dose_facts,
            "signature": None if signed is None else signed.model_dump(mode="json"),
            "signatures_required": list(step.signatures),
        })
        if reply is not None:
            await reply(conn, dict(out))
        return dict(out)
