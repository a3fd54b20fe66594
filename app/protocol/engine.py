"""The schedule engine: persists every step status transition, opens missed-step deviations, holds runs, and
applies the recipe's phase setpoints to the devices.

Two halves:

- `decide` is pure: from a run's recipe and status, the planner's plan at `now`, the statuses persisted last
  time and the steps that already have a missed-step deviation, the list of actions (transitions, deviations,
  a hold, setpoints). Table tests in tests/unit/test_engine_decide.py.
- `Engine` is the loop and only does I/O: every `interval` wall seconds (at most one clock `step` of the
  service clock), for every planned, running or held run (and a closed run whose last step the engine has not
  seen yet) it locks the run, plans, decides, writes the actions in one transaction (one audit record each,
  actor `system:culturectl`), then publishes the events and sends the setpoints through the setpoint command
  service (app/setpoints.py: limits, write, read-back, record, audit; no role or rate-of-change rule).

Idempotent by the persisted status: a transition is only what differs from `step_status`, a missed-step
deviation only opens for a step that has none, so a restart recomputes from the database and repeats nothing;
a step that passed its hard_latest while the service was down becomes a deviation at the first tick.

Decisions:
- Setpoints are written after the transaction commits (a device write can take seconds and must not hold the
  run's lock); a service stop between the commit and the write loses that write (the next phase's setpoints and
  the operator's checks catch it). An accepted command is recorded in setpoint_command and audited
  (`device.setpoint`, with its result) by the service; a refused one is audited here (`device.setpoint_failed`).
  Neither is retried nor stops the loop.
- on_open setpoints apply when a step first becomes actionable (open, due or late from pending or unseen);
  on_done ones when it becomes done. For planned, running and held runs (a hold is about the product's disposition;
  the culture goes on).
- A missed step holds only a running run (a planned run has no T0 yet; a held run is already held).
- Closed runs (completed, aborted) never change: for them the engine only records the `done` of steps that were
  recorded (the release step that completed the run), nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from app import db
from app.auth.principal import SYSTEM
from app.control.setpoints import SetpointFailed, SetpointRequest, SetpointService
from app.core.clock import Clock
from app.core.histogram import Histogram
from app.core.live import LiveHub
from app.core.outage import OutageLog
from app.core.problems import Problem
from app.devices.hub import DeviceHub
from app.protocol import deviations, planner, recipes, runs
from app.protocol.planner import ACTIONABLE, AbsWindow, StepPlan, StepStatus
from app.protocol.recipe import Recipe
from app.records import audit

log = logging.getLogger("culturectl.protocol")

ACTIVE: tuple[str, ...] = ("planned", "running", "held")
MISSED_RULE = "missed_step"
SETPOINT_RUNS: frozenset[str] = frozenset({"planned", "running", "held"})  # a hold does not stop the culture


# --------------------------------------------------------------------------------------------------
# Pure decisions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transition:
    """A step's status changed since the engine last persisted it (`old` None: never persisted)."""

    step_key: str
    old: StepStatus | None
    new: StepStatus
    window: AbsWindow


@dataclass(frozen=True, slots=True)
class MissedDeviation:
    """A step passed its hard_latest without a record: a deviation opens."""

    step_key: str
    description: str
    window: AbsWindow


@dataclass(frozen=True, slots=True)
class SetpointAction:
    """A phase setpoint to write to the run's device of `device_kind`."""

    step_key: str
    device_kind: str
    point: str
    value: float
    apply: str


@dataclass(frozen=True, slots=True)
class Actions:
    """What one engine tick does for one run."""

    transitions: tuple[Transition, ...] = ()
    deviations: tuple[MissedDeviation, ...] = ()
    hold_reason: str | None = None
    setpoints: tuple[SetpointAction, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.transitions or self.deviations or self.hold_reason or self.setpoints)


def decide(recipe: Recipe, run_status: str, plan: Iterable[StepPlan], persisted: Mapping[str, str],
           missed_deviations: Iterable[str] = (), now: datetime | None = None) -> Actions:
    """The actions of one tick for one run: pure, from the plan and what was persisted last time."""
    steps = list(plan)
    have_deviation = set(missed_deviations)
    if run_status in runs.CLOSED:
        done = tuple(Transition(p.key, _status(persisted.get(p.key)), p.status, p.window) for p in steps
                     if p.status == "done" and persisted.get(p.key) != "done")
        return Actions(transitions=done)
    transitions: list[Transition] = []
    deviations: list[MissedDeviation] = []
    setpoints: list[SetpointAction] = []
    for p in steps:
        old = _status(persisted.get(p.key))
        if old == p.status:
            continue
        transitions.append(Transition(p.key, old, p.status, p.window))
        if p.status == "missed" and p.key not in have_deviation:
            w = p.window
            at = "" if now is None else f"; now {now.isoformat(timespec='seconds')}"
            deviations.append(MissedDeviation(
                p.key, f"{p.key}: missed: not recorded by its hard latest time "
                       f"{(w.deadline).isoformat(timespec='seconds')}{at}; the run is held for QA", w))
        if run_status in SETPOINT_RUNS:
            for sp in recipe.step(p.key).setpoints:
                opened = sp.apply == "on_open" and old in (None, "pending") and p.status in ACTIONABLE
                finished = sp.apply == "on_done" and p.status == "done"
                if opened or finished:
                    setpoints.append(SetpointAction(p.key, sp.device_kind, sp.point, sp.value, sp.apply))
    hold = None
    if deviations and run_status == "running":
        hold = "missed step: " + ", ".join(d.step_key for d in deviations) + " (past hard latest); QA reviews"
    return Actions(tuple(transitions), tuple(deviations), hold, tuple(setpoints))


def _status(value: str | None) -> StepStatus | None:
    if value is None:
        return None
    assert value in ("pending", "open", "due", "late", "missed", "skipped", "done"), value
    return value  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# The loop (I/O only)
# --------------------------------------------------------------------------------------------------


@dataclass
class TickResult:
    """What a tick did (for tests and logs)."""

    runs: int = 0
    transitions: int = 0
    deviations: int = 0
    holds: int = 0
    setpoints: int = 0
    errors: list[str] = field(default_factory=list)


PASS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Engine:
    """Runs `tick` every `interval` wall seconds (at most one `clock_step` of clock time) until stopped."""

    pool: asyncpg.Pool
    clock: Clock
    live: LiveHub
    hub: Callable[[], DeviceHub | None]
    interval: float = 1.0
    clock_step: float = 600.0  # clock seconds: at high time scales the engine ticks more often than `interval`
    setpoint_timeout: float = 5.0  # wall seconds for a setpoint's write and read-back
    forward: Any = None  # several replicas: a setpoint for a device owned elsewhere goes there (app/runtime.py)
    fence: Any = None  # and one for a device of this replica's is recorded only while it holds the lease
    ticks: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # wall seconds of each completed pass (a pass the database interrupted is not counted)
    pass_seconds: Histogram = field(default_factory=lambda: Histogram(PASS_BUCKETS))
    last_pass_seconds: float | None = None

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics."""
        return {"ticks": self.ticks, "last_pass_seconds": self.last_pass_seconds,
                "pass_seconds": self.pass_seconds.snapshot()}

    def wall_interval(self) -> float:
        scale = self.clock.scale
        return max(0.01, min(self.interval, self.clock_step / scale if scale > 0 else self.interval))

    async def run(self) -> None:
        outage = OutageLog(log, "schedule engine: database unavailable")
        while True:
            try:
                await self.tick()
                outage.ok()
            except asyncio.CancelledError:
                raise
            except db.UNAVAILABLE as exc:
                # Nothing is lost meanwhile: the plan is recomputed from T0, the clock and the stored steps, so a
                # step that passed its hard latest during the outage becomes a deviation at the first tick after it.
                outage.failed(exc)
            except Exception:  # never let one bad tick stop the schedule
                log.exception("engine tick failed; retrying")
            await asyncio.sleep(self.wall_interval())

    async def tick(self) -> TickResult:
        """One pass over every run the engine watches."""
        async with self._lock:
            started = time.perf_counter()
            result = TickResult()
            async with self.pool.acquire() as conn:
                ids = [int(r["id"]) for r in await conn.fetch(
                    "SELECT r.id FROM culture_run r WHERE r.recipe_id IS NOT NULL AND (r.status = ANY($1::text[]) "
                    "OR EXISTS (SELECT 1 FROM step_record s LEFT JOIN step_status st "
                    "ON st.run_id = s.run_id AND st.step_key = s.step_key "
                    "WHERE s.run_id = r.id AND st.status IS DISTINCT FROM 'done')) ORDER BY r.id", list(ACTIVE))]
            for run_id in ids:
                try:
                    await self._run_tick(run_id, result)
                except db.UNAVAILABLE:
                    raise  # the database, not the run: the loop logs the outage once
                except Exception as exc:
                    log.exception("engine: run %s failed", run_id)
                    result.errors.append(f"run {run_id}: {exc}")
            self.ticks += 1
            self.last_pass_seconds = time.perf_counter() - started
            self.pass_seconds.observe(self.last_pass_seconds)
            return result

    async def _run_tick(self, run_id: int, result: TickResult) -> None:
        events: list[tuple[str, str, dict[str, Any]]] = []
        setpoints: list[SetpointAction] = []
        devices: dict[str, str | None] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            # The run's row lock serializes the engine with step posts, holds and resumes of this run.
            run = await runs.run_row(conn, run_id, lock=True)
            recipe = recipes.recipe_of(await recipes.recipe_row(conn, int(run["recipe_id"])))
            now = self.clock.now()
            records = await conn.fetch("SELECT step_key, posted_at, override FROM step_record WHERE run_id = $1",
                                       run_id)
            recs = {r["step_key"]: planner.StepRecord(r["posted_at"], bool(r["override"])) for r in records}
            t0 = run["t0"] or run["planned_t0"] or run["created_at"]
            plan = planner.plan(recipe, t0, now, recs)
            persisted = {r["step_key"]: str(r["status"]) for r in await conn.fetch(
                "SELECT step_key, status FROM step_status WHERE run_id = $1", run_id)}
            missed = await deviations.rules_opened(conn, run_id, MISSED_RULE)
            actions = decide(recipe, str(run["status"]), plan, persisted, missed, now)
            if actions.empty:
                return
            result.runs += 1
            code = str(run["code"])
            for t in actions.transitions:
                window = t.window.as_dict()
                await conn.execute(
                    "INSERT INTO step_status (run_id, step_key, status, changed_at, \"window\") "
                    "VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (run_id, step_key) DO UPDATE "
                    "SET status = EXCLUDED.status, changed_at = EXCLUDED.changed_at, \"window\" = EXCLUDED.\"window\"",
                    run_id, t.step_key, t.new, now, json.dumps(window))
                await audit.record(conn, actor=SYSTEM, action="step.status", entity_type="culture_run",
                                   entity_id=run_id, old=None if t.old is None else {"step": t.step_key,
                                                                                     "status": t.old},
                                   new={"step": t.step_key, "status": t.new, "window": window, "at": now},
                                   reason="schedule engine")
                events.append(("step", f"{run_id}:{t.step_key}", {
                    "run_id": run_id, "run_code": code, "step": t.step_key, "old": t.old, "new": t.new,
                    "window": window, "at": now.isoformat()}))
                result.transitions += 1
            for d in actions.deviations:
                facts = {"rule": MISSED_RULE, "step": d.step_key, "window": d.window.as_dict(), "now": now.isoformat()}
                dev_id = await deviations.open_deviation(
                    conn, run_id, step_key=d.step_key, rule=MISSED_RULE, severity="deviation",
                    description=d.description, facts=facts, at=now, opened_by=SYSTEM.label)
                assert dev_id is not None
                await audit.record(conn, actor=SYSTEM, action="deviation.open", entity_type="deviation",
                                   entity_id=dev_id, old=None,
                                   new={"run_id": run_id, "step_key": d.step_key, "rule": MISSED_RULE,
                                        "description": d.description, "opened_at": now},
                                   reason="schedule engine: step missed")
                events.append(("deviation", str(dev_id), {
                    "id": dev_id, "run_id": run_id, "run_code": code, "step": d.step_key, "rule": MISSED_RULE,
                    "description": d.description, "opened_at": now.isoformat()}))
                result.deviations += 1
            if actions.hold_reason is not None:
                await conn.execute("UPDATE culture_run SET status = 'held', hold_reason = $2 WHERE id = $1",
                                   run_id, actions.hold_reason)
                await audit.record(conn, actor=SYSTEM, action="run.hold", entity_type="culture_run", entity_id=run_id,
                                   old={"status": run["status"]}, new={"status": "held"}, reason=actions.hold_reason)
                events.append(("run", str(run_id), {"run_id": run_id, "run_code": code, "old": run["status"],
                                                    "new": "held", "reason": actions.hold_reason}))
                result.holds += 1
            setpoints = list(actions.setpoints)
            devices = {"incubator": run["incubator"], "culture-system": run["culture_system"]}
        for kind, key, data in events:
            self.live.publish(kind, key, data)
        for sp in setpoints:
            await self._write(run_id, sp, devices.get(sp.device_kind))
            result.setpoints += 1

    async def _write(self, run_id: int, sp: SetpointAction, device: str | None) -> None:
        """Send one phase setpoint through the setpoint command service (source recipe, actor system).

        An accepted command is recorded and audited by the service (`device.setpoint`, also when the device does
        not follow); a refusal (no device bound, limits, device offline) is audited here as
        `device.setpoint_failed`. Neither stops the loop.
        """
        what = {"run_id": run_id, "step": sp.step_key, "apply": sp.apply, "point": sp.point, "value": sp.value}
        service = SetpointService(self.pool, self.clock, self.live, self.hub, timeout=self.setpoint_timeout,
                                  forward=self.forward, fence=self.fence)
        body = SetpointRequest(point=sp.point, value=sp.value, run_id=run_id,
                               reason=f"schedule engine: {sp.step_key} {sp.apply}")
        try:
            if device is None:
                raise LookupError(f"run {run_id} has no {sp.device_kind} device bound")
            body = body.model_copy(update={"point": self._point_of(device, sp.point)})
            await service.command(device, body, principal=SYSTEM, source="recipe")
        except SetpointFailed as exc:  # written and recorded with its result by the service
            log.warning("engine: setpoint %s.%s = %g for run %s step %s not confirmed: %s", device, sp.point,
                        sp.value, run_id, sp.step_key, exc.detail)
        except Exception as exc:  # refused before writing: logged and audited, never fatal
            detail = exc.detail if isinstance(exc, Problem) else (str(exc) or type(exc).__name__)
            log.warning("engine: setpoint %s.%s = %g for run %s step %s failed: %s", device or sp.device_kind,
                        sp.point, sp.value, run_id, sp.step_key, detail)
            await self._audit_write("device.setpoint_failed", device or sp.device_kind, {**what, "error": detail})

    def _point_of(self, device: str, role: str) -> str:
        """The bound device's point that plays the recipe's setpoint role (recipes name roles, never points)."""
        hub = self.hub()
        status = hub.status.get(device) if hub is not None else None
        spec = status.config.role_point(role) if status is not None else None
        if spec is None:
            raise LookupError(f"{device} has no point playing role {role}")
        return spec.name

    async def _audit_write(self, action: str, device: str, new: dict[str, Any]) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await audit.record(conn, actor=SYSTEM, action=action, entity_type="device", entity_id=device,
                                   old=None, new=new, reason=f"schedule engine: {new['step']} {new['apply']}")
        except Exception:
            log.exception("engine: could not audit %s on %s", action, device)
