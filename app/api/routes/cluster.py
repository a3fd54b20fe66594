"""The routes one replica calls on another (app/cluster/forward.py): a setpoint command or an alarm action for
what the called replica owns. Signed with the shared service key; not part of the public API."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

from fastapi import APIRouter, Request

from app.alarms.service import AckLink, Action
from app.api.deps import RuntimeDep
from app.auth.tokens import load_signing_key
from app.cluster import forward
from app.control.setpoints import SetpointRequest, SetpointService
from app.core.problems import Problem

router = APIRouter(prefix=forward.PREFIX, include_in_schema=False)


async def _payload(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    body = await request.body()
    forward.verify(load_signing_key(runtime.settings), request.headers, request.url.path, body)
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise Problem(422, "invalid-body", "Invalid body", "an internal request carries a JSON object",
                      rule="replica_request")
    return data


@router.post("/setpoints/{device}")
async def setpoint(device: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """A setpoint command forwarded by the replica that received it: checked, written and recorded here."""
    data = await _payload(request, runtime)
    if runtime.pool is None:
        raise Problem(503, "database-unavailable", "Database unavailable", "the service is still starting")
    service = SetpointService(runtime.pool, runtime.clock, runtime.live, lambda: runtime.hub,
                              timeout=runtime.settings.setpoint_timeout,  # no forward: this replica owns it
                              fence=runtime.cluster.fence if runtime.cluster is not None else None)
    return await service.command(device, SetpointRequest.model_validate(data["body"]),
                                 principal=forward.principal_of(data["principal"]), source=data["source"],
                                 client=data.get("client"))


@router.post("/alarms/{alarm_id}/{action}")
async def alarm_action(alarm_id: str, action: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """An operator's action on an alarm this replica evaluates, forwarded by the replica that received it."""
    data = await _payload(request, runtime)
    if runtime.alarms is None:
        raise Problem(503, "alarms-unavailable", "Alarms unavailable", "the alarm service is not running")
    if action not in ("acknowledge", "shelve", "unshelve", "out_of_service", "return_to_service"):
        raise Problem(404, "unknown-action", "Unknown action", f"no alarm action {action!r}", rule="alarm_action")
    link = data.get("link")
    until = data.get("until")
    return await runtime.alarms.act(
        alarm_id, cast(Action, action), principal=forward.principal_of(data["principal"]),
        comment=str(data.get("comment") or ""), until=datetime.fromisoformat(until) if until else None,
        client=data.get("client"),
        link=AckLink(int(link["delivery_id"]), str(link["username"]), str(link["channel"])) if link else None,
        forwarded=True)
