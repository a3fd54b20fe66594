"""The batch record's review by exception and its issued versions: QA reviews each exception (signed), and the
versions issued at release and after it are read as they were issued (JSON and PDF)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from app.api.deps import ConnectionDep, RecordId, RuntimeDep
from app.api.security import CurrentPrincipal, client_address
from app.protocol import runs
from app.records import record_issue
from app.records.record_issue import ReviewIn, ReviewsIn
from app.records.record_model import ExceptionView
from app.runtime import Runtime

router = APIRouter(prefix="/runs", tags=["batch record"])
Number = Annotated[int, Path(ge=1, le=1_000_000, description="an issued version's number")]
ExceptionKey = Annotated[str, Path(min_length=1, max_length=300, description="the exception's key, e.g. deviation:12")]


def builder(runtime: Runtime) -> record_issue.BuildRecord:
    """The current draft of a run's record (without its reviews: record_issue attaches them)."""
    return runtime.build_record


@router.post("/{run_id}/record/exceptions/{key}/review", response_model=ExceptionView,
             summary="Review one exception of the batch record (QA): a comment and a signature 'reviewed'")
async def review_exception(run_id: RecordId, key: ExceptionKey, body: ReviewIn, principal: CurrentPrincipal,
                           request: Request, conn: ConnectionDep, runtime: RuntimeDep) -> ExceptionView:
    await runs.run_row(conn, run_id)  # 404 before anything else
    return await record_issue.review(conn, run_id, key, body, build=builder(runtime), principal=principal,
                                     now=runtime.clock.now(), client=client_address(request),
                                     threshold=runtime.settings.lockout_threshold)


@router.post("/{run_id}/record/reviews", response_model=list[ExceptionView],
             summary="Review several exceptions of the batch record at once (QA): one comment, one signature "
                     "'reviewed', a signed review each")
async def review_exceptions(run_id: RecordId, body: ReviewsIn, principal: CurrentPrincipal, request: Request,
                            conn: ConnectionDep, runtime: RuntimeDep) -> list[ExceptionView]:
    await runs.run_row(conn, run_id)
    return await record_issue.review_many(conn, run_id, body, build=builder(runtime), principal=principal,
                                          now=runtime.clock.now(), client=client_address(request),
                                          threshold=runtime.settings.lockout_threshold)


@router.get("/{run_id}/record/versions", summary="The issued versions of the run's batch record, oldest first")
async def list_versions(run_id: RecordId, principal: CurrentPrincipal, conn: ConnectionDep) -> list[dict[str, Any]]:
    await runs.run_row(conn, run_id)
    return await record_issue.versions(conn, run_id)


@router.get("/{run_id}/record/versions/{number}", summary="An issued version of the batch record, as issued (JSON)")
async def get_version(run_id: RecordId, number: Number, principal: CurrentPrincipal,
                      conn: ConnectionDep) -> dict[str, Any]:
    record, _ = await record_issue.issued(conn, run_id, number)
    return record


@router.get("/{run_id}/record/versions/{number}/pdf", response_class=Response,
            responses={200: {"content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the PDF/A as issued, its JSON embedded"}},
            summary="An issued version of the batch record, as issued (PDF/A)")
async def get_version_pdf(run_id: RecordId, number: Number, principal: CurrentPrincipal,
                          conn: ConnectionDep) -> Response:
    record, pdf = await record_issue.issued(conn, run_id, number)
    code = record.get("identity", {}).get("run_code", str(run_id))
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="batch-record-{code}-v{number}.pdf"'})
