"""Deviations of culture runs: the one place that opens, comments and closes them.

Opened by step posts (out-of-window overrides, acceptance limits, dose), by the schedule engine (missed steps) and
by the alarm service (excursion rules); commented by anyone who works the run; closed by QA with a signature. A
deviation written from the alarm service's spool carries a record key, so a replay never opens it twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import case, func, select, tuple_

from app.auth.principal import Principal
from app.core.problems import Problem
from app.db import DBConnection, query, schema
from app.protocol.common import json_ready, not_found, require_meaning
from app.protocol.schemas import DeviationClose
from app.records import audit, signatures
from app.records.signatures import Signer

_ASSESSMENT = ("classification", "impact", "actions")


@signatures.register_signable("deviation", description="a deviation of a culture run: rule, status, closure",
                              requires={"close": ("approved",)})
async def _load_deviation(conn: DBConnection, entity_id: str) -> Mapping[str, Any] | None:
    if not entity_id.isdigit():
        return None
    row = await conn.fetchrow(
        "SELECT id, run_id, step_key, rule, severity, description, opened_at, opened_by, status, closed_at, "
        "closed_by, close_reason, classification, impact, actions FROM deviation WHERE id = $1", int(entity_id))
    if row is None:
        return None
    # QA's assessment is signed with the closure; a deviation closed before it existed keeps its signed content
    return {k: v for k, v in dict(row).items() if v is not None or k not in _ASSESSMENT}


async def open_deviation(conn: DBConnection, run_id: int, *, step_key: str | None, rule: str, severity: str,
                         description: str, facts: Any, at: datetime, opened_by: str,
                         record_key: str | None = None) -> int | None:
    """Open a deviation on a run; the id, or None when `record_key` was written before (a replay).

    The caller writes the audit record in the same transaction (it knows why the deviation opened).
    """
    got = await conn.fetchval(
        "INSERT INTO deviation (run_id, step_key, rule, severity, description, facts, opened_at, opened_by, "
        "record_key) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9::uuid) "
        "ON CONFLICT (record_key) DO NOTHING RETURNING id",
        run_id, step_key, rule, severity, description, audit.to_json_text(facts), at, opened_by, record_key)
    return None if got is None else int(got)


async def count_open(conn: DBConnection, run_id: int) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM deviation WHERE run_id = $1 AND status = 'open'",
                                   run_id) or 0)


async def open_ids(conn: DBConnection, run_id: int) -> list[int]:
    return [int(r["id"]) for r in await conn.fetch(
        "SELECT id FROM deviation WHERE run_id = $1 AND status = 'open' ORDER BY id", run_id)]


async def opened_by_rules(conn: DBConnection, run_id: int, prefix: str) -> list[dict[str, Any]]:
    """The deviations of a run whose rule starts with `prefix` (the excursion rules of the alarm service)."""
    return [dict(r) for r in await conn.fetch(
        "SELECT id, rule, description, status, opened_at FROM deviation WHERE run_id = $1 "
        "AND starts_with(rule, $2) ORDER BY id", run_id, prefix)]


async def with_rule(conn: DBConnection, rule: str) -> list[dict[str, Any]]:
    """Every deviation of `rule` with its run's code, oldest first (the alarm service's notification alarms)."""
    return [dict(r) for r in await conn.fetch(
        "SELECT d.id, d.run_id, r.code AS run_code, d.facts, d.status, d.opened_at FROM deviation d "
        "JOIN culture_run r ON r.id = d.run_id WHERE d.rule = $1 ORDER BY d.id", rule)]


async def rules_opened(conn: DBConnection, run_id: int, rule: str) -> set[str]:
    """The steps of a run that have a deviation of `rule` (the engine opens one missed-step deviation per step)."""
    return {str(r["step_key"]) for r in await conn.fetch(
        "SELECT step_key FROM deviation WHERE run_id = $1 AND rule = $2 AND step_key IS NOT NULL", run_id, rule)}


DEVIATION_COLUMNS = ("id, run_id, step_key, rule, severity, description, facts, opened_at, opened_by, status, "
                     "closed_at, closed_by, close_reason, classification, impact, actions")


async def deviation_view(conn: DBConnection, deviation_id: int, *, comments: bool = True) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT {DEVIATION_COLUMNS} FROM deviation WHERE id = $1", deviation_id)
    if row is None:
        raise not_found("deviation", f"there is no deviation with id {deviation_id}")
    out: dict[str, Any] = dict(row)
    out["facts"] = None if row["facts"] is None else json.loads(row["facts"])
    if comments:
        out["comments"] = [dict(c) for c in await conn.fetch(
            "SELECT id, at, author, text FROM deviation_comment WHERE deviation_id = $1 ORDER BY id", deviation_id)]
    return dict(json_ready(out))


# QA's work list (order "work"): open ones first, the graver severities first, then the oldest first. The code opens
# deviations of severity "deviation" today; the graver names rank above it should a rule open them.
SEVERITY_RANK = {"critical": 0, "major": 1, "high": 2}
CURSOR_SEP = "~"


def _work_keys(t: Any) -> tuple[Any, ...]:
    open_first = case((t.c.status == "open", 0), else_=1)
    severity = case(*((t.c.severity == name, rank) for name, rank in SEVERITY_RANK.items()),
                    else_=len(SEVERITY_RANK))
    return open_first, severity, t.c.opened_at, t.c.id


def work_cursor(row: Mapping[str, Any]) -> str:
    """Where a deviation stands in the work order, as it was listed: the next page starts after these keys, so a
    deviation closed meanwhile moves nothing (its keys in the link are those it was shown with)."""
    opened = row["opened_at"]
    opened_text = opened if isinstance(opened, str) else opened.isoformat()
    keys = (0 if row["status"] == "open" else 1, SEVERITY_RANK.get(str(row["severity"]), len(SEVERITY_RANK)),
            opened_text, row["id"])
    return CURSOR_SEP.join(str(k) for k in keys)


def parse_work_cursor(text: str) -> tuple[int, int, datetime, int]:
    """A work_cursor back as its keys; 422 `invalid_cursor` (field `after`) when it is none."""
    parts = text.split(CURSOR_SEP)
    try:
        if len(parts) != 4:
            raise ValueError(text)
        opened = datetime.fromisoformat(parts[2].replace("Z", "+00:00"))
        if opened.tzinfo is None:
            raise ValueError(text)
        return int(parts[0]), int(parts[1]), opened, int(parts[3])
    except ValueError:
        raise Problem(422, "invalid-cursor", "Invalid cursor",
                      f"after: {text!r} is not the work_cursor of a listed deviation", rule="invalid_cursor",
                      field="after") from None


async def list_deviations(conn: DBConnection, run_id: int | None, status: str | None, limit: int = 200, *,
                          severity: str | None = None, rule: str | None = None, run_code: str | None = None,
                          order: Literal["id", "work"] = "id", after_id: int | None = None,
                          after: str | None = None) -> list[dict[str, Any]]:
    """Deviations of one run, status, severity, rule when given, each with its run's code; oldest first (order
    "id", `after_id`: the page after that id), or QA's work order ("work": open first, graver first, oldest first;
    each with its `work_cursor`, and `after`: the page after the deviation that carried it)."""
    t, r = schema.deviation, schema.culture_run
    q = (select(*(t.c[name.strip()] for name in DEVIATION_COLUMNS.split(",")), r.c.code.label("run_code"))
         .select_from(t.join(r, r.c.id == t.c.run_id)))
    for column, value in ((t.c.run_id, run_id), (t.c.status, status), (t.c.severity, severity), (t.c.rule, rule)):
        if value is not None:
            q = q.where(column == value)
    if run_code is not None:
        q = q.where(func.lower(r.c.code) == run_code.lower())
    keys = _work_keys(t) if order == "work" else (t.c.id,)
    if order == "work" and after is not None:
        q = q.where(tuple_(*keys) > tuple_(*parse_work_cursor(after)))
    elif order == "id" and after_id is not None:
        q = q.where(t.c.id > after_id)
    out = []
    for row in await query.fetch(conn, q.order_by(*keys).limit(limit)):
        d = dict(row)
        d["facts"] = None if row["facts"] is None else json.loads(row["facts"])
        if order == "work":
            d["work_cursor"] = work_cursor(row)
        out.append(json_ready(d))
    return out


async def comment_deviation(conn: DBConnection, deviation_id: int, text: str, *, principal: Principal,
                            client: str | None) -> dict[str, Any]:
    async with conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM deviation WHERE id = $1", deviation_id):
            raise not_found("deviation", f"there is no deviation with id {deviation_id}")
        cid = await conn.fetchval("INSERT INTO deviation_comment (deviation_id, author, text) VALUES ($1, $2, $3) "
                                  "RETURNING id", deviation_id, principal.label, text)
        await audit.record(conn, actor=principal, action="deviation.comment", entity_type="deviation",
                           entity_id=deviation_id, old=None, new={"comment_id": cid, "text": text}, reason=None,
                           client=client)
    return await deviation_view(conn, deviation_id)


async def close_deviation(conn: DBConnection, deviation_id: int, body: DeviationClose, *, principal: Principal,
                          signer: Signer, now: datetime, client: str | None) -> dict[str, Any]:
    require_meaning(body.signature, "approved", "closing a deviation")
    async with conn.transaction():
        row = await conn.fetchrow("SELECT status FROM deviation WHERE id = $1 FOR UPDATE", deviation_id)
        if row is None:
            raise not_found("deviation", f"there is no deviation with id {deviation_id}")
        if row["status"] != "open":
            raise Problem(409, "deviation-closed", "Deviation already closed",
                          f"deviation {deviation_id} is already closed", rule="deviation_closed")
        await conn.execute("UPDATE deviation SET status = 'closed', closed_at = $2, closed_by = $3, close_reason = $4, "
                           "classification = $5, impact = $6, actions = $7 WHERE id = $1", deviation_id, now,
                           principal.label, body.reason, body.classification, body.impact, body.actions)
        await audit.record(conn, actor=principal, action="deviation.close", entity_type="deviation",
                           entity_id=deviation_id, old={"status": "open"},
                           new={"status": "closed", "closed_at": now, "classification": body.classification,
                                "impact": body.impact, "actions": body.actions}, reason=body.reason, client=client)
        await signatures.sign_within(conn, signer, body.signature, entity_type="deviation",
                                     entity_id=str(deviation_id), client=client)
    return await deviation_view(conn, deviation_id)
