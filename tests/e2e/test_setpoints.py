"""Setpoint commands against the real simulators: confirmed by read-back (the simulator's model follows), the
rate-of-change rule on a second big step, and an incubator that acknowledges a write but does not follow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app import db
from drivers.base import DeviceState
from simulators.faults import Fault
from tests.e2e.conftest import Stack
from tests.support import wait_for

DEVICE = "incubator-1"
URL = f"/api/v1/devices/{DEVICE}/setpoints"


async def _ready(stack: Stack) -> float:
    """Wait until the incubator is online and has reported its temperature setpoint; return it."""
    hub = stack.runtime.hub
    assert hub is not None
    await wait_for(lambda: hub.state(DEVICE) is DeviceState.ONLINE, timeout=30, what="incubator online")
    await wait_for(lambda: hub.current(DEVICE, "temperature_setpoint") is not None, timeout=30,
                   what="temperature setpoint reported")
    value = hub.current(DEVICE, "temperature_setpoint")
    assert value is not None
    return value


async def _past_interval(stack: Stack) -> None:
    """Let the rule's 60 clock seconds pass (0.1 wall s at the e2e time scale)."""
    until = stack.clock.now() + timedelta(seconds=61)
    await wait_for(lambda: stack.clock.now() >= until, timeout=5, interval=0.02, what="61 clock seconds")


async def _fetch(stack: Stack, sql: str, *args: Any) -> list[Any]:
    conn = await db.connect(stack.runtime.dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_accepted_write_is_confirmed_then_a_big_step_is_refused(stack: Stack) -> None:
    current = await _ready(stack)
    assert current == stack.incubator.model.temperature_setpoint == 37.0
    r = await stack.client.post(URL, json={"point": "temperature_setpoint", "value": 37.5,
                                           "reason": "e2e: raise 0.5 C"})
    assert r.status_code == 200, r.text
    cmd = r.json()
    assert (cmd["result"], cmd["previous"], cmd["read_back"]) == ("confirmed", 37.0, 37.5)
    assert stack.incubator.model.temperature_setpoint == 37.5  # the device itself changed
    history = (await stack.client.get(URL)).json()
    assert history[0]["id"] == cmd["id"] and history[0]["result"] == "confirmed"
    audit = await _fetch(stack, "SELECT actor_name, new FROM audit_log WHERE action = 'device.setpoint' "
                                "AND entity_id = $1", DEVICE)
    assert len(audit) == 1 and audit[0]["actor_name"] == "e2e-operator" and '"read_back": 37.5' in audit[0]["new"]

    await _past_interval(stack)
    r = await stack.client.post(URL, json={"point": "temperature_setpoint", "value": 39.5,
                                           "reason": "e2e: too big a step"})
    assert r.status_code == 409 and r.json()["rule"] == "rate_of_change", r.text
    assert r.json()["max_step"] == 1.0 and "37.5 -> 39.5" in r.json()["detail"]
    assert stack.incubator.model.temperature_setpoint == 37.5


async def test_a_device_that_does_not_follow_gets_a_clear_failure(stack: Stack) -> None:
    before = await _ready(stack)
    await stack.incubator.inject(Fault.setpoint_ignored)
    try:
        await _past_interval(stack)
        r = await stack.client.post(URL, json={"point": "temperature_setpoint", "value": before + 0.5,
                                               "reason": "e2e: incubator ignores writes"})
        assert r.status_code == 502, r.text
        problem = r.json()
        assert problem["rule"] == "device_did_not_follow"
        assert (problem["requested"], problem["read_back"]) == (before + 0.5, before)
        assert f"read back {before:g}" in problem["detail"]
        assert stack.incubator.model.temperature_setpoint == before
        rows = await _fetch(stack, "SELECT result, read_back FROM setpoint_command WHERE id = $1",
                            problem["command"]["id"])
        assert [(x["result"], x["read_back"]) for x in rows] == [("did_not_follow", before)]
        audit = await _fetch(stack, "SELECT new FROM audit_log WHERE action = 'device.setpoint' ORDER BY seq DESC "
                                    "LIMIT 1")
        assert '"result": "did_not_follow"' in audit[0]["new"]
    finally:
        await stack.incubator.clear(Fault.setpoint_ignored)
