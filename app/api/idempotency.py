"""Idempotency-Key for step posts: the same key and body replays the first answer; another body is 422."""

from __future__ import annotations

import json
from typing import Any

from app.auth.principal import Principal
from app.core.problems import Problem
from app.db import DBConnection
from app.protocol.steps import Reply


async def stored_reply(conn: DBConnection, principal: Principal, key: str, path: str,
                       body_hash: str) -> tuple[int, Any] | None:
    """The stored answer for this key (same request), None when unseen; 422 when the key was used otherwise."""
    row = await conn.fetchrow("SELECT path, body_hash, status, response FROM idempotency_key "
                              "WHERE principal = $1 AND key = $2", principal.label, key)
    if row is None:
        return None
    if row["path"] != path or row["body_hash"] != body_hash:
        raise Problem(422, "idempotency-key-reused", "Idempotency-Key reused",
                      f"Idempotency-Key {key!r} was used for another request ({row['path']}, another body); "
                      "use a new key for a new request", rule="idempotency_key_mismatch", idempotency_key=key)
    return int(row["status"]), json.loads(row["response"])


def store_reply(principal: Principal, key: str, path: str, body_hash: str) -> Reply:
    """A step post's `reply`: keeps its 201 answer under the key, in the step's own transaction."""

    async def keep(conn: DBConnection, body: dict[str, Any]) -> None:
        await conn.execute(
            "INSERT INTO idempotency_key (principal, key, method, path, body_hash, status, response) "
            "VALUES ($1, $2, 'POST', $3, $4, 201, $5::jsonb)", principal.label, key, path, body_hash, json.dumps(body))

    return keep
