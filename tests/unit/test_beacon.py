"""The alarm beacon without a device: the pure decision (table), the role in profiles, the control rules of its
source, and the controller's commands against a fake hub and setpoint service.

On a real OPC UA and Modbus server through the service: tests/e2e/test_alarm_beacon.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from app.alarms.beacon import Beacon, decide
from app.alarms.evaluate import initial_state
from app.alarms.journal import Alarm
from app.alarms.model import CommLossAlarm, Limit, LimitAlarm, Priority, Severity
from app.alarms.service import AlarmService
from app.auth.principal import SYSTEM, Role
from app.control import rules as control
from app.control.rules import BoundRun
from app.control.setpoints import SetpointRequest, SetpointService
from app.core.clock import ManualClock
from app.core.live import LiveHub
from app.core.problems import Problem
from app.devices.hub import DeviceHub
from drivers.base import DeviceState, Quality, Reading
from drivers.devices import DeviceConfig
from drivers.profiles import ProfileError, parse_profile
from drivers.roles import ALARM_BEACON, role

AT = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
COMM = CommLossAlarm(name="comm_loss")
# HH and LL high, H and L medium (the default temperature alarm's shape)
TEMP = LimitAlarm(name="limit", hh=Limit(value=39, priority=Priority.HIGH), h=Limit(value=38),
                  l=Limit(value=36), ll=Limit(value=35, priority=Priority.HIGH))
ADVISORY = CommLossAlarm(name="configuration", priority=Priority.ADVISORY)


def alarm(aid: str, defn: Any, *, active: Severity | None = None, unacked: bool = False,
          mode: str | None = None) -> Alarm:
    from app.alarms.model import AlarmStatus

    state = replace(initial_state(aid, AT), active=active, unacked=unacked,
                    mode=AlarmStatus(mode) if mode else None)
    return Alarm(aid, aid.partition(":")[0], aid.partition(".")[0].partition(":")[0], defn, state)


# (alarms, on, named)
CASES = [
    pytest.param([], False, (), id="no alarm"),
    pytest.param([alarm("inc:comm_loss", COMM)], False, (), id="high, normal"),
    pytest.param([alarm("inc:comm_loss", COMM, active=Severity.COMM_LOSS, unacked=True)], True, ("inc:comm_loss",),
                 id="high, active_unack"),
    pytest.param([alarm("inc:comm_loss", COMM, active=Severity.COMM_LOSS)], False, (), id="high, active_ack"),
    pytest.param([alarm("inc:comm_loss", COMM, unacked=True)], True, ("inc:comm_loss",), id="high, returned_unack"),
    pytest.param([alarm("inc:comm_loss", COMM, active=Severity.COMM_LOSS, unacked=True, mode="shelved")], False, (),
                 id="high, shelved"),
    pytest.param([alarm("inc:comm_loss", COMM, active=Severity.COMM_LOSS, unacked=True,
                        mode="suppressed_by_design")], False, (), id="high, suppressed by design"),
    pytest.param([alarm("inc:comm_loss", COMM, active=Severity.COMM_LOSS, unacked=True, mode="out_of_service")],
                 False, (), id="high, out of service"),
    pytest.param([alarm("inc.t:limit", TEMP, active=Severity.H, unacked=True)], False, (), id="medium H unack"),
    pytest.param([alarm("inc.t:limit", TEMP, active=Severity.HH, unacked=True)], True, ("inc.t:limit",),
                 id="high HH unack"),
    pytest.param([alarm("inc:configuration", ADVISORY, active=Severity.COMM_LOSS, unacked=True)], False, (),
                 id="advisory unack"),
    pytest.param([alarm("z:comm_loss", COMM, active=Severity.COMM_LOSS, unacked=True),
                  alarm("a.t:limit", TEMP, active=Severity.LL, unacked=True),
                  alarm("m:comm_loss", COMM, active=Severity.COMM_LOSS)], True, ("a.t:limit", "z:comm_loss"),
                 id="two of three, sorted"),
]


@pytest.mark.parametrize(("alarms", "on", "named"), CASES)
def test_the_beacon_is_on_while_a_high_priority_alarm_is_unacknowledged(alarms: list[Alarm], on: bool,
                                                                        named: tuple[str, ...]) -> None:
    d = decide(alarms)
    assert (d.on, d.alarms, d.value) == (on, named, 1.0 if on else 0.0)


def test_the_reason_names_the_alarms_that_switch_it_on() -> None:
    assert decide([]).reason == "beacon off: no high-priority alarm unacknowledged"
    one = decide([alarm("incubator-1:comm_loss", COMM, active=Severity.COMM_LOSS, unacked=True)])
    assert one.reason == "beacon on: 1 high-priority alarm unacknowledged (incubator-1:comm_loss)"
    many = decide([alarm(f"d{i}:comm_loss", COMM, active=Severity.COMM_LOSS, unacked=True) for i in range(7)])
    assert many.reason == ("beacon on: 7 high-priority alarms unacknowledged (d0:comm_loss, d1:comm_loss, "
                           "d2:comm_loss, d3:comm_loss, d4:comm_loss, and 2 more)")
    assert len(SetpointRequest(point="x", value=1, reason=many.reason).reason) < 2000


# -- the role --------------------------------------------------------------------------------------------------------

OPCUA_BEACON = {
    "schema": 1, "name": "beacon-inc", "version": "1", "device_class": "incubator", "protocol": "opcua",
    "points": [{"name": "Temp", "role": "temperature", "node": "ns=1;i=1", "data_type": "Double", "unit": "degC"},
               {"name": "Horn", "role": "alarm_beacon", "node": "ns=1;i=2", "data_type": "Boolean", "unit": "bool",
                "writable": True, "min": 0, "max": 1}]}
MODBUS_BEACON = {
    "schema": 1, "name": "beacon-cs", "version": "1", "device_class": "culture-system", "protocol": "modbus",
    "points": [{"name": "pH", "role": "ph", "table": "input", "address": 0, "scale": 0.001, "unit": "pH"},
               {"name": "Beacon", "role": "alarm_beacon", "table": "coil", "address": 3, "writable": True,
                "min": 0, "max": 1}]}


@pytest.mark.parametrize("cls", ["incubator", "culture-system"])
def test_the_role_is_writable_and_boolean_in_both_device_classes(cls: str) -> None:
    spec = role(cls, ALARM_BEACON)
    assert spec is not None
    assert (spec.writable, spec.kind, spec.unit, spec.plausible) == (True, "boolean", "bool", (0.0, 1.0))


@pytest.mark.parametrize("data", [OPCUA_BEACON, MODBUS_BEACON], ids=["opcua", "modbus"])
def test_a_profile_gives_a_writable_boolean_point_the_role(data: dict[str, Any]) -> None:
    prof = parse_profile(data, "test.yaml")
    point = next(p for p in prof.points if p.role == ALARM_BEACON)
    assert point.writable and point.boolean


@pytest.mark.parametrize(("change", "message"), [
    ({"writable": False, "min": None, "max": None}, "is a setpoint; the point must be writable"),
    ({"data_type": "Double"}, "the point's data type must be a bool"),
    ({"min": None}, "needs min and max"),
])
def test_the_role_needs_a_writable_boolean_point(change: dict[str, Any], message: str) -> None:
    data = {**OPCUA_BEACON, "points": [OPCUA_BEACON["points"][0],  # type: ignore[index]
                                       {**OPCUA_BEACON["points"][1], **change}]}  # type: ignore[index]
    data["points"][1] = {k: v for k, v in data["points"][1].items() if v is not None}
    with pytest.raises(ProfileError, match=message):
        parse_profile(data, "test.yaml")


def test_the_alarm_service_raises_no_alarm_for_a_beacon_point() -> None:
    devices = [DeviceConfig(name="inc", profile=OPCUA_BEACON, endpoint="opc.tcp://127.0.0.1:1/x"),
               DeviceConfig(name="cs", profile=MODBUS_BEACON, endpoint="modbus://127.0.0.1:2")]
    svc = AlarmService(ManualClock(AT), LiveHub(), devices)
    assert not [a for a in svc.alarms if a.startswith(("inc.Horn", "cs.Beacon"))]
    assert "inc.Temp:stale" in svc.alarms and "cs.pH:stale" in svc.alarms


# -- the control rules of source "alarm" -----------------------------------------------------------------------------

HELD = [BoundRun(1, "R-1", "held")]


def test_an_alarm_command_passes_a_held_run_and_the_rate_rules() -> None:
    assert control.check_run_state(HELD, Role.ADMIN, "api") is not None  # by hand: refused
    assert control.check_run_state(HELD, SYSTEM.role, "alarm") is None
    assert control.check_run_state(HELD, SYSTEM.role, "recipe") is None
    limits = {ALARM_BEACON: control.RateLimit(max_step=0.5, unit="bool", min_interval=60)}
    assert control.check_step(ALARM_BEACON, 0.0, 1.0, "api", limits) is not None
    assert control.check_step(ALARM_BEACON, 0.0, 1.0, "alarm", limits) is None
    assert control.check_step(ALARM_BEACON, None, 1.0, "alarm", limits) is None
    assert control.check_interval(ALARM_BEACON, AT, AT, "api", limits) is not None
    assert control.check_interval(ALARM_BEACON, AT, AT, "alarm", limits) is None
    assert ALARM_BEACON not in control.RATE_LIMITS


# -- the controller --------------------------------------------------------------------------------------------------

class FakeHub:
    def __init__(self) -> None:
        self.states: dict[str, DeviceState] = {}

    def state(self, name: str) -> DeviceState:
        return self.states.get(name, DeviceState.STOPPED)


class FakeSetpoints:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, str, str]] = []
        self.fail: Exception | None = None

    async def command(self, device: str, body: SetpointRequest, *, principal: Any, source: str) -> dict[str, Any]:
        self.calls.append((device, body.point, body.value, body.reason, source))
        assert principal is SYSTEM
        if self.fail is not None:
            raise self.fail
        return {}


def controller() -> tuple[Beacon, list[Alarm], FakeHub, FakeSetpoints]:
    devices = [DeviceConfig(name="inc", profile=OPCUA_BEACON, endpoint="opc.tcp://127.0.0.1:1/x"),
               DeviceConfig(name="plain", kind="incubator", endpoint="opc.tcp://127.0.0.1:1/y")]
    alarms: list[Alarm] = []
    hub, sp = FakeHub(), FakeSetpoints()
    beacon = Beacon(lambda: alarms, cast(SetpointService, sp), lambda: cast(DeviceHub, hub), devices,
                    backoff_initial=0.05, backoff_max=0.2)
    return beacon, alarms, hub, sp


def raised() -> Alarm:
    return alarm("other:comm_loss", COMM, active=Severity.COMM_LOSS, unacked=True)


async def test_the_controller_commands_on_start_on_change_and_after_the_device_returns() -> None:
    beacon, alarms, hub, sp = controller()
    assert [(t.device, t.point) for t in beacon.targets] == [("inc", "Horn")]  # only devices with the role
    await beacon.step()
    assert sp.calls == []  # not online yet: nothing is commanded
    hub.states["inc"] = DeviceState.ONLINE
    await beacon.step()
    assert sp.calls == [("inc", "Horn", 0.0, "beacon off: no high-priority alarm unacknowledged", "alarm")]
    await beacon.step()
    assert len(sp.calls) == 1  # confirmed off: nothing more
    alarms.append(raised())
    await beacon.step()
    await beacon.step()
    assert sp.calls[1:] == [("inc", "Horn", 1.0, "beacon on: 1 high-priority alarm unacknowledged "
                                                 "(other:comm_loss)", "alarm")]
    hub.states["inc"] = DeviceState.OFFLINE
    alarms.clear()
    await beacon.step()
    assert len(sp.calls) == 2  # offline: its return is what gets commanded
    hub.states["inc"] = DeviceState.ONLINE
    await beacon.step()
    assert sp.calls[2][2] == 0.0
    alarms.append(raised())
    hub.states["inc"] = DeviceState.OFFLINE
    await beacon.step()
    hub.states["inc"] = DeviceState.ONLINE
    await beacon.step()
    await beacon.step()
    assert [c[2] for c in sp.calls] == [0.0, 1.0, 0.0, 1.0]


async def test_a_failed_command_is_logged_once_and_retried_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    beacon, alarms, hub, sp = controller()
    hub.states["inc"] = DeviceState.ONLINE
    alarms.append(raised())
    sp.fail = Problem(503, "device-unavailable", "Setpoint refused", "inc is offline", rule="device_unavailable")
    caplog.set_level(logging.DEBUG, "culturectl.alarms")
    task = asyncio.create_task(beacon.run())
    beacon.interval = 0.01
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while beacon.stats["failed"] < 4:
            assert asyncio.get_running_loop().time() < deadline, beacon.stats
            await asyncio.sleep(0.01)
        # backed off: far fewer attempts than passes; one WARNING for the whole outage
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "alarm beacon inc.Horn" in warnings[0].getMessage()
        assert "inc is offline" in warnings[0].getMessage()
        assert beacon.targets[0].failures >= 4 and beacon.backoff(10) == 0.2
        sp.fail = None
        while beacon.targets[0].confirmed is not True:
            assert asyncio.get_running_loop().time() < deadline, beacon.stats
            await asyncio.sleep(0.01)
        assert any(r.levelno == logging.INFO and "recovered" in r.getMessage() for r in caplog.records)
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_returned_medium_alarm_stays_medium_and_does_not_switch_the_beacon_on() -> None:
    """A temperature H (medium) that returned unacknowledged keeps the priority it was annunciated with: the
    definition's own default priority (high) must not switch the beacon on."""
    t0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    clock = ManualClock(t0)
    svc = AlarmService(clock, LiveHub(), [DeviceConfig(name="inc-9", kind="incubator", protocol="opcua",
                                                       endpoint="opc.tcp://127.0.0.1:1/x")])
    alarm = svc.alarms["inc-9.temperature:limit"]
    for minute in range(12):  # 38.4 C for 11 min: H after its 10-min on-delay
        svc.on_reading(Reading("inc-9.temperature", 38.4 + 0.01 * (minute % 2), clock.now(), Quality.GOOD))
        svc.tick()
        clock.advance(60)
    assert (alarm.state.status.value, alarm.priority()) == ("active_unack", "medium")
    for minute in range(4):  # back to 37 C: returned after the 2-min off-delay, still unacknowledged
        svc.on_reading(Reading("inc-9.temperature", 37.0 + 0.01 * (minute % 2), clock.now(), Quality.GOOD))
        svc.tick()
        clock.advance(60)
    assert (alarm.state.status.value, alarm.priority()) == ("returned_unack", "medium")
    assert decide([alarm]).on is False
