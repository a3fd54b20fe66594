"""Deviations of culture runs: list, view, comment (any user), close (QA, signed)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from app.api.deps import INT64_MAX, ConnectionDep, RecordId, RuntimeDep
from app.api.routes.runs import NO_NUL
from app.api.schemas import DeviationPublic, problem_responses
from app.api.security import CurrentPrincipal, client_address
from app.protocol import deviations, schemas
from app.records import signatures
from app.runtime import Runtime

router = APIRouter(prefix="/deviations", tags=["deviations"])


@router.get("", response_model=list[DeviationPublic], responses=problem_responses(422),
            summary="Deviations, oldest first or in QA's work order (filters: run, status, severity, rule)")
async def list_deviations(
    principal: CurrentPrincipal, conn: ConnectionDep,
    run_id: Annotated[int | None, Query(ge=1, le=INT64_MAX, description="only this run's")] = None,
    status: Annotated[Literal["open", "closed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    run_code: Annotated[str | None, Query(min_length=1, max_length=200, pattern=NO_NUL,
                                                       description="only this run's (code)")] = None,
    severity: Annotated[str | None, Query(min_length=1, max_length=40, pattern=NO_NUL)] = None,
    rule: Annotated[str | None, Query(min_length=1, max_length=200, pattern=NO_NUL)] = None,
    order: Annotated[Literal["id", "work"], Query(description="id: oldest first; work: open first, graver "
                                                               "severity first, then oldest first")] = "id",
    after_id: Annotated[int | None, Query(ge=1, le=INT64_MAX, description="order=id: the page after this "
                                                                           "deviation id")] = None,
    after: Annotated[str | None, Query(min_length=1, max_length=100, pattern=NO_NUL, description=(
        "order=work: the page after the deviation whose `work_cursor` this is (its keys as it was listed)"))] = None,
) -> list[dict[str, Any]]:
    return await deviations.list_deviations(conn, run_id, status, limit, severity=severity, rule=rule,
                                            run_code=run_code, order=order, after_id=after_id, after=after)


@router.get("/{deviation_id}", response_model=DeviationPublic, summary="One deviation with its facts and comments")
async def get_deviation(deviation_id: RecordId, principal: CurrentPrincipal, conn: ConnectionDep) -> dict[str, Any]:
    return await deviations.deviation_view(conn, deviation_id)


@router.post("/{deviation_id}/comments", response_model=DeviationPublic, status_code=201,
             summary="Comment on a deviation (any user)")
async def comment(deviation_id: RecordId, body: schemas.CommentIn, principal: CurrentPrincipal, request: Request,
                  conn: ConnectionDep, runtime: RuntimeDep) -> dict[str, Any]:
    view = await deviations.comment_deviation(conn, deviation_id, body.text, principal=principal,
                                              client=client_address(request))
    _publish(runtime, view, "commented")
    return view


def _publish(runtime: Runtime, view: dict[str, Any], change: str) -> None:
    """A `deviation` event once the change is committed: the pages that show the deviation re-read it."""
    runtime.live.publish("deviation", str(view["id"]), {
        "id": view["id"], "run_id": view["run_id"], "rule": view["rule"], "status": view["status"],
        "change": change})


@router.post("/{deviation_id}/close", response_model=DeviationPublic,
             summary="Close a deviation (QA): reason + signature 'approved'")
async def close(deviation_id: RecordId, body: schemas.DeviationClose, principal: CurrentPrincipal, request: Request,
                conn: ConnectionDep, runtime: RuntimeDep) -> dict[str, Any]:
    client = client_address(request)
    await deviations.deviation_view(conn, deviation_id, comments=False)  # 404 before asking for the password
    signer = await signatures.authenticate_signer(conn, principal, body.signature, entity_type="deviation",
                                                  entity_id=str(deviation_id), client=client,
                                                  threshold=runtime.settings.lockout_threshold)
    view = await deviations.close_deviation(conn, deviation_id, body, principal=principal, signer=signer,
                                            now=runtime.clock.now(), client=client)
    _publish(runtime, view, "closed")
    return view
