"""Devices: the list with state and owner, and a page per device (profile, points live, calibration, alarms).

Loaded with the API's own route functions (devices, channels, calibrations, setpoints), so the page shows what
GET /api/v1/devices/{name} and its neighbours answer. The setpoint form posts to the API (forms.js); whether it is
shown follows the policy table's entry for that API route.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.responses import HTMLResponse

from app.api.deps import ConnectionDep, RuntimeDep
from app.api.routes import calibrations as calibrations_api
from app.api.routes import channels as channels_api
from app.api.routes import devices as devices_api
from app.api.routes import setpoints as setpoints_api
from app.api.schemas import DevicePublic, PointPublic
from app.api.security import CurrentPrincipal
from app.auth.policy import V1
from app.auth.principal import Principal
from app.runtime import Runtime
from app.web import render, views

router = render.page_router()

DeviceName = Annotated[str, Path(max_length=63)]
SETPOINT_ROUTE = f"{V1}/devices/{{name}}/setpoints"
RECENT_SETPOINTS = 20
CALIBRATION_TEXT = {"valid": "\u2714 valid", "due_soon": "\u26a0 due soon", "overdue": "\u2716 overdue"}


def _check_text(dev: DevicePublic) -> dict[str, Any]:
    """The profile check of the last connect: not yet, as declared, or how many points are off profile."""
    if dev.check_ok is None:
        return {"state": "none", "text": "not checked yet"}
    off = [f"{c.point}: {'; '.join(c.problems)}" for c in dev.check if not c.ok]
    if not off:
        return {"state": "ok", "text": "\u2714 points as declared", "off": []}
    return {"state": "mismatch", "text": f"\u26a0 {len(off)} point{'s' if len(off) != 1 else ''} off profile",
            "off": off}


def _row(dev: DevicePublic) -> dict[str, Any]:
    return {"dev": dev, "check": _check_text(dev)}


def _calibration(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    left = int(rec["days_left"])
    when = (f"{-left} day{'s' if left != -1 else ''} ago" if left < 0 else
            "today" if left == 0 else f"in {left} day{'s' if left != 1 else ''}")
    return {**rec, "text": CALIBRATION_TEXT.get(rec["status"], rec["status"]), "when": when}


def _points(dev: DevicePublic, channels: dict[str, Any],
            calibrations: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks = {c.point: c for c in dev.check}
    out = []
    for p in dev.points:
        ch = channels.get(p.name)
        check = checks.get(p.name)
        out.append({"point": p, "channel": f"{dev.name}.{p.name}", "latest": ch.latest if ch else None,
                    "check": None if check is None else {
                        "ok": check.ok, "text": "\u2714 as declared" if check.ok else "\u26a0 " + "; ".join(
                            check.problems)},
                    "calibration": _calibration(calibrations.get(p.name))})
    return out


def _writable(dev: DevicePublic) -> list[PointPublic]:
    return [p for p in dev.points if p.writable]


def _point_label(p: PointPublic) -> str:
    limits = "" if p.min is None and p.max is None else \
        f" \u00b7 {views.fmt_number(p.min)} \u2013 {views.fmt_number(p.max)} {p.unit}"
    return f"{p.name}{limits}"


def may_command(principal: Principal) -> bool:
    return render.may(principal, "POST", SETPOINT_ROUTE)


def _sse_channels(runtime: Runtime, dev: DevicePublic) -> str:
    """The device's channels the stream knows (it refuses unknown keys)."""
    return ",".join(k for k in (f"{dev.name}.{p.name}" for p in dev.points) if k in runtime.channel_ids)


@router.get("/devices", response_class=HTMLResponse)
async def devices_page(request: Request, principal: CurrentPrincipal, runtime: RuntimeDep) -> HTMLResponse:
    rows = [_row(d) for d in await devices_api.list_devices(runtime)]
    return render.page(request, "devices.html", principal, "devices", rows=rows)


@router.get("/devices/{name}", response_class=HTMLResponse)
async def device_page(name: DeviceName, request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                      runtime: RuntimeDep) -> HTMLResponse:
    dev = await devices_api.get_device(name, runtime)  # 404 problem for an unknown device
    channels = {c.name: c for c in await channels_api.list_channels(conn) if c.device == name}
    calibrations = {c["point"]: c for c in await calibrations_api.list_calibrations(
        principal, conn, runtime, status=None, device=name)}
    commands = await setpoints_api.list_setpoints(name, principal, conn, runtime, point=None, limit=RECENT_SETPOINTS)
    writable = _writable(dev)
    return render.page(
        request, "device.html", principal, "device", row=_row(dev), endpoint=dev.endpoint,
        points=_points(dev, channels, calibrations), groups=views.group_alarms(render.alarm_views(runtime, {name})),
        commands=commands, may_command=may_command(principal), writable=writable,
        writable_choices=[(p.name, _point_label(p)) for p in writable],
        command_roles=render.who_may("POST", SETPOINT_ROUTE), sse_channels=_sse_channels(runtime, dev))


@router.get("/devices/{name}/fragments/alarms", response_class=HTMLResponse)
async def device_alarms_fragment(name: DeviceName, request: Request, principal: CurrentPrincipal,
                                 runtime: RuntimeDep) -> HTMLResponse:
    await devices_api.get_device(name, runtime)
    return render.fragment(request, "fragments/alarm_groups.html",
                           groups=views.group_alarms(render.alarm_views(runtime, {name})),
                           empty_text=f"No active alarms on {name}")
