"""The batch record as JSON: a run's current draft (app/records/record_collect.py) and the record's JSON Schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import ConnectionDep, RecordId, RuntimeDep
from app.api.security import CurrentPrincipal
from app.records import record_issue, record_model, record_render
from app.records.record_model import BatchRecord

router = APIRouter(tags=["batch record"])


@router.get("/runs/{run_id}/record", response_model=BatchRecord,
            summary="The run's batch record, the current draft: identity, exceptions (with their reviews), equipment, "
                    "materials, steps, deviations, alarms, excursions, setpoints, charts, product, release, audit")
async def get_record(run_id: RecordId, principal: CurrentPrincipal, conn: ConnectionDep,
                     runtime: RuntimeDep) -> BatchRecord:
    return await record_issue.draft(conn, run_id, runtime.build_record)


@router.get("/runs/{run_id}/record.pdf", response_class=Response,
            responses={200: {"content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "PDF/A-3b; the record's JSON attached as batch-record-<run>-vdraft.json"}},
            summary="The run's batch record, the current draft, as PDF/A-3b: DRAFT on every page, page n of N, the "
                    "record's JSON embedded")
async def get_record_pdf(run_id: RecordId, principal: CurrentPrincipal, conn: ConnectionDep,
                         runtime: RuntimeDep) -> Response:
    record = await record_issue.draft(conn, run_id, runtime.build_record)
    body = record.model_dump_json().encode()
    pdf = await record_render.render_pdf_async(record, body)
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{record_render.pdf_name(record)}"'})


@router.get("/records/schema", response_model=dict[str, Any],
            summary="The batch record's JSON Schema (draft 2020-12), the contract of GET /runs/{run_id}/record")
async def get_schema() -> dict[str, Any]:
    return record_model.schema()
