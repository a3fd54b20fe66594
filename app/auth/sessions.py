"""Logins and sessions: a login opens a revocable session behind a short-lived token; logout and renewal;
the principal of a token. Failed logins count toward the user's lockout (app.auth.users)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt

from app.auth import passwords, throttle, tokens
from app.auth.principal import SYSTEM, Principal
from app.auth.users import (
    LOCKOUT_THRESHOLD,
    QUALIFIED_USER_COLUMNS,
    USER_COLUMNS,
    AuthError,
    auto_unlock,
    register_failure,
    unlock_note,
    user_principal,
)
from app.core.problems import Problem
from app.records import audit

# --------------------------------------------------------------------------------------------------
# Login, sessions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    token: tokens.IssuedToken
    user: asyncpg.Record


async def login(
    conn: asyncpg.Connection, username: str, password: str, *, key: bytes, ttl: timedelta,
    threshold: int = LOCKOUT_THRESHOLD, client: str | None = None,
) -> Login:
    """Check the credentials and open a session. Audited as auth.login, or auth.login_failed (+ user.lock when
    this failure locked the account); the failure is committed before the error is raised.
    Abuse limits first (app.auth.throttle, rule login_rate): a slowed attempt is a 429 and checks no password."""
    throttle.check("login_rate", client=client, user=username)
    query = f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = $1"
    row = await conn.fetchrow(query, username)
    if row is not None and row["locked_at"] is not None and await auto_unlock(conn, row["id"], client=client):
        row = await conn.fetchrow(query, username)
    ok = await passwords.verify_hash_async(password, row["password_hash"] if row else None)

    async def failed(cause: str) -> None:
        async with conn.transaction():
            await audit.record(conn, actor=SYSTEM, action="auth.login_failed", entity_type="user",
                               entity_id=row["id"] if row else None, old=None,
                               new={"username": username, "cause": cause}, reason=cause, client=client)
        if not ok:  # a wrong password (or an unknown name) counts toward the abuse limits
            await throttle.failed(conn, "login_rate", client=client, user=username)

    if row is None:
        await failed("unknown username")
        raise AuthError("wrong username or password", kind="login-failed")
    if row["locked_at"] is not None:
        await failed("account locked")
        raise Problem(403, "account-locked", "Account locked",
                      f"the account is locked after {threshold} consecutive failed logins; "
                      f"{unlock_note(row['locked_at'])}")
    if not ok:
        await failed("wrong password")
        if await register_failure(conn, row["id"], purpose="login", client=client, threshold=threshold):
            locked_at = await conn.fetchval("SELECT locked_at FROM users WHERE id = $1", row["id"])
            raise Problem(403, "account-locked", "Account locked",
                          f"the account is now locked after {threshold} consecutive failed logins; "
                          f"{unlock_note(locked_at)}")
        raise AuthError("wrong username or password", kind="login-failed")
    if row["disabled"]:
        await failed("account disabled")
        raise Problem(403, "account-disabled", "Account disabled", "the account is disabled; ask an admin")
    throttle.succeeded("login_rate", username)
    issued = tokens.issue(key, row["id"], ttl)
    async with conn.transaction():
        await conn.execute("UPDATE users SET failed_logins = 0 WHERE id = $1 AND failed_logins <> 0", row["id"])
        await conn.execute("INSERT INTO sessions (jti, user_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
                           issued.jti, row["id"], issued.issued_at, issued.expires_at)
        await audit.record(conn, actor=user_principal(row, issued.jti), action="auth.login", entity_type="user",
                           entity_id=row["id"], old=None,
                           new={"session_expires_at": issued.expires_at.isoformat()}, reason=None, client=client)
    return Login(issued, row)


async def logout(conn: asyncpg.Connection, principal: Principal, *, client: str | None = None) -> None:
    """End the principal's session (its token stops working at once). Audited as auth.logout."""
    if principal.kind != "user" or principal.token_id is None:
        raise Problem(400, "no-session", "No session to end",
                      "only a user's login session can be logged out; an API key is ended by revoking it")
    async with conn.transaction():
        await conn.execute("UPDATE sessions SET revoked_at = now() WHERE jti = $1 AND revoked_at IS NULL",
                           principal.token_id)
        await audit.record(conn, actor=principal, action="auth.logout", entity_type="user", entity_id=principal.id,
                           old=None, new=None, reason=None, client=client)


async def renew(conn: asyncpg.Connection, principal: Principal, *, key: bytes, ttl: timedelta,
                longest: timedelta) -> tokens.IssuedToken:
    """A fresh token for the principal's open session (same session: a logout still ends it), while the session is
    younger than `longest` since its login. Not audited: it changes no record; the login and logout are."""
    if principal.kind != "user" or principal.token_id is None or principal.id is None:
        raise Problem(400, "no-session", "No session to renew",
                      "only a user's login session can be renewed; API keys do not expire")
    row = await conn.fetchrow("SELECT issued_at FROM sessions WHERE jti = $1 AND revoked_at IS NULL",
                              principal.token_id)
    if row is None:
        raise AuthError("the session was ended; log in again", kind="session-revoked")
    now = datetime.now(UTC)
    if now - row["issued_at"] >= longest:  # the row keeps the login time; tokens carry their own
        raise AuthError(f"the session reached its longest duration ({longest}); log in again",
                        kind="session-too-long")
    issued = tokens.issue(key, principal.id, ttl, now=now, jti=principal.token_id)
    await conn.execute("UPDATE sessions SET expires_at = $2 WHERE jti = $1 AND revoked_at IS NULL",
                       principal.token_id, issued.expires_at)
    return issued


async def principal_for_token(conn: asyncpg.Connection, key: bytes, token: str) -> Principal:
    """The user behind a session token, checked against the database now (revoked, disabled, locked)."""
    try:
        claims = tokens.decode(key, token)
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired; log in again", kind="token-expired") from None
    except jwt.InvalidTokenError:
        raise AuthError("the token is not valid", kind="invalid-token") from None
    row = await conn.fetchrow(
        f"SELECT s.user_id AS session_user, s.expires_at, s.revoked_at, {QUALIFIED_USER_COLUMNS} "
        "FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.jti = $1", claims["jti"])
    if row is None or str(row["session_user"]) != claims["sub"]:
        raise AuthError("the token names no session", kind="invalid-token")
    _check_session(row)
    return user_principal(row, token_id=claims["jti"])


def _check_session(row: Mapping[str, Any]) -> None:
    if row["revoked_at"] is not None:
        raise AuthError("the session was ended (logout, password change or account change); log in again",
                        kind="session-revoked")
    if row["expires_at"] <= datetime.now(UTC):
        raise AuthError("the token has expired; log in again", kind="token-expired")
    if row["disabled"]:
        raise AuthError("the user is disabled", kind="user-disabled")
    if row["locked_at"] is not None:
        raise AuthError("the user is locked; an admin must unlock it", kind="user-locked")
