"""The alarm service: the pure alarm core wired to ingest, the clock, the database and the live stream.

- Every reading passes through `on_reading` (a DeviceHub sink, like the ingest buffer): each alarm of its channel
  is evaluated right there, in memory, never by polling the database. Device connection changes come through
  `on_device_state` (one communication-loss alarm per device, not one per point).
- A loop on the service clock (`run`) applies the passage of time (`tick`: delays, stale data, shelve expiry,
  end of suppression), raises the historian alarm from the writer's state, refreshes which run each device
  serves (phase-aware definitions from the run's recipe, door suppression, excursions), and persists.
- Transitions are published on the live stream at once (kind "alarm") and written to the journal
  (`alarm_event`) and the current state (`alarm`) in order (app/alarms/journal.py); while the database is down they
  go to the disk spool (fsync'd) and are written first, in order, when it returns: a record key keeps events and
  deviations from being written twice, and a replayed older snapshot never overwrites a newer alarm or excursion.
- Operator actions (acknowledge, shelve, unshelve, out of service) need a comment; each writes its journal row,
  the alarm row and one audit record in one transaction before the in-memory state changes.
- Excursions of a run's channels (time and integral outside the band) are accounted from the same readings; the
  recipe's rules open deviations on the run.
- Door openings a recipe plans (a step's `door_opening` with its expected recovery, app/alarms/door.py): while one
  is planned_open or recovering, the incubator's temperature and CO2 limit and rate alarms and its door alarm are
  suppressed by design and its excursion is not accounted; the opening is recorded (`door_opening`). When it breaks
  its plan, the alarms resume at once (on-delays counted from then) and a `door_recovery` deviation opens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

import asyncpg

from app import db
from app.alarms import journal
from app.alarms.calibration import calibration_alarm
from app.alarms.door import Event, OpeningState, Phase, Plan, PlannedOpening, Sample, advance, observe
from app.alarms.evaluate import (
    AlarmState,
    IllegalTransition,
    Transition,
    acknowledge,
    evaluate,
    initial_state,
    out_of_service,
    resume,
    return_to_service,
    shelve,
    suppress,
    tick,
    unshelve,
)
from app.alarms.excursion import ExcursionRule, ExcursionState, Trip, add_sample
from app.alarms.journal import DOOR_RECOVERY, Alarm, DeviationTrip, Excursion, JournalEvent
from app.alarms.model import (
    AlarmDefinition,
    AlarmStatus,
    BadQualityAlarm,
    CommLossAlarm,
    LimitAlarm,
    RateAlarm,
    Severity,
    StaleAlarm,
    default_definitions,
)
from app.auth.principal import Principal
from app.core.clock import Clock
from app.core.live import LiveHub
from app.core.outage import OutageLog
from app.core.problems import Problem
from app.devices import calibration
from app.ingest.spool import Spool
from app.notify import outbox, rules, store
from app.protocol import deviations, runs
from app.protocol.recipe import AlarmOverride
from app.protocol.recipes import recipe_of
from app.records import audit
from drivers.base import DeviceState, PointCheck, Quality, Reading
from drivers.devices import DeviceConfig

log = logging.getLogger("culturectl.alarms")

Action = Literal["acknowledge", "shelve", "unshelve", "out_of_service", "return_to_service"]
HISTORIAN = "culturectl"
HISTORIAN_ALARM = f"{HISTORIAN}:historian"
IN_WINDOW = ("open", "due", "late")
EXCURSION_RUN_STATES = ("running", "held")
BOUND_RUN_STATES = ("planned", "running", "held")
ALARM_RULE = "excursion_alarm"

_COMM_LOSS = CommLossAlarm(name="comm_loss", description="device communication lost: its channels are unobserved")
# A configuration alarm: the device does not match its profile (a point not found, or another type, unit or access
# than declared). The points that were found are still read; the others are unobserved.
_CONFIGURATION = CommLossAlarm(name="configuration", description="device does not match its profile: points not "
                                                                  "found or not as declared (see the device check)")
# A QC result reported positive after infusion (sterility): the product is in the patient. The alarm is active while
# its deviation (post_infusion_positive) is open, so it reaches a person like any alarm, and returns when QA closes it.
QC_POSITIVE_RULE = "post_infusion_positive"
_QC_POSITIVE = CommLossAlarm(name="qc_positive", description="a QC result of an infused product is positive: notify "
                                                              "the patient's physician (see the run's deviation)")
_HISTORIAN_DEF = CommLossAlarm(
    name="historian", description="the database (historian) is unavailable: telemetry is kept in the local spool")


@dataclass
class _Binding:
    """A run a device serves: its recipe's alarm overrides, excursion rules and the steps in their window.

    `door_steps`: steps with recipe v1's bare `door_opening: true` (the door alarm is suppressed for its window);
    `planned`: steps stating a PlannedOpening, in recipe order (the first in window plans an opening).
    """

    run_id: int
    status: str
    in_window: frozenset[str]
    door_steps: frozenset[str]
    overrides: tuple[AlarmOverride, ...]
    excursions: tuple[ExcursionRule, ...]
    planned: tuple[tuple[str, PlannedOpening], ...] = ()


# Alarms a planned door opening suppresses on the temperature and CO2 channels: the process alarms. Stale, bad
# quality and communication loss still say that the chamber is unobserved.
_PLANNED_KINDS = (LimitAlarm, RateAlarm)
_BACKSTOP_S = 60.0  # the suppression window outlasts the plan's own deadlines by this much (see _suppress_opening)


@dataclass
class _Door:
    """An incubator's door openings: its door, temperature and CO2 channels, the rule's state, the run of the current
    opening and the alarms the opening suppressed (only those resume when it ends)."""

    device: str
    door: str
    temperature: str | None
    co2: str | None
    state: OpeningState = field(default_factory=OpeningState)
    run_id: int | None = None
    suppressed: set[str] = field(default_factory=set)
    row_at: datetime | None = None  # the last row's time: never goes back (a reading may be older than a pass)


@dataclass
class _Replay:
    """What a replay of the spool wrote (ids to delete after the commit) and what the database refused."""

    done: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AckLink:
    """The notification delivery whose remote link acknowledges an alarm (app/web/ack.py)."""

    delivery_id: int
    username: str
    channel: str


# (alarm, action, principal, comment, until, client, link) -> the evaluating replica's answer, None: here
ActForward = Callable[[Alarm, Action, Principal, str, datetime | None, str | None, AckLink | None],
                      Awaitable[dict[str, Any] | None]]

# (journal events written, (alarm id, the state written) of each alarm row written)
_Written = tuple[int, list[tuple[str, AlarmState]]]


@dataclass
class AlarmService:
    """See the module docstring."""

    clock: Clock
    live: LiveHub
    devices: Sequence[DeviceConfig]
    pool: asyncpg.Pool | None = None
    shelve_max: timedelta = timedelta(hours=8)
    stale_floor: float = 5.0  # wall seconds: on a sped-up clock devices still sample in wall time
    interval: float = 0.5
    clock_step: float = 15.0  # clock seconds: on a fast clock the pass runs more often than `interval`
    context_interval: float = 2.0
    historian: Callable[[], Mapping[str, Any]] | None = None
    max_pending: int = 100_000
    calibration_warn_days: int = 30  # a calibrated point due within this many days raises its advisory alarm
    zone: tzinfo = UTC  # the site's time zone: due dates are its dates
    alarms: dict[str, Alarm] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: {"readings": 0, "transitions": 0, "dropped": 0,
                                                           "flush_errors": 0})
    _by_channel: dict[str, list[Alarm]] = field(default_factory=dict)
    _kinds: dict[str, str] = field(default_factory=dict)
    _bindings: dict[str, _Binding] = field(default_factory=dict)  # device -> run binding
    _excursions: dict[str, list[Excursion]] = field(default_factory=dict)  # channel -> excursions
    _pending: deque[JournalEvent] = field(default_factory=deque)
    _dirty: dict[str, Alarm] = field(default_factory=dict)
    _trips: list[DeviationTrip] = field(default_factory=list)
    _doors: dict[str, _Door] = field(default_factory=dict)  # incubator -> its door openings
    _door_channels: dict[str, tuple[_Door, str]] = field(default_factory=dict)  # channel -> (door, role)
    _door_rows: list[tuple[Any, ...]] = field(default_factory=list)  # door_opening rows waiting to be written
    spool: Spool | None = None  # where the journal waits while the database is down (the telemetry spool)
    _outage: OutageLog = field(default_factory=lambda: OutageLog(log, "alarm service: database unavailable"))
    _restored: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _last_context: float = float("-inf")
    policy: tuple[int, rules.Policy] | None = None  # the notification policy in force (version, policy)
    # Several replicas: a device's alarms are evaluated and journaled by the replica that owns the device, the
    # site's own (the historian, service conditions, QC and calibration alarms) by the leader; the others keep a
    # copy, read back from the database at each context refresh (app/cluster/node.py). Alone: all of them here.
    owns: Callable[[str], bool] = lambda _device: True
    leads: Callable[[], bool] = lambda: True
    forward: ActForward | None = None  # an action on an alarm another replica evaluates goes there (runtime)

    def __post_init__(self) -> None:
        self._kinds = {d.name: d.kind for d in self.devices}
        # channel -> the role its point plays: rules name roles, channels name vendors' points
        self._roles = {f"{d.name}.{p.name}": p.role for d in self.devices for p in d.points if p.role}
        now = self.clock.now()
        defaults = default_definitions()
        for device in self.devices:
            comm = f"{device.name}:comm_loss"
            self.alarms[comm] = Alarm(comm, device.name, device.name, _COMM_LOSS, initial_state(comm, now))
            conf = f"{device.name}:configuration"
            self.alarms[conf] = Alarm(conf, device.name, device.name, _CONFIGURATION, initial_state(conf, now))
            for point in device.points:
                channel = f"{device.name}.{point.name}"
                ref = f"{device.kind}.{point.role}" if point.role else None
                self._set_channel(channel, defaults.get(ref, ()) if ref else (), None, now)
        self.alarms[HISTORIAN_ALARM] = Alarm(HISTORIAN_ALARM, HISTORIAN, HISTORIAN, _HISTORIAN_DEF,
                                             initial_state(HISTORIAN_ALARM, now))
        for device in self.devices:
            door, temp, co2 = (device.role_point(r) for r in ("door_open", "temperature", "co2"))
            if device.kind != "incubator" or door is None:
                continue
            tracked = _Door(device.name, f"{device.name}.{door.name}",
                            f"{device.name}.{temp.name}" if temp is not None else None,
                            f"{device.name}.{co2.name}" if co2 is not None else None)
            self._doors[device.name] = tracked
            roles: tuple[tuple[str, str | None], ...] = (
                ("door_open", tracked.door), ("temperature", tracked.temperature), ("co2", tracked.co2))
            for role, name in roles:
                if name is not None:
                    self._door_channels[name] = (tracked, role)

    # -- definitions -----------------------------------------------------------------------------------------

    def evaluates(self, alarm: Alarm) -> bool:
        """Whether this replica evaluates and journals `alarm` (see `owns` and `leads`)."""
        return self.owns(alarm.device) if alarm.device in self._kinds else self.leads()

    def _effective(self, defn: AlarmDefinition) -> AlarmDefinition:
        if isinstance(defn, StaleAlarm):
            floor = self.stale_floor * self.clock.scale
            if floor > defn.max_age_s:
                return defn.model_copy(update={"max_age_s": floor})
        return defn

    def _restore(self, alarm: Alarm) -> None:
        """Take the alarm's persisted state (acknowledgement, mode, active condition), if the database had one."""
        row = self._restored.get(alarm.id)
        if row is not None:
            alarm.state = _restored_state(alarm.state, row)
            alarm.active_since, alarm.changed_at = row.get("active_since"), row.get("changed_at")

    def _set_channel(self, channel: str, defs: Sequence[AlarmDefinition], run_id: int | None, now: datetime) -> None:
        """Install the definitions of a channel, keeping the state of alarms whose name and kind stay."""
        device = channel.partition(".")[0]
        wanted = {d.name: self._effective(d) for d in defs if not isinstance(d, CommLossAlarm)}
        current = {a.defn.name: a for a in self._by_channel.get(channel, [])}
        if {n: a.defn for n, a in current.items()} == wanted and all(a.run_id == run_id for a in current.values()):
            return
        kept: list[Alarm] = []
        for name, defn in wanted.items():
            old = current.pop(name, None)
            if old is not None and old.defn.kind == defn.kind:
                if old.defn != defn or old.run_id != run_id:
                    old.defn, old.run_id = defn, run_id
                    self._dirty[old.id] = old
                kept.append(old)
                continue
            aid = f"{channel}:{name}"
            alarm = Alarm(aid, channel, device, defn, initial_state(aid, now), run_id)
            self._restore(alarm)
            self.alarms[aid] = alarm
            kept.append(alarm)
        for gone in current.values():  # definitions the phase no longer has: they end in normal
            if gone.state.status is not AlarmStatus.NORMAL:
                tr = Transition(gone.id, gone.state.status, AlarmStatus.NORMAL, gone.state.active,
                                gone.state.last_value, now, "definition removed by the recipe phase")
                gone.state = initial_state(gone.id, now)
                self._emit(gone, [tr])
            self.alarms.pop(gone.id, None)
        self._by_channel[channel] = kept

    # -- the hot path ----------------------------------------------------------------------------------------

    def on_reading(self, r: Reading) -> None:
        """Evaluate every alarm of the reading's channel (a DeviceHub sink: never awaits)."""
        self.stats["readings"] += 1
        at = r.source_time
        planned = False
        tracked = self._door_channels.get(r.channel)
        if tracked is not None:  # the door rule first: this reading evaluates in the mode it leaves the alarms in
            planned = self._observe_door(tracked[0], tracked[1], r) and tracked[1] != "door_open"
        binding = None
        if self._roles.get(r.channel) == "door_open" and r.value is not None and r.value >= 0.5:
            binding = self._bindings.get(r.channel.partition(".")[0])
        # A BAD reading from a device whose link is down is the supervisor's gap marker, not a bad measurement.
        marker = r.quality is Quality.BAD and self._device_offline(r.channel.partition(".")[0])
        for alarm in self._by_channel.get(r.channel, ()):
            if marker and isinstance(alarm.defn, BadQualityAlarm):
                continue
            st = alarm.state
            if binding is not None and binding.in_window & binding.door_steps and (st.last_value is None
                                                                                    or st.last_value < 0.5):
                self._suppress_door(alarm, at)
                st = alarm.state
            new, trs = evaluate(alarm.defn, st, r.value, r.quality, at)
            alarm.state = new
            if trs:
                self._emit(alarm, trs)
        for ex in self._excursions.get(r.channel, ()):
            ex.state, trips = add_sample(ex.rule, ex.state, r.value if r.quality == Quality.GOOD else None, at,
                                         max_gap_s=max(300.0, self.stale_floor * self.clock.scale), planned=planned)
            ex.dirty = True
            for trip in trips:
                self._trip(ex.run_id, ex.channel, trip)

    def _suppress_door(self, alarm: Alarm, at: datetime,
                       reason: str = "door opened inside a scheduled door-opening step") -> bool:
        """The door opened inside a scheduled door-opening step: suppress by design, bounded by the definition."""
        most = alarm.defn.max_suppression_s
        if most is None:
            return False
        return self._suppress_by_design(alarm, at, at + timedelta(seconds=most), reason)

    def _suppress_by_design(self, alarm: Alarm, at: datetime, until: datetime, reason: str) -> bool:
        """Suppress by design until `until` (at most the definition's max_suppression_s), unless the alarm is already
        shelved, suppressed or out of service; whether it was suppressed."""
        if alarm.state.status in (AlarmStatus.SHELVED, AlarmStatus.SUPPRESSED_BY_DESIGN, AlarmStatus.OUT_OF_SERVICE):
            return False
        most = alarm.defn.max_suppression_s
        if most is not None:
            until = min(until, at + timedelta(seconds=most))
        if until <= at:
            return False
        new, trs = suppress(alarm.defn, alarm.state, at, until, reason=reason)
        alarm.state = new
        self._emit(alarm, trs)
        return True

    # -- planned door openings -------------------------------------------------------------------------------

    def _observe_door(self, door: _Door, role: str, r: Reading) -> bool:
        """Feed the door rule one reading of the incubator; whether the opening is planned (suppressing) after it."""
        if r.value is None or r.quality is not Quality.GOOD:
            return door.state.suppressing
        plan = None
        if role == "door_open":
            is_open = r.value >= 0.5
            sample = Sample(r.source_time, door_open=is_open)
            if is_open and not door.state.door_open and door.state.phase is Phase.CLOSED:
                plan = self._plan(door)
        elif role == "temperature":
            sample = Sample(r.source_time, temperature=r.value)
        else:
            sample = Sample(r.source_time, co2=r.value)
        door.state, events = observe(door.state, sample, plan)
        self._door_events(door, events)
        return door.state.suppressing

    def _plan(self, door: _Door) -> Plan | None:
        """The first step in window of the run on the incubator that states a PlannedOpening, with the bands recovery
        returns inside (the run of the opening is noted on the door)."""
        binding = self._bindings.get(door.device)
        if binding is None:
            return None
        step = next(((key, opening) for key, opening in binding.planned if key in binding.in_window), None)
        if step is None:
            return None
        door.run_id = binding.run_id
        return Plan(step[0], step[1], self._band(door.temperature, binding, "temperature"),
                    self._band(door.co2, binding, "co2"))

    def _band(self, channel: str | None, binding: _Binding, role: str) -> tuple[float, float] | None:
        """The L..H limits of the channel's active limit alarm (LL/HH when it has no L/H), else the run's excursion
        band of the role, else None (not required for recovery)."""
        if channel is None:
            return None
        for alarm in self._by_channel.get(channel, ()):
            if isinstance(alarm.defn, LimitAlarm):
                lo = alarm.defn.l or alarm.defn.ll
                hi = alarm.defn.h or alarm.defn.hh
                return (lo.value if lo is not None else float("-inf"), hi.value if hi is not None else float("inf"))
        rule = next((x for x in binding.excursions if x.channel == f"incubator.{role}"), None)
        return (rule.low, rule.high) if rule is not None else None

    def _door_events(self, door: _Door, events: Sequence[Event]) -> None:
        for ev in events:
            st = ev.state
            assert st.plan is not None
            if ev.kind in ("opened", "reopened", "closed") and st.suppressing:
                self._suppress_opening(door, ev)
            elif ev.kind == "recovered" and st.exceeded_at is None:
                minutes = (st.recovery_s or 0.0) / 60.0
                self._resume_opening(door, ev.at, f"planned door opening ({st.plan.step_key}) recovered "
                                                  f"{minutes:.1f} min after the door shut")
                log.info("%s: planned door opening of %s recovered in %.1f min (min %s C, %s %% CO2)", door.device,
                         st.plan.step_key, minutes, _fmt(st.min_temperature), _fmt(st.min_co2))
            elif ev.kind == "exceeded":
                self._resume_opening(door, ev.at, f"planned door opening ({st.plan.step_key}) exceeded: {st.reason}")
                self._door_deviation(door, st, ev.at)
            if door.run_id is not None:
                door.row_at = ev.at if door.row_at is None else max(door.row_at, ev.at)
                self._door_rows.append(journal.door_opening_args(door.run_id, door.device, st, door.row_at))

    def _suppress_opening(self, door: _Door, ev: Event) -> None:
        """Suppress by design the temperature and CO2 process alarms and the door alarm of the incubator, for the
        planned opening; an alarm already active, shelved or out of service is left as it is. Each change of the
        opening moves the window's end (a backstop, e.g. after a restart: the rule ends the suppression itself) to
        the latest the plan allows from now, plus a minute."""
        st, at = ev.state, ev.at
        assert st.plan is not None
        plan = st.plan.opening
        left_open = max(0.0, plan.max_open_s - st.open_seconds(at)) if st.door_open else 0.0
        until = at + timedelta(seconds=left_open + plan.recovery_min * 60.0 + _BACKSTOP_S)
        reason = f"planned door opening ({st.plan.step_key}): door opened inside its stated recovery"
        for channel in (door.temperature, door.co2):
            for alarm in self._by_channel.get(channel or "", ()):
                if not isinstance(alarm.defn, _PLANNED_KINDS):
                    continue
                if alarm.id in door.suppressed and alarm.state.status is AlarmStatus.SUPPRESSED_BY_DESIGN:
                    if alarm.defn.max_suppression_s is None and alarm.state.mode_until != until:
                        alarm.state = replace(alarm.state, mode_until=until)
                        self._dirty[alarm.id] = alarm
                elif ev.kind == "opened" and alarm.state.active is None \
                        and self._suppress_by_design(alarm, at, until, reason):
                    door.suppressed.add(alarm.id)
        if st.door_open:
            for alarm in self._by_channel.get(door.door, ()):
                if self._suppress_door(alarm, at, reason):
                    door.suppressed.add(alarm.id)

    def _resume_opening(self, door: _Door, at: datetime, reason: str) -> None:
        """End the opening's suppression at once: each alarm it suppressed starts afresh (on-delays from `at`)."""
        for alarm_id in sorted(door.suppressed):
            alarm = self.alarms.get(alarm_id)
            if alarm is not None and alarm.state.status is AlarmStatus.SUPPRESSED_BY_DESIGN:
                alarm.state, trs = resume(alarm.defn, alarm.state, at, reason)
                self._emit(alarm, trs)
        door.suppressed.clear()

    def _door_deviation(self, door: _Door, st: OpeningState, at: datetime) -> None:
        """A planned opening broke its stated recovery: a `door_recovery` deviation on the run of the opening."""
        assert st.plan is not None and st.opened_at is not None
        if door.run_id is None:
            return
        step = st.plan.step_key
        facts = {
            "rule": DOOR_RECOVERY, "device": door.device, "channel": door.door, "step": step,
            "opened_at": st.opened_at.isoformat(), "closed_at": st.closed_at.isoformat() if st.closed_at else None,
            "open_s": round(st.open_seconds(at), 1), "min_temperature": st.min_temperature, "min_co2": st.min_co2,
            "recovery": "not recovered" if st.recovery_s is None else f"{st.recovery_s / 60.0:.1f} min",
            "planned": st.plan.opening.model_dump(), "reason": st.reason, "at": at.isoformat(),
        }
        description = (f"{door.device}: the door opening of step {step} broke its stated recovery: {st.reason} "
                       f"(lowest {_fmt(st.min_temperature)} C, {_fmt(st.min_co2)} % CO2)")
        self._trips.append(DeviationTrip(door.run_id, DOOR_RECOVERY, description, facts, at))
        log.warning("run %s: %s", door.run_id, description)

    def on_device_state(self, device: str, state: DeviceState, at: datetime) -> None:
        """A device connection change: one communication-loss alarm per device."""
        alarm = self.alarms.get(f"{device}:comm_loss")
        # connecting says nothing yet; the service stopping its own supervisor is not a loss
        if alarm is not None and state in (DeviceState.ONLINE, DeviceState.OFFLINE):
            self._link(alarm, state is DeviceState.ONLINE, at)

    def on_device_check(self, device: str, checks: Sequence[PointCheck], at: datetime) -> None:
        """A device's point check on connect: the configuration alarm is active while any point is off profile."""
        alarm = self.alarms.get(f"{device}:configuration")
        if alarm is not None:
            self._link(alarm, all(c.ok for c in checks), at)

    def _link(self, alarm: Alarm, up: bool, at: datetime) -> int:
        """Feed a communication-loss alarm whether its link is up; returns the number of transitions."""
        new, trs = evaluate(alarm.defn, alarm.state, 1.0 if up else None, Quality.GOOD if up else Quality.BAD, at)
        alarm.state = new
        self._emit(alarm, trs)
        return len(trs)

    def _device_offline(self, device: str) -> bool:
        alarm = self.alarms.get(f"{device}:comm_loss")
        return alarm is not None and alarm.state.active is not None

    def _emit(self, alarm: Alarm, trs: Sequence[Transition], actor: str | None = None,
              comment: str | None = None, persist: bool = True) -> None:
        if trs and not self.evaluates(alarm):
            return  # its evaluating replica journals and publishes it; this copy is read back from the database
        for tr in trs:
            if tr.severity is not None:
                alarm.last_severity = tr.severity
            if alarm.state.active is None:
                alarm.active_since = None
            elif alarm.active_since is None:
                alarm.active_since = tr.at
            alarm.changed_at = tr.at
            self.stats["transitions"] += 1
            if tr.reason == "activated":
                self.stats["activations"] = self.stats.get("activations", 0) + 1
            row = {**alarm.view(), "from": tr.from_state.value, "to": tr.to_state.value,
                   "transition_severity": tr.severity.value if tr.severity is not None else None,
                   "reason": tr.reason, "at": tr.at.isoformat(), "actor": actor, "comment": comment}
            if persist:
                if len(self._pending) >= self.max_pending:
                    self._pending.popleft()
                    self.stats["dropped"] += 1
                self._pending.append(JournalEvent(alarm, row, tr, actor, comment, work=self._notify_work(alarm, tr)))
                self._dirty[alarm.id] = alarm
            self.live.publish("alarm", alarm.id, row)
            log.log(logging.WARNING if tr.to_state is AlarmStatus.ACTIVE_UNACK else logging.INFO,
                    "alarm %s: %s -> %s (%s%s)", alarm.id, tr.from_state.value, tr.to_state.value, tr.reason,
                    f", {tr.severity.value}" if tr.severity is not None else "")
            self._alarm_rule(alarm, tr)

    def facts(self, alarm: Alarm, severity: Severity | None = None) -> rules.AlarmFacts:
        """What a notification rule matches on."""
        sev = severity if severity is not None else alarm.state.active
        priority = (alarm.defn.priority_of(sev) if sev is not None else alarm.defn.priority).value
        role = self._roles.get(alarm.channel)
        service = alarm.device == HISTORIAN
        return rules.AlarmFacts(alarm.id, alarm.device, rules.alarm_kind(alarm.defn.kind, alarm.defn.name, service),
                                priority, f"{self._kinds.get(alarm.device, '')}.{role}" if role else None,
                                alarm.run_id)

    def _notify_work(self, alarm: Alarm, tr: Transition) -> outbox.Work | None:
        """What a transition does to notifications under the policy in force: an episode starts (its alerts
        planned) or the open one ends; written in the transaction that writes the transition."""
        if self.policy is None:
            return None
        version, policy = self.policy
        eff = rules.effect(tr.from_state, tr.to_state, tr.reason)
        if not eff.start and eff.end is None:
            return None
        if eff.end is not None:
            return outbox.End(alarm.id, tr.at, eff.end, tr.reason)
        facts = self.facts(alarm, tr.severity)
        rule = rules.rule_for(policy, facts)
        if rule is None:
            return None
        value = f", value {tr.value:g}" if tr.value is not None else ""
        level = f" {tr.severity.value.upper()}" if tr.severity is not None else ""
        summary = f"{alarm.channel}{level}: {alarm.defn.description or alarm.defn.name}{value}"
        return outbox.Start(alarm.id, tr.at, facts.priority, rule.name, version, summary,
                            tuple(rules.plan(rule, tr.at)), str(uuid.uuid4()))

    def service_condition(self, name: str, ok: bool, at: datetime, description: str) -> None:
        """A condition of the service itself (a notification channel failing ...): its alarm `culturectl:<name>`,
        high priority, active while not ok."""
        aid = f"{HISTORIAN}:{name}"
        alarm = self.alarms.get(aid)
        if alarm is None:
            if ok:
                return
            alarm = Alarm(aid, HISTORIAN, HISTORIAN, CommLossAlarm(name=name, description=description),
                          initial_state(aid, at))
            self.alarms[aid] = alarm
            self._restore(alarm)
        if (alarm.state.active is None) != ok:
            self._link(alarm, ok, at)

    def _alarm_rule(self, alarm: Alarm, tr: Transition) -> None:
        """Excursion rules that open a deviation when an alarm condition activates (CO2 LL)."""
        if tr.severity is None or tr.reason not in ("activated", "escalated") or alarm.run_id is None:
            return
        binding = self._bindings.get(alarm.device)
        if binding is None or binding.status not in EXCURSION_RUN_STATES:
            return
        kind_channel = f"{self._kinds.get(alarm.device, '')}.{self._roles.get(alarm.channel, '')}"
        for rule in binding.excursions:
            if rule.channel == kind_channel and rule.deviation_on_alarm == f"{alarm.defn.name}:{tr.severity.value}":
                self._trip(binding.run_id, alarm.channel, Trip(
                    ALARM_RULE, f"{alarm.channel} alarm {alarm.defn.name} {tr.severity.value.upper()} activated at "
                                f"{tr.value if tr.value is not None else '?'} {rule.unit}", tr.at, tr.value or 0.0))

    def _trip(self, run_id: int, channel: str, trip: Trip) -> None:
        facts = {"rule": trip.rule, "channel": channel, "value": trip.value, "at": trip.at.isoformat()}
        self._trips.append(DeviationTrip(run_id, trip.rule, trip.description, facts, trip.at))
        log.warning("run %s: %s", run_id, trip.description)

    # -- the passage of time ---------------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> int:
        """Apply time-only effects to every alarm; returns the number of transitions."""
        now = now or self.clock.now()
        n = 0
        for door in self._doors.values():  # the plan's deadlines first: an exceeded plan resumes its alarms now
            if door.state.suppressing and self.owns(door.device):
                door.state, events = advance(door.state, now)
                self._door_events(door, events)
        for alarm in list(self.alarms.values()):
            if not self.evaluates(alarm):
                continue
            if isinstance(alarm.defn, StaleAlarm | BadQualityAlarm) and self._device_offline(alarm.device) \
                    and alarm.state.active is None:
                continue  # the device's comm-loss alarm says it; do not flood with one alarm per point
            new, trs = tick(alarm.defn, alarm.state, now)
            alarm.state = new
            if trs:
                n += len(trs)
                self._emit(alarm, trs)
        if self.historian is not None and self.leads():
            stats = self.historian()
            up = stats.get("db_down_since") is None  # not yet connected is not down
            h = self.alarms[HISTORIAN_ALARM]
            if (h.state.active is None) != up:  # only a change of the link is news
                n += self._link(h, up, now)
        return n

    # -- operator actions ------------------------------------------------------------------------------------

    def get(self, alarm_id: str) -> Alarm:
        alarm = self.alarms.get(alarm_id)
        if alarm is None:
            raise Problem(404, "alarm-not-found", "Alarm not found", f"there is no alarm {alarm_id!r}",
                          rule="unknown_alarm")
        return alarm

    def _apply(self, alarm: Alarm, action: Action, st: AlarmState, now: datetime, until: datetime | None,
               reason: str) -> tuple[AlarmState, list[Transition]]:
        if action == "acknowledge":
            return acknowledge(st, now, reason)
        if action == "shelve":
            assert until is not None
            return shelve(st, now, until, self.shelve_max, reason)
        if action == "unshelve":
            return unshelve(st, now, reason)
        if action == "out_of_service":
            return out_of_service(st, now, reason)
        return return_to_service(st, now, reason)

    async def act(self, alarm_id: str, action: Action, *, principal: Principal, comment: str,
                  until: datetime | None = None, client: str | None = None,
                  link: AckLink | None = None, forwarded: bool = False) -> dict[str, Any]:
        """An operator action: checked by the pure core, journaled and audited, then applied and published.

        A remote acknowledgement spends its `link` in the action's transaction. An alarm another replica evaluates
        is acted on there (`forward`), and its copy here read back."""
        if self.pool is None:
            raise Problem(503, "alarms-unavailable", "Alarms unavailable", "the alarm service has no database",
                          rule="no_database")
        alarm = self.get(alarm_id)
        if forwarded and not self.evaluates(alarm):  # sent here as its evaluator, and it is not (any more)
            raise Problem(503, "not-alarm-owner", "Not the alarm's replica",
                          f"this replica does not evaluate {alarm_id} now (its device or the leadership moved); "
                          f"try again", rule="alarm_owner")
        if self.forward is not None and not forwarded and not self.evaluates(alarm):
            answer = await self.forward(alarm, action, principal, comment, until, client, link)
            if answer is not None:
                async with self.pool.acquire() as conn:
                    await self.mirror(conn, alarm.device)
                return answer
        now = self.clock.now()
        reason = action.replace("_", " ")
        before = alarm.state
        try:
            new, trs = self._apply(alarm, action, before, now, until, reason)
        except IllegalTransition as exc:
            raise Problem(409, "illegal-alarm-transition", "Not allowed in this state", str(exc),
                          rule="alarm_state", state=exc.state.value, action=action) from None
        except ValueError as exc:
            raise Problem(422, "shelve-not-allowed", "Shelve not allowed", str(exc), rule="shelve_duration",
                          max_minutes=self.shelve_max.total_seconds() / 60) from None
        published: list[tuple[int, dict[str, Any]]] = []
        async with self._lock:
            async with self.pool.acquire() as conn, conn.transaction():
                # what waits in the spool and in memory goes first, so the journal stays in order
                replay = await self._replay(conn, published)
                written = await self._flush_pending(conn)
                await self._act_within(conn, alarm, before, new, trs, principal, action, now, until, comment,
                                       client)
                if link is not None:
                    await self._spend_link(conn, alarm, link, now, principal, comment)
            await self._committed(replay, written)
        self._publish_deviations(published)
        # the hot path may have changed the alarm meanwhile: apply the action to what it is now
        if alarm.state is not before:
            try:
                new, trs = self._apply(alarm, action, alarm.state, now, until, reason)
            except (IllegalTransition, ValueError):
                new, trs = alarm.state, []
        alarm.state = new
        self._emit(alarm, trs, principal.label, comment, persist=False)
        return alarm.view()

    @staticmethod
    async def _spend_link(conn: asyncpg.Connection, alarm: Alarm, link: AckLink, now: datetime,
                          principal: Principal, comment: str) -> None:
        """A remote acknowledgement's link: used once, and noted on the alarm's journal."""
        if not await outbox.use_link(conn, link.delivery_id, now):
            raise Problem(410, "link-used", "Link used", "this link was used already or has expired",
                          rule="ack_link_single_use")
        await journal.note(conn, alarm.id, now, f"acknowledged through the remote link of notification delivery "
                           f"{link.delivery_id} (sent to {link.username} by {link.channel})", principal.label,
                           comment)

    async def _act_within(self, conn: asyncpg.Connection, alarm: Alarm, before: AlarmState, new: AlarmState,
                          trs: Sequence[Transition], principal: Principal, action: Action, now: datetime,
                          until: datetime | None, comment: str, client: str | None) -> None:
        """The action's alarm row, journal rows and audit record, in the caller's transaction."""
        actor = principal.label
        snapshot = replace(alarm, state=new)
        await journal.upsert_alarm(conn, snapshot)
        for tr in trs:
            await journal.insert_event(conn, snapshot, tr, actor, comment)
            work = self._notify_work(snapshot, tr)
            if work is not None:
                await outbox.apply(conn, work)
        await audit.record(conn, actor=principal, action=f"alarm.{action}", entity_type="alarm", entity_id=alarm.id,
                           old={"status": before.status.value},
                           new={"status": new.status.value, "until": until, "at": now,
                                "severity": new.active.value if new.active is not None else None},
                           reason=comment, client=client)

    # -- context: which run each device serves ---------------------------------------------------------------

    async def refresh(self, conn: asyncpg.Connection) -> None:
        """Bind devices to their runs: phase-aware definitions, door suppression windows, excursion accounting."""
        rows = await runs.bound_runs(conn, BOUND_RUN_STATES, IN_WINDOW)
        bindings: dict[str, _Binding] = {}
        for row in rows:
            recipe = recipe_of({"id": row["recipe_id"], "content": row["content"]})
            bound = _Binding(int(row["id"]), str(row["status"]), frozenset(row["in_window"]),
                             frozenset(s.key for s in recipe.steps if s.door_opening is True), recipe.alarms,
                             recipe.excursions,
                             tuple((s.key, p) for s in recipe.steps if (p := s.planned_opening) is not None))
            for dev in (row["incubator"], row["culture_system"]):
                if dev is not None:
                    bindings[str(dev)] = bound  # the newest run wins if two claim a device
        self._bindings = bindings
        now = self.clock.now()
        defaults = default_definitions()
        for device in self.devices:
            serves = bindings.get(device.name)
            for point in device.points:
                if point.writable or point.role is None:
                    continue  # setpoints raise no alarm; a point without a role is stored and shown only
                key = f"{device.kind}.{point.role}"
                defs = defaults.get(key, ())
                if serves is not None:
                    for override in serves.overrides:
                        if override.channel == key and (not override.during or serves.in_window & set(override.during)):
                            defs = override.definitions
                            break
                self._set_channel(f"{device.name}.{point.name}", defs, serves.run_id if serves else None, now)
            self.alarms[f"{device.name}:comm_loss"].run_id = serves.run_id if serves else None
            self.alarms[f"{device.name}:configuration"].run_id = serves.run_id if serves else None
        await self._bind_excursions(conn, bindings)
        await self._bind_notifications(conn, now)
        if any(not self.evaluates(a) for a in self.alarms.values()):
            await self.mirror(conn)
        version = await store.current_version(conn)
        if version is None:
            self.policy = None
        elif self.policy is None or self.policy[0] != version:
            self.policy = await store.current(conn)
        await self._bind_calibrations(conn, now)

    async def _bind_notifications(self, conn: asyncpg.Connection, now: datetime) -> None:
        """One alarm `run:<code>:<test>` per positive QC result after infusion, active while its deviation is open."""
        for d in await deviations.with_rule(conn, QC_POSITIVE_RULE):
            facts = json.loads(d["facts"]) if d["facts"] is not None else {}
            aid = f"run:{d['run_code']}:{facts.get('test', 'qc')}"
            alarm = self.alarms.get(aid)
            if alarm is None:
                if d["status"] != "open" and aid not in self._restored:
                    continue  # closed before this service knew it: nothing to annunciate
                alarm = Alarm(aid, f"run:{d['run_code']}", f"run:{d['run_code']}", _QC_POSITIVE,
                              initial_state(aid, d["opened_at"]))
                self.alarms[aid] = alarm
                self._restore(alarm)
            alarm.run_id = int(d["run_id"])
            self._link(alarm, d["status"] != "open", d["opened_at"] if d["status"] == "open" else now)

    async def _bind_calibrations(self, conn: asyncpg.Connection, now: datetime) -> None:
        """One alarm `<device>.<point>:calibration` per point with a calibration record in force, fed the days left
        until its due date (at the site) when they change: advisory when due soon, high when overdue."""
        defn = calibration_alarm(self.calibration_warn_days)
        today = calibration.site_today(now, self.zone)
        for rec in await calibration.current(conn):
            channel = f"{rec['device']}.{rec['point']}"
            aid = f"{channel}:calibration"
            alarm = self.alarms.get(aid)
            if alarm is None:
                alarm = Alarm(aid, channel, str(rec["device"]), defn, initial_state(aid, now))
                self.alarms[aid] = alarm
                self._restore(alarm)
            left = float(calibration.days_left(rec["due_on"], today))
            # a restored alarm has not been evaluated in this process yet (no sample): its conditions need one
            if alarm.state.last_sample_at is not None and alarm.state.last_value == left:
                continue
            alarm.state, trs = evaluate(alarm.defn, alarm.state, left, Quality.GOOD, now)
            self._emit(alarm, trs)

    async def _bind_excursions(self, conn: asyncpg.Connection, bindings: Mapping[str, _Binding]) -> None:
        wanted: dict[tuple[int, str], ExcursionRule] = {}
        for d in self.devices:
            b = bindings.get(d.name)
            if b is None or b.status not in EXCURSION_RUN_STATES:
                continue
            for rule in b.excursions:
                kind, _, role = rule.channel.partition(".")
                point = d.role_point(role) if kind == d.kind else None
                if point is not None:
                    wanted[(b.run_id, f"{d.name}.{point.name}")] = rule
        have = {(e.run_id, e.channel): e for exs in self._excursions.values() for e in exs}
        if set(have) == set(wanted):
            return
        out: dict[str, list[Excursion]] = {}
        for (run_id, channel), rule in wanted.items():
            ex = have.get((run_id, channel))
            if ex is None:
                row = await journal.excursion_row(conn, run_id, channel)
                ex = Excursion(run_id, channel, rule, _excursion_state(row), dirty=row is None)
            out.setdefault(channel, []).append(ex)
        for key, ex in have.items():
            if key not in wanted and ex.dirty:
                await journal.upsert_excursion(conn, ex, self.clock.now())
        self._excursions = out

    # -- persistence -----------------------------------------------------------------------------------------

    async def mirror(self, conn: asyncpg.Connection, device: str | None = None) -> int:
        """Read back the state of the alarms another replica evaluates (or, given `device`, of that device's alarms:
        this replica has just taken it over); the number that changed."""
        rows = {str(r["id"]): dict(r) for r in await journal.alarm_rows(conn)}
        changed = 0
        for alarm in self.alarms.values():
            if device is not None and alarm.device != device:
                continue
            if device is None and self.evaluates(alarm):
                continue
            row = rows.get(alarm.id)
            if device is not None:  # taken over: what this replica evaluated of it before is stale
                # (its stale-data clock and on-delays start now; acknowledgement, mode and condition from the row)
                fresh = initial_state(alarm.id, self.clock.now())
                if row is None:
                    alarm.state, alarm.active_since, alarm.changed_at = fresh, None, None
                    continue
                alarm.state = _restored_state(fresh, row)
                alarm.active_since, alarm.changed_at = row.get("active_since"), row.get("changed_at")
                self._restored[alarm.id] = row
                changed += 1
                continue
            if row is None or row.get("changed_at") == alarm.changed_at:
                continue
            alarm.state = _restored_state(alarm.state, row)
            alarm.active_since, alarm.changed_at = row.get("active_since"), row.get("changed_at")
            self._restored[alarm.id] = row
            changed += 1
        if device is not None:  # the excursion accounting goes on from where its last owner left it
            for exs in self._excursions.values():
                for ex in exs:
                    if ex.channel.partition(".")[0] == device:
                        ex_row = await journal.excursion_row(conn, ex.run_id, ex.channel)
                        if ex_row is not None:
                            ex.state, ex.dirty = _excursion_state(ex_row), False
        return changed

    async def restore(self, conn: asyncpg.Connection) -> None:
        """Take acknowledgement, shelving and out-of-service back from the database after a restart."""
        rows = await journal.alarm_rows(conn)
        self._restored = {str(r["id"]): dict(r) for r in rows}
        for alarm in self.alarms.values():
            self._restore(alarm)  # the run each alarm serves comes with the next refresh
        now = self.clock.now()
        for aid, row in self._restored.items():  # the service's own conditions (notify_*): back, to be returned
            if aid.startswith(f"{HISTORIAN}:") and aid not in self.alarms and row["status"] != "normal":
                defn = CommLossAlarm(name=str(row["name"]), description=str(row["description"] or ""))
                alarm = Alarm(aid, HISTORIAN, HISTORIAN, defn, initial_state(aid, now))
                self.alarms[aid] = alarm
                self._restore(alarm)

    def _has_work(self) -> bool:
        return bool(self._pending or self._dirty or self._trips or self._door_rows
                    or any(e.dirty for exs in self._excursions.values() for e in exs)
                    or (self.spool is not None and self.spool.record_count))

    def _historian_down(self) -> bool:
        return self.historian is not None and self.historian().get("db_down_since") is not None

    async def flush(self) -> None:
        """Write pending transitions, changed alarms, excursions and tripped rules, after what the spool holds.

        While the database is down (the writer says so, or this write fails) they go to the spool instead, fsync'd,
        so a crash loses nothing; when it returns the spool is written first, in order.
        """
        if self.pool is None:
            return
        async with self._lock:
            if not self._has_work():
                return
            if self.spool is not None and self._historian_down():
                await self._spool_work()
                return
            published: list[tuple[int, dict[str, Any]]] = []
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    replay = await self._replay(conn, published)
                    written = await self._flush_pending(conn)
                    now = self.clock.now()
                    for ex in (ex for exs in self._excursions.values() for ex in exs if ex.dirty):
                        if not self.owns(ex.channel.partition(".")[0]):
                            ex.dirty = False  # its device's owner keeps that account; read back on a takeover
                    excursions = [ex for exs in self._excursions.values() for ex in exs if ex.dirty]
                    for ex in excursions:
                        await journal.upsert_excursion(conn, ex, now)
                    door_rows = list(self._door_rows)
                    for args in door_rows:
                        await journal.upsert_door_opening(conn, args)
                    trips = list(self._trips)
                    for t in trips:
                        dev = await journal.open_deviation(conn, t)
                        if dev is not None:
                            published.append((t.run_id, dev))
            except db.UNAVAILABLE:
                if self.spool is not None:
                    await self._spool_work()  # nothing was cleared before the commit: all of it is still here
                raise
            await self._committed(replay, written)
            del self._trips[:len(trips)]
            del self._door_rows[:len(door_rows)]
            for ex in excursions:
                ex.dirty = False  # a reading meanwhile makes it dirty again with its own later state
        self._publish_deviations(published)

    def _publish_deviations(self, published: Sequence[tuple[int, dict[str, Any]]]) -> None:
        for run_id, dev in published:
            self.live.publish("deviation", str(dev["id"]), {"run_id": run_id, **dev})

    async def _committed(self, replay: _Replay, written: _Written) -> None:
        """After the COMMIT: forget what it wrote (in memory and in the spool); what changed meanwhile stays."""
        events, alarms = written
        for _ in range(events):
            self._pending.popleft()
        for alarm_id, state in alarms:
            alarm = self._dirty.get(alarm_id)
            if alarm is not None and alarm.state is state:
                del self._dirty[alarm_id]
        if self.spool is not None:
            if replay.done:
                await self.spool.delete_records(replay.done)  # committed: only now may they leave the spool
            if replay.refused:
                await self.spool.quarantine_records(replay.refused)

    async def _spool_work(self) -> None:
        """Move everything waiting in memory to the disk spool, in the order it would be written. Caller holds the
        lock."""
        assert self.spool is not None
        now = self.clock.now()
        records: list[tuple[str, str]] = [("alarm", journal.pack(journal.alarm_args(a))) for a in self._dirty.values()]
        for e in self._pending:
            records.append(("alarm_event", journal.pack(journal.event_args(e.alarm, e.transition, e.actor, e.comment,
                                                                           e.key))))
            if e.work is not None:
                records.append(("notification", journal.pack([outbox.pack(e.work)])))
        records += [("excursion", journal.pack(journal.excursion_args(ex, now)))
                    for exs in self._excursions.values() for ex in exs if ex.dirty]
        records += [("door_opening", journal.pack(args)) for args in self._door_rows]
        records += [("deviation", journal.pack((t.run_id, t.rule, t.description, t.facts, t.at, t.key)))
                    for t in self._trips]
        if not records:
            return
        # What arrives while the spool writes (readings do not wait for the lock) stays for the next flush: only
        # what was written leaves memory.
        dirty = [(a.id, a.state) for a in self._dirty.values()]
        n_events, n_trips, n_doors = len(self._pending), len(self._trips), len(self._door_rows)
        excursions = [(ex, ex.state) for exs in self._excursions.values() for ex in exs if ex.dirty]
        await self.spool.append_records(records)
        for alarm_id, state in dirty:
            alarm = self._dirty.get(alarm_id)
            if alarm is not None and alarm.state is state:
                del self._dirty[alarm_id]
        for _ in range(n_events):
            self._pending.popleft()
        del self._trips[:n_trips]
        del self._door_rows[:n_doors]
        for ex, ex_state in excursions:
            if ex.state is ex_state:
                ex.dirty = False
        self.stats["spooled"] = self.stats.get("spooled", 0) + len(records)

    async def _replay(self, conn: asyncpg.Connection, published: list[tuple[int, dict[str, Any]]]) -> _Replay:
        """Write what the spool holds, oldest first, in the caller's transaction (each record in a savepoint: one the
        database refuses goes to the spool's quarantine after the commit instead of blocking the others)."""
        out = _Replay()
        if self.spool is None or not self.spool.record_count:
            return out
        after = 0
        while batch := await self.spool.oldest_records(limit=1000, after_id=after):
            for rec in batch:
                after = rec.id
                try:
                    async with conn.transaction():
                        await self._apply_record(conn, rec.kind, journal.unpack(rec.payload), published)
                except db.UNAVAILABLE:
                    raise
                except (asyncpg.PostgresError, ValueError, TypeError) as exc:
                    log.error("spooled %s record %d refused, moved to the spool's quarantine: %s", rec.kind, rec.id,
                              exc)
                    out.refused.append((rec.id, f"{type(exc).__name__}: {exc}"))
                    continue
                out.done.append(rec.id)
        self.stats["replayed"] = self.stats.get("replayed", 0) + len(out.done)
        return out

    @staticmethod
    async def _apply_record(conn: asyncpg.Connection, kind: str, args: list[Any],
                            published: list[tuple[int, dict[str, Any]]]) -> None:
        if kind == "alarm":
            await conn.execute(journal.ALARM_SQL, *args)
        elif kind == "alarm_event":
            await conn.execute(journal.EVENT_SQL, *args)
        elif kind == "excursion":
            await conn.execute(journal.EXCURSION_SQL, *args)
        elif kind == "door_opening":
            await journal.upsert_door_opening(conn, args)
        elif kind == "notification":
            await outbox.apply(conn, outbox.unpack(args[0]))
        elif kind == "deviation":
            run_id, rule, description, facts, at, key = args
            dev = await journal.open_deviation(conn, DeviationTrip(run_id, rule, description, facts, at, key))
            if dev is not None:
                published.append((run_id, dev))
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    async def _flush_pending(self, conn: asyncpg.Connection) -> _Written:
        """Alarm rows first (the journal refers to them), then the journal in order; what was written, for
        `_committed` to forget once the transaction is committed. Caller holds the lock."""
        # Both snapshots before the first await: an alarm that activates meanwhile (a reading, the timed pass) has
        # its event and its row written together by the next flush, never its event alone (the journal refers to
        # the row).
        for aid in [aid for aid, a in self._dirty.items() if not self.evaluates(a)]:
            del self._dirty[aid]  # another replica evaluates it (its definition changed here too): it writes it
        dirty = list(self._dirty.values())
        alarms = [(alarm.id, alarm.state) for alarm in dirty]
        events = list(self._pending)
        for alarm in dirty:
            await journal.upsert_alarm(conn, alarm)
        if events:
            await conn.executemany(journal.EVENT_SQL, [
                journal.event_args(e.alarm, e.transition, e.actor, e.comment, e.key) for e in events])
            for e in events:
                if e.work is not None:
                    await outbox.apply(conn, e.work)
        return len(events), alarms

    def wall_interval(self) -> float:
        """Wall seconds between passes: `interval`, but at most `clock_step` of clock time (at least 50 ms), so
        delays of a minute stay distinct on a sped-up clock (an H on-delay is not swallowed by the HH one)."""
        scale = self.clock.scale
        return max(0.05, min(self.interval, self.clock_step / scale if scale > 0 else self.interval))

    async def sync(self) -> None:
        """Refresh the run context and persist now (tests, and the API before reading the journal)."""
        if self.pool is None:
            return
        async with self.pool.acquire() as conn:
            await self.refresh(conn)
        await self.flush()

    async def run(self) -> None:
        """Tick, refresh the run context and persist until cancelled; database errors are retried.

        While the writer reports the database down, the run context stays as it was and the journal goes to the
        spool (one WARNING for the outage, one INFO when it is over).
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.tick()
                down = self._historian_down()
                if down:
                    self._outage.failed(ConnectionError("the telemetry writer reports the database down; "
                                                        "the alarm journal waits in the spool"))
                elif self.pool is not None and loop.time() - self._last_context >= self.context_interval:
                    async with self.pool.acquire() as conn:
                        await self.refresh(conn)
                    self._last_context = loop.time()
                await self.flush()
                if not down:
                    self._outage.ok()
            except asyncio.CancelledError:
                raise
            except db.UNAVAILABLE as exc:
                self.stats["flush_errors"] += 1
                self._outage.failed(exc)
            except Exception:
                log.exception("alarm service cycle failed; retrying")
            await asyncio.sleep(self.wall_interval())

    def active(self) -> list[Alarm]:
        """Alarms not in state normal, most urgent first."""
        order = {"high": 0, "medium": 1, "low": 2, "advisory": 3}
        out = [a for a in self.alarms.values() if a.state.status is not AlarmStatus.NORMAL]
        return sorted(out, key=lambda a: (order.get(a.priority(), 9), a.id))


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def _restored_state(st: AlarmState, row: Mapping[str, Any]) -> AlarmState:
    status = AlarmStatus(row["status"])
    sev = Severity(row["severity"]) if row.get("severity") else None
    mode = status if status in (AlarmStatus.SHELVED, AlarmStatus.SUPPRESSED_BY_DESIGN,
                                AlarmStatus.OUT_OF_SERVICE) else None
    unacked = status in (AlarmStatus.ACTIVE_UNACK, AlarmStatus.RETURNED_UNACK)
    return replace(st, active=sev, unacked=unacked, mode=mode, mode_until=row.get("mode_until"),
                   last_value=row.get("value"))


def _excursion_state(row: Mapping[str, Any] | None) -> ExcursionState:
    if row is None:
        return ExcursionState()
    return ExcursionState(
        seconds_outside=row["seconds_outside"], integral=row["integral"], worst=row["worst"],
        episodes=row["episodes"], hard_episodes=row["hard_episodes"], cumulative_tripped=row["cumulative_tripped"],
        outside=row["outside"], beyond_hard=row["beyond_hard"], last_value=row["last_value"], last_at=row["last_at"],
        first_outside_at=row["first_outside_at"])
