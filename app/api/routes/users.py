"""User accounts (admin: create, role and printed name, disable, enable, unlock), the user list (admin, QA) and
one's own password."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ConnectionDep, RuntimeDep, SmallId
from app.api.routes.auth import UserPublic
from app.api.security import CurrentPrincipal, client_address
from app.auth import users
from app.auth.principal import Role
from app.core.problems import Problem

router = APIRouter(prefix="/users", tags=["users"])


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=2, max_length=63, description=users.NAME_RULE)
    display_name: str = Field(min_length=1, max_length=200, description="printed name on signatures")
    role: Role
    password: str = Field(min_length=1, max_length=1024, repr=False,
                          description="at least 12 characters, two character classes, not the username")
    reason: str | None = Field(default=None, max_length=2000)


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="why (recorded in the audit trail)")


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = Field(default=None, description="not one's own; the last active admin stays admin")
    display_name: str | None = Field(default=None, min_length=1, max_length=200,
                                     description="printed name on signatures")
    reason: str = Field(min_length=1, max_length=2000, description="why (recorded in the audit trail)")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024, repr=False)
    new_password: str = Field(min_length=1, max_length=1024, repr=False)


# The body field a refusal is about: the problem names it (`field`, and an `errors` entry), so a form shows the
# refusal next to that field (app/web/static/forms.js).
PROBLEM_FIELDS = {"password-rule": "password", "invalid-username": "username", "username-taken": "username",
                  "invalid-display-name": "display_name", "reason-required": "reason",
                  "cannot-change-own-role": "role", "key-name-taken": "name",
                  "invalid-key-role": "role"}


@contextlib.contextmanager
def refusals_on_fields(extra: Mapping[str, str] | None = None) -> Iterator[None]:
    """Problems raised inside name the field they are about (PROBLEM_FIELDS, plus `extra` for this route)."""
    try:
        yield
    except Problem as exc:
        field = (extra or {}).get(exc.kind) or PROBLEM_FIELDS.get(exc.kind)
        if field is not None and "errors" not in exc.extra:
            exc.extra.setdefault("field", field)
            exc.extra["errors"] = [{"field": field, "detail": exc.detail, "rule": exc.kind}]
        raise


def _public(row: object) -> UserPublic:
    return UserPublic(**users.user_public(row))  # type: ignore[arg-type]


@router.get("", response_model=list[UserPublic], summary="Every user (admin, QA)")
async def list_users(principal: CurrentPrincipal, conn: ConnectionDep) -> list[UserPublic]:
    return [_public(r) for r in await users.list_users(conn)]


@router.post("", response_model=UserPublic, status_code=201, summary="Create a user (admin)")
async def create_user(body: UserCreate, principal: CurrentPrincipal, request: Request,
                      conn: ConnectionDep) -> UserPublic:
    with refusals_on_fields():
        row = await users.create_user(conn, username=body.username, display_name=body.display_name,
                                      role=body.role, password=body.password, actor=principal,
                                      client=client_address(request), reason=body.reason)
    return _public(row)


@router.post("/me/password", status_code=204,
             summary="Change one's own password (users only): the current one again, and the password rules")
async def change_password(body: PasswordChange, principal: CurrentPrincipal, request: Request,
                          conn: ConnectionDep, runtime: RuntimeDep) -> None:
    assert principal.id is not None
    await users.change_password(conn, principal.id, body.current_password, body.new_password, actor=principal,
                                   client=client_address(request), threshold=runtime.settings.lockout_threshold,
                                   history=runtime.settings.password_history)


@router.patch("/{user_id}", response_model=UserPublic,
              summary="Change a user's role and/or printed name (admin, with a reason; audited user.update)")
async def update_user(user_id: SmallId, body: UserUpdate, principal: CurrentPrincipal, request: Request,
                      conn: ConnectionDep) -> UserPublic:
    with refusals_on_fields({"last-admin": "role", "nothing-to-change": "role"}):
        row = await users.update_user(conn, user_id, actor=principal, reason=body.reason, role=body.role,
                                      display_name=body.display_name, client=client_address(request))
    return _public(row)


@router.post("/{user_id}/disable", response_model=UserPublic,
             summary="Disable a user (admin): refused at once, sessions end")
async def disable_user(user_id: SmallId, body: Reason, principal: CurrentPrincipal, request: Request,
                       conn: ConnectionDep) -> UserPublic:
    return _public(await users.set_disabled(conn, user_id, True, actor=principal, reason=body.reason,
                                               client=client_address(request)))


@router.post("/{user_id}/enable", response_model=UserPublic, summary="Enable a disabled user (admin)")
async def enable_user(user_id: SmallId, body: Reason, principal: CurrentPrincipal, request: Request,
                      conn: ConnectionDep) -> UserPublic:
    return _public(await users.set_disabled(conn, user_id, False, actor=principal, reason=body.reason,
                                               client=client_address(request)))


@router.post("/{user_id}/unlock", response_model=UserPublic,
             summary="Unlock a user locked by failed logins (admin)")
async def unlock_user(user_id: SmallId, body: Reason, principal: CurrentPrincipal, request: Request,
                      conn: ConnectionDep) -> UserPublic:
    return _public(await users.unlock_user(conn, user_id, actor=principal, reason=body.reason,
                                              client=client_address(request)))
