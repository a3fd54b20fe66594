"""Each injected fault raises its alarm on the SSE stream, and the alarm returns when the fault is cleared.

Real simulators, real drivers, a real uvicorn and PostgreSQL; the clock runs x600 (1 wall second = 10 minutes),
so on-delays of minutes pass in fractions of a second. Each test starts from its alarm in state normal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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

    async def read() -> None:
        async with stack.client.stream("GET", "/api/v1/stream", params={"kinds": "alarm"}, timeout=None) as r:
            assert r.status_code == 200
            started.set()
            async for ev in sse_events(r):
                if ev.event == "alarm":
                    w.events.append(ev.json())  # type: ignore[arg-type]

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
