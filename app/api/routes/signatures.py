"""Electronic signatures: sign a record (password again + meaning), and list signatures with their manifestation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.deps import ConnectionDep, RuntimeDep
from app.api.security import CurrentPrincipal, client_address
from app.core.problems import PROBLEM_JSON
from app.records import signatures

router = APIRouter(prefix="/signatures", tags=["signatures"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "not signed in, or the re-entered password is wrong (audited, counts toward lockout)",
          "content": {PROBLEM_JSON: {}}},
    403: {"description": "automation accounts and API keys cannot sign", "content": {PROBLEM_JSON: {}}},
    404: {"description": "no such record", "content": {PROBLEM_JSON: {}}},
}


@router.post("", response_model=signatures.SignatureOut, status_code=201, responses=_ERRORS,
             summary="Sign a record: the signer's password again and a meaning (operator, supervisor, QA, admin)")
async def create_signature(body: signatures.SignatureRequest, principal: CurrentPrincipal, request: Request,
                           conn: ConnectionDep, runtime: RuntimeDep) -> signatures.SignatureOut:
    return await signatures.sign(conn, principal, body, client=client_address(request),
                                 threshold=runtime.settings.lockout_threshold)


@router.get("", response_model=list[signatures.SignatureOut],
            summary="Signatures on a record, with printed name, UTC time, meaning and whether still valid")
async def list_signatures(
    principal: CurrentPrincipal,
    conn: ConnectionDep,
    entity_type: Annotated[signatures.SignableType, Query(description="a signable record type")],
    entity_id: Annotated[str | None, Query(description="the record's id; unset: every record of the type")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[signatures.SignatureOut]:
    return await signatures.list_signatures(conn, entity_type, entity_id, limit=limit)
