"""Logins and sessions: a login opens a revocable session behind a short-lived token; logout and renewal;
the principal of a token. Failed logins count toward the user's lockout (app.auth.users)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt

from app.auth import passwords, throttle, tokens
from app.auth.inactivity import CHANGE_PASSWORD_PATH, RouteUse, SessionRules
from app.auth.principal import SYSTEM, Principal
from app.auth.users import (
    LOCKOUT_THRESHOLD,
    QUALIFIED_USER_COLUMNS,
    USER_COLUMNS,
    AuthError,
    auto_unlock,
    locked_problem,
    register_failure,
    require_reason,
    unlock_note,
    user_principal,
    verify_password_for,
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
    password_expired: bool = False  # the session may only change the password (SessionRules.password_max_age)


def password_expired(changed_at: datetime, at: datetime, max_age: timedelta | None) -> bool:
    return max_age is not None and at >= changed_at + max_age


async def login(
    conn: asyncpg.Connection, username: str, password: str, *, key: bytes, ttl: timedelta,
    threshold: int = LOCKOUT_THRESHOLD, client: str | None = None, password_max_age: timedelta | None = None,
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
        raise locked_problem(f"the account is locked after {threshold} consecutive failed password checks",
                             row["locked_at"])
    if not ok:
        await failed("wrong password")
        if await register_failure(conn, row["id"], purpose="login", client=client, threshold=threshold):
            locked_at = await conn.fetchval("SELECT locked_at FROM users WHERE id = $1", row["id"])
            raise locked_problem(f"the account is now locked after {threshold} consecutive failed password checks",
                                 locked_at)
        raise AuthError("wrong username or password", kind="login-failed")
    if row["disabled"]:
        await failed("account disabled")
        raise Problem(403, "account-disabled", "Account disabled", "the account is disabled; ask an admin")
    throttle.succeeded("login_rate", username)
    issued = tokens.issue(key, row["id"], ttl)
    expired = password_expired(row["password_changed_at"], issued.issued_at, password_max_age)
    async with conn.transaction():
        await conn.execute("UPDATE users SET failed_logins = 0 WHERE id = $1 AND failed_logins <> 0", row["id"])
        await conn.execute("INSERT INTO sessions (jti, user_id, issued_at, expires_at, last_activity_at) "
                           "VALUES ($1, $2, $3, $4, $3)", issued.jti, row["id"], issued.issued_at, issued.expires_at)
        new: dict[str, Any] = {"session_expires_at": issued.expires_at.isoformat()}
        if expired:
            new["password_expired"] = True
        await audit.record(conn, actor=user_principal(row, issued.jti), action="auth.login", entity_type="user",
                           entity_id=row["id"], old=None, new=new, reason=None, client=client)
    return Login(issued, row, expired)


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


async def principal_for_token(conn: asyncpg.Connection, key: bytes, token: str, *, rules: SessionRules | None = None,
                              use: RouteUse = "action", expiry_exempt: bool = True) -> Principal:
    """The user behind a session token, checked against the database now (revoked, disabled, locked); with `rules`,
    the inactivity lock for a request of `use` (a user action moves the session's last activity) and, unless the
    route is `expiry_exempt`, password expiry."""
    try:
        claims = tokens.decode(key, token)
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired; log in again", kind="token-expired") from None
    except jwt.InvalidTokenError:
        raise AuthError("the token is not valid", kind="invalid-token") from None
    row = await conn.fetchrow(
        f"SELECT s.user_id AS session_user, s.expires_at, s.revoked_at, s.issued_at AS session_issued_at, "
        f"s.last_activity_at, {QUALIFIED_USER_COLUMNS} "
        "FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.jti = $1", claims["jti"])
    if row is None or str(row["session_user"]) != claims["sub"]:
        raise AuthError("the token names no session", kind="invalid-token")
    _check_session(row)
    if rules is not None:
        await _check_rules(conn, row, claims["jti"], rules, use, expiry_exempt)
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
        raise AuthError(f"the user is locked; {unlock_note(row['locked_at'])}", kind="user-locked")


# --------------------------------------------------------------------------------------------------
# Inactivity lock and password expiry (app.auth.inactivity)
# --------------------------------------------------------------------------------------------------


async def _check_rules(conn: asyncpg.Connection, row: Mapping[str, Any], jti: str, rules: SessionRules,
                       use: RouteUse, expiry_exempt: bool) -> None:
    if not expiry_exempt and password_expired(row["password_changed_at"], row["session_issued_at"],
                                              rules.password_max_age):
        raise Problem(403, "password-expired", "Password expired",
                      f"the password is older than {rules.password_max_age}: change it (POST {CHANGE_PASSWORD_PATH}) "
                      "before anything else", change_password=CHANGE_PASSWORD_PATH)
    limit = rules.idle_limit
    if limit is None or use == "exempt":
        return
    now = datetime.now(UTC)
    if rules.idle(row["last_activity_at"], now):
        if use != "live" or not rules.keep_live:
            raise AuthError(f"the session is locked after {limit} without a user action; give the "
                            "password again (POST /api/v1/auth/unlock)", kind="session-idle")
        return
    if use == "action" and now - row["last_activity_at"] >= timedelta(seconds=1):
        # only while not idle, in the same statement too: a concurrent request never re-activates an idle session
        await conn.execute("UPDATE sessions SET last_activity_at = $2 WHERE jti = $1 AND last_activity_at < $2 "
                           "AND last_activity_at > $2::timestamptz - $3::interval", jti, now, limit)


async def report_activity(conn: asyncpg.Connection, principal: Principal, idle_s: float,
                          rules: SessionRules) -> datetime | None:
    """The dashboard's heartbeat: its user's last input was `idle_s` seconds ago (clamped to 0 .. the limit). The
    session's last activity becomes that time, unless the server saw a later action; never while the session is
    idle (the credentials' check refused the request already; the statement checks again). The last activity
    after it, or None (no session, or no inactivity lock)."""
    limit = rules.idle_limit
    if limit is None or principal.kind != "user" or principal.token_id is None:
        return None
    now = datetime.now(UTC)
    at = now - timedelta(seconds=min(max(idle_s, 0.0), limit.total_seconds()))
    await conn.execute("UPDATE sessions SET last_activity_at = $2 WHERE jti = $1 AND revoked_at IS NULL "
                       "AND last_activity_at < $2 AND last_activity_at > $3::timestamptz - $4::interval",
                       principal.token_id, at, now, limit)
    value: datetime | None = await conn.fetchval("SELECT last_activity_at FROM sessions WHERE jti = $1",
                                                 principal.token_id)
    return value


async def idle_seconds(conn: asyncpg.Connection, principal: Principal) -> float | None:
    """How long the principal's session has been without a user action (None: not a login session)."""
    if principal.kind != "user" or principal.token_id is None:
        return None
    value = await conn.fetchval("SELECT extract(epoch FROM now() - last_activity_at) FROM sessions WHERE jti = $1",
                                principal.token_id)
    return None if value is None else max(0.0, float(value))


async def may_stream(conn: asyncpg.Connection, principal: Principal, rules: SessionRules) -> bool:
    """Whether an open event stream of this principal may go on: an API key always (revoking a key is checked
    when a stream opens); a login session while a live request of it would pass now (not ended, expired or idle
    beyond the limit unless keep_live; its user neither disabled nor locked)."""
    if principal.kind != "user" or principal.token_id is None:
        return True
    row = await conn.fetchrow(
        f"SELECT s.expires_at, s.revoked_at, s.issued_at AS session_issued_at, s.last_activity_at, "
        f"{QUALIFIED_USER_COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.jti = $1",
        principal.token_id)
    if row is None:
        return False
    try:
        _check_session(row)
        await _check_rules(conn, row, principal.token_id, rules, "live", expiry_exempt=True)
    except AuthError:
        return False
    return True


async def unlock(conn: asyncpg.Connection, principal: Principal, password: str, *, threshold: int = LOCKOUT_THRESHOLD,
                 client: str | None = None) -> datetime:
    """The password of the session's own user again: the session counts as active from now. Audited as
    session.unlock; a wrong password as session.unlock_failed, and it counts toward the lockout and the login
    abuse limit (app.auth.throttle, login_rate) like a failed login."""
    if principal.kind != "user" or principal.token_id is None or principal.id is None:
        raise Problem(400, "no-session", "No session to unlock",
                      "only a user's login session can be locked and unlocked; API keys have no session")
    if not await verify_password_for(conn, principal.id, password, purpose="session unlock", client=client,
                                     threshold=threshold, rule="login_rate"):
        async with conn.transaction():
            await audit.record(conn, actor=principal, action="session.unlock_failed", entity_type="user",
                               entity_id=principal.id, old=None, new={"cause": "wrong password"},
                               reason="wrong password", client=client)
        locked_at = await conn.fetchval("SELECT locked_at FROM users WHERE id = $1", principal.id)
        if locked_at is not None:
            raise locked_problem(f"the account is locked after {threshold} consecutive failed password checks",
                                 locked_at)
        raise AuthError("wrong password (failed attempts count toward the lockout)", kind="wrong-password")
    now = datetime.now(UTC)
    async with conn.transaction():
        before = await conn.fetchval("SELECT last_activity_at FROM sessions WHERE jti = $1 AND revoked_at IS NULL "
                                     "FOR UPDATE", principal.token_id)
        if before is None:
            raise AuthError("the session was ended; log in again", kind="session-revoked")
        await conn.execute("UPDATE sessions SET last_activity_at = $2 WHERE jti = $1", principal.token_id, now)
        await audit.record(conn, actor=principal, action="session.unlock", entity_type="user", entity_id=principal.id,
                           old={"last_activity_at": before.isoformat()}, new={"last_activity_at": now.isoformat()},
                           reason="password given again on the locked screen", client=client)
    return now


async def take_over(conn: asyncpg.Connection, first: Principal, username: str, password: str, *, key: bytes,
                    ttl: timedelta, threshold: int = LOCKOUT_THRESHOLD, client: str | None = None,
                    password_max_age: timedelta | None = None) -> Login:
    """Another user logs in on a locked screen: their session is opened (audited as auth.login; a failure as a
    login's), then the first user's session ends (session.end, by the new user)."""
    result = await login(conn, username, password, key=key, ttl=ttl, threshold=threshold, client=client,
                         password_max_age=password_max_age)
    if first.token_id is not None and first.id is not None:
        async with conn.transaction():
            await conn.execute("UPDATE sessions SET revoked_at = now() WHERE jti = $1 AND revoked_at IS NULL",
                               first.token_id)
            await audit.record(conn, actor=user_principal(result.user, result.token.jti), action="session.end",
                               entity_type="user", entity_id=first.id, old={"username": first.name},
                               new={"ended_by": str(result.user["username"])},
                               reason="another user logged in on the locked screen", client=client)
    return result


# --------------------------------------------------------------------------------------------------
# Sessions in use (admin): the list and the revocation
# --------------------------------------------------------------------------------------------------

SESSION_ID_LENGTH = 24
"""Hex digits of a session's public id: the start of the SHA-256 of its jti (the jti itself is never shown)."""
_PUBLIC_ID_SQL = f"left(encode(sha256(convert_to(s.jti, 'UTF8')), 'hex'), {SESSION_ID_LENGTH})"


def session_public_id(jti: str) -> str:
    """The id under which the API lists and revokes a session: a digest of its jti, never the token or jti."""
    return hashlib.sha256(jti.encode()).hexdigest()[:SESSION_ID_LENGTH]


def _session_view(row: Mapping[str, Any], current: str | None) -> dict[str, Any]:
    return {"id": session_public_id(row["jti"]), "user_id": row["user_id"], "username": row["username"],
            "display_name": row["display_name"], "role": row["role"], "issued_at": row["issued_at"],
            "last_activity_at": row["last_activity_at"], "expires_at": row["expires_at"],
            "current": current is not None and row["jti"] == current}


async def list_active(conn: asyncpg.Connection, *, user_id: int | None = None,
                      current: str | None = None) -> list[dict[str, Any]]:
    """Sessions in use (not revoked, not expired), newest login first, of one user when given; `current`: the
    caller's jti (its session is marked)."""
    rows = await conn.fetch(
        "SELECT s.jti, s.user_id, s.issued_at, s.last_activity_at, s.expires_at, u.username, u.display_name, u.role "
        "FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.revoked_at IS NULL AND s.expires_at > now() "
        "AND ($1::int IS NULL OR s.user_id = $1) ORDER BY s.issued_at DESC, s.user_id", user_id)
    return [_session_view(r, current) for r in rows]


async def last_logins(conn: asyncpg.Connection) -> dict[int, datetime]:
    """Each user's last login (the newest session opened), by user id."""
    rows = await conn.fetch("SELECT user_id, max(issued_at) AS at FROM sessions GROUP BY user_id")
    return {int(r["user_id"]): r["at"] for r in rows}


async def revoke_session(conn: asyncpg.Connection, session_id: str, *, actor: Principal, reason: str | None,
                         client: str | None = None) -> dict[str, Any]:
    """End a session in use by its public id (its token is refused from the next request). Audited as
    session.revoke on the session's user, with the reason."""
    why = require_reason(reason, "session.revoke")
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT s.jti, s.user_id, s.issued_at, s.last_activity_at, s.expires_at, s.revoked_at, u.username, "
            f"u.display_name, u.role FROM sessions s JOIN users u ON u.id = s.user_id WHERE {_PUBLIC_ID_SQL} = $1 "
            "FOR UPDATE OF s", session_id)
        if row is None:
            raise Problem(404, "session-not-found", "No such session", f"there is no session {session_id}")
        if row["revoked_at"] is not None or row["expires_at"] <= datetime.now(UTC):
            raise Problem(409, "session-ended", "Session already ended",
                          f"session {session_id} of {row['username']} has already ended (logged out, revoked or "
                          "expired)", rule="session_in_use")
        at = await conn.fetchval("UPDATE sessions SET revoked_at = now() WHERE jti = $1 RETURNING revoked_at",
                                 row["jti"])
        await audit.record(conn, actor=actor, action="session.revoke", entity_type="user", entity_id=row["user_id"],
                           old={"session": session_id, "issued_at": row["issued_at"].isoformat(),
                                "revoked_at": None},
                           new={"session": session_id, "revoked_at": at.isoformat()}, reason=why, client=client)
    return _session_view(row, actor.token_id)
