"""Users in the database: create, disable, enable, unlock, change role and name, change password (with its
history), check a password (with lockout);
every change writes one audit record in its transaction. Errors are `Problem`s whose detail names the rule."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.auth import passwords, throttle
from app.auth.inactivity import CHANGE_PASSWORD_PATH
from app.auth.principal import SYSTEM, Principal, Role
from app.core.problems import Problem
from app.records import audit

LOCKOUT_THRESHOLD = 20
"""Consecutive failed password checks that lock a user (the service passes settings.lockout_threshold)."""

ADMIN_LOCK_KEY = 0x41444D4E  # "ADMN": the advisory lock that serializes changes that may take an admin away

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
NAME_RULE = "2-63 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"

USER_COLUMNS = ("id, username, display_name, role, disabled, failed_logins, locked_at, password_changed_at, "
                "created_at")
QUALIFIED_USER_COLUMNS = ", ".join("u." + c.strip() for c in USER_COLUMNS.split(","))


class AuthError(Problem):
    """401: the credentials are missing, wrong, expired or revoked (detail says which)."""

    headers = {"WWW-Authenticate": 'Bearer realm="culturectl"'}

    def __init__(self, detail: str, kind: str = "not-authenticated") -> None:
        super().__init__(401, kind, "Not authenticated", detail)



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


def user_principal(row: Mapping[str, Any], token_id: str | None = None) -> Principal:
    return Principal(kind="user", id=row["id"], name=row["username"], role=Role(row["role"]),
                     display_name=row["display_name"], user_id=row["id"], token_id=token_id)


def check_name(what: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise Problem(422, f"invalid-{what}", f"Invalid {what}", f"{what} {name!r} is not valid: {NAME_RULE}")


def require_reason(reason: str | None, action: str) -> str:
    if reason is None or not reason.strip():
        raise Problem(422, "reason-required", "Reason required", f"{action} needs a reason (field 'reason')")
    return reason.strip()


def actor_user_id(actor: Principal) -> int | None:
    return actor.id if actor.kind == "user" else None


# --------------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------------


async def get_user(conn: asyncpg.Connection, user_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)


async def get_user_by_name(conn: asyncpg.Connection, username: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE username = $1", username)


async def require_user(conn: asyncpg.Connection, user_id: int, *, for_update: bool = False) -> asyncpg.Record:
    """The user's row (404 user-not-found); `for_update`: locked until the caller's transaction ends."""
    if for_update:
        row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id)
    else:
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
    check_name("username", username)
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


async def revoke_sessions(conn: asyncpg.Connection, user_id: int, keep: str | None = None) -> None:
    await conn.execute("UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL "
                       "AND jti IS DISTINCT FROM $2", user_id, keep)


async def set_disabled(
    conn: asyncpg.Connection, user_id: int, disabled: bool, *, actor: Principal, reason: str | None,
    client: str | None = None,
) -> asyncpg.Record:
    """Disable (its sessions end at once) or enable a user. Audited as user.disable / user.enable."""
    action = "user.disable" if disabled else "user.enable"
    why = require_reason(reason, action)
    if disabled and actor.kind == "user" and actor.id == user_id:
        raise Problem(409, "cannot-disable-self", "Cannot disable yourself",
                      "an admin cannot disable their own account; another admin must do it")
    async with conn.transaction():
        await lock_admin_changes(conn)
        old = await require_user(conn, user_id, for_update=True)
        if disabled and not old["disabled"] and old["role"] == Role.ADMIN.value:
            await _keep_an_admin(conn, user_id, "disabled")
        row = await conn.fetchrow(f"UPDATE users SET disabled = $2 WHERE id = $1 RETURNING {USER_COLUMNS}",
                                  user_id, disabled)
        assert row is not None
        if disabled:
            await revoke_sessions(conn, user_id)
        await audit.record(conn, actor=actor, action=action, entity_type="user", entity_id=user_id,
                           old=_user_audit(old), new=_user_audit(row), reason=why, client=client)
    return row


async def unlock_user(
    conn: asyncpg.Connection, user_id: int, *, actor: Principal, reason: str | None, client: str | None = None,
) -> asyncpg.Record:
    """Clear a lockout and the failed-login count. Audited as user.unlock."""
    why = require_reason(reason, "user.unlock")
    async with conn.transaction():
        old = await require_user(conn, user_id, for_update=True)
        row = await conn.fetchrow(
            f"UPDATE users SET locked_at = NULL, failed_logins = 0 WHERE id = $1 RETURNING {USER_COLUMNS}", user_id)
        assert row is not None
        await audit.record(conn, actor=actor, action="user.unlock", entity_type="user", entity_id=user_id,
                           old=_user_audit(old), new=_user_audit(row), reason=why, client=client)
    return row


async def lock_admin_changes(conn: asyncpg.Connection) -> None:
    """The first statement of a transaction that may take an admin away (update_user, set_disabled): one advisory
    lock, held until the transaction ends, so such changes run one after the other. Two admins demoting (or
    disabling) each other at once then end as one change and one 409 last-admin, not a deadlock; the lock comes
    before any user row is locked, so it cannot join a lock cycle."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ADMIN_LOCK_KEY)


async def _keep_an_admin(conn: asyncpg.Connection, user_id: int, what: str) -> None:
    """Refuse (409 last-admin) to take the last active (not disabled) admin away; run under lock_admin_changes.
    A locked admin (lockout) counts: the lock ends by itself (CULTURECTL_LOCKOUT_UNLOCK_MINUTES) or from the
    command line (culturectl user unlock), and a state anybody can cause by guessing passwords must not decide
    whether the admins may change."""
    others = await conn.fetch("SELECT id FROM users WHERE role = 'admin' AND NOT disabled AND id <> $1 "
                              "ORDER BY id FOR UPDATE", user_id)
    if not others:
        raise Problem(409, "last-admin", "Last admin",
                      f"the last active admin cannot be {what}: make another user admin first")


async def update_user(
    conn: asyncpg.Connection, user_id: int, *, actor: Principal, reason: str | None, role: Role | str | None = None,
    display_name: str | None = None, client: str | None = None,
) -> asyncpg.Record:
    """Change a user's role and/or printed name (display name). A reason is required; nobody changes their own
    role; the last active admin keeps the role. A role change ends the user's sessions (they log in again under
    the new role). Audited as one user.update with the old and new values (nothing written when nothing changes)."""
    why = require_reason(reason, "user.update")
    if role is None and display_name is None:
        raise Problem(422, "nothing-to-change", "Nothing to change", "give role and/or display_name")
    new_role = Role(role) if role is not None else None
    name = display_name.strip() if display_name is not None else None
    if name is not None and not name:
        raise Problem(422, "invalid-display-name", "Invalid display name",
                      "display_name (the printed name on signatures) must not be empty")
    async with conn.transaction():
        await lock_admin_changes(conn)
        old = await require_user(conn, user_id, for_update=True)
        role_changes = new_role is not None and new_role.value != old["role"]
        if role_changes and actor.kind == "user" and actor.id == user_id:
            raise Problem(409, "cannot-change-own-role", "Cannot change your own role",
                          "nobody changes their own role; another admin must do it")
        if role_changes and old["role"] == Role.ADMIN.value and not old["disabled"]:
            await _keep_an_admin(conn, user_id, "demoted")
        changes = {k: v for k, v in (("role", new_role.value if role_changes and new_role else None),
                                     ("display_name", name if name is not None and name != old["display_name"]
                                      else None)) if v is not None}
        if not changes:
            return old
        row = await conn.fetchrow(
            f"UPDATE users SET role = coalesce($2, role), display_name = coalesce($3, display_name) WHERE id = $1 "
            f"RETURNING {USER_COLUMNS}", user_id, changes.get("role"), changes.get("display_name"))
        assert row is not None
        if role_changes:
            await revoke_sessions(conn, user_id)
        await audit.record(conn, actor=actor, action="user.update", entity_type="user", entity_id=user_id,
                           old={k: old[k] for k in changes}, new=changes, reason=why, client=client)
    return row


async def change_password(
    conn: asyncpg.Connection, user_id: int, current_password: str, new_password: str, *, actor: Principal,
    client: str | None = None, threshold: int = LOCKOUT_THRESHOLD, history: int = 0,
) -> None:
    """The user's own password change: the current password again (a wrong one counts toward lockout), the rules,
    and none of the last `history` passwords (the current one always). Other sessions of the user end. Audited as
    user.password (no password in it). The old hash goes to password_history, which keeps what `history` needs."""
    row = await require_user(conn, user_id)
    if not await verify_password_for(conn, user_id, current_password, purpose="password change", client=client,
                                     threshold=threshold):
        raise AuthError("current password is wrong (failed attempts count toward the lockout)",
                        kind="wrong-password")
    passwords.check_password_rules(row["username"], new_password)
    if new_password == current_password:
        raise passwords.PasswordRuleError("not-reused", "the new password must differ from the current one")
    keep = max(history - 1, 0)  # previous passwords to remember besides the current one
    for (old_hash,) in await conn.fetch("SELECT password_hash FROM password_history WHERE user_id = $1 "
                                        "ORDER BY id DESC LIMIT $2", user_id, keep):
        if await passwords.verify_hash_async(new_password, old_hash):
            raise passwords.PasswordRuleError("not-reused", f"the new password must differ from the last {history} "
                                                            "passwords (CULTURECTL_PASSWORD_HISTORY)")
    new_hash = await passwords.hash_password_async(new_password)
    async with conn.transaction():
        current_hash = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1 FOR UPDATE", user_id)
        await conn.execute("DELETE FROM password_history WHERE user_id = $1 AND id NOT IN (SELECT id FROM "
                           "password_history WHERE user_id = $1 ORDER BY id DESC LIMIT $2)", user_id,
                           max(keep - 1, 0))
        if keep:
            await conn.execute("INSERT INTO password_history (user_id, password_hash) VALUES ($1, $2)", user_id,
                               current_hash)
        changed = await conn.fetchval(
            "UPDATE users SET password_hash = $2, password_changed_at = now() WHERE id = $1 "
            "RETURNING password_changed_at", user_id, new_hash)
        await revoke_sessions(conn, user_id, keep=actor.token_id)
        await audit.record(conn, actor=actor, action="user.password", entity_type="user", entity_id=user_id,
                           old={"password_changed_at": row["password_changed_at"].isoformat()},
                           new={"password_changed_at": changed.isoformat()}, reason="changed by the user",
                           client=client)


async def register_failure(
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
            throttle.counted_lockout()
            await revoke_sessions(conn, user_id)
            await audit.record(
                conn, actor=SYSTEM, action="user.lock", entity_type="user", entity_id=user_id,
                old=_user_audit(old), new=_user_audit(row),
                reason=f"{row['failed_logins']} consecutive failed password checks (last: {purpose})", client=client)
    return locked_now


async def verify_password_for(
    conn: asyncpg.Connection, user_id: int, password: str, *, purpose: str, client: str | None,
    threshold: int = LOCKOUT_THRESHOLD, rule: throttle.RuleName = "signature_rate", refuse_expired: bool = False,
) -> bool:
    """True when `password` is the password of `user_id` and the user is active and not locked.

    With `refuse_expired` (signatures, the remote acknowledgement), the right password of a user whose password is
    older than CULTURECTL_PASSWORD_MAX_AGE_DAYS raises `PasswordExpired` (403 password-expired): a password only
    the expiry rule forbids is not an identity check, whenever the session was opened. The password is checked
    first, so the refusal tells nothing to somebody who does not know it.

    A wrong password counts toward the lockout (`threshold` in a row locks the user; the lock is audited as
    user.lock); a right one resets the count. The failure itself is audited by the caller (e.g.
    signature.failed). Disabled, locked or unknown users get False without counting.
    Call it outside a transaction that will be rolled back, or the counted failure is lost with it.
    Abuse limits (app.auth.throttle, `rule`) come first: a slowed attempt raises 429 without checking the password.
    """
    query = "SELECT username, password_hash, disabled, locked_at, password_changed_at FROM users WHERE id = $1"
    row = await conn.fetchrow(query, user_id)
    name = str(row["username"]) if row else None
    throttle.check(rule, client=client, user=name)
    if row is not None and row["locked_at"] is not None and await auto_unlock(conn, user_id, client=client):
        row = await conn.fetchrow(query, user_id)
    ok = await passwords.verify_hash_async(password, row["password_hash"] if row else None)
    if not ok:
        if row is not None and not row["disabled"] and row["locked_at"] is None:
            await register_failure(conn, user_id, purpose=purpose, client=client, threshold=threshold)
        await throttle.failed(conn, rule, client=client, user=name)
        return False
    if row is None or row["disabled"] or row["locked_at"] is not None:
        return False
    await conn.execute("UPDATE users SET failed_logins = 0 WHERE id = $1 AND failed_logins <> 0", user_id)
    throttle.succeeded(rule, str(row["username"]))
    limits = throttle.current()
    max_age = limits.password_max_age if limits is not None else None
    if refuse_expired and max_age is not None and datetime.now(UTC) >= row["password_changed_at"] + max_age:
        raise PasswordExpired(max_age, purpose)
    return True


class PasswordExpired(Problem):
    """403: the password is right but older than CULTURECTL_PASSWORD_MAX_AGE_DAYS; it must be changed first."""

    def __init__(self, max_age: timedelta, purpose: str) -> None:
        super().__init__(403, "password-expired", "Password expired",
                         f"the password is older than {max_age} (CULTURECTL_PASSWORD_MAX_AGE_DAYS): it cannot be used "
                         f"for a {purpose}; change it first (POST {CHANGE_PASSWORD_PATH}, or log in on the dashboard)",
                         change_password=CHANGE_PASSWORD_PATH)


def unlock_time(locked_at: datetime | None) -> datetime | None:
    """When a locked account unlocks by itself (CULTURECTL_LOCKOUT_UNLOCK_MINUTES); None: only an admin unlocks it."""
    limits = throttle.current()
    if locked_at is None or limits is None or limits.unlock_minutes <= 0:
        return None
    return locked_at + timedelta(minutes=limits.unlock_minutes)


def unlock_note(locked_at: datetime | None) -> str:
    """How a locked account is unlocked: by itself at a time (CULTURECTL_LOCKOUT_UNLOCK_MINUTES), or by an admin."""
    at = unlock_time(locked_at)
    if at is None:
        return "an admin must unlock it"
    return f"it unlocks by itself at {at.isoformat(timespec='seconds')}, or an admin unlocks it sooner"


def locked_problem(detail: str, locked_at: datetime | None, status: int = 403,
                   kind: str = "account-locked", title: str = "Account locked") -> Problem:
    """The refusal of a locked account: the detail with how it unlocks, and Retry-After when that time is known."""
    problem = Problem(status, kind, title, f"{detail}; {unlock_note(locked_at)}")
    at = unlock_time(locked_at)
    if at is not None:
        problem.headers = {"Retry-After": str(max(1, math.ceil((at - datetime.now(UTC)).total_seconds())))}
    return problem


async def auto_unlock(conn: asyncpg.Connection, user_id: int, *, client: str | None) -> bool:
    """Unlock a user locked longer than the automatic unlock time (CULTURECTL_LOCKOUT_UNLOCK_MINUTES; 0: never).
    Audited as user.unlock by the system. True when unlocked now."""
    limits = throttle.current()
    if limits is None or limits.unlock_minutes <= 0:
        return False
    async with conn.transaction():
        old = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id)
        if old is None or old["locked_at"] is None:
            return False
        row = await conn.fetchrow(
            "UPDATE users SET locked_at = NULL, failed_logins = 0 "
            "WHERE id = $1 AND locked_at <= now() - make_interval(secs => $2) "
            f"RETURNING {USER_COLUMNS}", user_id, limits.unlock_minutes * 60.0)
        if row is None:
            return False
        await audit.record(conn, actor=SYSTEM, action="user.unlock", entity_type="user", entity_id=user_id,
                           old=_user_audit(old), new=_user_audit(row), client=client,
                           reason=f"automatic unlock {limits.unlock_minutes:g} minutes after the lock "
                                  "(CULTURECTL_LOCKOUT_UNLOCK_MINUTES)")
    limits.auto_unlocks += 1
    return True
