"""Devices: their profile, connection state and the point check of the last connect."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Path

from app.api.deps import RuntimeDep
from app.api.schemas import DevicePublic, PointCheckPublic, PointPublic, problem_responses
from app.core.problems import Problem
from app.runtime import Runtime
from drivers.devices import DeviceConfig

router = APIRouter(tags=["devices"])


def public_endpoint(endpoint: str) -> str:
    """The endpoint as the API shows it: without a user name or password in it, nor a query or fragment (where a
    token could be): opc.tcp://user:pw@host:4840/path?token=x -> opc.tcp://host:4840/path."""
    parts = urlsplit(endpoint)
    if not parts.netloc:
        return endpoint.split("?", 1)[0].split("#", 1)[0]
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="", fragment=""))


def _public(runtime: Runtime, d: DeviceConfig) -> DevicePublic:
    hub = runtime.hub
    status = hub.status.get(d.name) if hub else None
    stats = hub.stats(d.name) if hub else {}
    checks = status.checks if status else []
    view = runtime.device_state(d.name)
    return DevicePublic(
        name=d.name, kind=d.kind, protocol=d.protocol, endpoint=public_endpoint(d.endpoint), description=d.description,
        profile=d.profile_spec.name, profile_version=d.profile_spec.version,
        state=view["state"], state_since=view["since"], owner=view["owner"], owned_here=view["owned_here"],
        last_reading_time=stats.get("last_reading_time"),
        last_error=stats.get("last_error"),
        points=[PointPublic(name=p.name, unit=p.unit, kind=p.kind, role=p.role, device_unit=p.device_unit,
                            writable=p.writable, min=p.min, max=p.max, description=p.description) for p in d.points],
        checked_at=status.checked_at if status else None,
        check_ok=all(c.ok for c in checks) if checks else None,
        check=[PointCheckPublic(point=c.point, found=c.found, where=c.where, data_type=c.data_type, unit=c.unit,
                                writable=c.writable, value=c.value, ok=c.ok, problems=list(c.problems))
               for c in checks],
    )


@router.get("/devices", response_model=list[DevicePublic], summary="Devices with their connection state")
async def list_devices(runtime: RuntimeDep) -> list[DevicePublic]:
    return [_public(runtime, d) for d in runtime.devices]


@router.get("/devices/{name}", response_model=DevicePublic, responses=problem_responses(404),
            summary="One device: its profile, state and the point check of its last connect")
async def get_device(name: Annotated[str, Path(max_length=63)], runtime: RuntimeDep) -> DevicePublic:
    for d in runtime.devices:
        if d.name == name:
            return _public(runtime, d)
    raise Problem(404, "device-not-found", "Not found",
                  f"there is no device {name!r}; known: {', '.join(d.name for d in runtime.devices) or 'none'}",
                  rule="unknown_device")
