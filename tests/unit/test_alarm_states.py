"""Alarm state machine: every operator action from every state, condition changes, escalation and definitions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import TypeAdapter, ValidationError

from app.alarms import (
    AlarmDefinition,
    AlarmState,
    AlarmStatus,
    IllegalTransition,
    Limit,
    LimitAlarm,
    Severity,
    Transition,
    acknowledge,
    default_definitions,
    evaluate,
    initial_state,
    out_of_service,
    return_to_service,
    shelve,
    suppress,
    tick,
    unshelve,
)
from drivers.base import Quality

S = AlarmStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEFN = LimitAlarm(name="limit", h=Limit(value=10.0), hh=Limit(value=20.0), deadband=1.0, max_suppression_s=600)
GOOD = Quality.GOOD


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def _reach(status: AlarmStatus) -> AlarmState:
    st = initial_state("inc1.temperature.limit", T0)
    if status is S.NORMAL:
        return st
    if status is S.OUT_OF_SERVICE:
        return out_of_service(st, at(1))[0]
    if status is S.SHELVED:
        return shelve(st, at(1), at(100), timedelta(hours=1))[0]
    if status is S.SUPPRESSED_BY_DESIGN:
        return suppress(DEFN, st, at(1), at(100))[0]
    st, _ = evaluate(DEFN, st, 15.0, GOOD, at(1))
    if status is S.ACTIVE_ACK:
        st, _ = acknowledge(st, at(2))
    if status is S.RETURNED_UNACK:
        st, _ = evaluate(DEFN, st, 5.0, GOOD, at(2))
    assert st.status is status
    return st


Action = Callable[[AlarmState], tuple[AlarmState, list[Transition]]]
ACTIONS: dict[str, Action] = {
    "acknowledge": lambda s: acknowledge(s, at(10)),
    "shelve": lambda s: shelve(s, at(10), at(200), timedelta(hours=1)),
    "unshelve": lambda s: unshelve(s, at(10)),
    "suppress": lambda s: suppress(DEFN, s, at(10), at(200)),
    "out_of_service": lambda s: out_of_service(s, at(10)),
    "return_to_service": lambda s: return_to_service(s, at(10)),
}
_ALL = list(S)
# (state, action) -> new state; every pair not listed must raise IllegalTransition.
LEGAL: dict[tuple[AlarmStatus, str], AlarmStatus] = {
    (S.ACTIVE_UNACK, "acknowledge"): S.ACTIVE_ACK,
    (S.RETURNED_UNACK, "acknowledge"): S.NORMAL,
    **{(s, "shelve"): S.SHELVED for s in (S.NORMAL, S.ACTIVE_UNACK, S.ACTIVE_ACK, S.RETURNED_UNACK)},
    **{(s, "suppress"): S.SUPPRESSED_BY_DESIGN for s in (S.NORMAL, S.ACTIVE_UNACK, S.ACTIVE_ACK, S.RETURNED_UNACK)},
    **{(s, "out_of_service"): S.OUT_OF_SERVICE for s in _ALL if s is not S.OUT_OF_SERVICE},
    (S.SHELVED, "unshelve"): S.NORMAL,
    (S.OUT_OF_SERVICE, "return_to_service"): S.NORMAL,
}
CASES = [(s, a) for s in _ALL for a in ACTIONS]


@pytest.mark.parametrize(("start", "action"), CASES, ids=[f"{s.value}-{a}" for s, a in CASES])
def test_operator_action_table(start: AlarmStatus, action: str) -> None:
    st = _reach(start)
    expected = LEGAL.get((start, action))
    if expected is None:
        with pytest.raises(IllegalTransition, match=f"in state {start.value}"):
            ACTIONS[action](st)
        return
    new, trs = ACTIONS[action](st)
    assert new.status is expected
    assert [(t.from_state, t.to_state) for t in trs] == [(start, expected)]
    assert trs[0].alarm_id == st.alarm_id and trs[0].at == at(10)


# condition-driven transitions: (start, value) -> (new state, reason)
CONDITION = [
    (S.NORMAL, 15.0, S.ACTIVE_UNACK, "activated"),
    (S.ACTIVE_UNACK, 5.0, S.RETURNED_UNACK, "returned"),
    (S.ACTIVE_ACK, 5.0, S.NORMAL, "returned"),
    (S.RETURNED_UNACK, 15.0, S.ACTIVE_UNACK, "activated"),
    (S.ACTIVE_UNACK, 25.0, S.ACTIVE_UNACK, "escalated"),
    (S.ACTIVE_ACK, 25.0, S.ACTIVE_UNACK, "escalated"),
]


@pytest.mark.parametrize(("start", "value", "end", "reason"), CONDITION)
def test_condition_table(start: AlarmStatus, value: float, end: AlarmStatus, reason: str) -> None:
    new, trs = evaluate(DEFN, _reach(start), value, GOOD, at(10))
    assert new.status is end
    assert [(t.from_state, t.to_state, t.reason, t.value) for t in trs] == [(start, end, reason, value)]


@pytest.mark.parametrize("mode", [S.SHELVED, S.SUPPRESSED_BY_DESIGN, S.OUT_OF_SERVICE])
def test_condition_hidden_in_modes_then_annunciated(mode: AlarmStatus) -> None:
    st = _reach(mode)
    st, trs = evaluate(DEFN, st, 15.0, GOOD, at(10))
    assert trs == [] and st.status is mode and st.active is Severity.H
    leave = {S.SHELVED: unshelve, S.OUT_OF_SERVICE: return_to_service}.get(mode)
    st, trs = leave(st, at(20)) if leave else tick(DEFN, st, at(100))
    assert st.status is S.ACTIVE_UNACK
    assert [(t.from_state, t.to_state) for t in trs] == [(mode, S.ACTIVE_UNACK)]


def test_escalation_and_de_escalation_are_one_excursion() -> None:
    st = initial_state("a", T0)
    reasons: list[str] = []
    for i, v in enumerate([5, 15, 25, 19.5, 18.9, 15, 9.5, 8.9, 5]):
        st, trs = evaluate(DEFN, st, v, GOOD, at(i))
        reasons += [t.reason for t in trs]
    assert reasons == ["activated", "escalated", "de-escalated", "returned"]


def test_time_bounds_and_naive_times() -> None:
    st = initial_state("a", T0)
    with pytest.raises(ValueError, match="maximum"):
        shelve(st, at(0), at(7200), timedelta(hours=1))
    with pytest.raises(ValueError, match="not after"):
        shelve(st, at(10), at(5), timedelta(hours=1))
    with pytest.raises(ValueError, match="maximum"):
        suppress(DEFN, st, at(0), at(601))
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(DEFN, st, 1.0, GOOD, datetime(2026, 1, 1))


def test_definitions_validate() -> None:
    adapter: TypeAdapter[AlarmDefinition] = TypeAdapter(AlarmDefinition)
    with pytest.raises(ValidationError, match="ordered"):
        LimitAlarm(name="x", h=Limit(value=5), l=Limit(value=6))
    with pytest.raises(ValidationError, match="at least one"):
        LimitAlarm(name="x")
    with pytest.raises(ValidationError, match="extra"):
        adapter.validate_python({"kind": "stale", "name": "stale", "max_age": 3})
    assert isinstance(adapter.validate_python({"kind": "rate", "name": "r", "max_per_min": 0.5}), object)


def test_defaults_from_process() -> None:
    d = default_definitions()
    temp = {a.name: a for a in d["incubator.temperature"]}
    lim = temp["limit"]
    assert isinstance(lim, LimitAlarm)
    assert (lim.ll and lim.l and lim.h and lim.hh) is not None
    assert [x.value for x in (lim.ll, lim.l, lim.h, lim.hh) if x] == [35.0, 36.0, 38.0, 39.0]
    assert lim.deadband == 0.2 and lim.on_delay(Severity.H) == 600 and lim.on_delay(Severity.HH) == 60
    assert set(temp) == {"limit", "rate", "stale", "bad_quality", "comm_loss"}
    assert {"incubator.co2", "incubator.humidity", "incubator.door_open", "culture-system.ph"} <= set(d)
    assert "incubator.temperature_setpoint" not in d
    for defs in d.values():
        assert len({a.name for a in defs}) == len(defs)
