"""The alarm service without a database: what reaches the live stream for readings, device states and the historian.

The journal, operator actions and run context are tested against PostgreSQL in tests/api/test_alarms.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from app.alarms import Severity, StaleAlarm, default_definitions, evaluate, initial_state, tick
from app.alarms.service import HISTORIAN_ALARM, AlarmService
from app.core.clock import ManualClock
from app.core.live import LiveHub
from app.protocol.recipe import Recipe, default_recipe
from drivers.base import DeviceState, Quality, Reading
from drivers.devices import DeviceConfig

START = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
DEVICES = [
    DeviceConfig(name="inc", kind="incubator", protocol="opcua", endpoint="opc.tcp://127.0.0.1:1/x"),
    DeviceConfig(name="cs", kind="culture-system", protocol="modbus", endpoint="modbus://127.0.0.1:2"),
]


def make(scale: float = 1.0, historian: dict[str, Any] | None = None) -> tuple[AlarmService, ManualClock, LiveHub]:
    clock = ManualClock(START, scale=scale)
    live = LiveHub()
    svc = AlarmService(clock, live, DEVICES, historian=(lambda: historian) if historian is not None else None)
    return svc, clock, live


def alarm_events(live: LiveHub) -> list[tuple[str, str, str | None]]:
    return [(e.data["id"], e.data["to"], e.data["transition_severity"]) for e in live._history if e.kind == "alarm"]


def test_alarms_exist_for_every_read_only_point_and_one_comm_loss_per_device() -> None:
    svc, _, _ = make()
    ids = set(svc.alarms)
    assert {"inc.temperature:limit", "inc.temperature:rate", "inc.temperature:stale", "inc.door_open:limit",
            "cs.ph:stale", "inc:comm_loss", "cs:comm_loss", HISTORIAN_ALARM} <= ids
    assert not [i for i in ids if i.endswith("setpoint:stale")]  # setpoints are written, not measured
    assert "inc.door_open:stale" not in ids  # OPC UA reports a door only when it changes
    assert not [i for i in ids if i.count(".") and i.endswith(":comm_loss")]  # not one per point


def test_a_reading_beyond_hh_is_annunciated_once_after_its_on_delay() -> None:
    svc, clock, live = make()
    for s in range(0, 200, 10):
        svc.on_reading(Reading("inc.temperature", 39.5 + (0.1 if s % 20 else -0.1), clock.now()))
        clock.advance(10)
        svc.tick()
    assert [e for e in alarm_events(live) if e[0] == "inc.temperature:limit"] == [
        ("inc.temperature:limit", "active_unack", "hh")]


def test_device_offline_raises_one_alarm_and_stale_alarms_of_its_points_wait() -> None:
    svc, clock, live = make()
    svc.on_reading(Reading("cs.ph", 7.2, clock.now()))
    svc.on_device_state("cs", DeviceState.OFFLINE, clock.now())
    clock.advance(600)
    svc.tick()
    assert [e for e in alarm_events(live) if e[0].startswith("cs")] == [("cs:comm_loss", "active_unack", "comm_loss")]
    svc.on_device_state("cs", DeviceState.ONLINE, clock.now())
    svc.on_reading(Reading("cs.ph", 7.21, clock.now()))
    assert alarm_events(live)[-1] == ("cs:comm_loss", "returned_unack", "comm_loss")


def test_historian_alarm_follows_the_writer() -> None:
    stats: dict[str, Any] = {"db_up": False, "db_down_since": None}  # not yet connected is not down
    svc, _, live = make(historian=stats)
    svc.tick()
    assert alarm_events(live) == []
    stats["db_down_since"] = 123.0
    svc.tick()
    assert alarm_events(live) == [(HISTORIAN_ALARM, "active_unack", "comm_loss")]
    stats["db_down_since"] = None
    svc.tick()
    assert alarm_events(live)[-1] == (HISTORIAN_ALARM, "returned_unack", "comm_loss")


def test_stale_limit_has_a_wall_time_floor_on_a_fast_clock() -> None:
    svc, _, _ = make(scale=600)
    stale = svc.alarms["inc.temperature:stale"].defn
    assert isinstance(stale, StaleAlarm) and stale.max_age_s == 5.0 * 600  # 5 wall seconds
    svc1, _, _ = make(scale=1)
    assert svc1.alarms["inc.temperature:stale"].defn.max_age_s == 120  # type: ignore[union-attr]


def test_frozen_value_is_stale_for_noisy_points_but_not_for_a_totaliser() -> None:
    defs = default_definitions()
    frozen = next(d for d in defs["incubator.temperature"] if isinstance(d, StaleAlarm))
    totaliser = next(d for d in defs["culture-system.medium_pumped"] if isinstance(d, StaleAlarm))
    assert frozen.changes_only and not totaliser.changes_only
    st = initial_state("a", START)
    st2 = initial_state("b", START)
    for s in range(0, 180, 10):  # the same value every 10 s for 3 min
        at = START + timedelta(seconds=s)
        st, _ = evaluate(frozen, st, 37.01, Quality.GOOD, at)
        st2, _ = evaluate(totaliser, st2, 12.0, Quality.GOOD, at)
    end = START + timedelta(seconds=180)
    assert tick(frozen, st, end)[0].active is Severity.STALE
    assert tick(totaliser, st2, end)[0].active is None


def test_recipe_alarm_overrides_are_checked() -> None:
    base = yaml.safe_load(default_recipe().model_dump_json())
    bad_step = {**base, "alarms": [{"channel": "incubator.co2", "during": ["no_such_step"],
                                    "definitions": [{"kind": "bad_quality", "name": "q"}]}]}
    with pytest.raises(ValidationError, match="no_such_step"):
        Recipe.model_validate(bad_step)
    bad_channel = {**base, "alarms": [{"channel": "incubator.co2_setpoint",
                                       "definitions": [{"kind": "bad_quality", "name": "q"}]}]}
    with pytest.raises(ValidationError, match="measured role"):
        Recipe.model_validate(bad_channel)
    dup = {**base, "alarms": [{"channel": "incubator.co2", "definitions": [
        {"kind": "bad_quality", "name": "q"}, {"kind": "comm_loss", "name": "q"}]}]}
    with pytest.raises(ValidationError, match="duplicate alarm names"):
        Recipe.model_validate(dup)


@pytest.mark.parametrize(("scale", "wall"), [(1, 0.5), (60, 0.25), (336, 0.05), (600, 0.05)])
def test_the_alarm_pass_is_at_most_15_clock_seconds_apart_down_to_50_ms(scale: float, wall: float) -> None:
    svc, _, _ = make(scale=scale)
    assert svc.wall_interval() == pytest.approx(wall)


def test_a_vendor_device_gets_its_alarms_by_role_and_a_configuration_alarm() -> None:
    from pathlib import Path

    from drivers.base import PointCheck
    from drivers.devices import parse_devices

    profiles = Path(__file__).parent.parent / "profiles"
    acme = parse_devices(yaml.safe_dump({"devices": [{"name": "acme", "profile": "acme-cellmaster-170",
                                                      "endpoint": "opc.tcp://127.0.0.1:1/x"}]}), profiles)
    clock = ManualClock(START)
    live = LiveHub()
    svc = AlarmService(clock, live, acme)
    ids = set(svc.alarms)
    assert {"acme.ChamberTemp:limit", "acme.ChamberTemp:stale", "acme.DoorState:limit", "acme:configuration"} <= ids
    assert not [i for i in ids if i.startswith("acme.FanSpeed")]  # no role: stored and shown, no alarm
    for _ in range(20):  # 33 degC (the driver converted 91.4 degF): the LL limit of the temperature role
        svc.on_reading(Reading("acme.ChamberTemp", 33.0, clock.now()))
        clock.advance(10)
        svc.tick()
    assert ("acme.ChamberTemp:limit", "active_unack", "ll") in alarm_events(live)
    svc.on_device_check("acme", [PointCheck("ChamberRH", False, "ns=2;i=9", problems=("not found",))], clock.now())
    assert ("acme:configuration", "active_unack", None) in [(i, t, None) for i, t, _s in alarm_events(live)]
    svc.on_device_check("acme", [PointCheck("ChamberRH", True, "ns=2;i=9")], clock.now())
    assert svc.alarms["acme:configuration"].state.active is None
