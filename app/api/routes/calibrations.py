"""Calibration records of device points: record one (supervisor, admin), a point's history, every point's record in
force with its status (app/devices/calibration.py)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ConnectionDep, RuntimeDep
from app.api.security import CurrentPrincipal, client_address
from app.core.problems import Problem
from app.devices import calibration
from app.runtime import Runtime
from drivers.base import PointError, find_point
from drivers.devices import DeviceConfig

router = APIRouter(tags=["devices"])

DeviceName = Annotated[str, Path(max_length=63)]
PointName = Annotated[str, Path(max_length=100, description="a point of the device, or the role it plays")]


class CalibrationIn(BaseModel):
    """A calibration of a point: when, the last day it is valid, the certificate, who calibrated it and why it is
    recorded."""

    model_config = ConfigDict(extra="forbid")

    calibrated_on: dt.date = Field(description="YYYY-MM-DD, not after today at the site")
    due_on: dt.date = Field(description="the last day the calibration is valid (YYYY-MM-DD), after calibrated_on")
    certificate: str = Field(description=f"the certificate's reference, 1-{calibration.TEXT_MAX} characters")
    performed_by: str = Field(description=f"who calibrated (a person or a service company), 1-{calibration.TEXT_MAX} "
                                          "characters")
    reason: str = Field(min_length=1, max_length=2000, description="why (recorded in the audit trail)")


class CalibrationPublic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int
    device: str
    point: str
    calibrated_on: dt.date
    due_on: dt.date
    certificate: str
    performed_by: str
    recorded_by: str
    recorded_at: dt.datetime
    status: Literal["valid", "due_soon", "overdue"] = Field(description="today at the site: overdue after due_on, "
                                                                        "due_soon within the warning days")
    days_left: int = Field(description="days from today to due_on (negative: overdue)")
    in_force: bool = Field(description="the point's newest record (the one in force)")


class RunCalibrationPublic(BaseModel):
    """A record in force of one of a run's devices' points, for the batch record."""

    model_config = ConfigDict(extra="forbid")

    device: str
    point: str
    calibrated_on: dt.date
    due_on: dt.date
    certificate: str
    performed_by: str
    status_at_start: Literal["valid", "due_soon", "overdue"] = Field(description="on the run's T0 (planned T0 "
                                                                                 "before it starts)")
    status_now: Literal["valid", "due_soon", "overdue"]
    days_left: int


def _device(runtime: Runtime, name: str) -> DeviceConfig:
    for d in runtime.devices:
        if d.name == name:
            return d
    raise Problem(404, "device-not-found", "Not found",
                  f"there is no device {name!r}; known: {', '.join(d.name for d in runtime.devices) or 'none'}",
                  rule="unknown_device")


def _point(device: DeviceConfig, point: str) -> str:
    """The device's point of that name, or the one playing that role; 404 listing the points (the point is the
    path's resource, as an unknown step of a run is)."""
    try:
        return find_point(device.points, point, device.name).name
    except PointError:
        points = [p.name for p in device.points]
        raise Problem(404, "point-not-found", "Unknown point",
                      f"{device.name} has no point {point!r}; points: {', '.join(points)}", rule="unknown_point",
                      field="point", points=points) from None


def _today(runtime: Runtime) -> dt.date:
    return calibration.site_today(runtime.clock.now(), runtime.settings.zone())


@router.post("/devices/{device}/points/{point}/calibrations", response_model=CalibrationPublic, status_code=201,
             summary="Record a point's calibration (supervisor, admin): it supersedes the point's record in force")
async def record_calibration(device: DeviceName, point: PointName, body: CalibrationIn,
                             principal: CurrentPrincipal, request: Request, conn: ConnectionDep,
                             runtime: RuntimeDep) -> dict[str, Any]:
    name = _point(_device(runtime, device), point)
    today = _today(runtime)
    row = await calibration.record(conn, device=device, point=name, calibrated_on=body.calibrated_on,
                                   due_on=body.due_on, certificate=body.certificate, performed_by=body.performed_by,
                                   reason=body.reason, principal=principal, now=runtime.clock.now(), today=today,
                                   client=client_address(request))
    return calibration.view(row, today, runtime.settings.calibration_warn_days)


@router.get("/devices/{device}/points/{point}/calibrations", response_model=list[CalibrationPublic],
            summary="A point's calibration records, newest (the one in force) first")
async def calibration_history(device: DeviceName, point: PointName, principal: CurrentPrincipal,
                              conn: ConnectionDep, runtime: RuntimeDep) -> list[dict[str, Any]]:
    name = _point(_device(runtime, device), point)
    today, warn = _today(runtime), runtime.settings.calibration_warn_days
    rows = await calibration.history(conn, device, name)
    return [calibration.view(r, today, warn, in_force=i == 0) for i, r in enumerate(rows)]


@router.get("/calibrations", response_model=list[CalibrationPublic],
            summary="Every calibrated point's record in force with its status today, by device and point")
async def list_calibrations(
    principal: CurrentPrincipal, conn: ConnectionDep, runtime: RuntimeDep,
    status: Annotated[Literal["valid", "due_soon", "overdue"] | None, Query(
        description="only records with this status today")] = None,
    device: Annotated[str | None, Query(max_length=63)] = None,
) -> list[dict[str, Any]]:
    today, warn = _today(runtime), runtime.settings.calibration_warn_days
    views = [calibration.view(r, today, warn) for r in await calibration.current(conn, device)]
    return [v for v in views if status is None or v["status"] == status]
