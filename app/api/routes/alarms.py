"""Alarms: current states and the journal; acknowledge, shelve, unshelve, out of service (each with a comment).

Run excursions (time and integral outside the band per channel) for the batch record.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from app.alarms import journal
from app.alarms.service import Action, AlarmService
from app.api.deps import INT64_MAX, ConnectionDep, RecordId, RecordIdQuery, RuntimeDep
from app.api.schemas import AlarmDetail, AlarmEventPublic, AlarmPublic, ExcursionReport
from app.api.security import CurrentPrincipal, client_address
from app.core.problems import Problem
from app.protocol import deviations, runs
from app.runtime import Runtime

router = APIRouter(prefix="/alarms", tags=["alarms"])
runs_router = APIRouter(prefix="/runs", tags=["alarms"])

Comment = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"\S")]
Status = Literal["normal", "active_unack", "active_ack", "returned_unack", "shelved", "suppressed_by_design",
                 "out_of_service"]


class AlarmComment(BaseModel):
    """An operator action on an alarm: the comment is required (ISA-18.2, audited as the reason)."""

    model_config = ConfigDict(extra="forbid")
    comment: Comment


class ShelveIn(AlarmComment):
    """Shelve for a number of clock minutes (at most CULTURECTL_ALARM_SHELVE_MAX_MINUTES)."""

    minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60, allow_inf_nan=False,
                                    description="at most CULTURECTL_ALARM_SHELVE_MAX_MINUTES (at most 7 days)")]


def _service(runtime: Runtime) -> AlarmService:
    if runtime.alarms is None:
        raise Problem(503, "alarms-unavailable", "Alarms unavailable", "the alarm service is not running",
                      rule="service_not_started")
    return runtime.alarms


@router.get("", response_model=list[AlarmPublic],
            summary="Alarms and their current state, most urgent first (default: not normal)")
async def list_alarms(
    principal: CurrentPrincipal, runtime: RuntimeDep,
    state: Annotated[Literal["active", "all"] | Status, Query(
        description="active: every alarm not in state normal; all; or one ISA-18.2 state")] = "active",
    device: Annotated[str | None, Query()] = None,
    channel: Annotated[str | None, Query(description="device.point")] = None,
    priority: Annotated[Literal["high", "medium", "low", "advisory"] | None, Query()] = None,
    run_id: RecordIdQuery = None,
) -> list[dict[str, Any]]:
    svc = _service(runtime)
    alarms = svc.active() if state == "active" else sorted(svc.alarms.values(), key=lambda a: a.id)
    out = []
    for a in alarms:
        v = a.view()
        if state not in ("active", "all") and v["status"] != state:
            continue
        if (device and a.device != device) or (channel and a.channel != channel) \
                or (priority and v["priority"] != priority) or (run_id is not None and a.run_id != run_id):
            continue
        out.append(v)
    return out


@router.get("/history", response_model=list[AlarmEventPublic],
            summary="The alarm journal: every transition, newest first, with filters")
async def history(
    principal: CurrentPrincipal, conn: ConnectionDep, runtime: RuntimeDep,
    alarm_id: Annotated[str | None, Query()] = None,
    device: Annotated[str | None, Query()] = None,
    channel: Annotated[str | None, Query()] = None,
    run_id: RecordIdQuery = None,
    priority: Annotated[Literal["high", "medium", "low", "advisory"] | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="clock time, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="clock time, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    before_id: Annotated[int | None, Query(ge=1, le=INT64_MAX, description="page: events older than this id")] = None,
) -> list[dict[str, Any]]:
    if runtime.alarms is not None:
        await runtime.alarms.flush()  # what the stream has shown is in the journal
    return await journal.history(conn, alarm_id=alarm_id, device=device, channel=channel, run_id=run_id,
                                 priority=priority, since=since, until=until, before_id=before_id, limit=limit)


@router.get("/{alarm_id}", response_model=AlarmDetail, summary="One alarm with its definition")
async def get_alarm(alarm_id: str, principal: CurrentPrincipal, runtime: RuntimeDep) -> dict[str, Any]:
    alarm = _service(runtime).get(alarm_id)
    return {**alarm.view(), "definition": alarm.defn.model_dump(mode="json")}


async def _act(runtime: Runtime, request: Request, principal: Any, alarm_id: str, action: Action, comment: str,
               until: datetime | None = None) -> dict[str, Any]:
    return await _service(runtime).act(alarm_id, action, principal=principal, comment=comment, until=until,
                                       client=client_address(request))


@router.post("/{alarm_id}/acknowledge", response_model=AlarmPublic,
             summary="Acknowledge (active_unack -> active_ack, returned_unack -> normal)")
async def acknowledge(alarm_id: str, body: AlarmComment, principal: CurrentPrincipal, request: Request,
                      runtime: RuntimeDep) -> dict[str, Any]:
    return await _act(runtime, request, principal, alarm_id, "acknowledge", body.comment)


@router.post("/{alarm_id}/shelve", response_model=AlarmPublic,
             summary="Shelve for some clock minutes (expires by itself)")
async def shelve(alarm_id: str, body: ShelveIn, principal: CurrentPrincipal, request: Request,
                 runtime: RuntimeDep) -> dict[str, Any]:
    until = runtime.clock.now() + timedelta(minutes=body.minutes)
    return await _act(runtime, request, principal, alarm_id, "shelve", body.comment, until)


@router.post("/{alarm_id}/unshelve", response_model=AlarmPublic, summary="Unshelve before the shelve expires")
async def unshelve(alarm_id: str, body: AlarmComment, principal: CurrentPrincipal, request: Request,
                   runtime: RuntimeDep) -> dict[str, Any]:
    return await _act(runtime, request, principal, alarm_id, "unshelve", body.comment)


@router.post("/{alarm_id}/out-of-service", response_model=AlarmPublic,
             summary="Take out of service (maintenance); not annunciated until returned")
async def take_out_of_service(alarm_id: str, body: AlarmComment, principal: CurrentPrincipal, request: Request,
                              runtime: RuntimeDep) -> dict[str, Any]:
    return await _act(runtime, request, principal, alarm_id, "out_of_service", body.comment)


@router.post("/{alarm_id}/return-to-service", response_model=AlarmPublic, summary="Return to service")
async def return_to_service(alarm_id: str, body: AlarmComment, principal: CurrentPrincipal, request: Request,
                            runtime: RuntimeDep) -> dict[str, Any]:
    return await _act(runtime, request, principal, alarm_id, "return_to_service", body.comment)


@runs_router.get("/{run_id}/excursions", response_model=ExcursionReport, tags=["runs"],
                 summary="Time and integral outside the band per channel of a run, and its planned door openings with "
                         "their recovery (batch record)")
async def excursions(run_id: RecordId, principal: CurrentPrincipal, conn: ConnectionDep,
                     runtime: RuntimeDep) -> dict[str, Any]:
    await runs.run_row(conn, run_id)  # 404 for an unknown run
    if runtime.alarms is not None:
        await runtime.alarms.flush()
    rows = await journal.run_excursions(conn, run_id)
    opened = await deviations.opened_by_rules(conn, run_id, "excursion")
    opened += await deviations.opened_by_rules(conn, run_id, journal.DOOR_RECOVERY)
    doors = await journal.run_door_openings(conn, run_id)
    return {
        "run_id": run_id,
        "channels": [{
            "channel": r["channel"], "unit": r["unit"], "band": [r["band_low"], r["band_high"]],
            "minutes_outside": round(r["seconds_outside"] / 60.0, 3),
            "integral": round(r["integral"], 4), "integral_unit": f"{r['unit']} x min",
            "worst_beyond_band": round(r["worst"], 4), "episodes": r["episodes"],
            "hard_limit_episodes": r["hard_episodes"], "outside_now": r["outside"],
            "first_outside_at": r["first_outside_at"], "updated_at": r["updated_at"],
        } for r in rows],
        "deviations": opened,
        "door_openings": [{k: d[k] for k in ("device", "step_key", "opened_at", "closed_at", "recovered_at",
                                             "recovery_min", "min_temperature", "min_co2", "outcome", "reason",
                                             "planned")} for d in doors],
    }
