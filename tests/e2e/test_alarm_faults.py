"""Each injected fault raises its alarm on the SSE stream, and the alarm returns when the fault is cleared.

Data-quality faults (NaN with status Good, Inf registers, impossible values, a device that accepts connections and
never answers) are followed into the database and the history API too: stored bad or implausible, never averaged,
and one communication loss per outage.

Real simulators, real drivers, a real uvicorn and PostgreSQL; the clock runs x600 (1 wall second = 10 minutes),
so on-delays of minutes pass in fractions of a second. Each test starts from its alarm in state normal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from simulators.faults import Fault
from tests.e2e.conftest import Stack
from tests.support import sse_events, wait_for

COMMENT = {"comment": "e2e: fault handled"}


@dataclass
class AlarmWatch:
    """Alarm events of one SSE connection, collected in the background."""

    events: list[dict[str, Any]] = field(default_factory=list)

    async def until(self, alarm_id: str, to: str | tuple[str, ...], severity: str | None = None,
                    timeout: float = 30.0) -> dict[str, Any]:
        states = (to,) if isinstance(to, str) else to
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events if e["id"] == alarm_id and e["to"] in states
                        and (severity is None or e["transition_severity"] == severity)]
            return bool(found)

        await wait_for(seen, timeout=timeout, what=f"{alarm_id} -> {states} ({severity}) on the stream; "
                       f"seen: {[(e['id'], e['to'], e['transition_severity']) for e in self.events][-12:]}")
        return found[0]


@contextlib.asynccontextmanager
async def watch(stack: Stack) -> AsyncIterator[AlarmWatch]:
    w = AlarmWatch()
    started = asyncio.Event()
    since = stack.clock.now()

    async def read() -> None:
        async with stack.client.stream("GET", "/api/v1/stream", params={"kinds": "alarm"}, timeout=None) as r:
            assert r.status_code == 200
            started.set()
            async for ev in sse_events(r):
                data = ev.json()
                # a transition of an earlier test may still be on its way through the event relay: not this one's
                if ev.event == "alarm" and isinstance(data, dict) and datetime.fromisoformat(data["at"]) >= since:
                    w.events.append(data)

    task = asyncio.create_task(read())
    try:
        await asyncio.wait_for(started.wait(), timeout=10)
        yield w
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _state(stack: Stack, alarm_id: str) -> dict[str, Any]:
    r = await stack.client.get(f"/api/v1/alarms/{alarm_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _normal(stack: Stack, alarm_id: str, timeout: float = 30.0) -> None:
    """Wait until the alarm's condition is gone, acknowledging a returned one, so a test starts from normal."""
    async def ok() -> bool:
        a = await _state(stack, alarm_id)
        if a["status"] == "returned_unack":
            await stack.client.post(f"/api/v1/alarms/{alarm_id}/acknowledge", json=COMMENT)
            return False
        return bool(a["status"] == "normal")
    await wait_for(ok, timeout=timeout, what=f"{alarm_id} normal")


async def _online(stack: Stack) -> None:
    async def ok() -> bool:
        r = await stack.client.get("/api/v1/devices")
        return {d["state"] for d in r.json()} == {"online"}
    await wait_for(ok, timeout=30, what="both devices online")


async def _returns(stack: Stack, w: AlarmWatch, alarm_id: str) -> None:
    """The alarm returns (returned_unack; normal if it was acknowledged) and an acknowledgement clears it."""
    ev = await w.until(alarm_id, ("returned_unack", "normal"))
    assert ev["reason"] == "returned"
    if ev["to"] == "returned_unack":
        r = await stack.client.post(f"/api/v1/alarms/{alarm_id}/acknowledge", json=COMMENT)
        assert r.status_code == 200 and r.json()["status"] == "normal", r.text


@pytest.fixture
async def ready(stack: Stack) -> AsyncIterator[Stack]:
    await _online(stack)
    yield stack
    for sim in (stack.incubator, stack.culture):
        for f in sim.active_faults():
            with contextlib.suppress(Exception):
                await sim.clear(f["fault"], point=f.get("point"))


async def test_door_left_open_raises_h_then_hh_and_returns_when_closed(ready: Stack) -> None:
    stack = ready
    door = "incubator-1.door_open:limit"
    await _normal(stack, door)
    async with watch(stack) as w:
        await stack.incubator.inject(Fault.door_left_open)
        h = await w.until(door, "active_unack", "h")  # open > 60 s: advisory
        assert h["priority"] == "advisory" and h["value"] == 1.0
        hh = await w.until(door, "active_unack", "hh")  # open > 5 min: high
        assert hh["priority"] == "high" and hh["reason"] == "escalated"
        await stack.incubator.clear(Fault.door_left_open)
        await _returns(stack, w, door)


async def test_heater_stuck_on_raises_temperature_hh_and_returns(ready: Stack) -> None:
    stack = ready
    alarm = "incubator-1.temperature:limit"
    await _normal(stack, alarm)
    async with watch(stack) as w:
        await stack.incubator.inject(Fault.heater_stuck_on)
        ev = await w.until(alarm, "active_unack", "hh")
        assert ev["value"] > 39.0 and ev["priority"] == "high"
        r = await stack.client.post(f"/api/v1/alarms/{alarm}/acknowledge", json=COMMENT)
        assert r.json()["status"] == "active_ack"
        await stack.incubator.clear(Fault.heater_stuck_on)
        await _returns(stack, w, alarm)


async def test_heater_stuck_off_raises_temperature_ll_and_returns(ready: Stack) -> None:
    stack = ready
    alarm = "incubator-1.temperature:limit"
    await _normal(stack, alarm)
    async with watch(stack) as w:
        await stack.incubator.inject(Fault.heater_stuck_off)
        ev = await w.until(alarm, "active_unack", "ll")
        assert ev["value"] < 35.0
        await stack.incubator.clear(Fault.heater_stuck_off)
        await _returns(stack, w, alarm)


async def test_co2_supply_empty_raises_co2_low_and_returns(ready: Stack) -> None:
    stack = ready
    alarm = "incubator-1.co2:limit"
    await _normal(stack, alarm)
    async with watch(stack) as w:
        await stack.incubator.inject(Fault.co2_supply_empty)
        ev = await w.until(alarm, "active_unack", "l")  # below 4 % for 15 min
        assert ev["value"] < 4.0
        await stack.incubator.clear(Fault.co2_supply_empty)
        await _returns(stack, w, alarm)


@pytest.mark.parametrize(("simulator", "channel"), [("incubator", "incubator-1.temperature"),
                                                     ("culture", "culture-system-1.ph")])
async def test_frozen_sensor_raises_stale_data_and_returns(ready: Stack, simulator: str, channel: str) -> None:
    stack = ready
    sim = stack.incubator if simulator == "incubator" else stack.culture
    alarm = f"{channel}:stale"
    await _normal(stack, alarm)
    async with watch(stack) as w:
        await sim.inject(Fault.frozen_sensor, point=channel.partition(".")[2])
        ev = await w.until(alarm, "active_unack", "stale")
        assert ev["priority"] == "high"
        await sim.clear(Fault.frozen_sensor, point=channel.partition(".")[2])
        await _returns(stack, w, alarm)


async def test_modbus_timeout_raises_communication_loss_and_returns(ready: Stack) -> None:
    stack = ready
    alarm = "culture-system-1:comm_loss"
    await _normal(stack, alarm)
    async with watch(stack) as w:
        await stack.culture.inject(Fault.modbus_timeout)
        ev = await w.until(alarm, "active_unack", "comm_loss")
        assert ev["device"] == "culture-system-1"
        # one alarm for the device, not one per point
        assert not [e for e in w.events if e["kind"] == "comm_loss" and e["id"] != alarm]
        await stack.culture.clear(Fault.modbus_timeout)
        await _returns(stack, w, alarm)


async def test_opcua_restart_raises_communication_loss_and_returns(ready: Stack) -> None:
    stack = ready
    alarm = "incubator-1:comm_loss"
    await _normal(stack, alarm)
    async with watch(stack) as w:
        await stack.incubator.inject(Fault.opcua_restart)
        await w.until(alarm, "active_unack", "comm_loss")
        await stack.incubator.clear(Fault.opcua_restart)
        await _returns(stack, w, alarm)


async def _channel_id(stack: Stack, key: str) -> int:
    channels = (await stack.client.get("/api/v1/channels")).json()
    return int(next(c["id"] for c in channels if c["key"] == key))


@pytest.mark.parametrize(("simulator", "fault", "point", "stored"), [
    ("incubator", Fault.nan_value, "temperature", "bad"),  # OPC UA NaN with StatusCode Good
    ("culture", Fault.nan_value, "viability", "bad"),  # float32 NaN registers
    ("culture", Fault.inf_value, "viable_cell_density", "bad"),
    ("culture", Fault.out_of_range, "viability", "implausible"),  # 200 %
    ("incubator", Fault.out_of_range, "co2", "implausible"),  # 200 % CO2
])
async def test_bad_and_impossible_values_raise_data_quality_alarms_and_stay_out_of_the_charts(
    ready: Stack, simulator: str, fault: Fault, point: str, stored: str
) -> None:
    stack = ready
    device = "incubator-1" if simulator == "incubator" else "culture-system-1"
    sim = stack.incubator if simulator == "incubator" else stack.culture
    channel = f"{device}.{point}"
    bad, stale = f"{channel}:bad_quality", f"{channel}:stale"
    await _normal(stack, bad)
    await _normal(stack, stale)
    cid = await _channel_id(stack, channel)
    since = stack.clock.now()
    async with watch(stack) as w:
        await sim.inject(fault, point=point)
        ev = await w.until(bad, "active_unack", "bad_quality")
        assert ev["priority"] == "high"
        if stored == "bad":  # no good sample any more: the culture is unobserved
            await w.until(stale, "active_unack", "stale")
        await sim.clear(fault, point=point)
        await _returns(stack, w, bad)
        if stored == "bad":
            await _returns(stack, w, stale)
    assert not [e for e in w.events if e["id"] == f"{channel}:limit" and e["to"] == "active_unack"]
    params = {"start": since.isoformat(), "end": stack.clock.now().isoformat()}
    raw = await stack.client.get(f"/api/v1/channels/{cid}/telemetry", params=params)
    assert raw.status_code == 200, raw.text
    points = raw.json()["points"]
    judged = [p for p in points if p["quality"] == stored]
    assert judged, f"no {stored} readings stored: {points[:5]}"
    assert all((p["value"] is None) == (stored == "bad") for p in judged)
    buckets = await stack.client.get(f"/api/v1/channels/{cid}/telemetry", params={**params, "bucket": "30m"})
    assert buckets.status_code == 200, buckets.text
    spec = next(p for p in sim.points if p.name == point)
    assert spec.plausible_min is not None and spec.plausible_max is not None
    for b in buckets.json()["points"]:  # only good values were averaged
        assert b["avg"] is not None and math.isfinite(b["avg"]), b
        assert spec.plausible_min <= b["min"] <= b["max"] <= spec.plausible_max, b


@pytest.mark.parametrize(("simulator", "fault"), [("culture", Fault.modbus_timeout), ("culture", Fault.no_answer),
                                                  ("incubator", Fault.no_answer)])
async def test_a_device_that_connects_but_never_answers_is_one_outage(
    ready: Stack, simulator: str, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    stack = ready
    device = "incubator-1" if simulator == "incubator" else "culture-system-1"
    sim = stack.incubator if simulator == "incubator" else stack.culture
    alarm = f"{device}:comm_loss"
    point, value = ("temperature_setpoint", 37.0) if simulator == "incubator" else ("pump_rate_setpoint", 2.0)
    await _normal(stack, alarm)
    caplog.set_level(logging.INFO, logger="culturectl.devices")
    async with watch(stack) as w:
        await sim.inject(fault)
        await w.until(alarm, "active_unack", "comm_loss")
        # Several connect / time-out cycles (request timeout 2 s, backoff up to 5 s): the device stays offline.
        deadline, states = time.monotonic() + 8, set()
        while time.monotonic() < deadline:
            devices = (await stack.client.get("/api/v1/devices")).json()
            states.add(next(d["state"] for d in devices if d["name"] == device))
            await asyncio.sleep(0.2)
        assert states == {"offline"}
        r = await stack.client.post(f"/api/v1/devices/{device}/setpoints",
                                    json={"point": point, "value": value, "reason": "e2e: while it is silent"})
        assert r.status_code == 503 and r.json()["rule"] == "device_unavailable", r.text
        await sim.clear(fault)
        await _returns(stack, w, alarm)
    activations = [e for e in w.events if e["id"] == alarm and e["to"] == "active_unack"]
    assert len(activations) == 1
    lines = [(r.levelname, r.getMessage()) for r in caplog.records
             if r.name == "culturectl.devices" and r.getMessage().startswith(device)]
    assert [lv for lv, _ in lines] == ["WARNING", "INFO"], lines
