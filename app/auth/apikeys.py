"""API keys for automation scripts: created with the secret shown once (only its hash is kept), scoped
to a role (never admin), revocable; the principal of a key."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import asyncpg

from app.auth.principal import Principal, Role
from app.auth.users import AuthError, actor_user_id, check_name, require_reason
from app.core.problems import Problem
from app.records import audit

KEY_PREFIX = "ck"
KEY_ROLES = frozenset(Role) - {Role.ADMIN}
"""Roles an API key may have: administration is personal, so no admin keys."""
LAST_USED_RESOLUTION = timedelta(minutes=1)
KEY_COLUMNS = "id, name, role, prefix, created_by, created_at, last_used_at, revoked_at"

def key_public(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "role": row["role"], "prefix": row["prefix"],
        "created_by": row["created_by"], "created_at": row["created_at"], "last_used_at": row["last_used_at"],
        "revoked_at": row["revoked_at"], "revoked": row["revoked_at"] is not None,
    }


def _key_audit(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "role": row["role"], "prefix": row["prefix"],
            "revoked": row["revoked_at"] is not None}


def key_principal(row: Mapping[str, Any]) -> Principal:
    return Principal(kind="apikey", id=row["id"], name=row["name"], role=Role(row["role"]),
                     display_name=f"API key {row['name']}", user_id=row["created_by"])


# --------------------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------------------


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_api_key(token: str) -> tuple[str, str] | None:
    """("prefix", "secret") of "ck_<prefix>_<secret>", None when it is not shaped like a key."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not re.fullmatch(r"[0-9a-f]{8}", parts[1]) or not parts[2]:
        return None
    return parts[1], parts[2]


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX + "_")


async def list_api_keys(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"))


async def create_api_key(
    conn: asyncpg.Connection, *, name: str, role: Role | str, actor: Principal, client: str | None = None,
    reason: str | None = None,
) -> tuple[asyncpg.Record, str]:
    """A new key and its secret "ck_<prefix>_<secret>" (returned here only: the database keeps its SHA-256).
    Audited as apikey.create."""
    check_name("key name", name)
    role = Role(role)
    if role not in KEY_ROLES:
        raise Problem(422, "invalid-key-role", "Role not allowed for an API key",
                      f"an API key cannot have the {role.value} role (administration is personal); "
                      f"allowed: {', '.join(sorted(r.value for r in KEY_ROLES))}")
    secret = secrets.token_urlsafe(32)
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM api_keys WHERE name = $1", name):
            raise Problem(409, "key-name-taken", "Key name taken", f"an API key named {name!r} already exists")
        while True:
            prefix = secrets.token_hex(4)
            if not await conn.fetchval("SELECT 1 FROM api_keys WHERE prefix = $1", prefix):
                break
        row = await conn.fetchrow(
            "INSERT INTO api_keys (name, role, prefix, secret_hash, created_by) VALUES ($1, $2, $3, $4, $5) "
            f"RETURNING {KEY_COLUMNS}", name, role.value, prefix, _secret_hash(secret), actor_user_id(actor))
        assert row is not None
        await audit.record(conn, actor=actor, action="apikey.create", entity_type="apikey", entity_id=row["id"],
                           old=None, new=_key_audit(row), reason=reason, client=client)
    return row, f"{KEY_PREFIX}_{prefix}_{secret}"


async def revoke_api_key(
    conn: asyncpg.Connection, key_id: int, *, actor: Principal, reason: str | None, client: str | None = None,
) -> asyncpg.Record:
    """Revoke a key: the next request with it is rejected. Audited as apikey.revoke."""
    why = require_reason(reason, "apikey.revoke")
    async with conn.transaction():
        old = await conn.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
        if old is None:
            raise Problem(404, "apikey-not-found", "No such API key", f"there is no API key with id {key_id}")
        row = await conn.fetchrow(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {KEY_COLUMNS}",
            key_id)
        assert row is not None
        await audit.record(conn, actor=actor, action="apikey.revoke", entity_type="apikey", entity_id=key_id,
                           old=_key_audit(old), new=_key_audit(row), reason=why, client=client)
    return row


async def principal_for_api_key(conn: asyncpg.Connection, token: str) -> Principal:
    """The key behind "ck_<prefix>_<secret>", checked now (revoked keys fail at once); records its last use
    (at most once a minute)."""
    parsed = parse_api_key(token)
    if parsed is None:
        raise AuthError("the API key is malformed (expected ck_<prefix>_<secret>)", kind="invalid-api-key")
    prefix, secret = parsed
    row = await conn.fetchrow(f"SELECT {KEY_COLUMNS}, secret_hash FROM api_keys WHERE prefix = $1", prefix)
    if row is None or not hmac.compare_digest(row["secret_hash"], _secret_hash(secret)):
        raise AuthError("the API key is not valid", kind="invalid-api-key")
    if row["revoked_at"] is not None:
        raise AuthError("the API key was revoked", kind="api-key-revoked")
    await conn.execute(
        "UPDATE api_keys SET last_used_at = now() "
        "WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - $2::interval)",
        row["id"], LAST_USED_RESOLUTION)
    return key_principal(row)



async def find_api_key_id(conn: asyncpg.Connection, name_or_id: str) -> int | None:
    """The id of the key named (or numbered) `name_or_id`."""
    got = await conn.fetchval("SELECT id FROM api_keys WHERE name = $1 OR id::text = $1", name_or_id)
    return None if got is None else int(got)


async def count_named(conn: asyncpg.Connection, prefix: str) -> int:
    """How many keys have a name starting with `prefix`."""
    return int(await conn.fetchval("SELECT count(*) FROM api_keys WHERE starts_with(name, $1)", prefix) or 0)
