"""Errors as RFC 9457 problem JSON: a type, a title, a status and a human detail naming the rule."""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("culturectl.service")

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://culturectl.example/problems/"


class Problem(Exception):
    """An error the API reports as problem JSON; `extra` members are added to the body."""

    headers: dict[str, str] | None = None

    def __init__(self, status: int, kind: str, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.extra = extra


def problem_response(
    request: Request, status: int, kind: str, title: str, detail: str, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    return str(value)


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for the request's path."""
    app = request.app
    patterns: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allow_patterns", None)
    if patterns is None:
        patterns = [(re.compile("^" + re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(path)) + "$"),
                     sorted(m.upper() for m in ops if m in _HTTP_METHODS))
                    for path, ops in app.openapi().get("paths", {}).items()]
        app.state.allow_patterns = patterns
    return next((methods for pattern, methods in patterns if pattern.match(request.url.path)), [])


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error the API returns a problem JSON document."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        response = problem_response(request, exc.status, exc.kind, exc.title, exc.detail, **exc.extra)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return problem_response(
            request, 422, "validation-error", "Request is not valid",
            f"{where}: {first['msg']}" if where else str(first["msg"]), errors=_json_safe(errors),
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        titles = {401: "Not authenticated", 403: "Forbidden", 404: "Not found", 405: "Method not allowed"}
        response = problem_response(
            request, exc.status_code, f"http-{exc.status_code}",
            titles.get(exc.status_code, "HTTP error"), str(exc.detail),
        )
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; a path served by several routes has all of them
            allowed = _allowed_methods(request)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    async def on_database_down(request: Request, exc: Exception) -> JSONResponse:
        response = problem_response(request, 503, "database-unavailable", "Database unavailable",
                                    f"the database cannot be reached now ({type(exc).__name__}); try again shortly",
                                    rule="database_unavailable")
        response.headers["Retry-After"] = "5"
        return response

    async def on_database_error(request: Request, exc: Exception) -> JSONResponse:
        # the database's own message names tables, columns and values: it goes to the log, not to the client
        state = getattr(exc, "sqlstate", None) or "?"
        log.error("database refused %s %s (SQLSTATE %s): %s", request.method, request.url.path, state, exc)
        return problem_response(request, 500, "database-error", "The database refused the request",
                                f"the database refused the request (SQLSTATE {state}); it is logged",
                                rule="database_error", sqlstate=state)

    async def on_timeout(request: Request, exc: Exception) -> JSONResponse:
        response = problem_response(request, 503, "timeout", "Timed out",
                                    "a dependency (the database, a device) did not answer in time; try again shortly",
                                    rule="timeout")
        response.headers["Retry-After"] = "5"
        return response

    # Connection errors only: an OSError or a timeout elsewhere in a route is not the database's.
    for unavailable in (ConnectionError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                        asyncpg.exceptions.OperatorInterventionError):
        app.add_exception_handler(unavailable, on_database_down)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(request, 500, "internal-error", "Internal error",
                                f"the service failed to answer ({type(exc).__name__}); it is logged",
                                rule="internal_error")

    app.add_exception_handler(asyncpg.PostgresError, on_database_error)
    app.add_exception_handler(TimeoutError, on_timeout)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
