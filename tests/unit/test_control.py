"""The pure rules of setpoint control (app/control/rules.py), by table: limits, run state, rate of change, device state,
read-back confirmation, with their boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.auth.principal import Role
from app.control import rules as control
from app.control.rules import RATE_LIMITS, BoundRun
from drivers.base import DeviceState, PointSpec
from drivers.points import CULTURE_SYSTEM_POINTS, INCUBATOR_POINTS

SPECS = {p.name: p for p in (*INCUBATOR_POINTS, *CULTURE_SYSTEM_POINTS)}
T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(("point", "value", "rule"), [
    ("temperature_setpoint", 30.0, None),  # both limits are inclusive
    ("temperature_setpoint", 40.0, None),
    ("temperature_setpoint", 29.999, "point_limit"),
    ("temperature_setpoint", 40.001, "point_limit"),
    ("co2_setpoint", 0.0, None),
    ("co2_setpoint", 10.0, None),
    ("co2_setpoint", -0.1, "point_limit"),
    ("co2_setpoint", 10.5, "point_limit"),
    ("pump_rate_setpoint", 50.0, None),
    ("pump_rate_setpoint", 50.01, "point_limit"),
    ("pump_rate_setpoint", float("nan"), "point_limit"),
    ("temperature_setpoint", float("inf"), "point_limit"),
    ("temperature", 37.0, "point_not_writable"),
    ("ph", 7.0, "point_not_writable"),
])
def test_point_limits(point: str, value: float, rule: str | None) -> None:
    refusal = control.check_point(SPECS[point], value)
    assert (refusal.rule if refusal else None) == rule
    if refusal is not None and rule == "point_limit":
        spec = SPECS[point]
        assert refusal.status == 422
        assert (refusal.facts["min"], refusal.facts["max"]) == (spec.min, spec.max)
        assert f"{spec.min:g}..{spec.max:g}" in refusal.detail


def _runs(*statuses: str) -> list[BoundRun]:
    return [BoundRun(i + 1, f"RUN-{i + 1}", s) for i, s in enumerate(statuses)]


@pytest.mark.parametrize(("statuses", "role", "source", "rule"), [
    ((), Role.OPERATOR, "api", None),  # no run: allowed
    (("planned",), Role.OPERATOR, "api", None),
    (("running",), Role.OPERATOR, "api", None),
    (("completed",), Role.OPERATOR, "api", None),  # closed runs do not bind the device
    (("aborted",), Role.OPERATOR, "api", None),
    # a held run's devices take no manual setpoint from anyone: the hold is QA's disposition of the product, and
    # the culture goes on as the recipe says
    (("held",), Role.OPERATOR, "api", "run_held"),
    (("held",), Role.ADMIN, "api", "run_held"),
    (("held",), Role.SUPERVISOR, "api", "run_held"),
    (("held",), Role.QA, "api", "run_held"),
    (("completed", "held"), Role.OPERATOR, "api", "run_held"),
    (("running", "held"), Role.SUPERVISOR, "api", "run_held"),
    (("held",), Role.ADMIN, "recipe", None),  # the recipe's own setpoints still apply to a held run
    (("held",), Role.OPERATOR, "recipe", None),
])
def test_run_state(statuses: tuple[str, ...], role: Role, source: control.Source, rule: str | None) -> None:
    refusal = control.check_run_state(_runs(*statuses), role, source)
    assert (refusal.rule if refusal else None) == rule
    if refusal is not None:
        held = [i + 1 for i, s in enumerate(statuses) if s == "held"]
        assert refusal.status == 409 and refusal.facts == {"run_ids": held, "allowed_roles": []}
        assert "held for QA disposition" in refusal.detail and f"{role.value} may not change them by hand" in (
            refusal.detail)
        assert all(f"RUN-{i} (id {i})" in refusal.detail for i in held)


def test_no_role_may_set_a_held_run_by_hand() -> None:
    assert not control.HELD_RUN_ROLES
    assert all(control.check_run_state(_runs("held"), role, "api") is not None for role in Role)


@pytest.mark.parametrize(("point", "current", "value", "source", "rule"), [
    ("temperature_setpoint", 37.0, 38.0, "api", None),  # exactly the max step
    ("temperature_setpoint", 37.0, 36.0, "api", None),
    ("temperature_setpoint", 37.0, 38.01, "api", "rate_of_change"),
    ("temperature_setpoint", 37.0, 35.9, "api", "rate_of_change"),
    ("temperature_setpoint", 37.0, 37.0, "api", None),
    ("co2_setpoint", 5.0, 6.0, "api", None),
    ("co2_setpoint", 5.0, 6.5, "api", "rate_of_change"),
    ("pump_rate_setpoint", 0.0, 10.0, "api", None),
    ("pump_rate_setpoint", 0.0, 10.5, "api", "rate_of_change"),
    ("temperature_setpoint", None, 37.0, "api", "rate_of_change"),  # no reference: refused
    ("temperature_setpoint", 30.0, 40.0, "recipe", None),  # the recipe is exempt
    ("temperature_setpoint", None, 40.0, "recipe", None),
])
def test_max_step(point: str, current: float | None, value: float, source: control.Source,
                  rule: str | None) -> None:
    refusal = control.check_step(point, current, value, source)
    assert (refusal.rule if refusal else None) == rule
    if refusal is not None:
        assert refusal.status == 409 and refusal.facts["max_step"] == RATE_LIMITS[point].max_step
        assert f"{RATE_LIMITS[point].max_step:g} {RATE_LIMITS[point].unit}" in refusal.detail


@pytest.mark.parametrize(("last_ago", "source", "rule", "retry"), [
    (None, "api", None, None),  # never commanded
    (60.0, "api", None, None),  # exactly the interval
    (600.0, "api", None, None),
    (59.0, "api", "rate_of_change", 1),
    (0.0, "api", "rate_of_change", 60),
    (30.5, "api", "rate_of_change", 30),
    (1.0, "recipe", None, None),
])
def test_min_interval(last_ago: float | None, source: control.Source, rule: str | None, retry: int | None) -> None:
    last = None if last_ago is None else T0 - timedelta(seconds=last_ago)
    refusal = control.check_interval("temperature_setpoint", last, T0, source)
    assert (refusal.rule if refusal else None) == rule
    if refusal is not None:
        assert refusal.facts["retry_after_s"] == retry and refusal.facts["min_interval_s"] == 60.0
        assert "60 s" in refusal.detail


def test_every_writable_point_has_a_rate_limit() -> None:
    writable = {p.name for p in SPECS.values() if p.writable}
    assert writable == set(RATE_LIMITS)


@pytest.mark.parametrize(("state", "rule"), [
    (DeviceState.ONLINE, None),
    (DeviceState.OFFLINE, "device_unavailable"),
    (DeviceState.CONNECTING, "device_unavailable"),
    (DeviceState.STOPPED, "device_unavailable"),
])
def test_device_state(state: DeviceState, rule: str | None) -> None:
    refusal = control.check_device("incubator-1", state)
    assert (refusal.rule if refusal else None) == rule
    if refusal is not None:
        assert refusal.status == 503 and state.value in refusal.detail


SCALED = PointSpec("x", "degC", 11, register_type="holding", data_type="int16", scale=0.01, writable=True,
                   min=0, max=50)


@pytest.mark.parametrize(("spec", "requested", "read_back", "ok"), [
    (SPECS["temperature_setpoint"], 37.0, 37.0, True),
    (SPECS["temperature_setpoint"], 37.0, 37.0 + 3e-5, True),  # within 1e-6 relative
    (SPECS["temperature_setpoint"], 37.0, 37.0 + 5e-5, False),
    (SPECS["temperature_setpoint"], 37.0, 36.0, False),  # the old value: did not follow
    (SPECS["pump_rate_setpoint"], 12.3, 12.300000190734863, True),  # float32 register rounding
    (SPECS["pump_rate_setpoint"], 0.0, 0.0, True),
    (SPECS["pump_rate_setpoint"], 0.0, 1e-6, False),
    (SCALED, 37.123, 37.12, True),  # a 0.01-scaled register: half a step
    (SCALED, 37.12, 37.13, False),
    (SPECS["temperature_setpoint"], 37.0, float("nan"), False),
])
def test_read_back_confirmation(spec: PointSpec, requested: float, read_back: float, ok: bool) -> None:
    assert control.follows(spec, requested, read_back) is ok
