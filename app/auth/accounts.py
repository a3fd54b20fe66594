"""Users, sessions and API keys in the database; every change writes one audit record in its transaction.

Functions take an asyncpg connection and open their own (nested, when the caller already has one)
transaction. Errors are `Problem`s whose detail names the rule, so the API and the CLI report them as is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt

from app.auth import passwords, tokens
from app.auth.principal import SYSTEM, Principal, Role
from app.core.problems import Problem
from app.records import audit

LOCKOUT_THRESHOLD = 5
"""Consecutive failed password checks that lock a user (the service passes settings.lockout_threshold)."""

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
NAME_RULE = "2-63 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
KEY_PREFIX = "ck"
KEY_ROLES = frozenset(Role) - {Role.ADMIN}
"""Roles an API key may have: administration is personal, so no admin keys."""
LAST_USED_RESOLUTION = timedelta(minutes=1)

USER_COLUMNS = ("id, username, display_name, role, disabled, failed_logins, locked_at, password_changed_at, "
                "created_at")
_U_COLUMNS = ", ".join("u." + c.strip() for c in USER_COLUMNS.split(","))
KEY_COLUMNS = "id, name, role, prefix, created_by, created_at, last_used_at, revoked_at"


class AuthError(Problem):
    """401: the credentials are missing, wrong, expired or revoked (detail says which)."""

    headers = {"WWW-Authenticate": 'Bearer realm="culturectl"'}

    def __init__(self, detail: str, kind: str = "not-authenticated") -> None:
        super().__init__(401, kind, "Not authenticated", detail)


# --------------------------------------------------------------------------------------------------
# Snapshots (what the API returns and the audit trail records: never a hash)
# --------------------------------------------------------------------------------------------------


def user_public(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "username": row["username"], "display_name": row["display_name"], "role": row["role"],
        "disabled": row["disabled"], "locked": row["locked_at"] is not None, "locked_at": row["locked_at"],
        "failed_logins": row["failed_logins"], "password_changed_at": row["password_changed_at"],
        "created_at": row["created_at"],
    }


def _user_audit(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"username": row["username"], "display_name": row["display_name"], "role": row["role"],
            "disabled": row["disabled"], "locked": row["locked_at"] is not None,
            "failed_logins": row["failed_logins"]}


def key_public(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "role": row["role"], "prefix": row["prefix"],
        "created_by": row["created_by"], "created_at": row["created_at"], "last_used_at": row["last_used_at"],
        "revoked_at": row["revoked_at"], "revoked": row["revoked_at"] is not None,
    }


def _key_audit(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "role": row["role"], "prefix": row["prefix"],
            "revoked": row["revoked_at"] is not None}


def user_principal(row: Mapping[str, Any], token_id: str | None = None) -> Principal:
    return Principal(kind="user", id=row["id"], name=row["username"], role=Role(row["role"]),
                     display_name=row["display_name"], user_id=row["id"], token_id=token_id)


def key_principal(row: Mapping[str, Any]) -> Principal:
    return Principal(kind="apikey", id=row["id"], name=row["name"], role=Role(row["role"]),
                     display_name=f"API key {row['name']}", user_id=row["created_by"])


def _check_name(what: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise Problem(422, f"invalid-{what}", f"Invalid {what}", f"{what} {name!r} is not valid: {NAME_RULE}")


def _require_reason(reason: str | None, action: str) -> str:
    if reason is None or not reason.strip():
        raise Problem(422, "reason-required", "Reason required", f"{action} needs a reason (field 'reason')")
    return reason.strip()


def _actor_user_id(actor: Principal) -> int | None:
    return actor.id if actor.kind == "user" else None


# --------------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------------


async def get_user(conn: asyncpg.Connection, user_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)


async def get_user_by_name(conn: asyncpg.Connection, username: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE username = $1", username)


async def require_user(conn: asyncpg.Connection, user_id: int) -> asyncpg.Record:
    row = await get_user(conn, user_id)
    if row is None:
        raise Problem(404, "user-not-found", "No such user", f"there is no user with id {user_id}")
    return row


async def list_users(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch(f"SELECT {USER_COLUMNS} FROM users ORDER BY id"))


async def create_user(
    conn: asyncpg.Connection, *, username: str, display_name: str, role: Role | str, password: str,
    actor: Principal, client: str | None = None, reason: str | None = None,
) -> asyncpg.Record:
    """A new active user; the password must meet the rules. Audited as user.create."""
    _check_name("username", username)
    role = Role(role)
    display_name = display_name.strip()
    if not display_name:
        raise Problem(422, "invalid-display-name", "Invalid display name",
                      "display_name (the printed name on signatures) must not be empty")
    passwords.check_password_rules(username, password)
    password_hash = await passwords.hash_password_async(password)
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM users WHERE username = $1", username):
            raise Problem(409, "username-taken", "Username taken", f"a user named {username!r} already exists")
        row = await conn.fetchrow(
            f"INSERT INTO users (username, display_name, role, password_hash) VALUES ($1, $2, $3, $4) "
            f"RETURNING {USER_COLUMNS}",
            username, display_name, role.value, password_hash,
        )
        assert row is not None
        await audit.record(conn, actor=actor, action="user.create", entity_type="user", entity_id=row["id"],
                           old=None, new=_user_audit(row), reason=reason, client=client)
    return row


async def _revoke_sessions(conn: asyncpg.Connection, user_id: int, keep: str | None = None) -> None:
    await conn.execute("UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL "
                       "AND jti IS DISTINCT FROM $2", user_id, keep)


async def set_disabled(
    conn: asyncpg.Connection, user_id: int, disabled: bool, *, actor: Principal, reason: str | None,
    client: str | None = None,
) -> asyncpg.Record:
    """Disable (its sessions end at once) or enable a user. Audited as user.disable / user.enable."""
    action = "user.disable" if disabled else "user.enable"
    why = _require_reason(reason, action)
    if disabled and actor.kind == "user" and actor.id == user_id:
        raise Problem(409, "cannot-disable-self", "Cannot disable yourself",
                      "an admin cannot disable their own account; another admin must do it")
    async with conn.transaction():
        old = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id)
        if old is None:
            raise Problem(404, "user-not-found", "No such user", f"there is no user with id {user_id}")
        row = await conn.fetchrow(f"UPDATE users SET disabled = $2 WHERE id = $1 RETURNING {USER_COLUMNS}",
                                  user_id, disabled)
        assert row is not None
        if disabled:
            await _revoke_sessions(conn, user_id)
        await audit.record(conn, actor=actor, action=action, entity_type="user", entity_id=user_id,
                           old=_user_audit(old), new=_user_audit(row), reason=why, client=client)
    return row


async def unlock_user(
    conn: asyncpg.Connection, user_id: int, *, actor: Principal, reason: str | None, client: str | None = None,
) -> asyncpg.Record:
    """Clear a lockout and the failed-login count. Audited as user.unlock."""
    why = _require_reason(reason, "user.unlock")
    async with conn.transaction():
        old = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id)
        if old is None:
            raise Problem(404, "user-not-found", "No such user", f"there is no user with id {user_id}")
        row = await conn.fetchrow(
            f"UPDATE users SET locked_at = NULL, failed_logins = 0 WHERE id = $1 RETURNING {USER_COLUMNS}", user_id)
        assert row is not None
        await audit.record(conn, actor=actor, action="user.unlock", entity_type="user", entity_id=user_id,
                           old=_user_audit(old), new=_user_audit(row), reason=why, client=client)
    return row


async def change_password(
    conn: asyncpg.Connection, user_id: int, current_password: str, new_password: str, *, actor: Principal,
    client: str | None = None, threshold: int = LOCKOUT_THRESHOLD,
) -> None:
    """The user's own password change: the current password again (a wrong one counts toward lockout), the rules,
    and not the same password. Other sessions of the user end. Audited as user.password (no password in it)."""
    row = await require_user(conn, user_id)
    if not await verify_password_for(conn, user_id, current_password, purpose="password change", client=client,
                                     threshold=threshold):
        raise AuthError("current password is wrong (failed attempts count toward the lockout)",
                        kind="wrong-password")
    passwords.check_password_rules(row["username"], new_password)
    if new_password == current_password:
        raise passwords.PasswordRuleError("not-reused", "the new password must differ from the current one")
    new_hash = await passwords.hash_password_async(new_password)
    async with conn.transaction():
        changed = await conn.fetchval(
            "UPDATE users SET password_hash = $2, password_changed_at = now() WHERE id = $1 "
            "RETURNING password_changed_at", user_id, new_hash)
        await _revoke_sessions(conn, user_id, keep=actor.token_id)
        await audit.record(conn, actor=actor, action="user.password", entity_type="user", entity_id=user_id,
                           old={"password_changed_at": row["password_changed_at"].isoformat()},
                           new={"password_changed_at": changed.isoformat()}, reason="changed by the user",
                           client=client)


async def _register_failure(
    conn: asyncpg.Connection, user_id: int, *, purpose: str, client: str | None, threshold: int,
) -> bool:
    """Count a failed password check; lock the user (audited as user.lock) at `threshold`. True when locked now."""
    async with conn.transaction():
        old = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id)
        if old is None:
            return False
        row = await conn.fetchrow(
            "UPDATE users SET failed_logins = failed_logins + 1, "
            "locked_at = CASE WHEN locked_at IS NULL AND failed_logins + 1 >= $2 THEN now() ELSE locked_at END "
            f"WHERE id = $1 RETURNING {USER_COLUMNS}", user_id, threshold)
        assert row is not None
        locked_now = old["locked_at"] is None and row["locked_at"] is not None
        if locked_now:
            await _revoke_sessions(conn, user_id)
            await audit.record(
                conn, actor=SYSTEM, action="user.lock", entity_type="user", entity_id=user_id,
                old=_user_audit(old), new=_user_audit(row),
                reason=f"{row['failed_logins']} consecutive failed password checks (last: {purpose})", client=client)
    return locked_now


async def verify_password_for(
    conn: asyncpg.Connection, user_id: int, password: str, *, purpose: str, client: str | None,
    threshold: int = LOCKOUT_THRESHOLD,
) -> bool:
    """True when `password` is the password of `user_id` and the user is active and not locked.

    A wrong password counts toward the lockout (`threshold` in a row locks the user; the lock is audited as
    user.lock); a right one resets the count. The failure itself is audited by the caller (e.g.
    signature.failed). Disabled, locked or unknown users get False without counting.
    Call it outside a transaction that will be rolled back, or the counted failure is lost with it.
    """
    row = await conn.fetchrow("SELECT password_hash, disabled, locked_at FROM users WHERE id = $1", user_id)
    ok = await passwords.verify_hash_async(password, row["password_hash"] if row else None)
    if row is None or row["disabled"] or row["locked_at"] is not None:
        return False
    if not ok:
        await _register_failure(conn, user_id, purpose=purpose, client=client, threshold=threshold)
        return False
    await conn.execute("UPDATE users SET failed_logins = 0 WHERE id = $1 AND failed_logins <> 0", user_id)
    return True


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
    this failure locked the account); the failure is committed before the error is raised."""
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = $1", username)
    ok = await passwords.verify_hash_async(password, row["password_hash"] if row else None)

    async def failed(cause: str) -> None:
        async with conn.transaction():
            await audit.record(conn, actor=SYSTEM, action="auth.login_failed", entity_type="user",
                               entity_id=row["id"] if row else None, old=None,
                               new={"username": username, "cause": cause}, reason=cause, client=client)

    if row is None:
        await failed("unknown username")
        raise AuthError("wrong username or password", kind="login-failed")
    if row["locked_at"] is not None:
        await failed("account locked")
        raise Problem(403, "account-locked", "Account locked",
                      f"the account is locked after {threshold} consecutive failed logins; an admin must unlock it")
    if not ok:
        await failed("wrong password")
        if await _register_failure(conn, row["id"], purpose="login", client=client, threshold=threshold):
            raise Problem(403, "account-locked", "Account locked",
                          f"the account is now locked after {threshold} consecutive failed logins; an admin must "
                          "unlock it")
        raise AuthError("wrong username or password", kind="login-failed")
    if row["disabled"]:
        await failed("account disabled")
        raise Problem(403, "account-disabled", "Account disabled", "the account is disabled; ask an admin")
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
        f"SELECT s.user_id AS session_user, s.expires_at, s.revoked_at, {_U_COLUMNS} "
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


async def get_api_key(conn: asyncpg.Connection, key_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id)


async def create_api_key(
    conn: asyncpg.Connection, *, name: str, role: Role | str, actor: Principal, client: str | None = None,
    reason: str | None = None,
) -> tuple[asyncpg.Record, str]:
    """A new key and its secret "ck_<prefix>_<secret>" (returned here only: the database keeps its SHA-256).
    Audited as apikey.create."""
    _check_name("key name", name)
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
            f"RETURNING {KEY_COLUMNS}", name, role.value, prefix, _secret_hash(secret), _actor_user_id(actor))
        assert row is not None
        await audit.record(conn, actor=actor, action="apikey.create", entity_type="apikey", entity_id=row["id"],
                           old=None, new=_key_audit(row), reason=reason, client=client)
    return row, f"{KEY_PREFIX}_{prefix}_{secret}"


async def revoke_api_key(
    conn: asyncpg.Connection, key_id: int, *, actor: Principal, reason: str | None, client: str | None = None,
) -> asyncpg.Record:
    """Revoke a key: the next request with it is rejected. Audited as apikey.revoke."""
    why = _require_reason(reason, "apikey.revoke")
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
