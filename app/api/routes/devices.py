"""Devices and their connection state."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import RuntimeDep
from app.api.schemas import DevicePublic, PointPublic

router = APIRouter(tags=["devices"])


@router.get("/devices", response_model=list[DevicePublic], summary="Devices with their connection state")
async def list_devices(runtime: RuntimeDep) -> list[DevicePublic]:
    hub = runtime.hub
    out: list[DevicePublic] = []
    for d in runtime.devices:
        status = hub.status.get(d.name) if hub else None
        stats = hub.stats(d.name) if hub else {}
        out.append(DevicePublic(
            name=d.name, kind=d.kind, protocol=d.protocol, endpoint=d.endpoint, description=d.description,
            state=status.state.value if status else "stopped",
            state_since=status.since if status else None,
            last_reading_time=stats.get("last_reading_time"),
            last_error=stats.get("last_error"),
            points=[PointPublic(name=p.name, unit=p.unit, kind=p.kind, writable=p.writable, min=p.min,
                                max=p.max, description=p.description) for p in d.points],
        ))
    return out
