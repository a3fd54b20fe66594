"""Pure alarm state machine: immutable state per (channel, alarm), time passed in, transitions returned.

`evaluate` applies one reading; `tick` applies the passage of time (stale data, delays completing without a
new sample, shelve expiry, end of a suppression window). Operator actions return a new state or raise
IllegalTransition naming the state. One activation per excursion: escalation H -> HH and de-escalation stay
within the excursion; only a move from not-active to active counts as an activation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from app.alarms.model import (
    AlarmDefinition,
    AlarmStatus,
    BadQualityAlarm,
    CommLossAlarm,
    LimitAlarm,
    RateAlarm,
    Severity,
    StaleAlarm,
)
from drivers.base import Quality

S = AlarmStatus
_RANK = {Severity.HH: 2, Severity.LL: 2}
_SIDE = {Severity.HH: 1, Severity.H: 1, Severity.L: -1, Severity.LL: -1}
_MODES = (S.SHELVED, S.SUPPRESSED_BY_DESIGN, S.OUT_OF_SERVICE)


class IllegalTransition(ValueError):
    """An operator action that the alarm's current state does not allow."""

    def __init__(self, alarm_id: str, action: str, state: AlarmStatus) -> None:
        super().__init__(f"alarm {alarm_id}: cannot {action} in state {state.value}")
        self.alarm_id = alarm_id
        self.action = action
        self.state = state


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of an alarm's state or severity."""

    alarm_id: str
    from_state: AlarmStatus
    to_state: AlarmStatus
    severity: Severity | None
    value: float | None
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class AlarmState:
    """Everything the state machine knows about one alarm; never mutated."""

    alarm_id: str
    started_at: datetime
    active: Severity | None = None  # active condition (evaluated also while shelved/suppressed/out of service)
    unacked: bool = False
    mode: AlarmStatus | None = None  # shelved, suppressed_by_design or out_of_service
    mode_until: datetime | None = None
    raw: tuple[Severity, ...] = ()  # conditions the last sample met (beyond the limit itself)
    held: Severity | None = None  # most severe condition still held, deadband applied
    since: tuple[tuple[Severity, datetime], ...] = ()  # when each raw condition began (on-delay)
    clear_since: datetime | None = None  # when the active condition stopped being held (off-delay)
    last_value: float | None = None
    last_sample_at: datetime | None = None
    window: tuple[tuple[datetime, float], ...] = ()  # rate alarm samples

    @property
    def status(self) -> AlarmStatus:
        """The ISA-18.2 state."""
        if self.mode is not None:
            return self.mode
        if self.active is not None:
            return S.ACTIVE_UNACK if self.unacked else S.ACTIVE_ACK
        return S.RETURNED_UNACK if self.unacked else S.NORMAL


def initial_state(alarm_id: str, at: datetime) -> AlarmState:
    """A new alarm in state normal; `at` starts the stale-data clock."""
    _aware(at)
    return AlarmState(alarm_id=alarm_id, started_at=at)


def _aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"time must be timezone-aware, got {at.isoformat()}")


def _rank(level: Severity) -> int:
    return _RANK.get(level, 1)


def _more_severe(a: Severity, b: Severity | None) -> bool:
    """True when a is a step up from b on the same side (or b is None)."""
    if b is None:
        return True
    return _SIDE.get(a, 0) == _SIDE.get(b, 0) and a in _SIDE and _rank(a) > _rank(b)


def _conditions(defn: LimitAlarm, st: AlarmState, v: float) -> tuple[tuple[Severity, ...], Severity | None]:
    """Raw conditions (beyond the limit) and the held condition (deadband applied to active levels)."""
    raw: list[Severity] = []
    held: Severity | None = None
    act = st.active
    act_side = _SIDE.get(act, 0) if act is not None else 0
    act_rank = _RANK.get(act, 1) if act is not None else 0
    db = defn.deadband
    for level, side, limit in defn.levels:
        beyond = v > limit if side > 0 else v < limit
        if beyond:
            raw.append(level)
        kept = act_side == side and act_rank >= _RANK.get(level, 1) and (v > limit - db if side > 0 else v < limit + db)
        if held is None and (beyond or kept):
            held = level
    return tuple(raw), held


def _touch(st: AlarmState, at: datetime, value: float | None) -> AlarmState:
    """The state with a new sample time and last value (the hot path: cheaper than dataclasses.replace)."""
    return AlarmState(st.alarm_id, st.started_at, st.active, st.unacked, st.mode, st.mode_until, st.raw, st.held,
                      st.since, st.clear_since, st.last_value if value is None else value, at, st.window)


def _advance(defn: AlarmDefinition, st: AlarmState, at: datetime) -> AlarmState:
    """Apply on-delay and off-delay at time `at` to the stored conditions."""
    if st.raw:
        prev = dict(st.since)
        since = tuple((lv, prev.get(lv, at)) for lv in st.raw)
    else:
        since = ()
    active, clear_since, held = st.active, st.clear_since, st.held
    if active is not None and (held is None or (held != active and not _more_severe(held, active))):
        clear_since = clear_since or at
        if (at - clear_since).total_seconds() >= defn.off_delay(active):
            active = held if held is not None and _more_severe(active, held) else None
            clear_since = None
    else:
        clear_since = None
    best: Severity | None = None
    for lv, t in since:
        if (at - t).total_seconds() >= defn.on_delay(lv) and (best is None or _rank(lv) > _rank(best)):
            best = lv
    if best is not None and _more_severe(best, active):
        active, clear_since = best, None
    if active is st.active and since == st.since and clear_since == st.clear_since:
        return st
    return replace(st, active=active, since=since, clear_since=clear_since)


def _annunciate(st: AlarmState, new: AlarmState, value: float | None, at: datetime,
                reason: str | None = None) -> tuple[AlarmState, list[Transition]]:
    """Set acknowledgement for a change of the active condition and report a changed state or severity."""
    if new.active is not st.active:
        if new.active is not None and (st.active is None or _more_severe(new.active, st.active)):
            new = replace(new, unacked=True)
        elif new.active is None and new.mode is not None:
            new = replace(new, unacked=False)
    if new.status is st.status and new.active is st.active:
        return new, []
    if reason is None:
        if st.active is None and new.active is not None:
            reason = "activated"
        elif new.active is None and st.active is not None:
            reason = "returned"
        elif new.active is not None and st.active is not None:
            reason = "escalated" if _more_severe(new.active, st.active) else "de-escalated"
        else:
            reason = "changed"
    if new.mode is not None and st.mode is not None and reason in ("activated", "returned", "escalated",
                                                                   "de-escalated"):
        return new, []  # not annunciated while shelved, suppressed or out of service
    sev = new.active if new.active is not None else st.active
    return new, [Transition(st.alarm_id, st.status, new.status, sev, value, at, reason)]


def evaluate(defn: AlarmDefinition, state: AlarmState, reading_value: float | None, quality: Quality,
             at: datetime) -> tuple[AlarmState, list[Transition]]:
    """Apply one reading of the alarm's channel at `at`.

    Limit, rate and stale alarms take GOOD samples only: a BAD, uncertain or implausible reading changes nothing
    there (a pending on-delay runs on, the stale timer is not reset); the bad-quality alarm is the one that hears it.
    """
    _aware(at)
    good = reading_value is not None and quality == Quality.GOOD
    if not good and isinstance(defn, LimitAlarm | RateAlarm | StaleAlarm):
        return state, []
    if isinstance(defn, StaleAlarm) and defn.changes_only and reading_value == state.last_value:
        return state, []  # the same value again is not a new sample of a noisy signal
    st = _touch(state, at, reading_value)
    if not st.raw and st.active is None and isinstance(defn, LimitAlarm) and reading_value is not None:
        raw0, held0 = _conditions(defn, state, reading_value)
        if not raw0 and held0 is None:
            return st, []  # fast path: nothing pending, nothing active, value inside the limits
    raw: tuple[Severity, ...] = ()
    held: Severity | None = None
    if isinstance(defn, LimitAlarm):
        assert reading_value is not None
        raw, held = _conditions(defn, state, reading_value)
    elif isinstance(defn, RateAlarm):
        assert reading_value is not None
        horizon = at - timedelta(seconds=defn.window_s)
        window = (*(p for p in state.window if p[0] >= horizon), (at, reading_value))
        t0, v0 = window[0]
        dt = (at - t0).total_seconds()
        rate = (reading_value - v0) * 60.0 / dt if dt > 0 else 0.0
        raw = (Severity.RATE,) if abs(rate) > defn.max_per_min else ()
        held = raw[0] if raw else None
        st = replace(st, window=window)
    elif isinstance(defn, BadQualityAlarm):
        raw = () if good else (Severity.BAD_QUALITY,)
        held = raw[0] if raw else None
    elif isinstance(defn, CommLossAlarm):
        raw = (Severity.COMM_LOSS,) if reading_value is None else ()
        held = raw[0] if raw else None
    # StaleAlarm: a GOOD sample clears staleness
    if raw != st.raw or held is not st.held:
        st = replace(st, raw=raw, held=held)
    return _annunciate(state, _advance(defn, st, at), reading_value, at)


def tick(defn: AlarmDefinition, state: AlarmState, at: datetime) -> tuple[AlarmState, list[Transition]]:
    """Apply the passage of time: mode expiry, stale data, on/off-delays completing without a new sample."""
    _aware(at)
    st = state
    out: list[Transition] = []
    if st.mode in (S.SHELVED, S.SUPPRESSED_BY_DESIGN) and st.mode_until is not None and at >= st.mode_until:
        reason = "shelve expired" if st.mode is S.SHELVED else "suppression window ended"
        st, out = _leave_mode(st, at, reason)
    if isinstance(defn, StaleAlarm):
        ref = st.last_sample_at or st.started_at
        stale = (at - ref).total_seconds() > defn.max_age_s
        raw = (Severity.STALE,) if stale else ()
        if raw != st.raw:
            st = replace(st, raw=raw, held=raw[0] if raw else None)
    # On-delays that completed since the last pass take effect at their own instants, in order: a late pass still
    # journals H at its time and the escalation to HH at its own, whatever the pass cadence.
    for due in sorted({t + timedelta(seconds=defn.on_delay(lv)) for lv, t in st.since}):
        if (st.last_sample_at is not None and due <= st.last_sample_at) or due >= at:
            continue
        st, trs = _annunciate(st, _advance(defn, st, due), st.last_value, due)
        out += trs
    new, trs = _annunciate(st, _advance(defn, st, at), st.last_value, at)
    return new, out + trs


def _leave_mode(st: AlarmState, at: datetime, reason: str) -> tuple[AlarmState, list[Transition]]:
    new = replace(st, mode=None, mode_until=None, unacked=st.active is not None)
    return new, [Transition(st.alarm_id, st.status, new.status, new.active, st.last_value, at, reason)]


def acknowledge(state: AlarmState, at: datetime, reason: str = "acknowledged") -> tuple[AlarmState, list[Transition]]:
    """Acknowledge: active_unack -> active_ack, returned_unack -> normal."""
    _aware(at)
    if state.status not in (S.ACTIVE_UNACK, S.RETURNED_UNACK):
        raise IllegalTransition(state.alarm_id, "acknowledge", state.status)
    new = replace(state, unacked=False)
    return new, [Transition(state.alarm_id, state.status, new.status, state.active, state.last_value, at, reason)]


def _enter_mode(state: AlarmState, at: datetime, mode: AlarmStatus, until: datetime | None,
                reason: str) -> tuple[AlarmState, list[Transition]]:
    new = replace(state, mode=mode, mode_until=until, unacked=False)
    return new, [Transition(state.alarm_id, state.status, mode, state.active, state.last_value, at, reason)]


def _check_until(state: AlarmState, action: str, at: datetime, until: datetime, most: timedelta | None) -> None:
    _aware(until)
    if until <= at:
        raise ValueError(f"alarm {state.alarm_id}: cannot {action} until {until.isoformat()}, not after "
                         f"{at.isoformat()}")
    if most is not None and until - at > most:
        raise ValueError(f"alarm {state.alarm_id}: cannot {action} for {until - at}, the maximum is {most}")


def shelve(state: AlarmState, at: datetime, until: datetime, max_duration: timedelta,
           reason: str = "shelved") -> tuple[AlarmState, list[Transition]]:
    """Shelve until `until` (at most `max_duration` from `at`); expiry comes with `tick`."""
    _aware(at)
    if state.status in _MODES:
        raise IllegalTransition(state.alarm_id, "shelve", state.status)
    _check_until(state, "shelve", at, until, max_duration)
    return _enter_mode(state, at, S.SHELVED, until, reason)


def unshelve(state: AlarmState, at: datetime, reason: str = "unshelved") -> tuple[AlarmState, list[Transition]]:
    """Unshelve: back to active_unack if the condition is active, else normal."""
    _aware(at)
    if state.status is not S.SHELVED:
        raise IllegalTransition(state.alarm_id, "unshelve", state.status)
    return _leave_mode(state, at, reason)


def suppress(defn: AlarmDefinition, state: AlarmState, at: datetime, until: datetime,
             reason: str = "suppressed by design") -> tuple[AlarmState, list[Transition]]:
    """Suppress by design until `until` (bounded by the definition's max_suppression_s); ends with `tick`."""
    _aware(at)
    if state.status in _MODES:
        raise IllegalTransition(state.alarm_id, "suppress", state.status)
    most = None if defn.max_suppression_s is None else timedelta(seconds=defn.max_suppression_s)
    _check_until(state, "suppress", at, until, most)
    return _enter_mode(state, at, S.SUPPRESSED_BY_DESIGN, until, reason)


def resume(defn: AlarmDefinition, state: AlarmState, at: datetime,
           reason: str = "suppression ended") -> tuple[AlarmState, list[Transition]]:
    """End a suppression by design before its window ends and start the alarm afresh at `at`.

    What the condition did while suppressed was the design's (a planned door opening): it is forgotten. A limit
    alarm whose last value is beyond a limit starts that limit's on-delay at `at`, so it annunciates only if the
    condition holds for its on-delay from now; other kinds take their next sample.
    """
    _aware(at)
    if state.status is not S.SUPPRESSED_BY_DESIGN:
        raise IllegalTransition(state.alarm_id, "resume", state.status)
    st = replace(state, mode=None, mode_until=None, unacked=False, active=None, raw=(), held=None, since=(),
                 clear_since=None, window=())
    if isinstance(defn, LimitAlarm) and st.last_value is not None:
        raw, held = _conditions(defn, st, st.last_value)
        st = replace(st, raw=raw, held=held, since=tuple((lv, at) for lv in raw))
    return st, [Transition(state.alarm_id, state.status, st.status, None, state.last_value, at, reason)]


def out_of_service(state: AlarmState, at: datetime,
                   reason: str = "out of service") -> tuple[AlarmState, list[Transition]]:
    """Take the alarm out of service (from any state but out_of_service)."""
    _aware(at)
    if state.status is S.OUT_OF_SERVICE:
        raise IllegalTransition(state.alarm_id, "take out of service", state.status)
    return _enter_mode(state, at, S.OUT_OF_SERVICE, None, reason)


def return_to_service(state: AlarmState, at: datetime,
                      reason: str = "returned to service") -> tuple[AlarmState, list[Transition]]:
    """Return to service: active_unack if the condition is active, else normal."""
    _aware(at)
    if state.status is not S.OUT_OF_SERVICE:
        raise IllegalTransition(state.alarm_id, "return to service", state.status)
    return _leave_mode(state, at, reason)
