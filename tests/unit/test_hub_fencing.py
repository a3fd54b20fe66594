"""The one write path to a device under a lease (app/devices/hub.py with app/cluster/node.py's write window):
nothing is written without the window, a write is cut at its end, and letting the device go cancels the writes in
flight before anyone else may write."""

from __future__ import annotations

import asyncio

import pytest

from app.core.clock import ScaledClock
from app.devices.hub import DeviceHub
from drivers.base import DeviceState, DeviceUnavailable
from drivers.devices import DeviceConfig
from drivers.fake import FakeDriver
from tests.support import wait_for

DEVICE = "incubator-1"


class Blocking(FakeDriver):
    """A device whose writes wait until the test lets them through."""

    gate: asyncio.Event
    started: asyncio.Event

    async def write(self, point: str, value: float) -> float:
        self.started.set()
        await self.gate.wait()
        return await super().write(point, value)


async def _hub(window: list[float]) -> tuple[DeviceHub, Blocking]:
    config = DeviceConfig(name=DEVICE, kind="incubator", protocol="opcua", endpoint="opc.tcp://127.0.0.1:1/x")
    clock = ScaledClock()
    hub = DeviceHub([config], clock, sinks=[], write_window=lambda _d: window[0])
    driver = Blocking(DEVICE, config.points, clock)
    driver.gate, driver.started = asyncio.Event(), asyncio.Event()
    driver.values["temperature_setpoint"] = 37.0
    hub.attach(DEVICE, driver)
    driver.push("temperature_setpoint", 37.0)
    await wait_for(lambda: hub.state(DEVICE) is DeviceState.ONLINE, 5, what="online")
    return hub, driver


async def test_no_window_no_write() -> None:
    window = [0.0]
    hub, driver = await _hub(window)
    driver.gate.set()
    try:
        with pytest.raises(DeviceUnavailable, match="does not hold its lease"):
            await hub.write(DEVICE, "temperature_setpoint", 37.5)
        assert not driver.started.is_set() and driver.values["temperature_setpoint"] == 37.0
        window[0] = 5.0
        assert await hub.write(DEVICE, "temperature_setpoint", 37.5) == 37.5
    finally:
        await hub.stop()


async def test_a_write_is_cut_at_the_end_of_the_window() -> None:
    hub, driver = await _hub([0.2])
    try:
        with pytest.raises(DeviceUnavailable, match="did not finish within"):
            await hub.write(DEVICE, "temperature_setpoint", 37.5)
        driver.gate.set()  # the device answers late: the cancelled write never lands
        await asyncio.sleep(0)
        assert driver.values["temperature_setpoint"] == 37.0
    finally:
        await hub.stop()


async def test_letting_the_device_go_cancels_the_write_in_flight() -> None:
    hub, driver = await _hub([30.0])
    write = asyncio.create_task(hub.write(DEVICE, "temperature_setpoint", 37.5))
    await asyncio.wait_for(driver.started.wait(), 5)
    await hub.detach(DEVICE)  # the lease moves: before it is released, nothing of this replica's is in flight
    assert write.done()
    with pytest.raises(DeviceUnavailable, match="released during the write"):
        await write
    driver.gate.set()
    assert driver.values["temperature_setpoint"] == 37.0 and driver.close_calls == 1
    assert hub.state(DEVICE) is DeviceState.STOPPED
