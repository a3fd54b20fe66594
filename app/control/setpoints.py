"""The setpoint command service: the one supervised path from a person, a script or the recipe to a device.

`SetpointService.command` checks (app/control/rules.py, in order) the device and point, the point's limits, the run
state and the rate of change, then the device state; refusals raise a `Problem` and leave no row. A command that
passes is recorded in `setpoint_command` (result NULL) before it is written through `DeviceHub.write`; the write
and its read-back get `timeout` wall seconds; then the row is updated with the result (confirmed,
did_not_follow, timeout, failed) together with exactly one audit record `device.setpoint`, and a `setpoint`
event goes on the live stream. A result other than confirmed raises `SetpointFailed` (502/503/504).

Decisions:
- The role check is the policy table's (app/auth/policy.py); the held-run rule adds "supervisor only".
- The rate-of-change rule applies to commands from the API only (people and scripts): the recipe's phase
  setpoints are released, signed content applied at planned phase boundaries, and splitting or delaying them
  would change the validated process; the rule is there against hasty or mistyped manual changes. The alarm
  beacon's commands (source "alarm", app/alarms/beacon.py) are exempt from it and from the held-run rule too.
- Commands on one point are serialized by an advisory lock from the interval check to the insert, so two
  concurrent requests cannot both pass the interval rule.
- The current setpoint (the reference of the step rule and the audit's old value) is the device's last reported
  value or read-back, else the last read-back recorded in setpoint_command.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from app.auth.principal import Principal
from app.control import rules as control
from app.control.rules import BoundRun, Refusal, Source
from app.core.clock import Clock
from app.core.live import LiveHub
from app.core.problems import Problem
from app.db import DBConnection, query, schema
from app.devices.hub import DeviceHub
from app.protocol import runs
from app.records import audit
from drivers.base import DeviceUnavailable, PointError, PointSpec, find_point

log = logging.getLogger("culturectl.control")

# Key space of the per-point advisory locks (two-int form: apart from the audit writers' one-bigint lock).
LOCK_SPACE = 0x53504354  # "SPCT"

COMMAND_COLUMNS = ("id, device, point, run_id, requested, previous, read_back, result, detail, actor, reason, "
                   "requested_at, completed_at, source")


class SetpointRequest(BaseModel):
    """A setpoint command: the point, the absolute value, why, and optionally the run it is for."""

    model_config = ConfigDict(extra="forbid")

    point: str = Field(min_length=1, max_length=100, description="a writable point, e.g. temperature_setpoint")
    value: float = Field(allow_inf_nan=False, description="the absolute value in the point's unit")
    reason: str = Field(min_length=1, max_length=2000, description="why (recorded in the audit trail)")
    run_id: int | None = Field(default=None, ge=1, le=9_223_372_036_854_775_807,
                               description="the run the change is for (must use this device)")


Forward = Callable[[str, "SetpointRequest", Principal, Source, str | None], Awaitable[dict[str, Any] | None]]


class SetpointFailed(Problem):
    """The command was written (or tried) and recorded, but the device did not confirm it."""


def _refused(refusal: Refusal) -> Problem:
    return Problem(refusal.status, refusal.rule.replace("_", "-"), "Setpoint refused", refusal.detail,
                   rule=refusal.rule, **refusal.facts)


def command_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A setpoint_command row for the API and the live stream (times as ISO text)."""
    out = {k: row[k] for k in COMMAND_COLUMNS.split(", ")}
    for k in ("requested_at", "completed_at"):
        out[k] = None if out[k] is None else out[k].isoformat()
    return out


@dataclass
class SetpointService:
    """Checks, records, writes, confirms and audits setpoint commands."""

    pool: asyncpg.Pool
    clock: Clock
    live: LiveHub
    hub: Callable[[], DeviceHub | None]
    timeout: float = 5.0
    # Several replicas: a command for a device another replica owns goes there whole (app/cluster/forward.py); the
    # callable returns that replica's answer, or None when the device is this replica's.
    forward: Forward | None = None
    # Several replicas: raises unless this replica holds the device's lease, in the caller's transaction (no other
    # replica can take the lease over before it ends: app/cluster/node.py `Cluster.fence`).
    fence: Callable[[DBConnection, str], Awaitable[None]] | None = None

    def _spec(self, hub: DeviceHub, device: str, point: str) -> PointSpec:
        status = hub.status.get(device)
        if status is None:
            raise Problem(404, "device-not-found", "Not found",
                          f"there is no device {device!r}; known: {', '.join(sorted(hub.status)) or 'none'}",
                          rule="unknown_device")
        try:  # a point's name, or the role it plays ("temperature_setpoint")
            return find_point(status.config.points, point, device)
        except PointError:
            pass
        writable = [p.name for p in status.config.points if p.writable]
        raise Problem(422, "unknown-point", "Unknown point",
                      f"{device} has no point {point!r}; writable points: {', '.join(writable)}",
                      rule="unknown_point", writable=writable)

    async def command(self, device: str, body: SetpointRequest, *, principal: Principal, source: Source = "api",
                      client: str | None = None) -> dict[str, Any]:
        """Run one command through every rule; return the confirmed command, or raise a Problem."""
        hub = self.hub()
        if hub is None:
            raise Problem(503, "device-unavailable", "Setpoint refused", "the device hub is not running",
                          rule="device_unavailable")
        spec = self._spec(hub, device, body.point)
        # records name the device's point; the rate rules go by the role it plays
        point, rule, value = spec.name, spec.role or spec.name, float(body.value)
        refusal = control.check_point(spec, value)
        if refusal is not None:
            raise _refused(refusal)
        if self.forward is not None:
            answer = await self.forward(device, body, principal, source, client)
            if answer is not None:
                return answer
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_SPACE, f"{device}.{point}")
                runs = await self._runs(conn, device)
                run_id = self._run_of(runs, body.run_id, device)
                if body.run_id is not None and run_id is None:
                    await self._check_run_exists(conn, body.run_id)
                    raise Problem(422, "run-device-mismatch", "Setpoint refused",
                                  f"run {body.run_id} is not a planned, running or held run using {device}",
                                  rule="run_device_mismatch",
                                  runs=[r.id for r in control.binding_runs(runs)])
                now = self.clock.now()
                current = hub.current(device, point)
                if current is None:
                    current = await conn.fetchval(
                        "SELECT read_back FROM setpoint_command WHERE device = $1 AND point = $2 AND read_back IS "
                        "NOT NULL ORDER BY id DESC LIMIT 1", device, point)
                last_at = await conn.fetchval(
                    "SELECT max(requested_at) FROM setpoint_command WHERE device = $1 AND point = $2 "
                    "AND source = 'api'", device, point)
                state = hub.state(device)
                checks: list[Callable[[], Refusal | None]] = [
                    lambda: control.check_run_state(runs, principal.role, source),
                    lambda: control.check_interval(rule, last_at, now, source),
                    # An unknown reference is refused below, after the device state (an offline device is 503).
                    lambda: control.check_step(rule, current, value, source) if current is not None else None,
                    lambda: control.check_device(device, state),
                    lambda: control.check_step(rule, current, value, source),
                ]
                for check in checks:
                    refusal = check()
                    if refusal is not None:
                        raise _refused(refusal)
                if self.fence is not None:
                    await self.fence(conn, device)  # this replica holds the device's lease until the commit
                row = await conn.fetchrow(
                    f"INSERT INTO setpoint_command (device, point, run_id, requested, previous, actor, reason, "
                    f"requested_at, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COMMAND_COLUMNS}",
                    device, point, run_id, value, current, principal.label, body.reason, now, source)
            assert row is not None
            command_id = int(row["id"])
            read_back, result, detail, problem = await self._write(hub, device, spec, value)
            async with conn.transaction():
                done = await conn.fetchrow(
                    f"UPDATE setpoint_command SET read_back = $2, result = $3, detail = $4, completed_at = $5 "
                    f"WHERE id = $1 RETURNING {COMMAND_COLUMNS}", command_id, read_back, result, detail,
                    self.clock.now())
                assert done is not None
                await audit.record(
                    conn, actor=principal, action="device.setpoint", entity_type="device", entity_id=device,
                    old={"point": point, "value": current},
                    new={"point": point, "requested": value, "read_back": read_back, "result": result,
                         "detail": detail, "command_id": command_id, "run_id": run_id, "source": source},
                    reason=body.reason, client=client)
        view = command_view(done)
        self.live.publish("setpoint", str(command_id), view)
        if problem is not None:
            problem.extra["command"] = view
            raise problem
        return view

    async def _write(self, hub: DeviceHub, device: str, spec: PointSpec,
                     value: float) -> tuple[float | None, str, str | None, SetpointFailed | None]:
        """Write and read back within the timeout: (read_back, result, detail, the Problem to raise or None)."""
        point = spec.name
        try:
            # Wall seconds, whatever the clock's scale: a network round trip does not speed up.
            read_back = await asyncio.wait_for(hub.write(device, point, value), timeout=self.timeout)
        except TimeoutError:
            detail = f"{device}.{point}: no confirmed write and read-back within {self.timeout:g} s"
            return None, "timeout", detail, SetpointFailed(504, "device-timeout", "Device timeout", detail,
                                                           rule="device_timeout", timeout_s=self.timeout)
        except DeviceUnavailable as exc:
            detail = f"{device}.{point}: the device became unavailable during the write: {exc}"
            return None, "failed", detail, SetpointFailed(503, "device-unavailable", "Device unavailable", detail,
                                                          rule="device_unavailable")
        except Exception as exc:  # DeviceProtocolError (a Bad status, a Modbus exception) or a driver bug
            log.warning("setpoint %s.%s = %g failed: %r", device, point, value, exc)
            detail = f"{device}.{point}: the device refused the write: {exc}"
            return None, "failed", detail, SetpointFailed(502, "device-error", "Device error", detail,
                                                          rule="device_error")
        if not control.follows(spec, value, read_back):
            detail = (f"{device}.{point}: requested {value:g} {spec.unit}, read back "
                      f"{read_back:g} {spec.unit}: the device did not follow")
            safe = read_back if math.isfinite(read_back) else None
            return safe, "did_not_follow", detail, SetpointFailed(
                502, "device-did-not-follow", "Device did not follow", detail, rule="device_did_not_follow",
                requested=value, read_back=read_back, resolution=control.resolution(spec, value))
        return read_back, "confirmed", None, None

    @staticmethod
    async def _runs(conn: asyncpg.Connection, device: str) -> list[BoundRun]:
        rows = await runs.runs_on_device(conn, device, sorted(control.BINDING_STATES))
        return [BoundRun(int(r["id"]), str(r["code"]), str(r["status"])) for r in rows]

    @staticmethod
    def _run_of(runs: list[BoundRun], wanted: int | None, device: str) -> int | None:
        """The run the command is recorded for: the one asked for (if it binds the device), else the binding one."""
        bound = control.binding_runs(runs)
        if wanted is not None:
            return wanted if any(r.id == wanted for r in bound) else None
        return bound[0].id if len(bound) == 1 else None

    @staticmethod
    async def _check_run_exists(conn: asyncpg.Connection, run_id: int) -> None:
        if await conn.fetchval("SELECT 1 FROM culture_run WHERE id = $1", run_id) is None:
            raise Problem(404, "run-not-found", "Not found", f"there is no culture run with id {run_id}",
                          rule="unknown_run")


async def history(conn: asyncpg.Connection, device: str, *, point: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
    """The device's setpoint commands, newest first."""
    t = schema.setpoint_command
    q = select(*(t.c[name] for name in COMMAND_COLUMNS.split(", "))).where(t.c.device == device)
    if point is not None:
        q = q.where(t.c.point == point)
    return [command_view(r) for r in await query.fetch(conn, q.order_by(t.c.id.desc()).limit(limit))]


async def run_history(conn: DBConnection, run_id: int) -> list[dict[str, Any]]:
    """The setpoint commands recorded for a run (on any of its devices), oldest first (the batch record)."""
    t = schema.setpoint_command
    q = select(*(t.c[name] for name in COMMAND_COLUMNS.split(", "))).where(t.c.run_id == run_id)
    return [command_view(r) for r in await query.fetch(conn, q.order_by(t.c.id))]
