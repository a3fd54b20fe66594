"""Recorded protocol steps: every check of a step post, the record, its deviations, derived facts and signature.

A step post is checked in order (run state, inputs and lots, the planner's window and order rules, signature rules,
the release and infusion rules), then recorded in one transaction with its deviations (app.protocol.deviations),
the QC samples it takes (app.protocol.product), one audit record and, when signed, the signature.

Decisions:
- On a planned run, the t0 step and the steps it depends on (its predecessors, transitively: coating, incubator
  check, cell receipt) may be posted, since the process does them before seeding; every other step needs a
  running or held run (409 run_not_running).
- A hold is QA's disposition of the product, not of the culture: a held run keeps accepting its execution steps
  in their windows (counts, feeds, the mycoplasma sample, harvest, formulation); only release (and so infusion)
  waits for QA to resume it (409 run_held).
- The run completes with its final step: the infusion (operation "infusion") when the recipe has one, else the
  release.
- A count may come from a counter import (`count_import`): its values fill the count inputs, and the record's
  provenance marks each input `counter` (with the import) or `typed`.
- The incubator check's `calibration_valid` and `calibration_due` (any step with inputs of those names) are read
  from the calibration records of the points that play the step's channels on the run's devices
  (app.devices.calibration), on the step's date at the site; a posted value for either is refused (422
  `calibration_from_records`), and the provenance marks them `calibration` with each point's record.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, tzinfo
from typing import Any

import asyncpg

from app.auth.principal import Principal, Role
from app.core.problems import Problem
from app.db import DBConnection
from app.devices import calibration
from app.protocol import acceptance, deviations, identity, planner, product, release
from app.protocol.common import json_ready, not_found
from app.protocol.derive import Derived, RunFacts, derive
from app.protocol.forecast import CompletedRun
from app.protocol.recipe import Recipe, Step, default_recipe
from app.protocol.recipes import recipe_of, recipe_row
from app.protocol.runs import (
    effective_records,
    plan_records,
    product_id,
    product_view,
    run_facts,
    run_row,
    step_records,
    t0_of,
)
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
        "override_reason, deviation_ids, lots FROM step_record WHERE id = $1", int(entity_id))
    if row is None:
        return None
    out = dict(row)
    out["inputs"] = json.loads(out["inputs"])
    out["lots"] = None if out["lots"] is None else json.loads(out["lots"])
    out["deviation_ids"] = list(out["deviation_ids"])
    return out


RECORD_HASH = "record_content_hash"  # the release's provenance: the batch record content hash it signs


async def released_runs(conn: DBConnection) -> list[tuple[int, str | None]]:
    """Runs whose release was recorded with the content hash of their batch record (run id, that hash)."""
    rows = await conn.fetch("SELECT run_id, provenance ->> $1 AS signed FROM step_record WHERE provenance ? $1 "
                            "ORDER BY run_id", RECORD_HASH)
    return [(int(r["run_id"]), r["signed"]) for r in rows]


def release_step(recipe: Recipe) -> Step:
    """The QA release step: the one of operation 'release', else the last one."""
    return next((s for s in recipe.steps if s.operation == "release"), recipe.steps[-1])


def final_step(recipe: Recipe) -> Step:
    """The step whose record completes the run: the infusion when the recipe has one, else the release."""
    return next((s for s in recipe.steps if s.operation == "infusion"), release_step(recipe))


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
    lots: dict[str, dict[str, str]]
    provenance: dict[str, Any]


def _refuse(refusals: list[release.Refusal], step_key: str) -> None:
    if refusals:
        first = refusals[0]
        raise Problem(409, first.rule.replace("_", "-"), "Step refused", f"{step_key}: {first.message}",
                      rule=first.rule, step=step_key, facts=json_ready(first.facts),
                      refusals=[{"rule": r.rule, "detail": r.message} for r in refusals])


async def _counted(conn: DBConnection, run_id: int, step: Step, body: StepPost,
                   seed_volume: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The posted inputs with a counter import's values filled in, and each input's provenance."""
    inputs = dict(body.inputs)
    provenance: dict[str, Any] = {name: {"source": "typed"} for name in inputs}
    if body.count_import is None:
        return inputs, provenance
    row = await conn.fetchrow("SELECT id, step_key, sha256, instrument_id, filename, \"values\" FROM count_import "
                              "WHERE id = $1 AND run_id = $2", body.count_import, run_id)
    if row is None or row["step_key"] != step.key:
        raise Problem(422, "step-inputs", "Count import not found",
                      f"count_import: there is no count import {body.count_import} for step {step.key} of this run",
                      rule="count_import_unknown", errors=[{"field": "count_import", "rule": "count_import_unknown",
                                                            "detail": "no such import for this step"}])
    imported: dict[str, Any] = dict(json.loads(row["values"]))
    if "viable_cells" in imported and seed_volume is None:
        imported.pop("viable_cells")
    clash = sorted(set(imported) & set(inputs))
    if clash:
        raise Problem(422, "step-inputs", "Typed and imported values clash",
                      f"{', '.join(clash)}: given by hand and by count import {row['id']}; give each value once",
                      rule="count_import_conflict", errors=[{"field": f, "rule": "count_import_conflict",
                                                             "detail": "typed and imported"} for f in clash])
    known = {i.name for i in step.inputs}
    for name, value in imported.items():
        if name in known:
            inputs[name] = value
            provenance[name] = {"source": "counter", "count_import": int(row["id"]), "sha256": row["sha256"],
                                "instrument_id": row["instrument_id"], "filename": row["filename"]}
    return inputs, provenance


async def _calibrated(conn: DBConnection, run: asyncpg.Record, step: Step, body: StepPost, inputs: dict[str, Any],
                      provenance: dict[str, Any], on: date) -> None:
    """Fill the step's calibration inputs (in place) from the records of the points its channels name on the run's
    devices, with their provenance; 422 when a value for them is posted."""
    read = [name for name in calibration.STEP_INPUTS if step.input(name) is not None]
    if not read:
        return
    typed = [name for name in read if name in body.inputs]
    if typed:
        errors = [acceptance.FieldError(name, "calibration_from_records",
                                        f"{name}: read from the calibration records of the step's points "
                                        "(POST /api/v1/devices/{device}/points/{point}/calibrations), not typed")
                  for name in typed]
        raise Problem(422, "step-inputs", "Calibration is read from the records", errors[0].message,
                      rule="calibration_from_records", field=typed[0],
                      errors=[json_ready(e.as_dict()) for e in errors])
    points = await calibration.step_points(conn, {"incubator": run["incubator"],
                                                  "culture-system": run["culture_system"]}, step.channels)
    found = calibration.step_calibration(points, on)
    values: dict[str, Any] = {"calibration_valid": found.valid, "calibration_due": found.due_text}
    for name in read:
        inputs[name] = values[name]
        provenance[name] = {"source": "calibration", "on": on.isoformat(), "points": list(found.points)}


async def _check_step(conn: DBConnection, run_id: int, step_key: str, body: StepPost, principal: Principal,
                      now: datetime, *, lock: bool, zone: tzinfo = UTC) -> _Checked:
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
    is_release = step_key == release_step(recipe).key
    if not (status in ("running", "held") or (status == "planned" and step_key in _pre_t0_steps(recipe))):
        why = {"planned": f"the run starts with the {recipe.t0_step} step (T0); only it and its preparation steps "
                          "may be posted before",
               "completed": "a completed run never changes", "aborted": "an aborted run never changes"}[status]
        raise Problem(409, "run-not-running", "Run is not running", f"{step_key}: run {run['code']} is {status}; {why}",
                      rule="run_not_running", run_status=status, step=step_key)
    # The release is QA's decision, so QA (not a supervisor) records a late release, with its deviation.
    overrider = Role.QA if is_release else Role.SUPERVISOR
    if body.override and principal.role is not overrider:
        raise Problem(403, "override-needs-supervisor", f"Override needs {overrider.value}",
                      f"only {overrider.value} may override the window of {step_key}; {principal.label} is "
                      f"{principal.role.value}", rule="override_needs_supervisor")
    records = await step_records(conn, run_id)
    seed = (await effective_records(conn, run_id, records)).get(recipe.t0_step)
    volume = seed.values.get("volume") if seed is not None else None
    seed_volume = float(volume) if isinstance(volume, int | float) and not isinstance(volume, bool) else None
    posted, provenance = await _counted(conn, run_id, step, body, seed_volume)
    await _calibrated(conn, run, step, body, posted, provenance, calibration.site_today(now, zone))
    values, errors = acceptance.validate_inputs(step, posted)
    reagents = {m.key: m.name for m in recipe.materials}
    lots, lot_errors = acceptance.validate_lots(step, reagents, {k: (v.lot, v.expiry) for k, v in body.lots.items()},
                                                now.date())
    errors += lot_errors
    errors += canonical_dins(step, values)
    if errors:
        first = errors[0]
        raise Problem(422, "step-inputs", "Step inputs are not valid", first.message, rule=first.rule
                      if first.rule.startswith(("lot_", "din_")) or first.rule == "unknown_reagent"
                      else "invalid_inputs",
                      errors=[json_ready(e.as_dict()) for e in errors])
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
    if is_release:
        if principal.role is not Role.QA:
            raise Problem(403, "release-needs-qa", "Release needs QA",
                          f"{step_key} is QA's decision; {principal.label} is {principal.role.value}",
                          rule="release_needs_qa")
        if "approved" in step.signatures and (body.signature is None or body.signature.meaning != "approved"):
            raise Problem(422, "signature-required", "Signature required",
                          f"{step_key} is signed by QA in the same request: signature with meaning 'approved'",
                          rule="signature_required")
        _refuse(release.release_refusals(recipe, await product.qc_states(conn, run_id), held=status == "held",
                                         hold_reason=run["hold_reason"], expiry=_expiry(recipe, records), now=now),
                step_key)
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
    elif step.operation == "infusion":
        if step.signatures and body.signature is None:
            raise Problem(422, "signature-required", "Signature required",
                          f"{step_key} is signed by the person at the bedside in the same request: signature with "
                          f"meaning {step.signatures[0]!r}", rule="signature_required")
        if status == "held":
            _refuse([release.Refusal("run_held", f"the run is held for QA disposition ({run['hold_reason']})", {})],
                    step_key)
        rule = recipe.transplant_types.get(run["transplant_type"]) if run["transplant_type"] else None
        released = records.get(release_step(recipe).key)
        _refuse(release.infusion_refusals(
            recipe, patient_id=str(run["patient_id"]), product_id=product_id(run),
            scanned_patient=str(values.get("patient_id_scanned", "")),
            scanned_product=str(values.get("product_id_scanned", "")),
            start=datetime.fromisoformat(str(values["infusion_start"])),
            end=datetime.fromisoformat(str(values["infusion_end"])), expiry=_expiry(recipe, records),
            hsct=run["hsct_at"], earliest_day=None if rule is None else rule.earliest_infusion_day,
            released_at=None if released is None else released["posted_at"], now=now,
            qc=await product.qc_states(conn, run_id)), step_key)
        open_ids = await deviations.open_ids(conn, run_id)
        if open_ids:
            raise Problem(409, "open-deviations", "Open deviations hold the infusion",
                          f"{step_key}: run {run['code']} has open deviations {', '.join(map(str, open_ids))} "
                          "opened after release; QA closes them before the product is infused",
                          rule="open_deviations", deviation_ids=open_ids)
    return _Checked(run, recipe, step, values, decision, records, t0, lots, provenance)


def canonical_dins(step: Step, values: dict[str, acceptance.Value]) -> list[acceptance.FieldError]:
    """Put the step's ISBT 128 DINs in their canonical form (check character checked) in place; the errors."""
    errors = []
    for inp in step.inputs:
        if inp.expected_from == "graft_din" and isinstance(values.get(inp.name), str):
            try:
                values[inp.name] = identity.keyed(identity.parse_din(str(values[inp.name])))
            except identity.DinError as exc:
                errors.append(acceptance.FieldError(inp.name, exc.rule, f"{inp.name}: {exc}"))
    return errors


def _expiry(recipe: Recipe, records: Mapping[str, asyncpg.Record]) -> datetime | None:
    key = recipe.key_of("formulation")
    formulate = records.get(key) if key else None
    if formulate is None or formulate["dose"] is None:
        return None
    at = json.loads(formulate["dose"]).get("expiry")
    return None if at is None else datetime.fromisoformat(at)


async def missing_step_signatures(conn: DBConnection, recipe: Recipe,
                                  records: Mapping[str, asyncpg.Record]) -> dict[str, list[str]]:
    """Per recorded step, the meanings its recipe step requires that have no valid signature on the record now."""
    release_key = release_step(recipe).key
    out: dict[str, list[str]] = {}
    for key, rec in records.items():
        required = recipe.step(key).signatures
        if key == release_key or not required:
            continue
        have = {s.meaning for s in await signatures.list_signatures(conn, "step_record", str(rec["id"])) if s.valid}
        missing: list[str] = [m for m in required if m not in have]
        if missing:
            out[key] = missing
    return out


async def site_runs(conn: DBConnection, recipe: Recipe, source: str | None) -> list[CompletedRun]:
    """The site's completed runs of this recipe key and cell source, as the forecast's refinement takes them (a run
    whose harvest held no cells or no CD7+ cells says nothing about growth and is left out)."""
    growth = recipe.projection.growth
    harvest_key = recipe.key_of("harvest")
    if growth is None or growth.refine is None or source is None or harvest_key is None:
        return []
    rows = await conn.fetch(
        "SELECT r.t0, s.inputs AS seed, f.inputs AS feed, f.posted_at AS feed_at, h.inputs AS harvest, "
        "h.posted_at AS harvest_at FROM culture_run r JOIN recipe rc ON rc.id = r.recipe_id "
        "JOIN step_record s ON s.run_id = r.id AND s.step_key = $3 "
        "LEFT JOIN step_record f ON f.run_id = r.id AND f.step_key = $4 "
        "JOIN step_record h ON h.run_id = r.id AND h.step_key = $5 "
        "WHERE rc.key = $1 AND r.cell_source = $2 AND r.status = 'completed' AND r.t0 IS NOT NULL "
        "ORDER BY r.id DESC LIMIT 500", recipe.key, source, recipe.t0_step,
        recipe.count_steps[0] if recipe.count_steps else "", harvest_key)
    out = []
    for r in rows:
        seed, harvest = json.loads(r["seed"]), json.loads(r["harvest"])
        feed = json.loads(r["feed"]) if r["feed"] is not None else {}
        if not (float(seed.get("viable_cells_seeded") or 0) > 0 and float(harvest.get("total_viable_cells") or 0) > 0
                and float(harvest.get("cd7_percent") or 0) > 0):
            continue
        out.append(CompletedRun(
            seeded=float(seed["viable_cells_seeded"]),
            count_cells=float(feed["viable_cells"]) if "viable_cells" in feed else None,
            count_hours=(r["feed_at"] - r["t0"]).total_seconds() / 3600 if r["feed_at"] is not None else None,
            harvest_cells=float(harvest["total_viable_cells"]),
            harvest_hours=(r["harvest_at"] - r["t0"]).total_seconds() / 3600,
            cd7_percent=float(harvest["cd7_percent"])))
    return out


async def derived_for(conn: DBConnection, run: asyncpg.Record, recipe: Recipe, step_key: str,
                      values: Mapping[str, acceptance.Value], now: datetime,
                      corrected: Mapping[str, Mapping[str, acceptance.Value]] | None = None) -> Derived:
    """The derived facts and findings of a step's values, with the run's context read from the database;
    `corrected` gives steps' values that a correction about to be recorded changes."""
    facts: RunFacts = await run_facts(conn, run, recipe)
    recorded = await effective_records(conn, int(run["id"]), await step_records(conn, int(run["id"])))
    for key, changed in (corrected or {}).items():
        if key in recorded:
            recorded[key] = replace(recorded[key], values=changed)
    forecasting = step_key == recipe.t0_step or step_key in recipe.count_steps
    return derive(recipe, facts, step_key, values, recorded, now,
                  await site_runs(conn, recipe, run["cell_source"]) if forecasting else ())


def limit_context(run: Mapping[str, Any]) -> dict[str, object]:
    """The run attributes an input's `expected_from` compares with."""
    return {"donor_id": run["donor_id"], "patient_id": run["patient_id"], "cell_source": run["cell_source"],
            "graft_din": run["graft_din"], "product_id": product_id(run)}


async def post_step(conn: DBConnection, run_id: int, step_key: str, body: StepPost, *, principal: Principal,
                    now: datetime, client: str | None, threshold: int, reply: Reply | None = None,
                    zone: tzinfo = UTC,
                    release_gate: Callable[[DBConnection], Awaitable[str]] | None = None) -> dict[str, Any]:
    """Record a step (see the module docstring); returns the 201 body, also given to `reply` in the transaction;
    `zone` is the site's (the step's date for its calibration inputs). `release_gate`, for the release step after
    its own checks: refuses while the batch record has exceptions QA has not reviewed, else answers the record's
    content hash, kept in the step's provenance so that the release signature signs it."""
    # refusals before the password
    first = await _check_step(conn, run_id, step_key, body, principal, now, lock=False, zone=zone)
    record_hash = None
    if release_gate is not None and first.step.key == release_step(first.recipe).key:
        record_hash = await release_gate(conn)
    signer: Signer | None = None
    if body.signature is not None:
        signer = await signatures.authenticate_signer(conn, principal, body.signature, entity_type="step_record",
                                                      entity_id=f"{run_id}/{step_key}", client=client,
                                                      threshold=threshold)
    async with conn.transaction():
        c = await _check_step(conn, run_id, step_key, body, principal, now, lock=True, zone=zone)
        recipe, step = c.recipe, c.step
        if record_hash is not None:
            c.provenance[RECORD_HASH] = record_hash
        failures = acceptance.evaluate_limits(step, c.values, limit_context(c.run))
        try:
            derived = await derived_for(conn, c.run, recipe, step_key, c.values, now)
        except ValueError as exc:  # values valid one by one, impossible together (e.g. QC volume >= product volume)
            raise Problem(422, "step-inputs", "Step inputs are not valid", f"{step_key}: {exc}",
                          rule="inconsistent_inputs", errors=[{"field": None, "rule": "inconsistent_inputs",
                                                               "detail": str(exc), "limit": None}]) from None
        pending: list[tuple[str, str, str, Any]] = []  # rule, severity, description, facts
        if c.decision.outcome == "accept_with_deviation":
            pending.append((str(c.decision.rule), "deviation",
                            f"{c.decision.message}; reason: {body.override_reason}", c.decision.as_dict()))
        pending += [("acceptance_limit", f.severity, f.message, f.as_dict()) for f in failures
                    if f.severity == "deviation"]
        pending += [(f.rule, "deviation", f.message, f.facts) for f in derived.deviations]
        dev_ids: list[int] = []
        for rule, sev, text, facts in pending:
            dev_id = await deviations.open_deviation(conn, run_id, step_key=step_key, rule=rule, severity=sev,
                                                     description=text, facts=facts, at=now,
                                                     opened_by=principal.label)
            assert dev_id is not None  # no record key: always new
            dev_ids.append(dev_id)
        rec = await conn.fetchrow(
            "INSERT INTO step_record (run_id, step_key, posted_at, inputs, actor_kind, actor_id, actor_name, "
            "actor_role, override, override_reason, deviation_ids, dose, lots, provenance) "
            "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13::jsonb, $14::jsonb) "
            "RETURNING id, posted_at",
            run_id, step_key, now, audit.to_json_text(c.values), principal.kind, principal.id, principal.name,
            principal.role.value, body.override, body.override_reason, dev_ids,
            None if derived.facts is None else audit.to_json_text(derived.facts),
            audit.to_json_text(c.lots) if c.lots else None, audit.to_json_text(c.provenance) if c.provenance else None)
        assert rec is not None
        sampled = await product.sample_tests(conn, recipe, run_id, step_key, now)
        old_status = c.run["status"]
        new_status = old_status
        if step_key == recipe.t0_step:
            new_status = "running"
            await conn.execute("UPDATE culture_run SET status = 'running', t0 = $2 WHERE id = $1", run_id, now)
        elif step_key == final_step(recipe).key:
            new_status = "completed"
            await conn.execute("UPDATE culture_run SET status = 'completed', ended_at = $2 WHERE id = $1", run_id, now)
        alerts = [f.as_dict() for f in failures if f.severity == "alert"]
        alerts += [{"rule": f.rule, "severity": "alert", "detail": f.message} for f in derived.alerts]
        new: dict[str, Any] = {"run_id": run_id, "step_key": step_key, "posted_at": now, "inputs": c.values,
                               "override": body.override, "deviation_ids": dev_ids, "alerts": alerts,
                               "dose": derived.facts, "lots": c.lots or None, "provenance": c.provenance or None,
                               "qc_sampled": sampled or None}
        if new_status != old_status:
            new["run_status"] = {"from": old_status, "to": new_status}
        if step_key == release_step(recipe).key:  # what QA released: the product's status, its decision, its QC
            effective = await effective_records(conn, run_id, await step_records(conn, run_id))
            released = await product_view(conn, recipe, c.run, effective)
            new["product"] = {k: released[k] for k in ("product_id", "status", "expiry", "decision")}
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
                            "override_reason": body.override_reason, "deviation_ids": dev_ids,
                            "lots": c.lots or None, "provenance": c.provenance or None},
            "run": {"id": run_id, "status": new_status},
            "decision": c.decision.as_dict(),
            "deviations": opened, "alerts": alerts, "dose": derived.facts,
            "signature": None if signed is None else signed.model_dump(mode="json"),
            "signatures_required": list(step.signatures),
        })
        if reply is not None:
            await reply(conn, dict(out))
        return dict(out)
