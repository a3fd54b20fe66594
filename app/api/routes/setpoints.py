"""Supervised setpoint control of a device: command a setpoint (checked, written, confirmed) and its history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.api.deps import ConnectionDep, RuntimeDep
from app.api.schemas import SetpointCommandPublic
from app.api.security import CurrentPrincipal, client_address
from app.control import setpoints
from app.control.setpoints import SetpointRequest, SetpointService
from app.core.problems import Problem

router = APIRouter(prefix="/devices", tags=["devices"])


def service(runtime: RuntimeDep) -> SetpointService:
    """The command service on the runtime's pool, clock, live hub and device hub."""
    if runtime.pool is None:
        raise Problem(503, "database-unavailable", "Database unavailable", "the service is still starting")
    return SetpointService(runtime.pool, runtime.clock, runtime.live, lambda: runtime.hub,
                           timeout=runtime.settings.setpoint_timeout, forward=runtime.forward_setpoint,
                           fence=runtime.cluster.fence if runtime.cluster is not None else None)


@router.post("/{name}/setpoints", response_model=SetpointCommandPublic,
             summary="Command a setpoint (operator, supervisor): limits, run state, rate of change, device state; "
                     "written, read back and confirmed")
async def command_setpoint(name: str, body: SetpointRequest, principal: CurrentPrincipal, request: Request,
                           runtime: RuntimeDep) -> dict[str, Any]:
    return await service(runtime).command(name, body, principal=principal, source="api",
                                          client=client_address(request))


@router.get("/{name}/setpoints", response_model=list[SetpointCommandPublic],
            summary="The device's setpoint commands with their results, newest first")
async def list_setpoints(
    name: str, principal: CurrentPrincipal, conn: ConnectionDep, runtime: RuntimeDep,
    point: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    if runtime.hub is not None and name not in runtime.hub.status:
        raise Problem(404, "device-not-found", "Not found", f"there is no device {name!r}", rule="unknown_device")
    return await setpoints.history(conn, name, point=point, limit=limit)
