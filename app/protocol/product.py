"""The product of a run: QA's dose decision and the QC results with their own status (the tables dose_decision and
qc_result are written here only).

- A dose decision is QA's signed answer when the harvest cannot reach the target: formulate at a lower studied
  dose level (before formulation), or declare the product out of specification (before release). One per run.
- A QC result row opens `pending` when the step that takes its sample is recorded (app.protocol.steps calls
  `sample_tests`), and is reported once with its outcome (app.protocol.release.qc_outcome). A failing result
  before release opens a deviation; a positive result of a test the recipe marks `notify_positive` reported after
  infusion (sterility) is notified: SSE `qc_result` with notify true, an audit record `qc.positive_notified`, and
  a deviation `post_infusion_positive` that the batch record shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from app.auth.principal import Principal
from app.core.problems import Problem
from app.db import DBConnection
from app.protocol import deviations, dose, release
from app.protocol.common import json_ready, not_found, require_meaning
from app.protocol.recipe import Recipe
from app.protocol.recipes import recipe_of, recipe_row
from app.protocol.runs import decision_view, effective_records, open_run, qc_view, run_row, step_records
from app.protocol.schemas import DoseDecisionIn, QcResultIn
from app.records import audit, signatures
from app.records.signatures import Signer


@signatures.register_signable("dose_decision", description="QA's dose decision: lower studied level or out of "
                                                           "specification, with its reason")
async def _load_decision(conn: DBConnection, entity_id: str) -> Mapping[str, Any] | None:
    if not entity_id.isdigit():
        return None
    row = await conn.fetchrow("SELECT id, run_id, decision, dose_per_kg, reason, decided_at, decided_by "
                              "FROM dose_decision WHERE id = $1", int(entity_id))
    return dict(row) if row is not None else None


async def decide_dose(conn: DBConnection, run_id: int, body: DoseDecisionIn, *, principal: Principal,
                      signer: Signer, now: datetime, client: str | None) -> dict[str, Any]:
    """Record QA's signed dose decision (module docstring); 409 names the rule that stops it."""
    require_meaning(body.signature, "approved", "a dose decision")
    async with conn.transaction():
        run, recipe = await open_run(conn, run_id, "a dose decision")
        if not recipe.dose.lower_dose_route:
            raise Problem(409, "dose-decision", "The recipe has no dose decision route",
                          f"{recipe.key} v{recipe.version} offers no lower-dose or out-of-specification route",
                          rule="no_dose_route")
        records = await step_records(conn, run_id)
        effective = await effective_records(conn, run_id, records)
        harvest_key, formulate_key = recipe.key_of("harvest"), recipe.key_of("formulation")
        if harvest_key not in effective:
            raise Problem(409, "dose-decision", "Harvest not recorded",
                          "a dose decision answers a harvest that cannot reach the target: record the harvest first",
                          rule="harvest_not_recorded")
        harvest = effective[str(harvest_key)].facts.get("harvest") or {}
        if await conn.fetchval("SELECT 1 FROM dose_decision WHERE run_id = $1", run_id):
            raise Problem(409, "dose-decision", "Dose decision taken",
                          f"run {run['code']} already has a dose decision", rule="dose_decision_taken")
        if body.decision == "lower_dose":
            if harvest.get("enough") is not False:
                raise Problem(409, "dose-decision", "The harvest holds the target",
                              f"the harvest holds {harvest.get('percent_of_needed', 0):.0f} % of what the target "
                              "needs: a lower dose level is decided only when it cannot reach the target",
                              rule="harvest_sufficient")
            if formulate_key in records:
                raise Problem(409, "dose-decision", "Already formulated",
                              "a lower dose level is decided before formulation", rule="already_formulated")
            try:
                level = dose.check_target_dose(recipe, float(body.dose_per_kg or 0), run["arm"])
            except ValueError as exc:
                raise Problem(422, "dose-decision", "Dose level not studied", str(exc),
                              rule="dose_not_allowed") from None
            if level >= float(run["target_dose_per_kg"]):
                raise Problem(422, "dose-decision", "Not a lower dose level",
                              f"{level:g} CD7+ cells/kg is not below the run's target "
                              f"{run['target_dose_per_kg']:g}", rule="not_lower")
        elif next((st.key for st in recipe.steps if st.operation == "release"), None) in records:
            raise Problem(409, "dose-decision", "Already released", "the product is released", rule="already_released")
        dec_id = await conn.fetchval(
            "INSERT INTO dose_decision (run_id, decision, dose_per_kg, reason, decided_at, decided_by) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id", run_id, body.decision, body.dose_per_kg, body.reason,
            now, principal.label)
        await audit.record(conn, actor=principal, action="dose.decision", entity_type="culture_run", entity_id=run_id,
                           old=None, new={"decision": body.decision, "dose_per_kg": body.dose_per_kg,
                                          "dose_decision_id": dec_id}, reason=body.reason, client=client)
        await signatures.sign_within(conn, signer, body.signature, entity_type="dose_decision",
                                     entity_id=str(dec_id), client=client)
        if body.decision == "out_of_specification":
            # An out-of-specification product is released only as an exception: the deviation holds release until
            # QA closes it (signed), with the physician's decision as its reason.
            text = f"product declared out of specification by QA (dose decision {dec_id}): {body.reason}"
            dev_id = await deviations.open_deviation(conn, run_id, step_key=None, rule="out_of_specification",
                                                     severity="deviation", description=text,
                                                     facts={"dose_decision_id": dec_id, "harvest": harvest}, at=now,
                                                     opened_by=principal.label)
            assert dev_id is not None
            await audit.record(conn, actor=principal, action="deviation.open", entity_type="deviation",
                               entity_id=dev_id, old=None,
                               new={"run_id": run_id, "rule": "out_of_specification", "description": text},
                               reason="dose decision", client=client)
    view = await decision_view(conn, run_id)
    assert view is not None
    return view


async def sample_tests(conn: DBConnection, recipe: Recipe, run_id: int, step_key: str, at: datetime) -> list[str]:
    """Open the pending results of the QC tests sampled by `step_key` (inside the step's transaction)."""
    if recipe.release is None:
        return []
    keys = [t.key for t in recipe.release.tests if t.sampled_at == step_key]
    for key in keys:
        await conn.execute("INSERT INTO qc_result (run_id, test, status, sampled_at, step_key) "
                           "VALUES ($1, $2, 'pending', $3, $4) ON CONFLICT (run_id, test) DO NOTHING",
                           run_id, key, at, step_key)
    return keys


async def qc_states(conn: DBConnection, run_id: int) -> dict[str, release.QcState]:
    return {str(r["test"]): release.QcState(str(r["test"]), r["status"], r["passed"]) for r in await conn.fetch(
        "SELECT test, status, passed FROM qc_result WHERE run_id = $1", run_id)}


async def report_result(conn: DBConnection, run_id: int, test_key: str, body: QcResultIn, *,
                        principal: Principal, now: datetime,
                        client: str | None) -> tuple[dict[str, Any], list[tuple[str, str, dict[str, Any]]]]:
    """Report a QC result; returns its view and the events to publish (kind, key, data) after the commit."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    async with conn.transaction():
        run = await run_row(conn, run_id, lock=True)  # a completed run still takes its post-infusion results
        if run["recipe_id"] is None:
            raise not_found("qc-test", f"run {run['code']} has no recipe, so no QC tests")
        recipe = recipe_of(await recipe_row(conn, int(run["recipe_id"])))
        try:
            test = (recipe.release or _no_release(recipe)).test(test_key)
        except KeyError as exc:
            raise not_found("qc-test", str(exc.args[0])) from None
        row = await conn.fetchrow("SELECT id, status, step_key FROM qc_result WHERE run_id = $1 AND test = $2 "
                                  "FOR UPDATE", run_id, test_key)
        if row is None:
            raise Problem(409, "qc-not-sampled", "Not sampled",
                          f"{test.title} is sampled at step {test.sampled_at}, which is not recorded yet",
                          rule="qc_not_sampled", step=test.sampled_at)
        if row["status"] == "reported":
            raise Problem(409, "qc-reported", "Already reported", f"{test.title} of run {run['code']} is reported; "
                          "a result is reported once (a mistaken result is handled by a deviation)",
                          rule="qc_already_reported")
        if run["status"] == "aborted":
            raise Problem(409, "run-not-running", "Run aborted", f"run {run['code']} is aborted",
                          rule="run_not_running", run_status="aborted")
        records = await step_records(conn, run_id)
        formulate = (await effective_records(conn, run_id, records)).get(recipe.key_of("formulation") or "")
        volume = None
        if formulate is not None and "product_volume" in formulate.values:
            f = formulate.values
            volume = float(f["product_volume"]) - float(f.get("qc_sample_volume") or 0)
        if test.kind == "negative_positive" and body.result is None:
            raise Problem(422, "qc-result", "Result required", f"{test.title}: give result negative or positive",
                          rule="qc_result_kind")
        if test.kind == "endotoxin" and body.eu_per_ml is None:
            raise Problem(422, "qc-result", "EU/mL required", f"{test.title}: give eu_per_ml (EU/mL)",
                          rule="qc_result_kind")
        try:
            outcome = release.qc_outcome(recipe, test, body.model_dump(exclude={"comment"}), volume_ml=volume,
                                         weight_kg=run["patient_weight_kg"])
        except ValueError as exc:
            raise Problem(409, "qc-result", "Result cannot be evaluated", str(exc), rule="qc_result_context") from None
        infused = recipe.key_of("infusion") in records
        facts = {**outcome.facts, "comment": body.comment, "after_infusion": bool(infused)}
        await conn.execute("UPDATE qc_result SET status = 'reported', result = $2::jsonb, passed = $3, "
                           "reported_at = $4, reported_by = $5 WHERE id = $1 AND status = 'pending'", row["id"],
                           audit.to_json_text(facts), outcome.passed, now, principal.label)
        await audit.record(conn, actor=principal, action="qc.result", entity_type="culture_run", entity_id=run_id,
                           old={"test": test_key, "status": "pending"},
                           new={"test": test_key, "status": "reported", "passed": outcome.passed, **facts},
                           reason=body.comment or f"{test.title} result reported", client=client)
        data = {"run_id": run_id, "run_code": run["code"], "test": test_key, "passed": outcome.passed,
                "message": outcome.message, "after_infusion": bool(infused), "notify": False}
        if not outcome.passed:
            rule = "post_infusion_positive" if infused else "qc_result_failed"
            text = (f"{outcome.message}: reported after infusion, the patient's physician is notified" if infused
                    else f"{outcome.message}: out of specification before release")
            dev_id = await deviations.open_deviation(conn, run_id, step_key=row["step_key"], rule=rule,
                                                     severity="deviation", description=text,
                                                     facts={"test": test_key, **facts}, at=now,
                                                     opened_by=principal.label)
            assert dev_id is not None
            await audit.record(conn, actor=principal, action="deviation.open", entity_type="deviation",
                               entity_id=dev_id, old=None, new={"run_id": run_id, "rule": rule, "description": text},
                               reason="QC result", client=client)
            events.append(("deviation", str(dev_id), {"id": dev_id, "run_id": run_id, "run_code": run["code"],
                                                      "step": row["step_key"], "rule": rule, "description": text,
                                                      "opened_at": now.isoformat()}))
            if infused and test.notify_positive:
                data["notify"] = True
                await audit.record(conn, actor=principal, action="qc.positive_notified", entity_type="culture_run",
                                   entity_id=run_id, old=None, new={"test": test_key, "deviation_id": dev_id,
                                                                    "message": outcome.message},
                                   reason="positive result after infusion", client=client)
        events.insert(0, ("qc_result", f"{run_id}:{test_key}", json_ready(data)))
    views = {v["test"]: v for v in await qc_view(conn, recipe, run_id)}
    return views[test_key], events


def _no_release(recipe: Recipe) -> Any:
    raise Problem(404, "qc-test-not-found", "Not found", f"{recipe.key} v{recipe.version} states no QC tests")
