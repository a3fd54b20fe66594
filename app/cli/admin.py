"""`culturectl user ...` and `culturectl apikey ...`: accounts and keys on the configured database.

The database is CULTURECTL_DATABASE_URL, or the embedded one in CULTURECTL_DATA_DIR when that is unset (it is
started for the command and stopped after it). Every change is audited with the actor "cli:<os user>".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import asyncpg
import typer

from app.auth.principal import Role
from app.cli.common import read_password, run_on_database

user_app = typer.Typer(help="User accounts: create, list, disable, enable, unlock.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys for automation scripts: create, list, revoke.", no_args_is_help=True)

ROLES = ", ".join(r.value for r in Role)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return str(value.isoformat(timespec="seconds"))
    return str(value)


def _table(rows: Sequence[Mapping[str, Any]], columns: list[str]) -> None:
    cells = [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _json(rows: Sequence[Mapping[str, Any]]) -> None:
    typer.echo(json.dumps([dict(r) for r in rows], default=_fmt, indent=2))


def _role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a role; choose one of {ROLES}") from None


async def _user_id(conn: asyncpg.Connection, username: str) -> int:
    from app.auth import users
    from app.core.problems import Problem

    row = await users.get_user_by_name(conn, username)
    if row is None:
        raise Problem(404, "user-not-found", "No such user", f"there is no user named {username!r}")
    return int(row["id"])


# --------------------------------------------------------------------------------------------------
# users
# --------------------------------------------------------------------------------------------------


@user_app.command("create")
def user_create(
    username: Annotated[str, typer.Argument(help="login name: lower-case letters, digits, . _ -")],
    role: Annotated[str, typer.Option(help=f"one of {ROLES}")],
    display_name: Annotated[str, typer.Option(help="the printed name on electronic signatures")],
    password_stdin: Annotated[bool, typer.Option(help="read the password from the first line of stdin")] = False,
    reason: Annotated[str | None, typer.Option(help="why (recorded in the audit trail)")] = None,
) -> None:
    """Create a user (password: an interactive prompt, or --password-stdin)."""
    from app.auth import users
    from app.auth.principal import cli_principal

    r = _role(role)
    password = read_password(password_stdin)
    row = run_on_database(lambda conn: users.create_user(conn, username=username, display_name=display_name, role=r,
                                                 password=password, actor=cli_principal(), reason=reason))
    typer.echo(f"user {row['username']} created (id {row['id']}, role {row['role']})")


@user_app.command("list")
def user_list(as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False) -> None:
    """Every user with role and state (disabled, locked)."""
    from app.auth import users

    rows = [users.user_public(r) for r in run_on_database(users.list_users)]
    if as_json:
        _json(rows)
    else:
        _table(rows, ["id", "username", "display_name", "role", "disabled", "locked", "failed_logins", "created_at"])


def _set_disabled(username: str, disabled: bool, reason: str) -> None:
    from app.auth import users
    from app.auth.principal import cli_principal

    async def action(conn: asyncpg.Connection) -> Any:
        return await users.set_disabled(conn, await _user_id(conn, username), disabled, actor=cli_principal(),
                                           reason=reason)

    run_on_database(action)
    typer.echo(f"user {username} {'disabled' if disabled else 'enabled'}")


@user_app.command("disable")
def user_disable(
    username: str, reason: Annotated[str, typer.Option(help="why (recorded in the audit trail)")],
) -> None:
    """Disable a user: refused at once, open sessions end."""
    _set_disabled(username, True, reason)


@user_app.command("enable")
def user_enable(
    username: str, reason: Annotated[str, typer.Option(help="why (recorded in the audit trail)")],
) -> None:
    """Enable a disabled user."""
    _set_disabled(username, False, reason)


@user_app.command("unlock")
def user_unlock(
    username: str, reason: Annotated[str, typer.Option(help="why (recorded in the audit trail)")],
) -> None:
    """Unlock a user locked after failed logins."""
    from app.auth import users
    from app.auth.principal import cli_principal

    async def action(conn: asyncpg.Connection) -> Any:
        return await users.unlock_user(conn, await _user_id(conn, username), actor=cli_principal(), reason=reason)

    run_on_database(action)
    typer.echo(f"user {username} unlocked")


def _update(username: str, reason: str, **change: Any) -> None:
    from app.auth import users
    from app.auth.principal import cli_principal

    async def action(conn: asyncpg.Connection) -> Any:
        return await users.update_user(conn, await _user_id(conn, username), actor=cli_principal(), reason=reason,
                                       **change)

    run_on_database(action)


@user_app.command("set-role")
def user_set_role(
    username: str, role: str, reason: Annotated[str, typer.Option(help="why (recorded in the audit trail)")],
) -> None:
    """Change a user's role (audited user.update; the last active admin stays admin; the user's sessions end)."""
    _update(username, reason, role=_role(role))
    typer.echo(f"user {username} is now {role}")


@user_app.command("set-name")
def user_set_name(
    username: str, display_name: str,
    reason: Annotated[str, typer.Option(help="why (recorded in the audit trail)")],
) -> None:
    """Change a user's printed name on signatures (audited user.update)."""
    _update(username, reason, display_name=display_name)
    typer.echo(f"user {username} is now named {display_name!r}")


# --------------------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------------------


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Argument(help="key name: lower-case letters, digits, . _ -")],
    role: Annotated[str, typer.Option(help="the role the key acts with (not admin)")] = Role.AUTOMATION.value,
    reason: Annotated[str | None, typer.Option(help="why (recorded in the audit trail)")] = None,
) -> None:
    """Create an API key and print it once (only its SHA-256 is stored)."""
    from app.auth import apikeys
    from app.auth.principal import cli_principal

    r = _role(role)
    row, key = run_on_database(lambda conn: apikeys.create_api_key(conn, name=name, role=r, actor=cli_principal(),
                                                         reason=reason))
    typer.echo(f"API key {row['name']} created (id {row['id']}, role {row['role']}); it is shown only now:",
               err=True)
    typer.echo(key)


@apikey_app.command("list")
def apikey_list(as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False) -> None:
    """Every API key (never its secret)."""
    from app.auth import apikeys

    rows = [apikeys.key_public(r) for r in run_on_database(apikeys.list_api_keys)]
    if as_json:
        _json(rows)
    else:
        _table(rows, ["id", "name", "role", "prefix", "created_at", "last_used_at", "revoked_at"])


@apikey_app.command("revoke")
def apikey_revoke(
    key: Annotated[str, typer.Argument(help="the key's name or id")],
    reason: Annotated[str, typer.Option(help="why (recorded in the audit trail)")],
) -> None:
    """Revoke an API key: the next request with it is refused."""
    from app.auth import apikeys
    from app.auth.principal import cli_principal
    from app.core.problems import Problem

    async def action(conn: asyncpg.Connection) -> Any:
        key_id = await apikeys.find_api_key_id(conn, key)
        if key_id is None:
            raise Problem(404, "apikey-not-found", "No such API key", f"there is no API key named {key!r}")
        return await apikeys.revoke_api_key(conn, key_id, actor=cli_principal(), reason=reason)

    row = run_on_database(action)
    typer.echo(f"API key {row['name']} revoked")
