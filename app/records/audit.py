"""The audit trail: one append-only, hash-chained row per state change, written in the changer's transaction.

Every row holds who (actor kind, id, name and role: a user, an API key or the service itself), when
(`at`, the database server's UTC clock), what (action `<entity>.<verb>`, entity type and id, old and
new values), why (reason, required for changes and deletions) and from where (client address).

Chain: `hash_n = SHA-256(hash_{n-1} || canonical JSON of row n)` over the hex text of the previous
hash, where the canonical JSON covers every column except `prev_hash` and `hash` (sorted keys, no
whitespace, times as UTC ISO 8601 with microseconds and `Z`, numbers in their exact decimal value).
The first row's `prev_hash` is 64 zeros. `seq` runs 1, 2, 3... without gaps: writers serialize on an
advisory transaction lock and take the next number from the chain head, so a rolled-back change
leaves no hole, and a hole always means a deleted row.

The database enforces the rest (migration 20261121_0003): a trigger rejects UPDATE, DELETE and
TRUNCATE; the service's role `culturectl_app` may only SELECT and INSERT; an insert trigger accepts a
row only when it extends the head (`audit_head`) by exactly one with the head's hash as `prev_hash`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from sqlalchemy import func, select

from app.auth.principal import Principal
from app.db import DBConnection, query, schema

GENESIS_HASH = "0" * 64
# Key of the advisory transaction lock that serializes audit writers (any fixed 64-bit number).
AUDIT_LOCK_KEY = 0x63756C7475726501  # "culture" + 0x01

# The columns covered by the hash, in the order the API shows them.
HASHED_FIELDS = (
    "seq", "at", "actor_kind", "actor_id", "actor_name", "actor_role", "action",
    "entity_type", "entity_id", "old", "new", "reason", "client",
)


class AuditError(RuntimeError):
    """A programming error in a call to `record` (no transaction, missing reason...)."""


# --------------------------------------------------------------------------------------------------
# Canonical JSON
# --------------------------------------------------------------------------------------------------


def utc_iso(t: datetime) -> str:
    """`2026-11-21T09:00:00.000000Z`: always UTC, always microseconds (what timestamptz keeps)."""
    if t.tzinfo is None:
        raise ValueError("naive datetime in an audit record: times must carry a UTC offset")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _default(value: Any) -> Any:
    """How values that JSON has no type for are stored in old/new."""
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        # a float when that is the same value (JSON has no decimal type), else the exact text
        if value.is_finite() and Decimal(repr(float(value))) == value:
            return float(value)
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, UUID | bytes):
        return value.hex() if isinstance(value, bytes) else str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"cannot store {type(value).__name__} in an audit record")


def _finite(value: Any) -> Any:
    """NaN and infinities have no JSON (nor jsonb) form: they are stored as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json_text(value: Any) -> str:
    """`value` as the JSON text stored in a jsonb column."""
    return json.dumps(_finite(value), default=_default, ensure_ascii=False, allow_nan=False)


def _number(d: Decimal) -> str:
    """One spelling per value: 1, 1.0, 1e0 and 1.00 are all "1"; no exponent, no trailing zeros."""
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _dump(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, Decimal):
        out.append(_number(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _dump(value[key], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _dump(item, out)
        out.append("]")
    else:  # pragma: no cover - _parse only yields the types above
        raise TypeError(type(value).__name__)


def _parse(text: str) -> Any:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def canonical_json(value: Any) -> str:
    """Canonical JSON text: sorted keys, no whitespace, UTC times, numbers by exact decimal value.

    The same value gives the same text whether it comes from Python or back from a jsonb column
    (jsonb rewrites 1e+20 as 100000000000000000000 and keeps 1.0 as 1.0: both spell it "1" here).
    """
    out: list[str] = []
    _dump(_parse(to_json_text(value)), out)
    return "".join(out)


def canonical_hash(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of `value`."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def chain_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """hash_n = SHA-256(hash_{n-1} || canonical JSON of row n) over the hashed fields of `row`."""
    body = {name: row.get(name) for name in HASHED_FIELDS}
    at = body["at"]
    if isinstance(at, datetime):
        body["at"] = utc_iso(at)
    for name in ("old", "new"):
        text = body[name]
        if isinstance(text, str):  # jsonb as asyncpg returns it: JSON text
            body[name] = _parse(text)
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _json_or_none(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else to_json_text(dict(value))


async def record(
    conn: DBConnection,
    *,
    actor: Principal,
    action: str,
    entity_type: str,
    entity_id: str | int | None,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    reason: str | None,
    client: str | None = None,
) -> int:
    """Append one audit row in the caller's transaction and return its `seq`.

    The caller wraps its change and this call in `async with conn.transaction():`, so both commit or
    neither does. A change (old and new) or a deletion (old only) needs a reason. Call it last in the
    transaction: audit writers queue on one advisory lock, held until the transaction ends.
    """
    if not conn.is_in_transaction():
        raise AuditError("audit.record must run inside the transaction of the change it records")
    if "." not in action or action.strip() != action or not action:
        raise AuditError(f"audit action {action!r} must be '<entity>.<verb>'")
    reason = (reason or "").strip() or None
    if old is not None and reason is None:
        raise AuditError(f"{action}: a reason is required for changes and deletions (21 CFR 11.10(e))")

    old_text, new_text = _json_or_none(old), _json_or_none(new)
    # Statement 1 takes the lock; statement 2 reads the head with a snapshot taken after the lock was
    # granted (READ COMMITTED), so it sees the previous writer's committed row.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK_KEY)
    head = await conn.fetchrow("SELECT seq, hash, clock_timestamp() AS now FROM audit_head")
    if head is None:
        raise AuditError("audit_head is missing: run the migrations (culturectl db upgrade)")
    row: dict[str, Any] = {
        "seq": int(head["seq"]) + 1,
        "at": head["now"],
        "actor_kind": actor.kind,
        "actor_id": actor.id,
        "actor_name": actor.name,
        "actor_role": actor.role.value,
        "action": action,
        "entity_type": entity_type,
        "entity_id": None if entity_id is None else str(entity_id),
        "old": old_text,
        "new": new_text,
        "reason": reason,
        "client": client,
    }
    prev_hash = str(head["hash"])
    row_hash = chain_hash(prev_hash, row)
    await conn.execute(
        """
        INSERT INTO audit_log (seq, at, actor_kind, actor_id, actor_name, actor_role, action,
                               entity_type, entity_id, old, new, reason, client, prev_hash, hash)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12, $13, $14, $15)
        """,
        row["seq"], row["at"], row["actor_kind"], row["actor_id"], row["actor_name"], row["actor_role"],
        action, entity_type, row["entity_id"], old_text, new_text, reason, client, prev_hash, row_hash,
    )
    return int(row["seq"])


# --------------------------------------------------------------------------------------------------
# Reading and verifying
# --------------------------------------------------------------------------------------------------

async def search(conn: DBConnection, *, entity_type: str | None = None, entity_id: str | None = None,
                 actor: str | None = None, action: str | None = None, start: datetime | None = None,
                 end: datetime | None = None, after_seq: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Audit records after `after_seq`, oldest first, at most `limit`; an action ending in '.' matches a prefix."""
    t = schema.audit_log
    q = select(t).where(t.c.seq > after_seq)
    for column, value in ((t.c.entity_type, entity_type), (t.c.entity_id, entity_id), (t.c.actor_name, actor)):
        if value is not None:
            q = q.where(column == value)
    if action is not None:
        q = q.where(func.starts_with(t.c.action, action) if action.endswith(".") else t.c.action == action)
    if start is not None:
        q = q.where(t.c.at >= start)
    if end is not None:
        q = q.where(t.c.at < end)
    return [row_to_dict(r) for r in await query.fetch(conn, q.order_by(t.c.seq).limit(limit))]


AUDIT_COLUMNS = (
    "seq, at, actor_kind, actor_id, actor_name, actor_role, action, entity_type, entity_id, "
    "old, new, reason, client, prev_hash, hash"
)


def row_to_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """An audit row for the API: times in UTC ISO, old/new as JSON values."""
    out = {name: row[name] for name in (*HASHED_FIELDS, "prev_hash", "hash")}
    out["at"] = utc_iso(row["at"])
    for name in ("old", "new"):
        out[name] = None if row[name] is None else json.loads(row[name])
    return out


@dataclass(frozen=True, slots=True)
class Break:
    """The first row where the chain does not hold."""

    seq: int
    kind: str  # edited | deleted | reordered_or_inserted | truncated | appended
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    rows: int
    last_seq: int
    last_hash: str
    first_broken: Break | None

    def as_dict(self) -> dict[str, Any]:
        broken = None
        if self.first_broken is not None:
            b = self.first_broken
            broken = {"seq": b.seq, "kind": b.kind, "detail": b.detail}
        return {"ok": self.ok, "rows": self.rows, "last_seq": self.last_seq, "last_hash": self.last_hash,
                "first_broken": broken}


def check_chain(rows: Sequence[Mapping[str, Any]] | Any, *, start_seq: int = 1,
                start_hash: str = GENESIS_HASH) -> tuple[Break | None, int, int, str]:
    """Walk rows in `seq` order; returns (first break or None, rows seen, last seq, last computed hash).

    Checks, per row: its seq follows the previous one (a hole = deleted rows), its prev_hash is the
    previous row's hash (else a row was inserted or rows were reordered), and its own hash matches its
    content (else the row was edited).
    """
    expected_seq, prev = start_seq, start_hash
    n = 0
    for r in rows:
        n += 1
        seq = int(r["seq"])
        if seq != expected_seq:
            if seq > expected_seq:
                missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
                return (Break(expected_seq, "deleted",
                              f"seq {missing} missing: row(s) deleted before seq {seq}"), n, expected_seq - 1, prev)
            return (Break(seq, "reordered_or_inserted",
                          f"seq {seq} out of order after seq {expected_seq - 1}"), n, expected_seq - 1, prev)
        if r["prev_hash"] != prev:
            return (Break(seq, "reordered_or_inserted",
                          f"seq {seq}: prev_hash does not match the hash of seq {seq - 1} "
                          "(a row was inserted, or rows were reordered)"), n, seq - 1, prev)
        computed = chain_hash(prev, r)
        if computed != r["hash"]:
            return (Break(seq, "edited", f"seq {seq}: stored hash does not match its content (row edited)"),
                    n, seq - 1, prev)
        prev = computed
        expected_seq = seq + 1
    return None, n, expected_seq - 1, prev


async def verify(conn: DBConnection, *, batch: int = 2000) -> VerifyResult:
    """Recompute the whole chain in one consistent snapshot and report the first broken row."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
        brk: Break | None = None
        total, last_seq, last_hash = 0, 0, GENESIS_HASH
        after = 0
        while brk is None:
            rows = await conn.fetch(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2", after, batch
            )
            if not rows:
                break
            brk, n, last_seq, last_hash = check_chain(rows, start_seq=last_seq + 1, start_hash=last_hash)
            total += n
            after = int(rows[-1]["seq"])
        if brk is None:
            if head is None:
                brk = Break(last_seq + 1, "truncated", "the chain head (audit_head) is missing")
            elif int(head["seq"]) > last_seq:
                brk = Break(last_seq + 1, "deleted",
                            f"the chain head is at seq {head['seq']} but the last row is seq {last_seq}: "
                            f"seq {last_seq + 1}..{head['seq']} deleted")
            elif int(head["seq"]) < last_seq:
                brk = Break(int(head["seq"]) + 1, "appended",
                            f"rows after seq {head['seq']} were added outside the audit writer")
            elif head["hash"] != last_hash:
                brk = Break(last_seq, "edited", f"seq {last_seq}: hash differs from the chain head's")
    return VerifyResult(ok=brk is None, rows=total, last_seq=last_seq, last_hash=last_hash, first_broken=brk)
