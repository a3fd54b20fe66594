"""The batch record of a run assembled from the database: every section of app/records/record_model.py, in order.

Each section comes from the module that owns its table, through the view functions the API uses (docs/batch-record.md
names them); this module writes no SQL of its own. What the database does not hold (the devices file's profiles,
endpoints and point roles, the channel ids, the site's time zone and calibration warning days) comes in a
`RecordContext`. The exceptions and the content hash are pure (app/records/record_rules.py).

Decisions:
- One snapshot: the record is read in one REPEATABLE READ, read-only transaction (unless the caller is in one), so
  the audit extract and the chain head (`audit_chain`) agree with every other section.
- A run that has ended (completed, aborted) is read as of its end: the schedule's statuses, the calibrations'
  `status_now` and the release refusals are those of its last moment, so the record of a closed run does not drift
  as days pass (its content changes only when its data does: a late QC result, a closed deviation, a signature).
- The run's span (charts, the alarm journal by device) runs from its first recorded step or its T0, whichever is
  first (its creation while it has neither), to its end (now while it runs). The alarms are those credited to the
  run and every alarm of its devices in its span (two runs may share an incubator), with the event that left an
  alarm not normal when the span began. Audit records are found by what they name (the run, its steps ...), never
  by time: audit times are the database's clock, and the service's clock may run faster (the demo).
- Charts use 5-minute buckets, or the smallest multiple of 5 minutes that keeps a chart within
  MAX_CHART_POINTS points; a chart's band is the run's limit alarm L..H (LL/HH when it has no L/H; the recipe's
  override for the whole run, else the default definition), else the recipe's excursion band.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from types import MappingProxyType
from typing import Any, Literal, Protocol

from app.alarms import journal
from app.alarms.model import LimitAlarm, default_definitions
from app.control import setpoints
from app.core.clock import Clock
from app.core.problems import Problem
from app.db import DBConnection
from app.devices import calibration
from app.ingest import history
from app.protocol import acceptance, corrections, deviations, product, release, runs
from app.protocol.recipe import Recipe, Step, StepInput
from app.protocol.recipes import recipe_of, recipe_row
from app.protocol.steps import limit_context, missing_step_signatures, release_step
from app.records import audit, checkpoints, record_rules, signatures
from app.records.record_model import (
    AlarmEventView,
    AuditEntryView,
    BatchRecord,
    CalibrationView,
    ChainHead,
    ChartView,
    CorrectionView,
    DeviationView,
    DoorOpeningView,
    EquipmentView,
    ExcursionView,
    Identity,
    InputView,
    MaterialView,
    ProductView,
    QcView,
    RecipeRef,
    ReleaseView,
    SetpointView,
    SignatureView,
    StepView,
    VersionInfo,
)
from app.records.signatures import SignatureOut
from drivers.devices import DeviceConfig

# The charted roles, by the device class that measures them (the run page's charts, app/web/views.py).
CHART_ROLES: tuple[tuple[str, str], ...] = (
    ("incubator", "temperature"), ("incubator", "co2"), ("incubator", "humidity"),
    ("culture-system", "viable_cell_density"), ("culture-system", "viability"), ("culture-system", "cd7_percent"),
)
MAX_CHART_POINTS = 2100
# Audit actions that change a value after its first recording (the audit extract marks them).
CHANGE_ACTIONS = frozenset({"step.correct"})
_PAGE = 1000


class _SiteSettings(Protocol):
    @property
    def calibration_warn_days(self) -> int: ...

    def zone(self) -> tzinfo: ...


class _Journal(Protocol):
    async def flush(self) -> None: ...


class Service(Protocol):
    """What the record needs of the running service (app.runtime.Runtime; the assembly is not imported here)."""

    @property
    def devices(self) -> Sequence[DeviceConfig]: ...

    @property
    def channel_ids(self) -> Mapping[str, int]: ...

    @property
    def settings(self) -> _SiteSettings: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def alarms(self) -> _Journal | None: ...


@dataclass(frozen=True, slots=True)
class RecordContext:
    """What the record needs that the database does not hold: the devices file (profile name and version,
    endpoint, points and their roles) by device name, the channel ids by channel name (`<device>.<point>`), the
    site's time zone and the calibration warning days."""

    devices: Mapping[str, DeviceConfig]
    channel_ids: Mapping[str, int]
    zone: tzinfo = UTC
    calibration_warn_days: int = 30

    @classmethod
    def of(cls, runtime: Service) -> RecordContext:
        """The context of a running service."""
        return cls(devices=MappingProxyType({d.name: d for d in runtime.devices}),
                   channel_ids=MappingProxyType(dict(runtime.channel_ids)), zone=runtime.settings.zone(),
                   calibration_warn_days=runtime.settings.calibration_warn_days)


async def current_record(conn: DBConnection, runtime: Service, run_id: int) -> BatchRecord:
    """The current draft of a run's record (the JSON route, the reviews, the release gate and the issued versions all
    build it here): the alarm journal flushed first, then `build_record` now."""
    if runtime.alarms is not None:
        await runtime.alarms.flush()  # what the stream has shown is in the journal
    return await build_record(conn, run_id, now=runtime.clock.now(), runtime_view=RecordContext.of(runtime))


async def build_record(conn: DBConnection, run_id: int, *, now: datetime, runtime_view: RecordContext) -> BatchRecord:
    """The batch record of `run_id` as the database holds it at `now` (module docstring); 404 `unknown_run`."""
    if conn.is_in_transaction():
        return await _build(conn, run_id, now, runtime_view)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _build(conn, run_id, now, runtime_view)


# -- the sections ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Run:
    """What every section needs of the run."""

    row: Mapping[str, Any]
    view: Mapping[str, Any]
    recipe: Recipe | None
    records: Mapping[str, Any]  # step key -> step_record row
    recorded: Mapping[str, Mapping[str, Any]]  # step key -> corrections.record_view
    as_of: datetime
    start: datetime
    end: datetime


async def _build(conn: DBConnection, run_id: int, now: datetime, ctx: RecordContext) -> BatchRecord:
    run = await _load(conn, run_id, now)
    devs = [await deviations.deviation_view(conn, int(d["id"]))
            for d in await deviations.list_deviations(conn, run_id, None, limit=100_000)]
    equipment = await _equipment(conn, run, ctx)
    alarms = await _alarms(conn, run)
    product_view = _product(run)
    record = BatchRecord(
        generated_at=now,
        version=VersionInfo(number=None, draft=True),
        identity=_identity(run),
        exceptions=[],
        equipment=equipment,
        materials=_materials(run),
        steps=_steps(run, devs),
        deviations=[await _deviation(conn, d) for d in devs],
        alarms=alarms,
        excursions=[_excursion(r) for r in await journal.run_excursions(conn, run_id)],
        door_openings=[DoorOpeningView(**{k: d[k] for k in ("device", "step_key", "opened_at", "closed_at",
                                                            "recovery_min", "outcome", "reason")})
                       for d in await journal.run_door_openings(conn, run_id)],
        setpoints=[SetpointView(**{k: c[k] for k in ("requested_at", "device", "point", "requested", "previous",
                                                     "read_back", "result", "actor", "reason", "source")})
                   for c in await setpoints.run_history(conn, run_id)],
        charts=await _charts(conn, run, ctx),
        product=product_view,
        release=await _release(conn, run, devs),
        audit=await _audit(conn, run, devs, alarms),
        audit_chain=ChainHead(**await checkpoints.record_chain_head(conn)),
    )
    record = record.model_copy(update={"exceptions": record_rules.exceptions(record)})
    return record.model_copy(update={"version": VersionInfo(number=None, draft=True,
                                                            content_hash=record_rules.content_hash(record))})


async def _load(conn: DBConnection, run_id: int, now: datetime) -> _Run:
    try:
        row = await runs.run_row(conn, run_id)
    except Problem as exc:
        if exc.status != 404:
            raise
        raise Problem(404, "run-not-found", "Not found", f"there is no culture run with id {run_id}",
                      rule="unknown_run") from None
    ended = row["ended_at"]
    as_of = ended if row["status"] in runs.CLOSED and ended is not None else now
    view = await runs.run_view(conn, run_id, as_of)
    recipe = recipe_of(await recipe_row(conn, int(row["recipe_id"]))) if row["recipe_id"] is not None else None
    records = await runs.step_records(conn, run_id)
    recorded = {key: await corrections.record_view(conn, run_id, key) for key in records}
    starts = [r["posted_at"] for r in records.values()] + ([row["t0"]] if row["t0"] is not None else [])
    start = min(starts) if starts else row["created_at"]
    end = max(start, ended or as_of)
    released = records.get(release_step(recipe).key) if recipe is not None else None
    if ended is None and released is not None:
        # Released and not yet infused: the record's telemetry and alarms stop at the release (the product left
        # the culture), so the issued record changes only when something happens to the run.
        end = max(start, released["posted_at"])
    return _Run(row, view, recipe, records, recorded, as_of, start, end)


def signature_view(s: SignatureOut | Mapping[str, Any]) -> SignatureView:
    """A signature as the record shows it."""
    out = s if isinstance(s, SignatureOut) else SignatureOut.model_validate(s)
    return SignatureView(meaning=out.meaning, printed_name=out.printed_name, signer=out.signer_name,
                         role=out.signer_role, signed_at=out.signed_at, record_hash=out.record_hash,
                         comment=out.comment, valid=out.valid)


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _identity(run: _Run) -> Identity:
    v = run.view
    infusion = v.get("infusion")
    product_ = v.get("product") or {}
    recipe = v.get("recipe")
    return Identity(
        run_id=int(v["id"]), run_code=str(v["code"]), status=str(v["status"]),
        recipe=None if recipe is None else RecipeRef(key=recipe["key"], version=recipe["version"],
                                                     content_hash=recipe["content_hash"]),
        product_id=str(v["product_id"]), donor_id=v["donor_id"], graft_din=v["graft_din"], patient_id=v["patient_id"],
        patient_weight_kg=v["patient_weight_kg"], transplant_type=v["transplant_type"], arm=v["arm"],
        cell_source=v["cell_source"], target_dose_per_kg=v["target_dose_per_kg"],
        dose_level=_dose_level(product_.get("decision")), hsct_at=v["hsct_at"], t0=v["t0"],
        infusion_at=None if infusion is None else infusion["at"],
        infusion_window_days=None if infusion is None else tuple(infusion["window_days"]),
        created_at=v["created_at"], ended_at=v["ended_at"])


def _dose_level(decision: Mapping[str, Any] | None) -> str | None:
    if decision is None:
        return None
    if decision["decision"] == "lower_dose":
        return f"lower dose level {float(decision['dose_per_kg']):.3g} CD7+ cells/kg (QA's dose decision)"
    return "out of specification (QA's dose decision)"


def _planned_end(run: _Run) -> datetime:
    """The run's last moment: its end once it has ended, else its planned infusion (now, when that is past)."""
    if run.row["ended_at"] is not None:
        return run.end
    infusion = run.view.get("infusion")
    planned = _time(infusion["at"]) if infusion else None
    return run.as_of if planned is None else max(run.as_of, planned)


_ROLES_IN_RUN: tuple[tuple[Literal["incubator", "culture_system"], str, str], ...] = (
    ("incubator", "incubator", "incubator"), ("culture_system", "culture-system", "culture_system"))


async def _equipment(conn: DBConnection, run: _Run, ctx: RecordContext) -> list[EquipmentView]:
    cals = await runs.run_calibrations(conn, int(run.row["id"]), run.as_of, ctx.zone, ctx.calibration_warn_days)
    last_day = calibration.site_today(_planned_end(run), ctx.zone)
    out = []
    for role_in_run, kind, column in _ROLES_IN_RUN:
        name = run.row[column]
        if name is None:
            continue
        cfg = ctx.devices.get(str(name))
        profile = cfg.profile_spec if cfg is not None and cfg.resolved is not None else None
        roles = {p.name: p.role for p in cfg.points} if cfg is not None else {}
        out.append(EquipmentView(
            device=str(name), kind=cfg.kind if cfg is not None else kind, role_in_run=role_in_run,
            profile=None if profile is None else profile.name,
            profile_version=None if profile is None else profile.version,
            endpoint=cfg.endpoint if cfg is not None else "(not in the devices file)",
            calibrations=[CalibrationView(
                point=c["point"], role=roles.get(c["point"]), calibrated_on=c["calibrated_on"], due_on=c["due_on"],
                certificate=c["certificate"], performed_by=c["performed_by"], status_at_start=c["status_at_start"],
                status_now=c["status_now"],
                status_at_end=calibration.status(date.fromisoformat(c["due_on"]), last_day,
                                                 ctx.calibration_warn_days))
                for c in cals if c["device"] == name]))
    return out


def _materials(run: _Run) -> list[MaterialView]:
    out = []
    for key in _recorded_order(run):
        lots = run.recorded[key].get("lots") or {}
        used = run.records[key]["posted_at"].date()
        for reagent, lot in lots.items():
            expiry = lot.get("expiry")
            out.append(MaterialView(step_key=key, reagent=str(lot.get("reagent") or reagent), lot=str(lot["lot"]),
                                    expiry=expiry,
                                    expired_at_use=None if expiry is None else date.fromisoformat(expiry) < used))
    return out


def _recorded_order(run: _Run) -> list[str]:
    """The recorded steps in recipe order (in recording order when the run has no recipe)."""
    keys = list(run.records)
    if run.recipe is None:
        return keys
    order = {k: i for i, k in enumerate(run.recipe.step_keys)}
    return sorted(keys, key=lambda k: order.get(k, len(order)))


def limit_text(inp: StepInput, context: Mapping[str, object]) -> str | None:
    """An input's acceptance limit as the recipe states it (the form app.protocol.acceptance reports failures in)."""
    unit = f" {inp.unit}" if inp.unit else ""
    if inp.accept_min is not None or inp.accept_max is not None:
        parts = [f">= {inp.accept_min:g}{unit}"] if inp.accept_min is not None else []
        parts += [f"<= {inp.accept_max:g}{unit}"] if inp.accept_max is not None else []
        return " and ".join(parts)
    if inp.expected_from is not None:
        return f"== {inp.expected_from} ({context.get(inp.expected_from)!r})"
    if inp.expected is not None:
        return f"== {inp.expected!r}"
    return None


def _source(provenance: Mapping[str, Any] | None) -> str | None:
    if not provenance:
        return None
    kind = str(provenance.get("source"))
    if kind == "counter":
        sha = str(provenance.get("sha256") or "")[:12]
        instrument = provenance.get("instrument_id") or "instrument ?"
        return (f"counter import {provenance.get('count_import')} ({instrument}, {provenance.get('filename')}, "
                f"sha256 {sha})")
    if kind == "calibration":
        return f"calibration records on {provenance.get('on')}"
    if kind == "correction":
        return f"correction {provenance.get('correction_id')}"
    return kind


def _inputs(step: Step, rv: Mapping[str, Any], context: Mapping[str, object]) -> list[InputView]:
    values: dict[str, Any] = dict(rv.get("effective_inputs") or {})
    provenance: Mapping[str, Any] = rv.get("effective_provenance") or {}
    failed = {f.field for f in acceptance.evaluate_limits(step, values, context)}
    original: dict[str, Any] = {}
    for c in rv.get("corrections") or ():
        for name, value in (c.get("before") or {}).items():
            original.setdefault(name, value)  # the first correction's "before" is the first recorded value
    out = []
    for inp in step.inputs:
        value = values.get(inp.name)
        checked = inp.has_limit and value is not None
        out.append(InputView(name=inp.name, value=value, unit=inp.unit, limit=limit_text(inp, context),
                             passed=(inp.name not in failed) if checked else None,
                             source=_source(provenance.get(inp.name)), changed_after_entry=inp.name in original,
                             original=original.get(inp.name)))
    return out


def _late_missed(status: str, window: Mapping[str, Any], done_at: datetime | None) -> tuple[bool, bool]:
    latest = _time(window.get("latest"))
    deadline = _time(window.get("hard_latest")) or latest
    if done_at is None:
        return status in ("late", "missed"), status == "missed"
    late = latest is not None and done_at > latest
    return late, deadline is not None and done_at > deadline


def _steps(run: _Run, devs: Sequence[Mapping[str, Any]]) -> list[StepView]:
    if run.recipe is None:
        return []
    by_step: dict[str, set[int]] = {}
    for d in devs:
        if d.get("step_key"):
            by_step.setdefault(str(d["step_key"]), set()).add(int(d["id"]))
    schedule = {s["key"]: s for s in run.view.get("schedule") or ()}
    context = limit_context(run.row)
    out = []
    for step in run.recipe.steps:
        s = schedule.get(step.key)
        if s is None:
            continue
        rv = run.recorded.get(step.key)
        done_at = _time(s.get("done_at"))
        late, missed = _late_missed(str(s["status"]), s["window"], done_at)
        ids = set(by_step.get(step.key, ()))
        if rv is not None:
            ids |= set(rv.get("deviation_ids") or ())
            ids |= {int(i) for c in rv.get("corrections") or () for i in c.get("deviation_ids") or ()}
        out.append(StepView(
            key=step.key, title=step.title, status=str(s["status"]), window=dict(s["window"]), done_at=done_at,
            late=late, missed=missed, recorded_by=None if rv is None else rv.get("recorded_by"),
            inputs=[] if rv is None else _inputs(step, rv, context),
            override=bool(rv and rv.get("override")), override_reason=None if rv is None else rv.get("override_reason"),
            corrections=[] if rv is None else [CorrectionView(
                id=c["id"], at=c["corrected_at"], by=c["corrected_by"], reason=c["reason"], changes=c["after"],
                original=c["before"], signatures=[signature_view(x) for x in c.get("signatures") or ()])
                for c in rv.get("corrections") or ()],
            signatures=[] if rv is None else [signature_view(x) for x in rv.get("signatures") or ()],
            deviation_ids=sorted(ids)))
    return out


async def _deviation(conn: DBConnection, d: Mapping[str, Any]) -> DeviationView:
    return DeviationView(
        id=int(d["id"]), step_key=d.get("step_key"), rule=str(d["rule"]),
        classification=str(d.get("classification") or d["severity"]), description=str(d["description"]),
        impact=d.get("impact"), actions=d.get("actions"), opened_at=d["opened_at"], opened_by=str(d["opened_by"]),
        status=str(d["status"]), closed_at=d.get("closed_at"), closed_by=d.get("closed_by"),
        close_reason=d.get("close_reason"), comments=list(d.get("comments") or ()),
        signatures=[signature_view(s) for s in await signatures.list_signatures(conn, "deviation", str(d["id"]),
                                                                        limit=10_000)])


async def _journal(conn: DBConnection, **filters: Any) -> list[dict[str, Any]]:
    """Every journal row matching `filters` (app.alarms.journal.history pages newest first)."""
    out: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        page = await journal.history(conn, before_id=before, limit=_PAGE, **filters)
        out += page
        if len(page) < _PAGE:
            return out
        before = int(page[-1]["id"])


async def _alarms(conn: DBConnection, run: _Run) -> list[AlarmEventView]:
    """The journal of the alarms that served the run, and of its devices' alarms during the run (whichever run the
    service credited them to: two runs may share an incubator), each alarm not normal when the run began with the
    event that left it so."""
    run_id = int(run.row["id"])
    rows = {int(e["id"]): e for e in await _journal(conn, run_id=run_id)}
    devices = {str(d) for d in (run.row["incubator"], run.row["culture_system"]) if d}
    for device in sorted(devices):
        for e in await _journal(conn, device=device, since=run.start, until=run.end):
            rows.setdefault(int(e["id"]), e)
    for alarm in await journal.alarm_rows(conn):
        if alarm["device"] not in devices:
            continue
        before = await journal.history(conn, alarm_id=str(alarm["id"]), until=run.start, limit=1)
        if before and before[0]["to_state"] != "normal":
            rows.setdefault(int(before[0]["id"]), before[0])
    events = sorted(rows.values(), key=lambda e: (e["at"], e["id"]))
    return [AlarmEventView(**{k: e[k] for k in ("at", "alarm_id", "channel", "from_state", "to_state", "severity",
                                                 "priority", "value", "reason", "actor", "comment")})
            for e in events]


def _excursion(r: Mapping[str, Any]) -> ExcursionView:
    return ExcursionView(channel=r["channel"], unit=r["unit"], band=(r["band_low"], r["band_high"]),
                         minutes_outside=round(float(r["seconds_outside"]) / 60.0, 3),
                         integral=round(float(r["integral"]), 4), worst=r["worst"], episodes=int(r["episodes"]))


def chart_bucket(start: datetime, end: datetime) -> timedelta:
    """5 minutes, or the smallest multiple of 5 minutes that keeps [start, end) within MAX_CHART_POINTS buckets (the
    grid's alignment may add one)."""
    span = max(end - start, timedelta(0))
    n = max(1, math.ceil(span / (history.ROLLUP_BUCKET * (MAX_CHART_POINTS - 1))))
    return history.ROLLUP_BUCKET * n


def limit_band(recipe: Recipe | None, ref: str) -> tuple[float | None, float | None] | None:
    """The band a chart of `ref` (`<device class>.<role>`) shows: the L..H (else LL..HH) limits of its limit alarm for
    the whole run (the recipe's override without `during`, else the default), else the recipe's excursion band."""
    defs = default_definitions().get(ref, ())
    if recipe is not None:
        override = next((o for o in recipe.alarms if o.channel == ref and not o.during), None)
        if override is not None:
            defs = override.definitions
    for d in defs:
        if isinstance(d, LimitAlarm):
            lo, hi = d.l or d.ll, d.h or d.hh
            if lo is not None or hi is not None:
                return (None if lo is None else lo.value, None if hi is None else hi.value)
    rule = next((x for x in recipe.excursions if x.channel == ref), None) if recipe is not None else None
    return None if rule is None else (rule.low, rule.high)


async def _charts(conn: DBConnection, run: _Run, ctx: RecordContext) -> list[ChartView]:
    devices = {"incubator": run.row["incubator"], "culture-system": run.row["culture_system"]}
    bucket = chart_bucket(run.start, run.end)
    out = []
    for kind, role in CHART_ROLES:
        name = devices.get(kind)
        cfg = ctx.devices.get(str(name)) if name else None
        point = cfg.role_point(role) if cfg is not None else None
        if point is None:
            continue
        channel = f"{name}.{point.name}"
        channel_id = ctx.channel_ids.get(channel)
        points: list[tuple[datetime, float | None, float | None, float | None]] = []
        if channel_id is not None and run.end > run.start:
            rows = await history.query_telemetry(conn, channel_id, run.start, run.end, bucket, MAX_CHART_POINTS)
            points = [(p.time, p.avg, p.min, p.max) for p in rows if isinstance(p, history.BucketPoint)]
        out.append(ChartView(role=role, channel=channel, unit=point.unit, band=limit_band(run.recipe, f"{kind}.{role}"),
                             points=points))
    return out


def _product(run: _Run) -> ProductView:
    p: Mapping[str, Any] = run.view.get("product") or {}
    dose: Mapping[str, Any] | None = run.view.get("dose")
    recipe = run.recipe
    forecasts: list[dict[str, Any]] = []
    if recipe is not None and dose is not None:
        bases = [(recipe.t0_step, "seed")] + [(k, "day3" if i == 0 else k) for i, k in enumerate(recipe.count_steps)]
        forecasts = [{**dose[fact], "step": key} for key, fact in bases if isinstance(dose.get(fact), Mapping)]
    released_at = _released_at(run)
    qc = []
    for q in p.get("qc") or ():
        reported = _time(q.get("reported_at"))
        status = str(q["status"]) if q["status"] != "reported" else ("passed" if q.get("passed") else "failed")
        qc.append(QcView(test=q["test"], status=status, result=q.get("result"), reported_at=reported,
                         reported_by=q.get("reported_by"),
                         after_release=released_at is not None and reported is not None and reported > released_at))
    return ProductView(status=p.get("status"), expiry=_time(p.get("expiry")), dose=None if dose is None else dict(dose),
                       forecasts=forecasts, decision=p.get("decision"), qc=qc)


def _released_at(run: _Run) -> datetime | None:
    if run.recipe is None:
        return None
    rec = run.records.get(release_step(run.recipe).key)
    at = None if rec is None else rec["posted_at"]
    assert at is None or isinstance(at, datetime)
    return at


async def _release(conn: DBConnection, run: _Run, devs: Sequence[Mapping[str, Any]]) -> ReleaseView:
    recipe = run.recipe
    if recipe is None:
        return ReleaseView(released=False, refusals=["no_recipe: the run was not planned from a recipe"])
    key = release_step(recipe).key
    released_at = _released_at(run)
    if released_at is not None:
        return ReleaseView(released=True, released_at=released_at,
                           signatures=[signature_view(s) for s in run.recorded[key].get("signatures") or ()],
                           refusals=[])
    row, run_id = run.row, int(run.row["id"])
    out: list[str] = []
    if row["status"] in runs.CLOSED:
        out.append(f"run_not_running: the run is {row['status']}")
    blocked = next((list(s.get("blocked_by") or ()) for s in run.view.get("schedule") or () if s["key"] == key), [])
    if blocked:
        out.append(f"out_of_order: {key} waits for {', '.join(blocked)}")
    expiry = _time((run.view.get("product") or {}).get("expiry"))
    out += [f"{r.rule}: {r.message}" for r in release.release_refusals(
        recipe, await product.qc_states(conn, run_id), held=row["status"] == "held", hold_reason=row["hold_reason"],
        expiry=expiry, now=run.as_of)]
    still_open = [int(d["id"]) for d in devs if d["status"] == "open"]
    if still_open:
        out.append(f"open_deviations: deviations {', '.join(map(str, still_open))} are open; QA closes them first")
    unsigned = await missing_step_signatures(conn, recipe, run.records)
    if unsigned:
        listed = "; ".join(f"{k}: {', '.join(m)}" for k, m in unsigned.items())
        out.append(f"signatures_missing: recorded steps lack the signatures the recipe requires ({listed})")
    return ReleaseView(released=False, refusals=out)


async def _audit_of(conn: DBConnection, *, after: int = 0, **filters: Any) -> list[dict[str, Any]]:
    """Every audit record matching `filters` after seq `after` (app.records.audit.search pages by seq)."""
    out: list[dict[str, Any]] = []
    while True:
        page = await audit.search(conn, after_seq=after, limit=_PAGE, **filters)
        out += page
        if len(page) < _PAGE:
            return out
        after = int(page[-1]["seq"])


async def _audit(conn: DBConnection, run: _Run, devs: Sequence[Mapping[str, Any]],
                 alarms: Sequence[AlarmEventView]) -> list[AuditEntryView]:
    """The run's audit extract: the run (its creation, holds, QC results, dose decision, reviews ...), its steps, their
    corrections, its deviations, QA's dose decision's signature, the setpoint commands recorded for it and the
    actions on the alarms of its journal during their events.

    Audit times are the database server's clock and the service's clock may run faster (the demo): the devices' and
    alarms' records are bounded by the run's first audit record (seq) and by what they name (the run, the service
    time of an alarm action), never by comparing the two clocks."""
    run_id = int(run.row["id"])
    entities = [("culture_run", str(run_id))]
    entities += [("step_record", str(r["id"])) for r in run.records.values()]
    entities += [("step_correction", str(c["id"])) for rv in run.recorded.values() for c in rv.get("corrections") or ()]
    entities += [("deviation", str(d["id"])) for d in devs]
    decision = (run.view.get("product") or {}).get("decision")
    if decision is not None:
        entities.append(("dose_decision", str(decision["id"])))
    rows: dict[int, dict[str, Any]] = {}
    for entity_type, entity_id in entities:
        rows.update((int(r["seq"]), r) for r in await _audit_of(conn, entity_type=entity_type, entity_id=entity_id))
    after = min(rows) - 1 if rows else 0
    for device in dict.fromkeys(d for d in (run.row["incubator"], run.row["culture_system"]) if d):
        for r in await _audit_of(conn, entity_type="device", entity_id=str(device), after=after):
            if isinstance(r["new"], Mapping) and r["new"].get("run_id") == run_id:
                rows[int(r["seq"])] = r
    spans: dict[str, tuple[datetime, datetime]] = {}
    for e in alarms:
        lo, hi = spans.get(e.alarm_id, (e.at, e.at))
        spans[e.alarm_id] = (min(lo, e.at), max(hi, e.at))
    for alarm_id, (lo, hi) in spans.items():
        for r in await _audit_of(conn, entity_type="alarm", entity_id=alarm_id, after=after):
            at = _time(r["new"].get("at")) if isinstance(r["new"], Mapping) else None
            if at is not None and lo <= at <= hi:
                rows[int(r["seq"])] = r
    return [AuditEntryView(seq=int(r["seq"]), at=r["at"], actor=str(r["actor_name"]), action=str(r["action"]),
                           entity_type=str(r["entity_type"]), entity_id=str(r["entity_id"] or ""), reason=r["reason"],
                           changed_after_entry=_changes(str(r["action"])))
            for _, r in sorted(rows.items())]


def _changes(action: str) -> bool:
    """An action that changes a value after its first recording (a correction, an update)."""
    return action in CHANGE_ACTIONS or action.endswith((".correct", ".update"))
