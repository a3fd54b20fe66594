"""Login (token + session cookie), logout (the session ends at once), who am I, and the inactivity lock (the
dashboard's activity heartbeat; unlocking with the password, or another user logging in on the locked screen)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ConnectionDep, RuntimeDep
from app.api.security import CurrentPrincipal, client_address, signing_key
from app.auth import inactivity, sessions, tokens, users
from app.auth.principal import PrincipalKind
from app.core.problems import PROBLEM_JSON

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=63)
    password: str = Field(min_length=1, max_length=1024, repr=False)


class UserPublic(BaseModel):
    id: int
    username: str
    display_name: str = Field(description="the printed name on electronic signatures")
    role: str
    disabled: bool
    locked: bool
    locked_at: datetime | None
    failed_logins: int
    password_changed_at: datetime
    created_at: datetime


class LoginResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime
    user: UserPublic
    password_expired: bool = Field(default=False, description="the password is older than "
                                   "CULTURECTL_PASSWORD_MAX_AGE_DAYS: this session may only change it "
                                   f"(POST {inactivity.CHANGE_PASSWORD_PATH}); anything else is 403 password-expired")


class UnlockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=1, max_length=1024, repr=False)
    username: str | None = Field(default=None, min_length=1, max_length=63,
                                 description="another user logging in on the locked screen: their session is "
                                             "opened and this one ends; unset or this session's user: an unlock")


class UnlockResponse(BaseModel):
    unlocked: bool = Field(description="true: this session goes on; false: another user's session replaced it")
    last_activity_at: datetime | None = None
    login: LoginResponse | None = Field(default=None, description="the new user's session (a takeover)")


class Me(BaseModel):
    kind: PrincipalKind
    id: int | None
    name: str
    display_name: str
    role: str
    can_sign: bool
    idle_s: float | None = Field(default=None, description="a login session: seconds since its last user action "
                                 "(the dashboard's heartbeat reports input); an API key: null")
    locked: bool = Field(default=False, description="the session is idle for CULTURECTL_INACTIVITY_MINUTES or longer: "
                                                    "user actions are refused until POST /auth/unlock")


class ActivityReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idle_s: float = Field(default=0.0, allow_inf_nan=False,
                          description="seconds since the user's last input on the page; clamped to 0 .. the limit")


_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "wrong username or password", "content": {PROBLEM_JSON: {}}},
    403: {"description": "the account is locked or disabled", "content": {PROBLEM_JSON: {}}},
}


@router.post("/login", response_model=LoginResponse, responses=_ERRORS,
             summary="Log in: a short-lived token, and an HttpOnly session cookie for the dashboard")
async def login(body: LoginRequest, request: Request, response: Response, conn: ConnectionDep,
                runtime: RuntimeDep) -> LoginResponse:
    s = runtime.settings
    result = await sessions.login(conn, body.username, body.password, key=signing_key(request),
                                  ttl=timedelta(minutes=s.token_ttl_minutes), threshold=s.lockout_threshold,
                                  client=client_address(request),
                                  password_max_age=inactivity.SessionRules.of(s).password_max_age)
    return _logged_in(response, result, s.cookie_secure)


def _logged_in(response: Response, result: sessions.Login, secure: bool) -> LoginResponse:
    t = result.token
    _set_cookie(response, t, secure)
    return LoginResponse(access_token=t.token, expires_at=t.expires_at,
                         user=UserPublic(**users.user_public(result.user)), password_expired=result.password_expired)


@router.post("/refresh", response_model=LoginResponse, responses={401: _ERRORS[401]},
             summary="Renew this login session: a fresh token and cookie, up to CULTURECTL_SESSION_MAX_HOURS")
async def refresh(principal: CurrentPrincipal, request: Request, response: Response, conn: ConnectionDep,
                  runtime: RuntimeDep) -> LoginResponse:
    s = runtime.settings
    t = await sessions.renew(conn, principal, key=signing_key(request), ttl=timedelta(minutes=s.token_ttl_minutes),
                             longest=timedelta(hours=s.session_max_hours))
    _set_cookie(response, t, s.cookie_secure)
    user = await users.get_user_by_name(conn, principal.name)
    assert user is not None
    # the same rule as the session's check: the password's age at the login that opened this session
    opened = await conn.fetchval("SELECT issued_at FROM sessions WHERE jti = $1", principal.token_id)
    expired = opened is not None and sessions.password_expired(
        user["password_changed_at"], opened, inactivity.SessionRules.of(s).password_max_age)
    return LoginResponse(access_token=t.token, expires_at=t.expires_at, user=UserPublic(**users.user_public(user)),
                         password_expired=expired)


def _set_cookie(response: Response, t: tokens.IssuedToken, secure: bool) -> None:
    response.set_cookie(tokens.COOKIE_NAME, t.token, max_age=max(1, int((t.expires_at - t.issued_at).total_seconds())),
                        path="/", secure=secure, httponly=True, samesite="strict")


@router.post("/logout", status_code=204, summary="End this login session: its token and cookie stop working")
async def logout(principal: CurrentPrincipal, request: Request, response: Response, conn: ConnectionDep,
                 runtime: RuntimeDep) -> None:
    await sessions.logout(conn, principal, client=client_address(request))
    response.delete_cookie(tokens.COOKIE_NAME, path="/", secure=runtime.settings.cookie_secure, httponly=True,
                           samesite="strict")


@router.get("/me", response_model=Me, summary="Who the credentials belong to")
async def me(principal: CurrentPrincipal, conn: ConnectionDep, runtime: RuntimeDep) -> Me:
    idle = await sessions.idle_seconds(conn, principal)
    limit = inactivity.SessionRules.of(runtime.settings).idle_limit
    return Me(kind=principal.kind, id=principal.id, name=principal.name, display_name=principal.display_name,
              role=principal.role.value, can_sign=principal.can_sign, idle_s=idle,
              locked=idle is not None and limit is not None and idle >= limit.total_seconds())


@router.post("/activity", status_code=204,
             summary="A user action on the dashboard (pointer, key, touch): the session stays unlocked "
                     "(CULTURECTL_INACTIVITY_MINUTES)")
async def activity(principal: CurrentPrincipal, conn: ConnectionDep, runtime: RuntimeDep,
                   body: ActivityReport | None = None) -> None:
    """The dashboard's heartbeat: the session's last activity becomes the reported input time (now - idle_s; no body:
    now), unless a later action was seen (app/auth/inactivity.py). A session idle for the limit is refused here
    too (401 session-idle) and needs POST /auth/unlock."""
    await sessions.report_activity(conn, principal, body.idle_s if body is not None else 0.0,
                                   inactivity.SessionRules.of(runtime.settings))


@router.post("/unlock", response_model=UnlockResponse, responses=_ERRORS,
             summary="The locked screen: this session's password again (audited session.unlock), or another user "
                     "logging in (this session ends)")
async def unlock(body: UnlockRequest, principal: CurrentPrincipal, request: Request, response: Response,
                 conn: ConnectionDep, runtime: RuntimeDep) -> UnlockResponse:
    s = runtime.settings
    if body.username is not None and body.username != principal.name:
        result = await sessions.take_over(conn, principal, body.username, body.password, key=signing_key(request),
                                          ttl=timedelta(minutes=s.token_ttl_minutes), threshold=s.lockout_threshold,
                                          client=client_address(request),
                                          password_max_age=inactivity.SessionRules.of(s).password_max_age)
        return UnlockResponse(unlocked=False, login=_logged_in(response, result, s.cookie_secure))
    at = await sessions.unlock(conn, principal, body.password, threshold=s.lockout_threshold,
                               client=client_address(request))
    return UnlockResponse(unlocked=True, last_activity_at=at)
