"""Liveness, readiness (database and each device) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app import db
from app.api.deps import RuntimeDep
from app.api.metrics import render_metrics
from app.api.schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", summary="Database and devices: 200 when the database is reachable, else 503",
            responses={200: {"model": Ready}, 503: {"model": Ready, "description": "the database cannot be reached"}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    db_ok, db_error = False, None
    if runtime.pool is not None:
        try:
            await db.ping(runtime.pool)
            db_ok = True
        except Exception as exc:  # any failure means "not ready"; the reason is reported
            db_error = f"{type(exc).__name__}: {exc}"
    devices: dict[str, Any] = {}
    for d in runtime.devices:
        devices[d.name] = runtime.device_state(d.name)
    body: dict[str, Any] = {
        "status": "ready" if db_ok else "not ready",
        "database": {"ok": db_ok, "error": db_error},
        "ingest": runtime.writer.stats() if runtime.writer is not None else None,
        "buffer": runtime.buffer.stats() if runtime.buffer is not None else None,
        "live": runtime.live.stats(),
        "devices": devices,
        "cluster": runtime.cluster.view() if runtime.cluster is not None else None,
    }
    return JSONResponse(jsonable_encoder(body), status_code=200 if db_ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep, request: Request) -> Response:
    http = getattr(request.app.state, "http_metrics", None)  # app/api/http_metrics.py (install_http_metrics)
    return Response(render_metrics(runtime, http), media_type=CONTENT_TYPE_LATEST)
