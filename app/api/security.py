"""The endpoint dependency: who is calling (token, API key or session cookie), and may they call this route.

Every router adds `CurrentPrincipal` (as a parameter or in `dependencies=`). Credentials, in order:
`Authorization: Bearer <jwt>` or `Authorization: Bearer ck_...` (an API key), `X-API-Key: ck_...`, the
session cookie. They are checked against the database on every request, so a logout, a disabled or locked
user or a revoked key is refused at once.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.api.deps import RuntimeDep
from app.auth import apikeys, inactivity, sessions, tokens, users
from app.auth.policy import access_for
from app.auth.principal import Principal
from app.core.problems import Problem
from app.runtime import Runtime

# Declared for the OpenAPI schema (the "Authorize" button of /docs); auto_error=False: we answer ourselves.
_bearer = HTTPBearer(auto_error=False, description="a login token (JWT) or an API key ck_...")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key ck_...")
_cookie = APIKeyCookie(name=tokens.COOKIE_NAME, auto_error=False, description="the dashboard's session cookie")


def signing_key(request: Request) -> bytes:
    """The token-signing key of this app, loaded (or created) on first use."""
    key: bytes | None = getattr(request.app.state, "auth_signing_key", None)
    if key is None:
        runtime: Runtime = request.app.state.runtime
        key = tokens.load_signing_key(runtime.settings)
        request.app.state.auth_signing_key = key
    return key


def route_template(request: Request) -> str | None:
    """The matched route's path as declared, router prefix included (e.g. /api/v1/channels/{channel_id}/...)."""
    fastapi_scope: Any = request.scope.get("fastapi") or {}
    context = fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    path = getattr(context, "path_format", None)
    if path:
        return str(path)
    route = request.scope.get("route")
    path = getattr(route, "path_format", None)
    return str(path) if path else None


def client_address(request: Request) -> str | None:
    """The client's IP address as the throttle and the audit trail record it: the socket's peer, or what a trusted
    proxy said (uvicorn's FORWARDED_ALLOW_IPS); anything that is not an IP address is recorded as "invalid"."""
    host = request.client.host if request.client else None
    if host is None:
        return None
    try:
        return str(ipaddress.ip_address(host[:64]))
    except ValueError:
        return "invalid"


async def authenticate(request: Request, runtime: Runtime, credentials: str | None, api_key: str | None,
                       cookie: str | None, route: tuple[str, str | None] | None = None) -> Principal:
    token = credentials or api_key or cookie
    if not token:
        raise users.AuthError("this endpoint needs credentials: Authorization: Bearer <token or API key>, "
                                 "X-API-Key, or the session cookie from POST /api/v1/auth/login")
    if runtime.pool is None:
        raise Problem(503, "database-unavailable", "Database unavailable", "the service is still starting")
    try:
        async with runtime.pool.acquire(timeout=5) as conn:
            if apikeys.looks_like_api_key(token):
                return await apikeys.principal_for_api_key(conn, token)
            if route is None:
                return await sessions.principal_for_token(conn, signing_key(request), token)
            method, path = route
            # the inactivity lock and password expiry (app/auth/inactivity.py): by the route's use
            return await sessions.principal_for_token(
                conn, signing_key(request), token, rules=inactivity.SessionRules.of(runtime.settings),
                use=inactivity.route_use(method, path),
                expiry_exempt=(method, path or "") in inactivity.PASSWORD_EXPIRED_ALLOWED)
    except (OSError, TimeoutError) as exc:
        raise Problem(503, "database-unavailable", "Database unavailable",
                      f"credentials cannot be checked now: the database cannot be reached ({type(exc).__name__})",
                      ) from exc


async def current_principal(
    request: Request,
    runtime: RuntimeDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> Principal:
    """Authenticate the caller (401) and check the role x endpoint table for the matched route (403)."""
    method, path = request.method, route_template(request)
    access = access_for(method, path) if path else None
    principal = await authenticate(request, runtime, bearer.credentials if bearer else None, api_key, cookie,
                                   route=(method, path))
    if access is None:
        raise Problem(403, "no-policy", "Forbidden", f"{method} {path} has no entry in the role x endpoint table")
    if not access.allows(principal):
        who = f"API keys (role {principal.role.value})" if principal.kind == "apikey" and access.users_only \
            else f"role {principal.role.value}"
        raise Problem(403, "forbidden-role", "Forbidden",
                      f"{who} may not call {method} {path} (allowed: {access.describe()})",
                      role=principal.role.value)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
