"""Culture runs: plan one from a released recipe, list, view with its schedule; post steps; hold, resume, abort."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from app.api import idempotency
from app.api.deps import INT64_MAX, ConnectionDep, RecordId, RuntimeDep
from app.api.routes.calibrations import RunCalibrationPublic
from app.api.schemas import (
    CountImportPublic,
    DoseDecisionPublic,
    QcResultPublic,
    RunCreated,
    RunPublic,
    RunSummary,
    StepPosted,
    StepRecordView,
    problem_responses,
)
from app.api.security import CurrentPrincipal, client_address
from app.core.problems import Problem
from app.protocol import corrections, counts, product, runs, schemas, steps
from app.records import audit, record_issue, signatures
from app.records.signatures import SignatureInput, Signer

router = APIRouter(prefix="/runs", tags=["runs"])


class RunRecordPublic(RunPublic):
    """A run as GET /runs/{id} shows it: with the calibration records of its devices' points (batch record)."""

    calibrations: list[RunCalibrationPublic] = Field(
        description="records in force of the run's devices' points, with their status on the run's T0 and now")


@router.post("", response_model=RunCreated, status_code=201,
             summary="Plan a run from a released recipe (operator, supervisor, admin): T0 proposal, infusion warning")
async def create_run(body: schemas.RunCreate, principal: CurrentPrincipal, request: Request, conn: ConnectionDep,
                     runtime: RuntimeDep) -> dict[str, Any]:
    return await runs.create_run(conn, body, principal=principal, now=runtime.clock.now(),
                                  client=client_address(request), devices={d.name: d for d in runtime.devices})


NO_NUL = r"^[^\x00]*$"  # text the database can compare (PostgreSQL text holds no NUL)


def _text(description: str) -> Any:
    return Query(min_length=1, max_length=200, pattern=NO_NUL, description=f"{description} (whole, any case)")


def _utc(t: datetime | None) -> datetime | None:
    """A filter time: one without an offset is UTC."""
    return t if t is None or t.tzinfo is not None else t.replace(tzinfo=UTC)


@router.get("", response_model=list[RunSummary], responses=problem_responses(422),
            summary="Culture runs, newest first (filters: status, code, recipe, donor, patient, graft, device, "
                    "dates; keyset pages on the id)")
async def list_runs(
    principal: CurrentPrincipal, conn: ConnectionDep,
    status: runs.RunStatus | None = None,
    limit: int = 100,
    code: Annotated[str | None, _text("the run code")] = None,
    recipe: Annotated[str | None, _text("the recipe key")] = None,
    donor_id: Annotated[str | None, _text("the donor id")] = None,
    patient_id: Annotated[str | None, _text("the patient id")] = None,
    graft_din: Annotated[str | None, _text("the graft's DIN, with or without its check character")] = None,
    device: Annotated[str | None, _text("the incubator or culture system's name")] = None,
    start: Annotated[datetime | None, Query(alias="from", description="from this time (UTC unless an offset)")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="before this time (UTC unless an offset)")] = None,
    date_of: Annotated[Literal["created", "t0"], Query(
        description="what from/to bound: the run's creation or its T0 (planned T0 before it starts)")] = "created",
    before_id: Annotated[int | None, Query(ge=1, le=INT64_MAX, description="the next page: older than this id")] = None,
    after_id: Annotated[int | None, Query(ge=1, le=INT64_MAX, description="the newer page: newer than this id")] = None,
) -> list[dict[str, Any]]:
    filters = runs.RunFilter(status=status, code=code, recipe=recipe, donor_id=donor_id, patient_id=patient_id,
                             graft_din=graft_din, device=device, start=_utc(start), end=_utc(end), date_of=date_of,
                             before_id=before_id, after_id=after_id)
    return await runs.list_runs(conn, None, max(1, min(limit, 1000)), filters)


@router.get("/{run_id}", response_model=RunRecordPublic,
            summary="A run with its schedule (windows, step states), next due step, dose, deviations, calibrations")
async def get_run(run_id: RecordId, principal: CurrentPrincipal, conn: ConnectionDep,
                  runtime: RuntimeDep) -> dict[str, Any]:
    now = runtime.clock.now()
    view = await runs.run_view(conn, run_id, now)
    view["calibrations"] = await runs.run_calibrations(conn, run_id, now, runtime.settings.zone(),
                                                       runtime.settings.calibration_warn_days)
    return view


@router.post("/{run_id}/steps/{step_key}", response_model=StepPosted, status_code=201,
             summary="Record a step (operator, supervisor, QA, automation): windows, order, inputs, acceptance")
async def post_step(
    run_id: RecordId, step_key: str, body: schemas.StepPost, principal: CurrentPrincipal, request: Request,
    conn: ConnectionDep, runtime: RuntimeDep,
    idempotency_key: Annotated[str | None, Header(max_length=200,
                                                  description="same key + same body: the first answer again")] = None,
) -> Any:
    path = f"/api/v1/runs/{run_id}/steps/{step_key}"
    digest = audit.canonical_hash({"path": path, "body": body.model_dump(
        mode="json", exclude={"signature": {"password"}})})
    if idempotency_key is not None:
        replay = await idempotency.stored_reply(conn, principal, idempotency_key, path, digest)
        if replay is not None:
            return _replayed(replay)
    reply = None if idempotency_key is None else idempotency.store_reply(principal, idempotency_key, path, digest)
    try:
        from app.api.routes.record_reviews import builder

        build = builder(runtime)
        out = await steps.post_step(conn, run_id, step_key, body, principal=principal, now=runtime.clock.now(),
                                    client=client_address(request), threshold=runtime.settings.lockout_threshold,
                                    reply=reply, zone=runtime.settings.zone(),
                                    release_gate=lambda c: record_issue.release_gate(c, run_id, build))
        provenance = (out.get("step_record") or {}).get("provenance") or {}
        if runtime.record_keeper is not None and steps.RECORD_HASH in provenance:
            runtime.record_keeper.wake()  # released: issue version 1 of the batch record now
        return out
    except Problem:
        if idempotency_key is not None:  # a concurrent request with the same key may have won: answer as it did
            replay = await idempotency.stored_reply(conn, principal, idempotency_key, path, digest)
            if replay is not None:
                return _replayed(replay)
        raise


def _replayed(replay: tuple[int, Any]) -> JSONResponse:
    """The stored answer, in the form the first one was sent (through the same response model)."""
    body = StepPosted.model_validate(replay[1]).model_dump(mode="json")
    return JSONResponse(body, status_code=replay[0], headers={"Idempotent-Replayed": "true"})


@router.post("/{run_id}/hold", response_model=RunPublic, summary="Hold a running run (supervisor, QA), with a reason")
async def hold(run_id: RecordId, body: schemas.Reason, principal: CurrentPrincipal, request: Request,
               conn: ConnectionDep,
               runtime: RuntimeDep) -> dict[str, Any]:
    return await runs.hold_run(conn, run_id, body.reason, principal=principal, now=runtime.clock.now(),
                                client=client_address(request))


async def _signer(conn: ConnectionDep, runtime: RuntimeDep, principal: CurrentPrincipal, client: str | None,
                  signature: SignatureInput, entity_type: str, entity_id: str) -> Signer:
    """The signer of a change, after the caller checked the record exists (404 before asking for the password)."""
    return await signatures.authenticate_signer(conn, principal, signature, entity_type=entity_type,
                                                entity_id=entity_id, client=client,
                                                threshold=runtime.settings.lockout_threshold)


@router.post("/{run_id}/resume", response_model=RunPublic,
             summary="Resume a held run (QA): reason + signature 'approved'")
async def resume(run_id: RecordId, body: schemas.SignedReason, principal: CurrentPrincipal, request: Request,
                 conn: ConnectionDep, runtime: RuntimeDep) -> dict[str, Any]:
    client = client_address(request)
    await runs.run_row(conn, run_id)
    signer = await _signer(conn, runtime, principal, client, body.signature, "culture_run", str(run_id))
    return await runs.resume_run(conn, run_id, body, principal=principal, signer=signer, now=runtime.clock.now(),
                                  client=client)


@router.post("/{run_id}/abort", response_model=RunPublic,
             summary="Abort a run (supervisor, QA), with a reason; it never changes again")
async def abort(run_id: RecordId, body: schemas.Reason, principal: CurrentPrincipal, request: Request,
                conn: ConnectionDep,
                runtime: RuntimeDep) -> dict[str, Any]:
    return await runs.abort_run(conn, run_id, body.reason, principal=principal, now=runtime.clock.now(),
                                 client=client_address(request))


@router.get("/{run_id}/steps/{step_key}", response_model=StepRecordView,
            summary="A recorded step: inputs as recorded, corrections with their signatures, effective values")
async def get_step(run_id: RecordId, step_key: str, principal: CurrentPrincipal, conn: ConnectionDep) -> dict[str, Any]:
    return await corrections.record_view(conn, run_id, step_key)


@router.post("/{run_id}/steps/{step_key}/corrections", response_model=StepRecordView, status_code=201,
             summary="Correct a recorded step's inputs (supervisor): reason + signature 'approved'; limits and "
                     "derived values are evaluated again")
async def correct_step(run_id: RecordId, step_key: str, body: schemas.Correction, principal: CurrentPrincipal,
                       request: Request, conn: ConnectionDep, runtime: RuntimeDep) -> dict[str, Any]:
    client = client_address(request)
    await corrections.record_view(conn, run_id, step_key)
    signer = await _signer(conn, runtime, principal, client, body.signature, "step_correction", f"{run_id}/{step_key}")
    return await corrections.correct_step(conn, run_id, step_key, body, principal=principal, signer=signer,
                                          now=runtime.clock.now(), client=client)


@router.post("/{run_id}/count-imports", response_model=CountImportPublic, status_code=201,
             summary="Import a cell counter's result export (CSV) for a count step; post the step with its id")
async def import_counts(run_id: RecordId, body: schemas.CountImportIn, principal: CurrentPrincipal, request: Request,
                        conn: ConnectionDep, runtime: RuntimeDep) -> dict[str, Any]:
    return await counts.import_counts(conn, run_id, body, principal=principal, now=runtime.clock.now(),
                                      client=client_address(request))


@router.post("/{run_id}/dose-decision", response_model=DoseDecisionPublic, status_code=201,
             summary="QA's decision when the harvest cannot reach the target: lower studied dose level or out of "
                     "specification; signed 'approved'")
async def decide_dose(run_id: RecordId, body: schemas.DoseDecisionIn, principal: CurrentPrincipal, request: Request,
                      conn: ConnectionDep, runtime: RuntimeDep) -> dict[str, Any]:
    client = client_address(request)
    await runs.run_row(conn, run_id)
    signer = await _signer(conn, runtime, principal, client, body.signature, "dose_decision", str(run_id))
    return await product.decide_dose(conn, run_id, body, principal=principal, signer=signer, now=runtime.clock.now(),
                                     client=client)


@router.post("/{run_id}/qc-results/{test}", response_model=QcResultPublic,
             summary="Report a QC result (Gram stain, endotoxin in EU/mL, mycoplasma, sterility)")
async def report_qc(run_id: RecordId, test: str, body: schemas.QcResultIn, principal: CurrentPrincipal,
                    request: Request, conn: ConnectionDep, runtime: RuntimeDep) -> dict[str, Any]:
    view, events = await product.report_result(conn, run_id, test, body, principal=principal,
                                               now=runtime.clock.now(), client=client_address(request))
    for kind, key, data in events:
        runtime.live.publish(kind, key, data)
    if runtime.alarms is not None and any(k == "qc_result" and d.get("notify") for k, _, d in events):
        await runtime.alarms.sync()  # the notification alarm (run:<code>:<test>) is raised now, not at the next pass
    return view
