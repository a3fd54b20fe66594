"""The alarm service's records: each alarm with its state, the journal of transitions, run excursions, and the
deviations excursion rules open; how they are written (also from the spool) and read back.

Tables: `alarm` (current state), `alarm_event` (the journal; append-only for the service role; a record key makes a
replay from the spool idempotent), `excursion` (per run and channel), `door_opening` (each planned door opening of a
run: when the door opened and shut, when the chamber was back inside its limits, how far it fell, the outcome). The
API reads the journal, the excursions and the door openings through `history`, `run_excursions` and
`run_door_openings`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import select

from app.alarms.door import OpeningState
from app.alarms.evaluate import AlarmState, Transition
from app.alarms.excursion import ExcursionRule, ExcursionState
from app.alarms.model import AlarmDefinition, Severity
from app.auth.principal import SYSTEM
from app.db import DBConnection, query, schema
from app.notify import outbox
from app.protocol import deviations
from app.records import audit


@dataclass
class Alarm:
    """One alarm of the service: a definition on a channel (or a device), its state and the run it serves."""

    id: str
    channel: str
    device: str
    defn: AlarmDefinition
    state: AlarmState
    run_id: int | None = None
    active_since: datetime | None = None
    changed_at: datetime | None = None
    last_severity: Severity | None = None  # the condition last annunciated: a returned H alarm is still medium

    @property
    def point(self) -> str | None:
        return self.channel.partition(".")[2] or None

    def priority(self) -> str:
        """The priority of the active condition, else of the one last annunciated, else the definition's."""
        sev = self.state.active or self.last_severity
        return (self.defn.priority_of(sev) if sev is not None else self.defn.priority).value

    def view(self) -> dict[str, Any]:
        """What the API and the stream show of the alarm."""
        st = self.state
        return {
            "id": self.id, "channel": self.channel, "device": self.device, "point": self.point,
            "name": self.defn.name, "kind": self.defn.kind, "description": self.defn.description,
            "priority": self.priority(), "status": st.status.value,
            "severity": st.active.value if st.active is not None else None,
            "value": st.last_value, "active_since": iso(self.active_since), "changed_at": iso(self.changed_at),
            "mode_until": iso(st.mode_until), "run_id": self.run_id,
        }


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


@dataclass
class Excursion:
    run_id: int
    channel: str
    rule: ExcursionRule
    state: ExcursionState
    dirty: bool = False


@dataclass
class JournalEvent:
    alarm: Alarm
    row: dict[str, Any]
    transition: Transition
    actor: str | None = None
    comment: str | None = None
    key: str = field(default_factory=lambda: str(uuid.uuid4()))  # makes a replay from the spool idempotent
    work: outbox.Work | None = None  # what the transition does to notifications, written with it


@dataclass(frozen=True)
class DeviationTrip:
    """A deviation an excursion rule opens on a run, waiting to be written."""

    run_id: int
    rule: str
    description: str
    facts: dict[str, Any]
    at: datetime
    key: str = field(default_factory=lambda: str(uuid.uuid4()))


DOOR_RECOVERY = "door_recovery"  # the deviation rule of a planned door opening that broke its stated recovery

ALARM_SQL = (
    "INSERT INTO alarm (id, channel, device, name, kind, description, priority, status, severity, value, "
    "active_since, mode_until, run_id, changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
    "$14) ON CONFLICT (id) DO UPDATE SET description = EXCLUDED.description, priority = EXCLUDED.priority, "
    "kind = EXCLUDED.kind, status = EXCLUDED.status, severity = EXCLUDED.severity, value = EXCLUDED.value, "
    "active_since = EXCLUDED.active_since, mode_until = EXCLUDED.mode_until, run_id = EXCLUDED.run_id, "
    "changed_at = EXCLUDED.changed_at "
    # a replayed older snapshot never overwrites a newer state
    "WHERE alarm.changed_at <= EXCLUDED.changed_at"
)
# The record key makes a replay from the spool idempotent (a crash between the commit and the spool's delete).
EVENT_SQL = (
    "INSERT INTO alarm_event (alarm_id, at, from_state, to_state, severity, priority, value, reason, actor, comment, "
    "run_id, record_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::uuid) "
    "ON CONFLICT (record_key) DO NOTHING"
)


def pack(args: Sequence[Any]) -> str:
    """Positional SQL arguments as the JSON text a spooled record keeps (times tagged, to come back as times)."""
    return json.dumps([{"t": a.isoformat()} if isinstance(a, datetime) else a for a in args])


def unpack(text: str) -> list[Any]:
    return [datetime.fromisoformat(a["t"]) if isinstance(a, dict) and set(a) == {"t"} else a
            for a in json.loads(text)]


def alarm_args(a: Alarm) -> tuple[Any, ...]:
    st = a.state
    return (a.id, a.channel, a.device, a.defn.name, a.defn.kind, a.defn.description, a.priority(), st.status.value,
            st.active.value if st.active is not None else None, st.last_value, a.active_since, st.mode_until,
            a.run_id, a.changed_at or st.last_sample_at or st.started_at)


async def upsert_alarm(conn: asyncpg.Connection, a: Alarm) -> None:
    await conn.execute(ALARM_SQL, *alarm_args(a))


def event_args(a: Alarm, tr: Transition, actor: str | None, comment: str | None,
                key: str | None = None) -> tuple[Any, ...]:
    sev = tr.severity
    prio = (a.defn.priority_of(sev) if sev is not None else a.defn.priority).value
    return (a.id, tr.at, tr.from_state.value, tr.to_state.value, sev.value if sev is not None else None, prio,
            tr.value, tr.reason, actor, comment, a.run_id, key)


async def insert_event(conn: asyncpg.Connection, a: Alarm, tr: Transition, actor: str | None,
                        comment: str | None) -> None:
    await conn.execute(EVENT_SQL, *event_args(a, tr, actor, comment))


EXCURSION_SQL = (
    "INSERT INTO excursion (run_id, channel, unit, band_low, band_high, seconds_outside, integral, worst, "
    "episodes, hard_episodes, cumulative_tripped, outside, beyond_hard, last_value, last_at, first_outside_at, "
    "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) "
    "ON CONFLICT (run_id, channel) DO UPDATE SET seconds_outside = EXCLUDED.seconds_outside, "
    "integral = EXCLUDED.integral, worst = EXCLUDED.worst, episodes = EXCLUDED.episodes, "
    "hard_episodes = EXCLUDED.hard_episodes, cumulative_tripped = EXCLUDED.cumulative_tripped, "
    "outside = EXCLUDED.outside, beyond_hard = EXCLUDED.beyond_hard, last_value = EXCLUDED.last_value, "
    "last_at = EXCLUDED.last_at, first_outside_at = EXCLUDED.first_outside_at, updated_at = EXCLUDED.updated_at "
    "WHERE excursion.updated_at <= EXCLUDED.updated_at"  # a replayed older snapshot never overwrites a newer one
)


def excursion_args(ex: Excursion, now: datetime) -> tuple[Any, ...]:
    s, r = ex.state, ex.rule
    return (ex.run_id, ex.channel, r.unit, r.low, r.high, s.seconds_outside, s.integral, s.worst, s.episodes,
            s.hard_episodes, s.cumulative_tripped, s.outside, s.beyond_hard, s.last_value, s.last_at,
            s.first_outside_at, now)


async def upsert_excursion(conn: asyncpg.Connection, ex: Excursion, now: datetime) -> None:
    await conn.execute(EXCURSION_SQL, *excursion_args(ex, now))


# One row per planned opening of an incubator's door (device, opened_at); each change of the opening writes the
# whole row again. A replayed older snapshot never overwrites a newer one.
DOOR_OPENING_SQL = (
    "INSERT INTO door_opening (run_id, device, step_key, opened_at, closed_at, recovered_at, exceeded_at, "
    "min_temperature, min_co2, outcome, reason, planned, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
    "$10, $11, $12::jsonb, $13) "
    "ON CONFLICT (device, opened_at) DO UPDATE SET run_id = EXCLUDED.run_id, step_key = EXCLUDED.step_key, "
    "closed_at = EXCLUDED.closed_at, recovered_at = EXCLUDED.recovered_at, exceeded_at = EXCLUDED.exceeded_at, "
    "min_temperature = EXCLUDED.min_temperature, min_co2 = EXCLUDED.min_co2, outcome = EXCLUDED.outcome, "
    "reason = EXCLUDED.reason, planned = EXCLUDED.planned, updated_at = EXCLUDED.updated_at "
    "WHERE door_opening.updated_at <= EXCLUDED.updated_at"
)


def door_opening_args(run_id: int, device: str, st: OpeningState, at: datetime) -> tuple[Any, ...]:
    """The row of a planned opening as it stands after a change at `at` (also what a spooled record keeps)."""
    plan = st.plan
    assert plan is not None and st.opened_at is not None, "only planned openings are recorded"
    return (run_id, device, plan.step_key, st.opened_at, st.closed_at, st.recovered_at, st.exceeded_at,
            st.min_temperature, st.min_co2, st.outcome, st.reason, plan.opening.model_dump_json(), at)


async def upsert_door_opening(conn: asyncpg.Connection, args: Sequence[Any]) -> None:
    await conn.execute(DOOR_OPENING_SQL, *args)


async def run_door_openings(conn: DBConnection, run_id: int) -> list[dict[str, Any]]:
    """The planned door openings of a run, oldest first, with the recovery time (min from the door shutting to both
    values back inside; None while not recovered)."""
    rows = await conn.fetch(
        "SELECT id, run_id, device, step_key, opened_at, closed_at, recovered_at, exceeded_at, min_temperature, "
        "min_co2, outcome, reason, planned, updated_at FROM door_opening WHERE run_id = $1 ORDER BY opened_at, id",
        run_id)
    out: list[dict[str, Any]] = []
    for r in rows:
        row = dict(r)
        if isinstance(row["planned"], str):
            row["planned"] = json.loads(row["planned"])
        closed, back = row["closed_at"], row["recovered_at"]
        row["recovery_min"] = (None if closed is None or back is None
                               else round(max(0.0, (back - closed).total_seconds()) / 60.0, 2))
        out.append(row)
    return out


# A note in the journal that is not a transition (a notification sent, a remote acknowledgement link used): the
# alarm's state as it stands, from and to alike.
NOTE_SQL = (
    "INSERT INTO alarm_event (alarm_id, at, from_state, to_state, severity, priority, value, reason, actor, comment, "
    "run_id) SELECT id, $2, status, status, severity, priority, value, $3, $4, $5, run_id FROM alarm WHERE id = $1"
)


async def note(conn: asyncpg.Connection, alarm_id: str, at: datetime, reason: str, actor: str | None = None,
               comment: str | None = None) -> None:
    """Journal a note on an alarm (its current state from and to)."""
    await conn.execute(NOTE_SQL, alarm_id, at, reason, actor, comment)


async def open_deviation(conn: asyncpg.Connection, t: DeviationTrip) -> dict[str, Any] | None:
    """A deviation on the run opened by the alarm service (actor system), audited; None if it was written before."""
    run_id, rule, description, facts, at = t.run_id, t.rule, t.description, t.facts, t.at
    dev_id = await deviations.open_deviation(conn, run_id, step_key=None, rule=rule, severity="deviation",
                                             description=description, facts=facts, at=at, opened_by=SYSTEM.label,
                                             record_key=t.key)
    if dev_id is None:
        return None
    await audit.record(conn, actor=SYSTEM, action="deviation.open", entity_type="deviation", entity_id=dev_id,
                       old=None, new={"run_id": run_id, "rule": rule, "description": description, "facts": facts},
                       reason="alarm service: planned door opening exceeded" if rule == DOOR_RECOVERY
                       else "alarm service: excursion rule")
    return {"id": dev_id, "rule": rule, "description": description, "status": "open", "opened_at": at.isoformat()}


async def history(conn: DBConnection, *, alarm_id: str | None = None, device: str | None = None,
                  channel: str | None = None, run_id: int | None = None, priority: str | None = None,
                  since: datetime | None = None, until: datetime | None = None, before_id: int | None = None,
                  limit: int = 200) -> list[dict[str, Any]]:
    """The journal, newest first, filtered; `before_id` pages back."""
    e, a = schema.alarm_event, schema.alarm
    q = (select(e.c.id, e.c.alarm_id, a.c.channel, a.c.device, a.c.name, e.c.at, e.c.from_state, e.c.to_state,
                e.c.severity, e.c.priority, e.c.value, e.c.reason, e.c.actor, e.c.comment, e.c.run_id)
         .join(a, a.c.id == e.c.alarm_id))
    for column, value in ((e.c.alarm_id, alarm_id), (a.c.device, device), (a.c.channel, channel),
                          (e.c.run_id, run_id), (e.c.priority, priority)):
        if value is not None:
            q = q.where(column == value)
    if since is not None:
        q = q.where(e.c.at >= since)
    if until is not None:
        q = q.where(e.c.at < until)
    if before_id is not None:
        q = q.where(e.c.id < before_id)
    return [dict(r) for r in await query.fetch(conn, q.order_by(e.c.id.desc()).limit(limit))]


async def run_excursions(conn: DBConnection, run_id: int) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT * FROM excursion WHERE run_id = $1 ORDER BY channel", run_id))


async def excursion_row(conn: DBConnection, run_id: int, channel: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM excursion WHERE run_id = $1 AND channel = $2", run_id, channel)
    return row


async def alarm_rows(conn: DBConnection) -> list[asyncpg.Record]:
    """Every persisted alarm (the service restores acknowledgement, shelving and out-of-service from them)."""
    return list(await conn.fetch("SELECT * FROM alarm"))

