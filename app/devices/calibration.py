"""Calibration records of device points (the table calibration is written here only).

A record says when a point was calibrated, the last day its calibration is valid (`due_on`), the certificate and
who calibrated it, and who recorded it when. Records are never changed or deleted (the migration revokes UPDATE and
DELETE): a new record supersedes the point's previous one, so the newest record of a (device, point) is the one in
force. Each record is written with exactly one audit record `calibration.record` (old: the record it supersedes).

Due dates are the site's dates (CULTURECTL_SITE_TIMEZONE): "today" is the service clock's date there (`site_today`).
A point is `overdue` once today is past its due date, `due_soon` while it is due within the warning days
(CULTURECTL_CALIBRATION_WARN_DAYS), else `valid`; the alarm service raises the calibration alarm from the same days
left (app/alarms/calibration.py).

The incubator check step reads its inputs `calibration_valid` and `calibration_due` from the records in force of
the points that play its channels' roles on the run's devices (`step_points`, then `step_calibration`, pure);
nobody types them (app.protocol.steps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Any, Literal

from app.auth.principal import Principal
from app.core.problems import Problem
from app.db import DBConnection
from app.records import audit

Status = Literal["valid", "due_soon", "overdue"]
STATUSES: tuple[Status, ...] = ("valid", "due_soon", "overdue")
# The step inputs read from the records (never typed): every one of the step's points in force, the earliest due date.
STEP_INPUTS = ("calibration_valid", "calibration_due")
NOT_RECORDED = "not recorded"  # calibration_due when none of the step's points has a record
TEXT_MAX = 200  # certificate reference, performer
COLUMNS = "id, device, point, calibrated_on, due_on, certificate, performed_by, recorded_by, recorded_at"
# Key space of the per-point advisory locks (two-int form, like the setpoint commands' "SPCT").
LOCK_SPACE = 0x43414C42  # "CALB"


def site_today(now: datetime, zone: tzinfo) -> date:
    """The service clock's date at the site."""
    return now.astimezone(zone).date()


def days_left(due_on: date, today: date) -> int:
    """Whole days from today to the last valid day: 0 on the due date itself, negative once overdue."""
    return (due_on - today).days


def status(due_on: date, today: date, warn_days: int) -> Status:
    """overdue after the due date, due_soon when it is at most `warn_days` days away, else valid."""
    left = days_left(due_on, today)
    if left < 0:
        return "overdue"
    return "due_soon" if left <= warn_days else "valid"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A calibration record that cannot be recorded: the rule, the body field and why."""

    rule: str
    field: str
    message: str


def check_record(calibrated_on: date, due_on: date, certificate: str, performed_by: str,
                 today: date) -> Refusal | None:
    """The first rule a new record breaks, or None."""
    if calibrated_on > today:
        return Refusal("calibrated_in_future", "calibrated_on", f"calibrated_on {calibrated_on.isoformat()} is after "
                                                                f"today at the site ({today.isoformat()})")
    if due_on <= calibrated_on:
        return Refusal("due_not_after_calibration", "due_on", f"due_on {due_on.isoformat()} must be after "
                                                              f"calibrated_on {calibrated_on.isoformat()}")
    for name, text in (("certificate", certificate), ("performed_by", performed_by)):
        if not text.strip():
            return Refusal(f"{name}_required", name, f"{name}: a value is required")
        if len(text.strip()) > TEXT_MAX:
            return Refusal(f"{name}_too_long", name, f"{name}: {len(text.strip())} characters, at most {TEXT_MAX}")
    return None


def _refused(refusal: Refusal) -> Problem:
    return Problem(422, "calibration-invalid", "Calibration record not valid", refusal.message, rule=refusal.rule,
                   field=refusal.field, errors=[{"loc": ["body", refusal.field], "msg": refusal.message,
                                                 "type": refusal.rule}])


def _audited(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "point", "calibrated_on", "due_on", "certificate", "performed_by")}


async def record(conn: DBConnection, *, device: str, point: str, calibrated_on: date, due_on: date, certificate: str,
                 performed_by: str, reason: str, principal: Principal, now: datetime, today: date,
                 client: str | None) -> dict[str, Any]:
    """Record a calibration of a known point (422 naming the rule and field first); it supersedes the point's
    record in force. One transaction with one audit record; returns the new row."""
    refusal = check_record(calibrated_on, due_on, certificate, performed_by, today)
    if refusal is not None:
        raise _refused(refusal)
    async with conn.transaction():
        # One writer per point: the record an audit row says it supersedes is the one it supersedes.
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_SPACE, f"{device}.{point}")
        old = await conn.fetchrow(f"SELECT {COLUMNS} FROM calibration WHERE device = $1 AND point = $2 "
                                  "ORDER BY id DESC LIMIT 1", device, point)
        row = await conn.fetchrow(
            f"INSERT INTO calibration (device, point, calibrated_on, due_on, certificate, performed_by, recorded_by, "
            f"recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}", device, point,
            calibrated_on, due_on, certificate.strip(), performed_by.strip(), principal.label, now)
        assert row is not None
        await audit.record(conn, actor=principal, action="calibration.record", entity_type="device", entity_id=device,
                           old=None if old is None else _audited(old), new=_audited(row), reason=reason,
                           client=client)
    return dict(row)


async def current(conn: DBConnection, device: str | None = None) -> list[dict[str, Any]]:
    """The record in force of every calibrated point (of one device when given), by device and point."""
    where = " WHERE device = $1" if device is not None else ""
    rows = await conn.fetch(f"SELECT DISTINCT ON (device, point) {COLUMNS} FROM calibration{where} "
                            "ORDER BY device, point, id DESC", *(() if device is None else (device,)))
    return [dict(r) for r in rows]


async def history(conn: DBConnection, device: str, point: str) -> list[dict[str, Any]]:
    """Every record of a point, newest (the one in force) first."""
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM calibration WHERE device = $1 AND point = $2 ORDER BY id DESC",
                            device, point)
    return [dict(r) for r in rows]


def view(row: Mapping[str, Any], today: date, warn_days: int, *, in_force: bool = True) -> dict[str, Any]:
    """A record for the API: with its status and days left today."""
    return {**{k: row[k] for k in COLUMNS.split(", ")}, "status": status(row["due_on"], today, warn_days),
            "days_left": days_left(row["due_on"], today), "in_force": in_force}


async def for_devices(conn: DBConnection, devices: Sequence[str | None], start: date, today: date,
                      warn_days: int) -> list[dict[str, Any]]:
    """The records in force of the devices' points with their status on `start` (a run's start) and today."""
    out = []
    for device in dict.fromkeys(d for d in devices if d):
        for row in await current(conn, device):
            out.append({**{k: row[k] for k in ("device", "point", "calibrated_on", "due_on", "certificate",
                                                "performed_by")},
                        "status_at_start": status(row["due_on"], start, warn_days),
                        "status_now": status(row["due_on"], today, warn_days),
                        "days_left": days_left(row["due_on"], today)})
    return out


# -- the incubator check step ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepPoint:
    """A point a step reads: the channel as the recipe names it (<device class>.<role>), the run's device of that
    class and its point playing the role (None when the run has none), and the point's record in force."""

    channel: str
    device: str | None
    point: str | None
    record: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class StepCalibration:
    """What a step records from the calibration records: valid, the earliest due date, the facts per point."""

    valid: bool
    due: date | None
    points: tuple[dict[str, Any], ...]

    @property
    def due_text(self) -> str:
        return NOT_RECORDED if self.due is None else self.due.isoformat()


def step_calibration(points: Sequence[StepPoint], on: date) -> StepCalibration:
    """Valid when the step names points and every one has a record in force that is not overdue on `on` (the
    step's date at the site); the due date is the earliest of the records'."""
    facts: list[dict[str, Any]] = []
    for p in points:
        rec = p.record
        if rec is None:
            facts.append({"channel": p.channel, "device": p.device, "point": p.point, "calibration_id": None,
                          "calibrated_on": None, "due_on": None, "certificate": None, "days_left": None,
                          "result": "not_recorded"})
            continue
        left = days_left(rec["due_on"], on)
        facts.append({"channel": p.channel, "device": p.device, "point": p.point, "calibration_id": rec["id"],
                      "calibrated_on": rec["calibrated_on"].isoformat(), "due_on": rec["due_on"].isoformat(),
                      "certificate": rec["certificate"], "days_left": left,
                      "result": "overdue" if left < 0 else "in_force"})
    dues = [p.record["due_on"] for p in points if p.record is not None]
    return StepCalibration(valid=bool(facts) and all(f["result"] == "in_force" for f in facts),
                           due=min(dues) if dues else None, points=tuple(facts))


async def step_points(conn: DBConnection, devices: Mapping[str, str | None],
                      channels: Sequence[str]) -> list[StepPoint]:
    """The points playing a step's channels on the run's devices (device class -> device name), with their records
    in force (roles from the channel table: the points of the devices file the service registered)."""
    names = sorted({d for d in devices.values() if d})
    rows = await conn.fetch("SELECT d.name AS device, c.name AS point, c.role FROM channel c "
                            "JOIN device d ON d.id = c.device_id WHERE d.name = ANY($1::text[]) "
                            "AND c.role IS NOT NULL", names)
    playing = {(str(r["device"]), str(r["role"])): str(r["point"]) for r in rows}
    records = {(str(r["device"]), str(r["point"])): r for name in names for r in await current(conn, name)}
    out = []
    for channel in channels:
        kind, _, role = channel.partition(".")
        device = devices.get(kind)
        point = playing.get((device, role)) if device else None
        out.append(StepPoint(channel, device, point,
                             records.get((device, point)) if device is not None and point is not None else None))
    return out
