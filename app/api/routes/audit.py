"""The audit trail for QA: filtered reading and chain verification."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import ConnectionDep
from app.api.security import CurrentPrincipal
from app.core.problems import Problem
from app.records import audit

router = APIRouter(prefix="/audit", tags=["audit"])

MAX_LIMIT = 500


class AuditRecord(BaseModel):
    seq: int
    at: str = Field(description="server time, UTC")
    actor_kind: Literal["user", "apikey", "system"]
    actor_id: int | None
    actor_name: str
    actor_role: str
    action: str
    entity_type: str
    entity_id: str | None
    old: Any
    new: Any
    reason: str | None
    client: str | None
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditRecord]
    next_after_seq: int | None = Field(description="pass as after_seq for the next page; null on the last page")


class ChainBreak(BaseModel):
    seq: int
    kind: Literal["edited", "deleted", "reordered_or_inserted", "truncated", "appended"]
    detail: str


class VerifyReport(BaseModel):
    ok: bool
    rows: int = Field(description="rows checked")
    last_seq: int = Field(description="last seq checked (before the break, if any)")
    last_hash: str
    first_broken: ChainBreak | None


@router.get("", response_model=AuditPage, summary="Audit records, oldest first, filtered (QA, admin)")
async def list_audit(
    principal: CurrentPrincipal,
    conn: ConnectionDep,
    entity_type: str | None = None,
    entity_id: str | None = None,
    actor: Annotated[str | None, Query(description="username or API key name")] = None,
    action: Annotated[str | None, Query(description="e.g. user.disable; 'user.' matches every user action")] = None,
    start: Annotated[datetime | None, Query(alias="from", description="at or after (with a UTC offset)")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="before (with a UTC offset)")] = None,
    after_seq: Annotated[int, Query(ge=0, description="records after this seq (paging)")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")] = 100,
) -> AuditPage:
    for name, t in (("from", start), ("to", end)):
        if t is not None and t.tzinfo is None:
            raise Problem(400, "naive-time", "Time without offset",
                          f"{name}: give a UTC offset, e.g. 2026-11-21T12:00Z")
    rows = await audit.search(conn, entity_type=entity_type, entity_id=entity_id, actor=actor, action=action,
                              start=start, end=end, after_seq=after_seq, limit=limit + 1)
    items = [AuditRecord(**r) for r in rows[:limit]]
    return AuditPage(items=items, next_after_seq=items[-1].seq if len(rows) > limit else None)


@router.get("/verify", response_model=VerifyReport,
            summary="Recompute the hash chain; report the first broken row (QA, admin)")
async def verify_audit(principal: CurrentPrincipal, conn: ConnectionDep) -> VerifyReport:
    result = await audit.verify(conn)
    return VerifyReport.model_validate(result.as_dict())
