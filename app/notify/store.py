"""The notification policy's versions and the on-call overrides: the one module that writes them.

A change of the policy is a new version (insert-only), with its reason and one audit record; the newest version is
in force. An override (a holiday, a swap) is created and revoked, each audited; it is never deleted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from app.auth.principal import Principal
from app.core.problems import Problem
from app.db import DBConnection
from app.notify.rules import Override, Policy
from app.records import audit

# Key of the advisory lock that serializes new policy versions (two-int form, apart from the other writers' locks).
_LOCK = (0x4E4F5449, 1)  # "NOTI"


async def current(conn: DBConnection) -> tuple[int, Policy] | None:
    """The policy in force and its version, or None when none was ever saved (nobody is notified)."""
    row = await conn.fetchrow("SELECT version, content FROM notification_policy ORDER BY version DESC LIMIT 1")
    if row is None:
        return None
    return int(row["version"]), Policy.model_validate(_json(row["content"]))


async def current_version(conn: DBConnection) -> int | None:
    """The version in force (cheap: the alarm service asks on every refresh)."""
    v = await conn.fetchval("SELECT max(version) FROM notification_policy")
    return None if v is None else int(v)


async def versions(conn: DBConnection, limit: int = 50) -> list[dict[str, Any]]:
    """The policy's versions, newest first, with who changed it, when and why."""
    rows = await conn.fetch("SELECT version, content, content_hash, created_by, created_at, reason "
                            "FROM notification_policy ORDER BY version DESC LIMIT $1", limit)
    return [{**dict(r), "content": _json(r["content"])} for r in rows]


async def save(conn: asyncpg.Connection, policy: Policy, *, principal: Principal, reason: str, at: datetime,
               client: str | None = None) -> int:
    """Save a new version of the policy (audited as notification_policy.change); its version."""
    content = policy.model_dump(mode="json")
    named = sorted({u for rule in policy.rules for tier in rule.tiers for u in tier.notify.users}
                   | {u for rota in policy.rotas for shift in rota.shifts for u in shift.users})
    await _active_users(conn, named, "policy")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *_LOCK)
        old = await current(conn)
        version = (old[0] if old else 0) + 1
        digest = audit.canonical_hash(content)
        await conn.execute(
            "INSERT INTO notification_policy (version, content, content_hash, created_by, created_at, reason) "
            "VALUES ($1, $2::jsonb, $3, $4, $5, $6)", version, json.dumps(content), digest, principal.label, at,
            reason)
        await audit.record(conn, actor=principal, action="notification_policy.change",
                           entity_type="notification_policy", entity_id=str(version),
                           old=None if old is None else {"version": old[0], **old[1].model_dump(mode="json")},
                           new={"version": version, "content_hash": digest, **content}, reason=reason, client=client)
    return version


# -- on-call overrides ---------------------------------------------------------------------------------------------

_OVERRIDE_COLUMNS = ("id, rota, starts_at, ends_at, users, reason, created_by, created_at, revoked_at, revoked_by")


async def overrides(conn: DBConnection, *, covering: datetime | None = None, since: datetime | None = None,
                    include_revoked: bool = False) -> list[dict[str, Any]]:
    """Overrides, oldest first: those covering an instant, or ending after `since`; revoked ones only if asked."""
    where: list[str] = []
    args: list[Any] = []
    if not include_revoked:
        where.append("revoked_at IS NULL")
    if covering is not None:
        args.append(covering)
        where.append(f"starts_at <= ${len(args)} AND ends_at > ${len(args)}")
    if since is not None:
        args.append(since)
        where.append(f"ends_at > ${len(args)}")
    sql = f"SELECT {_OVERRIDE_COLUMNS} FROM oncall_override"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = await conn.fetch(sql + " ORDER BY created_at, id", *args)
    return [{**dict(r), "users": list(r["users"])} for r in rows]


def as_overrides(rows: Sequence[dict[str, Any]]) -> list[Override]:
    """Override rows as the rules take them (oldest first: the newest covering one wins)."""
    return [Override(r["rota"], r["starts_at"], r["ends_at"], tuple(r["users"])) for r in rows]


async def create_override(conn: asyncpg.Connection, *, rota: str, starts_at: datetime, ends_at: datetime,
                          users: Sequence[str], reason: str, principal: Principal, at: datetime,
                          client: str | None = None) -> dict[str, Any]:
    """Put users on call for a rota between two instants instead of its shifts (audited as oncall.override)."""
    policy = await current(conn)
    known = [r.name for r in policy[1].rotas] if policy else []
    if rota not in known:
        raise Problem(404, "unknown-rota", "Unknown rota", f"the notification policy has no rota {rota!r}; rotas: "
                      f"{', '.join(known) or 'none'}", rule="unknown_rota", field="rota", rotas=known)
    await _active_users(conn, users, "users")
    if ends_at <= starts_at:
        raise Problem(422, "override-window", "Invalid override", f"ends_at {ends_at.isoformat()} is not after "
                      f"starts_at {starts_at.isoformat()}", rule="override_window", field="ends_at")
    async with conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO oncall_override (rota, starts_at, ends_at, users, reason, created_by, created_at) VALUES "
            f"($1, $2, $3, $4::text[], $5, $6, $7) RETURNING {_OVERRIDE_COLUMNS}", rota, starts_at, ends_at,
            list(users), reason, principal.label, at)
        assert row is not None
        out = {**dict(row), "users": list(row["users"])}
        await audit.record(conn, actor=principal, action="oncall.override", entity_type="oncall_override",
                           entity_id=str(row["id"]), old=None, new=out, reason=reason, client=client)
    return out


async def revoke_override(conn: asyncpg.Connection, override_id: int, *, reason: str, principal: Principal,
                          at: datetime, client: str | None = None) -> dict[str, Any]:
    """Revoke an override (audited as oncall.revoke); revoking twice is a 409."""
    async with conn.transaction():
        old = await conn.fetchrow(f"SELECT {_OVERRIDE_COLUMNS} FROM oncall_override WHERE id = $1 FOR UPDATE",
                                  override_id)
        if old is None:
            raise Problem(404, "override-not-found", "Not found", f"there is no on-call override {override_id}",
                          rule="unknown_override")
        if old["revoked_at"] is not None:
            raise Problem(409, "override-revoked", "Already revoked", f"override {override_id} was revoked at "
                          f"{old['revoked_at'].isoformat()} by {old['revoked_by']}", rule="override_revoked")
        row = await conn.fetchrow(f"UPDATE oncall_override SET revoked_at = $2, revoked_by = $3 WHERE id = $1 "
                                  f"RETURNING {_OVERRIDE_COLUMNS}", override_id, at, principal.label)
        assert row is not None
        out = {**dict(row), "users": list(row["users"])}
        await audit.record(conn, actor=principal, action="oncall.revoke", entity_type="oncall_override",
                           entity_id=str(override_id), old={**dict(old), "users": list(old["users"])}, new=out,
                           reason=reason, client=client)
    return out


async def _active_users(conn: DBConnection, names: Sequence[str], field: str) -> None:
    """404 naming the users that are not active accounts (a call tree must not name someone who cannot be reached)."""
    if not names:
        return
    found = {r["username"]: r for r in await conn.fetch(
        "SELECT username, disabled FROM users WHERE username = ANY($1::text[])", list(names))}
    bad = [u for u in names if u not in found or found[u]["disabled"]]
    if bad:
        raise Problem(404, "unknown-user", "Unknown user", f"no active user {', '.join(bad)}: create or enable the "
                      f"account first", rule="unknown_user", field=field, users=bad)


async def role_users(conn: DBConnection) -> dict[str, tuple[str, ...]]:
    """Active users by role (a tier may notify every user of a role)."""
    out: dict[str, list[str]] = {}
    for r in await conn.fetch("SELECT username, role FROM users WHERE NOT disabled ORDER BY username"):
        out.setdefault(str(r["role"]), []).append(str(r["username"]))
    return {k: tuple(v) for k, v in out.items()}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
