"""Planned door openings through the alarm service, with the incubator simulator's physics (simulators/physics.py):
the door opens, the chamber falls toward ambient and relaxes back after the door shuts.

The run context comes through the service's own `refresh` (a stand-in connection hands it the run row a database
would); readings every 10 s on a manual clock, a service pass after each. No sleeps: each test reads the states
and what the service would write (deviations, door_opening rows) right after the simulated time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.alarms.door import Phase
from app.alarms.journal import DOOR_RECOVERY
from app.alarms.service import AlarmService
from app.core.clock import ManualClock
from app.core.live import LiveHub
from app.protocol.recipe import canonical_json, default_recipe, load_recipe
from drivers.base import Reading
from simulators.physics import IncubatorModel, IncubatorTimeConstants
from tests.unit.test_alarm_service import alarm_events, make

V1 = Path(__file__).parents[2] / "app" / "protocol" / "recipes" / "htlp-dl4-tnfa-v1.yaml"
PROCESS = ("inc.temperature:", "inc.co2:", "inc.door_open:")


class _Conn:
    """What `refresh` reads from a database: the run row; no persisted excursion, no deviation, no calibration and
    no notification policy yet."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def fetch(self, sql: str, *_: Any) -> list[dict[str, Any]]:
        return [] if "FROM deviation" in sql or "calibration" in sql else self.rows

    async def fetchrow(self, *_: Any) -> None:
        return None

    async def fetchval(self, *_: Any) -> None:
        return None

    async def execute(self, *_: Any) -> str:
        return "OK"


async def bind(svc: AlarmService, in_window: list[str], *, v1: bool = False) -> None:
    recipe = load_recipe(V1) if v1 else default_recipe()
    assert recipe.version == (1 if v1 else 2)
    rid = 990_000 + recipe.version  # the service caches recipes by id: ids no database test uses
    row = {"id": 77, "status": "running", "recipe_id": rid, "content": canonical_json(recipe),
           "in_window": in_window, "incubator": "inc", "culture_system": "cs"}
    await svc.refresh(_Conn([row]))  # type: ignore[arg-type]


class Chamber:
    """The simulated incubator (its physics) feeding an alarm service: temperature, CO2 and RH every 10 s with a
    service pass after each, the door when it changes. Also the API tests' (tests/api/test_planned_openings.py)."""

    def __init__(self, svc: AlarmService, clock: ManualClock, tau: IncubatorTimeConstants | None = None, *,
                 device: str = "inc", model: IncubatorModel | None = None) -> None:
        self.svc, self.clock, self.device = svc, clock, device
        self.model = model or IncubatorModel(clock.now(), seed=3, tau=tau)
        self.lowest = 99.0

    def _read(self, point: str, value: float) -> None:
        self.svc.on_reading(Reading(f"{self.device}.{point}", value, self.clock.now()))

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / 10)):
            self.clock.advance(10)
            self.model.step(self.clock.now())
            v = self.model.values()
            for point in ("temperature", "co2", "humidity"):
                self._read(point, v[point])
            self.lowest = min(self.lowest, v["temperature"])
            self.svc.tick()

    def door(self, is_open: bool) -> None:
        (self.model.open_door if is_open else self.model.close_door)(self.clock.now())
        self._read("door_open", 1.0 if is_open else 0.0)


def process_events(svc_live: LiveHub) -> list[tuple[str, str, str | None]]:
    return [e for e in alarm_events(svc_live) if e[0].startswith(PROCESS)]


def annunciated(events: list[tuple[str, str, str | None]]) -> list[tuple[str, str | None]]:
    return [(a, sev) for a, to, sev in events if to == "active_unack"]


def deviations(svc: AlarmService) -> list[str]:
    return [t.rule for t in svc._trips]


def door_rows(svc: AlarmService) -> list[dict[str, Any]]:
    """The door_opening rows waiting to be written, by column (journal.DOOR_OPENING_SQL)."""
    cols = ("run_id", "device", "step_key", "opened_at", "closed_at", "recovered_at", "exceeded_at", "min_temperature",
            "min_co2", "outcome", "reason", "planned", "updated_at")
    return [dict(zip(cols, args, strict=True)) for args in svc._door_rows]


def excursion(svc: AlarmService, channel: str) -> Any:
    return svc._excursions[channel][0].state


async def settled(in_window: list[str], *, v1: bool = False,
                  tau: IncubatorTimeConstants | None = None) -> tuple[AlarmService, ManualClock, LiveHub, Chamber]:
    svc, clock, live = make()
    await bind(svc, in_window, v1=v1)
    chamber = Chamber(svc, clock, tau)
    chamber.door(False)
    chamber.run(10 * 60)  # the chamber at its setpoints, every alarm normal
    assert annunciated(process_events(live)) == []
    return svc, clock, live, chamber


async def test_a_60_s_opening_inside_a_feed_window_is_a_planned_opening_not_a_deviation() -> None:
    svc, clock, live, chamber = await settled(["feed_day3"])
    opened = clock.now()
    chamber.door(True)
    assert svc.alarms["inc.temperature:limit"].state.status.value == "suppressed_by_design"
    assert svc.alarms["inc.door_open:limit"].state.status.value == "suppressed_by_design"
    chamber.run(60)
    chamber.door(False)
    chamber.run(40 * 60)
    assert 33.4 < chamber.lowest < 34.0  # the physics the QA reviewer saw: about 33.7 C, 5 min below 35 C

    events = process_events(live)
    assert annunciated(events) == []  # no temperature, CO2 or door alarm
    assert {to for _, to, _ in events} == {"suppressed_by_design", "normal"}
    assert deviations(svc) == []
    for channel in ("inc.temperature", "inc.co2"):
        st = excursion(svc, channel)
        assert (st.seconds_outside, st.episodes, st.hard_episodes) == (0.0, 0, 0)

    row = door_rows(svc)[-1]
    assert (row["step_key"], row["outcome"], row["reason"], row["opened_at"]) == ("feed_day3", "planned", None, opened)
    assert row["closed_at"] == opened + timedelta(seconds=60)
    recovery = (row["recovered_at"] - row["closed_at"]).total_seconds() / 60
    assert 10 < recovery < 14  # temperature back above 36 C (L) about 12 min after the door shut
    assert row["min_temperature"] == pytest.approx(chamber.lowest)
    assert 1.5 < row["min_co2"] < 2.2
    assert svc._doors["inc"].state.phase is Phase.CLOSED
    # the suppression ended with the recovery, not at the end of a window
    resumed = [e for e in live._history if e.kind == "alarm" and e.data["id"] == "inc.temperature:limit"][-1]
    assert resumed.data["to"] == "normal" and "recovered" in resumed.data["reason"]
    assert datetime.fromisoformat(resumed.data["at"]) == row["recovered_at"]


async def test_the_same_opening_outside_any_door_step_is_an_alarm_and_a_deviation() -> None:
    svc, _, live, chamber = await settled([])
    chamber.door(True)
    chamber.run(60)
    chamber.door(False)
    chamber.run(40 * 60)
    got = annunciated(process_events(live))
    assert ("inc.temperature:limit", "ll") in got  # as today (and the door advisory at 60 s)
    assert "excursion_hard_limit" in deviations(svc)
    assert excursion(svc, "inc.temperature").seconds_outside > 10 * 60
    assert door_rows(svc) == []  # not a planned opening


async def test_an_opening_held_5_min_in_the_window_exceeds_its_plan_alarms_and_opens_door_recovery() -> None:
    svc, clock, live, chamber = await settled(["feed_day3"])
    opened = clock.now()
    chamber.door(True)
    chamber.run(5 * 60)
    chamber.door(False)
    chamber.run(40 * 60)

    trip = next(t for t in svc._trips if t.rule == DOOR_RECOVERY)
    assert trip.facts["reason"] == "door open 100 s > 90 s"  # the first pass after 90 s
    exceeded = opened + timedelta(seconds=100)
    assert trip.at == exceeded
    assert (trip.facts["step"], trip.facts["recovery"], trip.facts["closed_at"]) == ("feed_day3", "not recovered",
                                                                                      None)
    assert trip.facts["planned"] == {"max_open_s": 90.0, "temperature_min": 32.0, "co2_min": 1.0,
                                     "recovery_min": 20.0}
    # the alarms resumed at the exceedance: their on-delays count from it
    got = annunciated(process_events(live))
    assert ("inc.temperature:limit", "ll") in got and ("inc.door_open:limit", "h") in got
    first = {e.data["id"]: datetime.fromisoformat(e.data["at"]) for e in reversed(live._history)
             if e.kind == "alarm" and e.data["to"] == "active_unack"}
    assert first["inc.temperature:limit"] == exceeded + timedelta(seconds=60)  # LL on-delay 1 min
    assert first["inc.door_open:limit"] == exceeded + timedelta(seconds=60)  # H on-delay 1 min
    # from the exceedance on the excursion is accounted as any other: 35 C is crossed afterwards
    assert "excursion_hard_limit" in deviations(svc)
    row = door_rows(svc)[-1]
    assert (row["outcome"], row["reason"], row["exceeded_at"]) == ("exceeded", "door open 100 s > 90 s", exceeded)
    assert row["closed_at"] == opened + timedelta(seconds=300) and row["recovered_at"] is not None
    assert row["min_temperature"] < 27  # five minutes toward 22 C


async def test_a_recovery_slower_than_stated_is_an_alarm_and_a_deviation() -> None:
    weak_heater = IncubatorTimeConstants(temperature=2000.0)
    svc, clock, live, chamber = await settled(["feed_day5"], tau=weak_heater)
    chamber.door(True)
    chamber.run(60)
    chamber.door(False)
    shut = clock.now()
    chamber.run(20 * 60 + 10)
    trip = next(t for t in svc._trips if t.rule == DOOR_RECOVERY)
    assert trip.facts["reason"] == "not recovered within 20 min"
    assert trip.at == shut + timedelta(seconds=20 * 60 + 10)
    assert annunciated(process_events(live)) == []  # suppressed until then
    chamber.run(12 * 60)
    assert ("inc.temperature:limit", "l") in annunciated(process_events(live))  # L on-delay 10 min from then
    assert door_rows(svc)[-1]["outcome"] == "exceeded"


async def test_recipe_v1_door_opening_true_keeps_the_door_alarm_only_suppression() -> None:
    svc, _, live, chamber = await settled(["feed_day3"], v1=True)
    chamber.door(True)
    assert svc.alarms["inc.door_open:limit"].state.status.value == "suppressed_by_design"
    assert svc.alarms["inc.temperature:limit"].state.status.value == "normal"
    chamber.run(60)
    chamber.door(False)
    chamber.run(30 * 60)
    got = annunciated(process_events(live))
    assert ("inc.temperature:limit", "ll") in got and not [a for a, _ in got if a.startswith("inc.door_open")]
    assert "excursion_hard_limit" in deviations(svc)
    assert door_rows(svc) == []


async def test_an_alarm_already_active_when_the_door_opens_stays_annunciated() -> None:
    svc, clock, _, chamber = await settled(["harvest"])
    chamber.model.set_co2_setpoint(3.5, clock.now())  # CO2 below L 4 % for its 15 min on-delay
    chamber.run(25 * 60)
    co2 = svc.alarms["inc.co2:limit"]
    assert co2.state.active is not None and co2.state.status.value == "active_unack"
    chamber.door(True)
    assert co2.state.status.value == "active_unack"  # not hidden by the planned opening
    assert svc.alarms["inc.temperature:limit"].state.status.value == "suppressed_by_design"
