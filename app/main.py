"""The FastAPI application factory: nothing is created at import time."""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.headers import install_security_headers
from app.api.http_metrics import install_http_metrics
from app.api.limits import LimitsMiddleware, document_limits, limits_from
from app.api.routes import alarms as alarms_api
from app.api.routes import apikeys, auth, channels, deviations, devices, health, recipes, runs, stream, users
from app.api.routes import audit as audit_api
from app.api.routes import calibrations as calibrations_api
from app.api.routes import cluster as cluster_api
from app.api.routes import contacts as contacts_api
from app.api.routes import notifications as notifications_api
from app.api.routes import record_reviews as record_reviews_api
from app.api.routes import records as records_api
from app.api.routes import sessions as sessions_api
from app.api.routes import setpoints as setpoints_api
from app.api.routes import signatures as signatures_api
from app.api.schemas import API_ERRORS, DEVICE_ERRORS, problem_responses
from app.api.security import current_principal
from app.core.clock import Clock
from app.core.live import LiveHub
from app.core.problems import PROBLEM_JSON, install_problem_handlers
from app.runtime import Runtime
from app.settings import Settings
from app.web import ack as web_ack
from app.web import api_docs as web_api_docs
from app.web import pages as web_pages

log = logging.getLogger("culturectl.service")

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """Build the service; its lifespan starts the database, the writer and the device supervisors."""
    settings = settings or Settings()
    runtime = Runtime(settings=settings, clock=clock or settings.make_clock())
    runtime.limits = limits_from(settings)  # abuse limits: throttled password checks, streams, body size

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        log.info("culturectl service ready (%d devices, time scale %g)", len(runtime.devices),
                 settings.time_scale)
        try:
            yield
        finally:
            await runtime.stop()
            log.info("culturectl service stopped: streams closed, readings and journal written or spooled, "
                     "devices released")

    app = FastAPI(
        title="culturectl",
        version="0.1.0",
        summary="Monitoring and control of 7-day T-lymphoid progenitor culture runs",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from the package, under the CSP (app/web/api_docs.py)
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.add_middleware(LimitsMiddleware, runtime=runtime)  # 413 before a body is parsed (app/api/limits.py)
    install_http_metrics(app)  # requests by route template, method and status; latency (app/api/http_metrics.py)
    install_problem_handlers(app)
    app.include_router(health.router)
    # Every API route needs credentials and a role the policy table (app/auth/policy.py) allows; every error it can
    # answer is documented as problem JSON.
    errors = problem_responses(*API_ERRORS)
    for module in (devices, channels, stream):
        app.include_router(module.router, prefix=API_PREFIX, dependencies=[Depends(current_principal)],
                           responses=errors)
    # These declare CurrentPrincipal per route (login is public).
    for module in (auth, users, apikeys, audit_api, signatures_api, recipes, runs, deviations, alarms_api,
                   calibrations_api, records_api, sessions_api):
        app.include_router(module.router, prefix=API_PREFIX, responses=errors)
    app.include_router(notifications_api.router, prefix=API_PREFIX, responses=errors)
    app.include_router(record_reviews_api.router, prefix=API_PREFIX, responses=errors)
    app.include_router(setpoints_api.router, prefix=API_PREFIX,
                       responses=problem_responses(*API_ERRORS, *DEVICE_ERRORS))
    app.include_router(alarms_api.runs_router, prefix=API_PREFIX, responses=errors)
    app.include_router(contacts_api.router, prefix=API_PREFIX, responses=errors)  # CurrentPrincipal per route
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    # The operator dashboard: pages redirect to /login without the session cookie (after the problem handlers).
    web_pages.install(app)
    app.include_router(web_ack.router)  # remote acknowledgement from a notification's link
    app.include_router(cluster_api.router)  # one replica's calls on another (signed with the service key)
    app.include_router(web_api_docs.router)  # /docs, /redoc: Swagger UI and ReDoc from app/web/static/vendor
    # CSP, nosniff, frame and referrer rules on every response; HSTS behind HTTPS (app/api/headers.py). Last, so
    # it wraps every other middleware.
    install_security_headers(app, hsts=settings.cookie_secure)
    return app


_PROBLEM_REF = "#/components/schemas/ProblemDetails"


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with every error answer under application/problem+json (what the API sends)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                for code, response in operation.get("responses", {}).items():
                    # every error answer of the API is problem JSON (app.core.problems); /readyz answers its report
                    if code[0] in "45" and response.get("content", {}).get("application/json", {}).get("schema") \
                            != {"$ref": "#/components/schemas/Ready"}:
                        response["content"] = {PROBLEM_JSON: {"schema": {"$ref": _PROBLEM_REF}}}
        document_limits(doc, {"$ref": _PROBLEM_REF})  # 413 where a body is sent, 429 where a password is checked
        schemas = doc.get("components", {}).get("schemas", {})
        if "#/components/schemas/HTTPValidationError" not in json.dumps(doc.get("paths", {})):
            schemas.pop("HTTPValidationError", None)  # FastAPI's own 422 body, which this API never sends
            schemas.pop("ValidationError", None)
        app.openapi_schema = doc
    return app.openapi_schema


class Server(uvicorn.Server):
    """uvicorn for culturectl: on SIGTERM (or `should_exit`) the live streams end first, so shutdown never waits
    for SSE clients; a response still open after `shutdown_grace` s (a client that stopped reading) is cut. Then
    the lifespan stops the runtime: buffer and alarm journal flushed or spooled, drivers stopped."""

    def __init__(self, config: uvicorn.Config, live: LiveHub) -> None:
        super().__init__(config)
        self._live = live

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._live.close()
        await super().shutdown(sockets=sockets)


def make_server(app: FastAPI, settings: Settings, host: str | None = None, port: int | None = None) -> Server:
    """The one way the service is served (`culturectl serve`, the demo, the end-to-end tests)."""
    runtime: Runtime = app.state.runtime
    config = uvicorn.Config(app, host=host or settings.host, port=settings.port if port is None else port,
                            log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace))
    return Server(config, runtime.live)
