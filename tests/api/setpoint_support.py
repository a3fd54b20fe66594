"""A scripted incubator attached to the service's device hub, for setpoint tests without a simulator."""

from __future__ import annotations

import asyncio
from typing import Literal

from app.devices.hub import DeviceHub
from drivers.base import DeviceState
from drivers.fake import FakeDriver
from tests.api.conftest import Service
from tests.support import wait_for

DEVICE = "incubator-1"
Mode = Literal["follow", "ignore", "stall"]


class ScriptedDevice(FakeDriver):
    """A fake device whose writes follow, are ignored (the read-back is the old value) or never answer."""

    mode: Mode = "follow"

    async def write(self, point: str, value: float) -> float:
        if self.mode == "stall":
            await asyncio.sleep(3600)  # a device that never answers: the service's timeout ends this
        if self.mode == "ignore":
            self._spec(point).check_write(float(value))
            return self.values[point]
        return await super().write(point, value)


def hub_of(service: Service) -> DeviceHub:
    hub = service.app.state.runtime.hub
    assert isinstance(hub, DeviceHub)
    return hub


async def attach_device(service: Service, device: str = DEVICE,
                        setpoints: dict[str, float] | None = None) -> ScriptedDevice:
    """The device online through a ScriptedDevice that has reported its setpoints (once per service)."""
    hub = hub_of(service)
    sup = hub.supervisor(device)
    if sup is not None:
        assert isinstance(sup.driver, ScriptedDevice)
        return sup.driver
    driver = ScriptedDevice(device, hub.status[device].config.points, service.app.state.runtime.clock)
    hub.attach(device, driver)
    for point, value in (setpoints or {"temperature_setpoint": 37.0, "co2_setpoint": 5.0}).items():
        driver.values[point] = value
        driver.push(point, value)  # a device is online once it has answered
        await wait_for(lambda: hub.state(device) is DeviceState.ONLINE, timeout=10, what=f"{device} online")
        await wait_for(lambda p=point, v=value: hub.current(device, p) == v, timeout=10, what=f"{point} reported")
    return driver
