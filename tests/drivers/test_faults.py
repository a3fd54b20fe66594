"""Fault injection seen through the real drivers, the control interface over HTTP and the CLI.

Both simulators run once per module on 127.0.0.1, on a clock 600x faster than the wall clock (the
incubator's 10-minute temperature time constant passes in one wall second).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
import pytest

from app.core.clock import ScaledClock
from drivers.base import DeviceUnavailable, Quality, Reading
from drivers.devices import DeviceConfig
from drivers.modbus import ModbusDriver
from drivers.opcua import OpcUaDriver
from simulators.control import ControlServer
from simulators.culture_system import CultureSystemSimulator
from simulators.faults import Fault, FaultRequest, parse_fault_spec
from simulators.incubator import IncubatorSimulator
from tests.support import free_port, wait_for

SCALE = 600.0


@pytest.fixture(scope="module")
def clock() -> ScaledClock:
    return ScaledClock(scale=SCALE)


@pytest.fixture(scope="module")
async def incubator(clock: ScaledClock) -> AsyncIterator[IncubatorSimulator]:
    sim = IncubatorSimulator(clock, port=0, seed=5, update_interval=0.1)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture(scope="module")
async def culture(clock: ScaledClock) -> AsyncIterator[CultureSystemSimulator]:
    sim = CultureSystemSimulator(clock, port=0, seed=5, t0=clock.now() - timedelta(days=2))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


class Watched:
    """An OPC UA driver whose readings are collected in the background, per channel."""

    def __init__(self, sim: IncubatorSimulator, clock: ScaledClock) -> None:
        cfg = DeviceConfig(name="inc", kind="incubator", protocol="opcua", endpoint=sim.endpoint, timeout=2.0)
        self.driver = OpcUaDriver(cfg, clock)
        self.got: dict[str, list[float | None]] = {}
        self.quality: dict[str, list[Quality]] = {}
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watched:
        await self.driver.connect()
        self._task = asyncio.create_task(self._collect())
        await wait_for(lambda: "co2" in self.got, 5, what="the first readings")
        return self

    async def _collect(self) -> None:
        try:
            async for r in self.driver.readings():
                self.got.setdefault(r.channel.split(".", 1)[1], []).append(r.value)
                self.quality.setdefault(r.channel.split(".", 1)[1], []).append(r.quality)
        except DeviceUnavailable as exc:
            self.error = exc

    def last(self, point: str) -> float:
        value = self.got[point][-1]
        assert value is not None
        return value

    def count(self, point: str) -> int:
        return len(self.got.get(point, []))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.driver.close()


def modbus_driver(sim: CultureSystemSimulator, clock: ScaledClock, timeout: float = 0.5) -> ModbusDriver:
    cfg = DeviceConfig(name="cs", kind="culture-system", protocol="modbus", endpoint=sim.endpoint, timeout=timeout)
    return ModbusDriver(cfg, clock)


async def poll(driver: ModbusDriver) -> dict[str, float | None]:
    return {r.channel.split(".", 1)[1]: r.value for r in await driver.poll()}


# --- parsing and the contract ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("door_left_open", FaultRequest("incubator", Fault.door_left_open)),
        ("modbus_timeout", FaultRequest("culture-system", Fault.modbus_timeout)),
        ("culture-system:frozen_sensor:ph", FaultRequest("culture-system", Fault.frozen_sensor, "ph")),
        ("incubator:frozen_sensor", FaultRequest("incubator", Fault.frozen_sensor)),
        ("incubator:setpoint_ignored", FaultRequest("incubator", Fault.setpoint_ignored)),
    ],
)
def test_fault_specs_parse_with_the_simulator_defaulting_to_the_only_owner(text: str, expected: FaultRequest) -> None:
    assert parse_fault_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("door_stuck", "unknown fault 'door_stuck'; supported: door_left_open"),
        ("culture-system:heater_stuck_on", "on the culture-system simulator; supported: frozen_sensor"),
        ("frozen_sensor", "exists on incubator and culture-system; say which"),
        ("door_left_open:temperature", "only frozen_sensor, inf_value, nan_value, out_of_range take a point"),
    ],
)
def test_bad_fault_specs_say_what_is_supported(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fault_spec(text)


async def test_a_fault_of_the_other_simulator_is_refused_with_the_supported_list(
    incubator: IncubatorSimulator, culture: CultureSystemSimulator
) -> None:
    with pytest.raises(ValueError, match="supported: frozen_sensor, modbus_timeout, setpoint_ignored"):
        await culture.inject("heater_stuck_on")
    with pytest.raises(ValueError, match="supported: door_left_open"):
        await incubator.inject(Fault.modbus_timeout)
    with pytest.raises(ValueError, match="cannot be frozen"):
        await incubator.inject("frozen_sensor", point="co2_setpoint")
    assert incubator.active_faults() == [] and culture.active_faults() == []


# --- incubator physics through the OPC UA driver ---------------------------------------------------


async def test_door_left_open_is_seen_and_closing_it_restores_co2(
    incubator: IncubatorSimulator, clock: ScaledClock
) -> None:
    async with Watched(incubator, clock) as w:
        await incubator.inject("door_left_open")
        assert incubator.active_faults()[0]["fault"] == "door_left_open"
        await wait_for(lambda: w.last("door_open") == 1.0, 5, what="door_open to read 1")
        await wait_for(lambda: w.last("co2") < 2.0, 5, what="CO2 to fall with the door open")
        await incubator.clear("door_left_open")
        await wait_for(lambda: w.last("door_open") == 0.0, 5, what="door_open to read 0")
        await wait_for(lambda: w.last("co2") > 4.7 and w.last("temperature") > 36.7, 10,
                       what="CO2 and temperature back at their setpoints")
    assert incubator.active_faults() == []


async def test_empty_co2_supply_decays_toward_ambient_and_recovers(
    incubator: IncubatorSimulator, clock: ScaledClock
) -> None:
    async with Watched(incubator, clock) as w:
        await wait_for(lambda: w.last("co2") > 4.8, 10, what="CO2 settled")
        await incubator.inject(Fault.co2_supply_empty)
        await wait_for(lambda: w.last("co2") < 3.0, 10, what="CO2 below LL with the supply empty")
        assert w.last("door_open") == 0.0 and abs(w.last("temperature") - 37.0) < 0.5
        await incubator.clear(Fault.co2_supply_empty)
        await wait_for(lambda: w.last("co2") > 4.8, 10, what="CO2 back at 5 %")


@pytest.mark.parametrize(("fault", "beyond"), [("heater_stuck_on", 39.5), ("heater_stuck_off", 34.5)])
async def test_stuck_heater_drives_temperature_out_and_control_brings_it_back(
    incubator: IncubatorSimulator, clock: ScaledClock, fault: str, beyond: float
) -> None:
    hot = fault == "heater_stuck_on"
    async with Watched(incubator, clock) as w:
        await wait_for(lambda: abs(w.last("temperature") - 37.0) < 0.3, 10, what="temperature settled")
        await incubator.inject(fault)
        await wait_for(lambda: w.last("temperature") > beyond if hot else w.last("temperature") < beyond, 10,
                       what=f"temperature beyond {beyond} C")
        await incubator.clear(fault)
        await wait_for(lambda: abs(w.last("temperature") - 37.0) < 0.3, 15, what="temperature back at 37 C")


async def test_frozen_sensor_stops_the_opcua_notifications_of_that_node_only(
    incubator: IncubatorSimulator, clock: ScaledClock
) -> None:
    async with Watched(incubator, clock) as w:
        await incubator.inject("frozen_sensor")  # the incubator's default: temperature
        assert incubator.active_faults()[0]["point"] == "temperature"
        # one notification may have been on its way; after that, silence while CO2 keeps coming
        temp0 = w.count("temperature") + 1
        co2_0 = w.count("co2")
        await wait_for(lambda: w.count("co2") >= co2_0 + 10, 10, what="ten more CO2 notifications")
        assert w.count("temperature") <= temp0
        # the physics goes on underneath: heat the chamber, the reported value does not move
        held = w.last("temperature")
        await incubator.inject("heater_stuck_on")
        await wait_for(lambda: incubator.model.temperature > 40.0, 10, what="the chamber to heat up")
        assert w.last("temperature") == held
        await incubator.clear("frozen_sensor")
        await wait_for(lambda: w.last("temperature") > 40.0, 5, what="the live temperature after unfreezing")
        await incubator.clear("heater_stuck_on")
        await wait_for(lambda: abs(w.last("temperature") - 37.0) < 0.3, 15, what="temperature back at 37 C")


async def test_setpoint_ignored_makes_the_opcua_read_back_return_the_old_value(
    incubator: IncubatorSimulator, clock: ScaledClock
) -> None:
    async with Watched(incubator, clock) as w:
        await incubator.inject("setpoint_ignored")
        try:
            assert await w.driver.write("temperature_setpoint", 35.0) == 37.0
            assert incubator.model.temperature_setpoint == 37.0
        finally:
            await incubator.clear("setpoint_ignored")
        assert await w.driver.write("temperature_setpoint", 36.0) == 36.0
        assert await w.driver.write("temperature_setpoint", 37.0) == 37.0


async def test_opcua_restart_gives_comm_loss_then_the_same_endpoint_comes_back(
    incubator: IncubatorSimulator, clock: ScaledClock
) -> None:
    endpoint = incubator.endpoint
    async with Watched(incubator, clock) as w:
        await incubator.inject("opcua_restart")
        await wait_for(lambda: w.error is not None, 10, what="the driver to report the connection lost")
        assert not incubator.running
        down = OpcUaDriver(w.driver.config.model_copy(update={"timeout": 0.5}), clock)
        with pytest.raises(DeviceUnavailable):
            await down.connect()
        await incubator.clear("opcua_restart")
        assert incubator.running and incubator.endpoint == endpoint
    async with Watched(incubator, clock) as again:
        await wait_for(lambda: again.count("temperature") >= 2, 5, what="readings after the restart")


@pytest.mark.parametrize(("fault", "quality", "value"), [
    ("nan_value", Quality.BAD, None),
    ("inf_value", Quality.BAD, None),
    ("out_of_range", Quality.IMPLAUSIBLE, 220.0),
])
async def test_value_faults_on_opcua_arrive_with_status_good_and_are_judged_at_the_edge(
    incubator: IncubatorSimulator, clock: ScaledClock, fault: str, quality: Quality, value: float | None
) -> None:
    async with Watched(incubator, clock) as w:
        before = w.count("temperature")
        await incubator.inject(fault)  # default point: temperature, sent with StatusCode Good
        try:
            await wait_for(lambda: quality in w.quality["temperature"][before:], 5, what=f"a {quality.name} reading")
            i = before + w.quality["temperature"][before:].index(quality)
            assert w.got["temperature"][i] == value
            assert all(q is Quality.GOOD for q in w.quality["co2"])  # the other points are untouched
        finally:
            await incubator.clear(fault)
        n = w.count("temperature")
        await wait_for(lambda: Quality.GOOD in w.quality["temperature"][n:], 5, what="good readings again")


def test_value_faults_refuse_points_that_cannot_carry_them() -> None:
    sim = IncubatorSimulator(ScaledClock(), port=free_port())
    with pytest.raises(ValueError, match="boolean"):
        asyncio.run(sim.inject("nan_value", point="door_open"))
    culture = CultureSystemSimulator(ScaledClock(), port=free_port())
    with pytest.raises(ValueError, match="NaN and Inf need a floating-point point"):
        asyncio.run(culture.inject("inf_value", point="ph"))
    with pytest.raises(ValueError, match="unknown point 'nope'"):
        asyncio.run(culture.inject("out_of_range", point="nope"))
    assert sim.active_faults() == [] and culture.active_faults() == []


async def test_no_answer_accepts_opcua_connections_and_never_answers(
    incubator: IncubatorSimulator, clock: ScaledClock
) -> None:
    await incubator.inject("no_answer")
    try:
        reader, writer = await asyncio.open_connection(incubator.host, incubator.port)  # TCP is accepted
        writer.write(b"HELF")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)  # and nothing ever comes back
        writer.close()
        silent = OpcUaDriver(DeviceConfig(name="inc", kind="incubator", protocol="opcua",
                                          endpoint=incubator.endpoint, timeout=0.3), clock)
        with pytest.raises(DeviceUnavailable):
            await silent.connect()
    finally:
        await incubator.clear("no_answer")
    async with Watched(incubator, clock) as again:
        await wait_for(lambda: again.count("temperature") >= 2, 5, what="readings once it answers again")


# --- culture system through the Modbus driver -------------------------------------------------------


@pytest.mark.parametrize(("fault", "point", "quality", "value"), [
    ("nan_value", "viability", Quality.BAD, None),
    ("inf_value", "viable_cell_density", Quality.BAD, None),
    ("out_of_range", "viability", Quality.IMPLAUSIBLE, 200.0),
    ("out_of_range", "ph", Quality.IMPLAUSIBLE, 28.0),
])
async def test_value_faults_on_modbus_registers_are_judged_at_the_edge(
    culture: CultureSystemSimulator, clock: ScaledClock, fault: str, point: str, quality: Quality,
    value: float | None,
) -> None:
    driver = modbus_driver(culture, clock)
    await driver.connect()
    try:
        await culture.inject(fault, point=point)
        try:
            got: dict[str, Reading] = {r.channel.split(".", 1)[1]: r for r in await driver.poll()}
        finally:
            await culture.clear(fault, point=point)
        assert (got[point].quality, got[point].value) == (quality, value)
        assert {p: r.quality for p, r in got.items() if p != point} == dict.fromkeys(
            (p for p in got if p != point), Quality.GOOD)
        again = {r.channel.split(".", 1)[1]: r for r in await driver.poll()}
        assert again[point].quality is Quality.GOOD
    finally:
        await driver.close()


async def test_no_answer_on_the_culture_system_holds_every_request(
    culture: CultureSystemSimulator, clock: ScaledClock
) -> None:
    driver = modbus_driver(culture, clock, timeout=0.3)
    await driver.connect()  # the connection is accepted ...
    try:
        await culture.inject("no_answer")
        with pytest.raises(DeviceUnavailable, match="failed"):
            await poll(driver)  # ... and the request is never answered
        await culture.clear("no_answer")
        await driver.connect()
        assert (await poll(driver))["viability"] is not None
    finally:
        await driver.close()



async def test_frozen_modbus_point_repeats_its_registers_while_the_rest_moves(
    culture: CultureSystemSimulator, clock: ScaledClock
) -> None:
    driver = modbus_driver(culture, clock)
    await driver.connect()
    try:
        await culture.inject("frozen_sensor", point="ph")
        first = await poll(driver)
        seen_ph, pumped = {first["ph"]}, [first["medium_pumped"]]

        async def moved_on() -> bool:
            v = await poll(driver)
            seen_ph.add(v["ph"])
            pumped.append(v["medium_pumped"])
            return len(pumped) >= 8

        await wait_for(moved_on, 10, interval=0.1, what="eight polls")
        assert seen_ph == {first["ph"]}
        assert pumped[-1] > pumped[0]  # the culture goes on
        await culture.clear("frozen_sensor", point="ph")
        await wait_for(lambda: _ph_changes(driver, first["ph"]), 10, interval=0.1, what="pH to move again")
    finally:
        await driver.close()


async def _ph_changes(driver: ModbusDriver, old: float | None) -> bool:
    return (await poll(driver))["ph"] != old


async def test_modbus_timeout_leaves_requests_unanswered_until_cleared(
    culture: CultureSystemSimulator, clock: ScaledClock
) -> None:
    driver = modbus_driver(culture, clock, timeout=0.5)
    await driver.connect()
    try:
        await culture.inject("modbus_timeout")
        with pytest.raises(DeviceUnavailable, match="failed"):
            await poll(driver)
        # the device still accepts connections, it just never answers: the point check on connect times out
        with pytest.raises(DeviceUnavailable, match="failed"):
            await driver.connect()
        await culture.clear("modbus_timeout")
        await driver.connect()
        v = await poll(driver)
        assert v["viability"] is not None and 85.0 <= v["viability"] <= 95.0
    finally:
        await driver.close()


async def test_setpoint_ignored_makes_the_modbus_read_back_return_the_old_value(
    culture: CultureSystemSimulator, clock: ScaledClock
) -> None:
    driver = modbus_driver(culture, clock)
    await driver.connect()
    try:
        old = (await poll(driver))["pump_rate_setpoint"]
        await culture.inject("setpoint_ignored")
        assert await driver.write("pump_rate_setpoint", 9.0) == old
        await culture.clear("setpoint_ignored")
        assert await driver.write("pump_rate_setpoint", 9.0) == 9.0
        assert old is not None and await driver.write("pump_rate_setpoint", old) == old
    finally:
        await driver.close()


# --- control interface and CLI --------------------------------------------------------------------


async def test_control_interface_injects_lists_clears_and_refuses_bad_faults(
    incubator: IncubatorSimulator, culture: CultureSystemSimulator
) -> None:
    control = ControlServer({"incubator": incubator, "culture-system": culture})
    await control.start()
    try:
        async with httpx.AsyncClient(base_url=control.url, timeout=5) as http:
            r = await http.post("/faults", json={"simulator": "culture-system", "fault": "frozen_sensor",
                                                 "point": "dissolved_o2"})
            assert r.status_code == 201, r.text
            r = await http.post("/faults", json={"fault": "setpoint_ignored", "simulator": "incubator"})
            assert r.status_code == 201
            listed = (await http.get("/faults")).json()
            assert [(f["fault"], f["point"]) for f in listed["culture-system"]] == [("frozen_sensor", "dissolved_o2")]
            assert [f["fault"] for f in listed["incubator"]] == ["setpoint_ignored"]
            assert incubator.model.ignore_setpoint_writes

            bad = await http.post("/faults", json={"simulator": "culture-system", "fault": "heater_stuck_on"})
            assert bad.status_code == 400
            assert "frozen_sensor, modbus_timeout, setpoint_ignored" in bad.json()["detail"]
            bad = await http.post("/faults", json={"fault": "meltdown"})
            assert bad.status_code == 400 and "door_left_open" in bad.json()["detail"]
            assert (await http.post("/faults", content=b"nonsense")).status_code == 400

            r = await http.delete("/faults/culture-system/frozen_sensor", params={"point": "dissolved_o2"})
            assert r.status_code == 200 and r.json()["culture-system"] == []
            r = await http.delete("/faults/incubator/setpoint_ignored")
            assert r.json() == {"incubator": [], "culture-system": []}
            assert not incubator.model.ignore_setpoint_writes
            assert (await http.delete("/faults/incubator/meltdown")).status_code == 400
    finally:
        await control.stop()


@pytest.fixture
def cli_simulators() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`culturectl simulate all` with two faults and a control port, stopped by its PID."""
    control = free_port()
    cmd = [sys.executable, "-m", "app.cli", "simulate", "all", "--incubator-port", str(free_port()),
           "--culture-port", str(free_port()), "--time-scale", "600", "--control-port", str(control),
           "--fault", "door_left_open", "--fault", "culture-system:frozen_sensor:ph"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CULTURECTL_LOG_LEVEL": "INFO"})
    try:
        yield proc, f"http://127.0.0.1:{control}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def culturectl(*args: str) -> subprocess.CompletedProcess[str]:
    # wide enough that the error panel does not wrap the message
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "COLUMNS": "400"})


async def test_cli_starts_with_faults_and_drives_the_control_interface(
    cli_simulators: tuple[subprocess.Popen[str], str],
) -> None:
    proc, url = cli_simulators

    async def up() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            async with httpx.AsyncClient(timeout=1) as http:
                return (await http.get(url + "/faults")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(up, 20, interval=0.2, what="the CLI's fault control interface")
    listed = await asyncio.to_thread(culturectl, "simulate", "fault", "list", "--control", url)
    assert listed.returncode == 0, listed.stderr
    assert "incubator  door_left_open" in listed.stdout
    assert "culture-system  frozen_sensor  point=ph" in listed.stdout
    cleared = await asyncio.to_thread(culturectl, "simulate", "fault", "clear", "door_left_open", "--control", url)
    assert cleared.returncode == 0 and "door_left_open" not in cleared.stdout
    bad = await asyncio.to_thread(culturectl, "simulate", "fault", "inject", "door_stuck", "--control", url)
    assert bad.returncode == 2 and "supported: door_left_open" in bad.stderr
    refused = await asyncio.to_thread(culturectl, "simulate", "fault", "inject", "incubator:frozen_sensor:door_open",
                                      "--control", url)
    assert refused.returncode == 2 and "cannot be frozen" in refused.stderr
