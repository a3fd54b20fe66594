"""Corrections of recorded steps: a supervisor's signed change of a step's inputs (the table step_correction).

The original record never changes: a correction is a new row with the values before and after, the reason and
the supervisor's e-signature (meaning 'approved'); the step's effective values are the record's with its
corrections applied in order (app.protocol.runs.effective_records). A correction is validated as a post is (the
recipe's types, units and valid ranges, the DIN's check character: 422), then the acceptance limits and the derived
values (seeding density, forecast, harvest sufficiency, the formulated dose) are evaluated again on the effective
values, for the corrected step and the recorded steps that depend on it (`dependents`: the counts on the seeding,
the formulation on the harvest, the infusion on the formulation), and every failure their earlier evaluations did
not already report opens a new deviation. The re-evaluated facts are the correction's; a corrected input's
provenance becomes the correction. Closed runs (completed, aborted) are not corrected (409 run_not_running), nor
a released product's records (409 released).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from app.auth.principal import Principal
from app.core.problems import Problem
from app.db import DBConnection
from app.protocol import acceptance, deviations, release
from app.protocol.common import json_ready, not_found, require_meaning
from app.protocol.recipe import Recipe
from app.protocol.runs import (
    DEPENDENTS,
    corrections_of,
    effective_records,
    open_run,
    qc_view,
    run_row,
    step_records,
)
from app.protocol.schemas import Correction
from app.protocol.steps import canonical_dins, derived_for, limit_context, release_step
from app.records import audit, signatures
from app.records.signatures import Signer


@signatures.register_signable("step_correction", description="a supervisor's correction of a recorded step: "
                                                             "values before and after, reason")
async def _load_correction(conn: DBConnection, entity_id: str) -> Mapping[str, Any] | None:
    if not entity_id.isdigit():
        return None
    row = await conn.fetchrow("SELECT id, step_record_id, run_id, step_key, corrected_at, before, after, reason, "
                              "actor_name FROM step_correction WHERE id = $1", int(entity_id))
    if row is None:
        return None
    out = dict(row)
    out["before"], out["after"] = json.loads(out["before"]), json.loads(out["after"])
    return out


def dependents(recipe: Recipe, step_key: str) -> tuple[str, ...]:
    """The steps whose derived values use `step_key`'s values: the counts use the seeding (their fold and
    forecast), the formulation uses the harvest (%CD7+, %CD3+: the CD3+ cells per kg), the infusion uses the
    formulation (the endotoxin figure)."""
    if step_key == recipe.t0_step:
        return recipe.count_steps
    following = {recipe.key_of("harvest"): recipe.key_of("formulation"),
                 recipe.key_of("formulation"): recipe.key_of("infusion")}
    nxt = following.get(step_key)
    return () if nxt is None else (nxt,)


async def correct_step(conn: DBConnection, run_id: int, step_key: str, body: Correction, *, principal: Principal,
                       signer: Signer, now: datetime, client: str | None) -> dict[str, Any]:
    """Record a correction (module docstring); returns the step's record view with its corrections."""
    require_meaning(body.signature, "approved", "a correction")
    async with conn.transaction():
        run, recipe = await open_run(conn, run_id, f"correcting {step_key}")
        records = await step_records(conn, run_id)
        rec = records.get(step_key)
        if rec is None:
            raise not_found("step-record", f"step {step_key!r} of run {run['code']} is not recorded")
        if release_step(recipe).key in records:
            raise Problem(409, "run-released", "Product released",
                          f"run {run['code']} is released: its records are not corrected after QA's release (a "
                          "mistake found now is a deviation)", rule="released")
        step = recipe.step(step_key)
        effective = await effective_records(conn, run_id, records)
        current = dict(effective[step_key].values)
        merged = {**current, **body.inputs}
        values, errors = acceptance.validate_inputs(step, merged)
        errors = [e for e in errors if e.field in body.inputs or e.rule == "unknown_field"]
        errors += [e for e in canonical_dins(step, values) if e.field in body.inputs]
        if errors:
            raise Problem(422, "step-inputs", "Correction is not valid", errors[0].message, rule="invalid_inputs",
                          errors=[json_ready(e.as_dict()) for e in errors])
        changed = {k: v for k, v in values.items() if k in body.inputs and current.get(k) != v}
        if not changed:
            raise Problem(422, "step-inputs", "Nothing to correct",
                          f"{step_key}: the corrected values equal the recorded ones", rule="no_change")
        before = {k: current.get(k) for k in changed}
        failures = acceptance.evaluate_limits(step, values, limit_context(run))
        fixed = {step_key: values}
        try:
            derived = await derived_for(conn, run, recipe, step_key, values, rec["posted_at"], fixed)
            followers = {dep: await derived_for(conn, run, recipe, dep, effective[dep].values, effective[dep].at,
                                                fixed)
                         for dep in dependents(recipe, step_key) if dep in effective}
        except ValueError as exc:  # valid one by one, impossible together (e.g. QC volume >= product volume)
            raise Problem(422, "step-inputs", "Correction is not valid", f"{step_key}: {exc}",
                          rule="inconsistent_inputs", errors=[{"field": None, "rule": "inconsistent_inputs",
                                                               "detail": str(exc), "limit": None}]) from None
        reported = await _reported(conn, run_id, step_key)  # read once: what the step's deviations already say
        pending: list[tuple[str, str, str, dict[str, Any]]] = [
            (step_key, "acceptance_limit", f.message, f.as_dict()) for f in failures
            if f.severity == "deviation" and ("acceptance_limit", f.field) not in reported]
        for key, d in ((step_key, derived), *followers.items()):
            known = reported if key == step_key else await _reported(conn, run_id, key)
            pending += [(key, f.rule, f.message, f.facts) for f in d.deviations if (f.rule, None) not in known]
        if step_key == recipe.key_of("formulation"):
            pending += await _endotoxin_again(conn, recipe, run, step_key, values)
        dev_ids: list[int] = []
        for key, rule, text, facts in pending:
            dev_id = await deviations.open_deviation(
                conn, run_id, step_key=key, rule=rule, severity="deviation",
                description=f"{text} (after the correction of {step_key}: {', '.join(changed)})", facts=facts, at=now,
                opened_by=principal.label)
            assert dev_id is not None
            dev_ids.append(dev_id)
        facts_out: dict[str, Any] = dict(derived.facts or {})
        if followers:
            facts_out[DEPENDENTS] = {k: d.facts or {} for k, d in followers.items()}
        cid = await conn.fetchval(
            "INSERT INTO step_correction (step_record_id, run_id, step_key, corrected_at, before, after, reason, "
            "actor_id, actor_name, deviation_ids, dose) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, "
            "$10, $11::jsonb) RETURNING id", rec["id"], run_id, step_key, now, audit.to_json_text(before),
            audit.to_json_text(changed), body.reason, principal.id, principal.label, dev_ids,
            audit.to_json_text(facts_out) if facts_out else None)
        await audit.record(conn, actor=principal, action="step.correct", entity_type="step_record",
                           entity_id=rec["id"], old={"step_key": step_key, "inputs": before},
                           new={"step_key": step_key, "inputs": changed, "correction_id": cid,
                                "deviation_ids": dev_ids, "dose": facts_out or None}, reason=body.reason,
                           client=client)
        await signatures.sign_within(conn, signer, body.signature, entity_type="step_correction",
                                     entity_id=str(cid), client=client)
    return await record_view(conn, run_id, step_key)


async def _endotoxin_again(conn: DBConnection, recipe: Recipe, run: Mapping[str, Any], step_key: str,
                           values: Mapping[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """A reported endotoxin result evaluated again with the corrected product volume: a failure it now is opens a
    deviation (the result itself stays as reported)."""
    test = next((t for t in (recipe.release.tests if recipe.release else ()) if t.kind == "endotoxin"), None)
    if test is None or "product_volume" not in values:
        return []
    result = next((q for q in await qc_view(conn, recipe, int(run["id"]))
                   if q["test"] == test.key and q["status"] == "reported"), None)
    if result is None or not result["passed"]:
        return []
    volume = float(values["product_volume"]) - float(values.get("qc_sample_volume") or 0)
    outcome = release.qc_outcome(recipe, test, {"eu_per_ml": result["result"]["eu_per_ml"]}, volume_ml=volume,
                                 weight_kg=run["patient_weight_kg"])
    if outcome.passed:
        return []
    return [(step_key, "qc_result_failed", f"{outcome.message}: out of specification with the corrected volume",
             {"test": test.key, **outcome.facts})]


async def _reported(conn: DBConnection, run_id: int, step_key: str) -> set[tuple[str, str | None]]:
    """The (rule, field) pairs the step's deviations already report: a correction opens only new ones."""
    out: set[tuple[str, str | None]] = set()
    for r in await conn.fetch("SELECT rule, facts FROM deviation WHERE run_id = $1 AND step_key = $2", run_id,
                              step_key):
        facts = json.loads(r["facts"]) if r["facts"] is not None else {}
        out.add((str(r["rule"]), facts.get("field") if r["rule"] == "acceptance_limit" else None))
    return out


async def record_view(conn: DBConnection, run_id: int, step_key: str) -> dict[str, Any]:
    """A recorded step as recorded (inputs, lots, provenance, signatures), its corrections with their
    signatures, and its effective values."""
    run = await run_row(conn, run_id)
    records = await step_records(conn, run_id)
    rec = records.get(step_key)
    if rec is None:
        raise not_found("step-record", f"step {step_key!r} of run {run['code']} is not recorded")
    fixes = []
    for c in (await corrections_of(conn, run_id)).get(step_key, []):
        fixes.append({"id": c["id"], "corrected_at": c["corrected_at"], "before": json.loads(c["before"]),
                      "after": json.loads(c["after"]), "reason": c["reason"], "corrected_by": c["actor_name"],
                      "deviation_ids": list(c["deviation_ids"]),
                      "signatures": [s.model_dump(mode="json") for s in
                                     await signatures.list_signatures(conn, "step_correction", str(c["id"]))]})
    effective = (await effective_records(conn, run_id, records))[step_key]
    provenance = dict(json.loads(rec["provenance"])) if rec["provenance"] is not None else {}
    for c in fixes:  # a corrected value comes from its correction, whatever gave the original
        provenance.update({k: {"source": "correction", "correction_id": c["id"]} for k in c["after"]})
    return dict(json_ready({
        "id": rec["id"], "run_id": run_id, "step_key": step_key, "posted_at": rec["posted_at"],
        "recorded_by": rec["actor_name"], "inputs": json.loads(rec["inputs"]), "effective_inputs": effective.values,
        "lots": None if rec["lots"] is None else json.loads(rec["lots"]),
        "provenance": json.loads(rec["provenance"]) if rec["provenance"] is not None else None,
        "effective_provenance": provenance or None,
        "override": rec["override"], "override_reason": rec["override_reason"],
        "deviation_ids": list(rec["deviation_ids"]), "derived": effective.facts or None,
        "signatures": [s.model_dump(mode="json") for s in
                       await signatures.list_signatures(conn, "step_record", str(rec["id"]))],
        "corrections": fixes}))
