"""The simulator servers seen by plain protocol clients (asyncua, pymodbus), as a driver would see them.

Both servers run once per module on 127.0.0.1, on a clock 600x faster than the wall clock (one
incubator temperature time constant per wall second). The coupled pair (the culture in the incubator's chamber)
runs under the runner on a manual clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.ua.uaerrors import BadOutOfRange, BadUserAccessDenied
from pymodbus.client import AsyncModbusTcpClient

from app.core.clock import ManualClock, ScaledClock, utcnow
from drivers.base import PointSpec
from drivers.devices import DeviceConfig
from drivers.modbus import ModbusDriver
from drivers.points import CULTURE_SYSTEM_POINTS, INCUBATOR_NAMESPACE, INCUBATOR_POINTS
from simulators.culture_system import CultureSystemSimulator
from simulators.incubator import IncubatorSimulator
from simulators.runner import run_simulators
from tests.support import free_port, wait_for

# the shipped profile's word order ABCD is pymodbus' "big": decoded here with pymodbus, not our codec
MODBUS_WORD_ORDER = "big"
SCALE = 600.0
CLOCK = ScaledClock(scale=SCALE)
DEVICE = 1


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def incubator() -> AsyncIterator[IncubatorSimulator]:
    sim = IncubatorSimulator(CLOCK, host="127.0.0.1", port=0, seed=3, update_interval=0.1)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def culture() -> AsyncIterator[CultureSystemSimulator]:
    sim = CultureSystemSimulator(CLOCK, port=0, seed=3, t0=CLOCK.now() - timedelta(days=2), profile="cord")
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def opcua_client(sim: IncubatorSimulator) -> tuple[Client, int]:
    client = Client(sim.endpoint, timeout=5)
    await client.connect()
    return client, await client.get_namespace_index(INCUBATOR_NAMESPACE)


def node(client: Client, idx: int, name: str) -> ua.NodeId:
    spec = next(p for p in INCUBATOR_POINTS if p.name == name)
    return client.get_node(ua.NodeId(str(spec.address).split(";s=", 1)[1], idx))


async def modbus_client(sim: CultureSystemSimulator) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
    assert await client.connect()
    return client


def decode(client: AsyncModbusTcpClient, spec: PointSpec, regs: list[int]) -> float:
    dt = {
        "float32": client.DATATYPE.FLOAT32,
        "int16": client.DATATYPE.INT16,
        "uint16": client.DATATYPE.UINT16,
    }[spec.data_type]
    raw = client.convert_from_registers(regs, dt, word_order=MODBUS_WORD_ORDER)
    assert isinstance(raw, int | float)
    return float(raw) * spec.scale


async def read_inputs(client: AsyncModbusTcpClient) -> dict[str, float]:
    inputs = [p for p in CULTURE_SYSTEM_POINTS if p.register_type == "input"]
    end = max(int(p.address) + p.register_count for p in inputs)
    rr = await client.read_input_registers(0, count=end, device_id=DEVICE)
    assert not rr.isError(), rr
    return {
        p.name: decode(client, p, rr.registers[int(p.address) : int(p.address) + p.register_count])
        for p in inputs
    }


async def read_pump_rate(client: AsyncModbusTcpClient) -> float:
    spec = next(p for p in CULTURE_SYSTEM_POINTS if p.name == "pump_rate_setpoint")
    rr = await client.read_holding_registers(int(spec.address), count=2, device_id=DEVICE)
    assert not rr.isError(), rr
    return decode(client, spec, rr.registers)


async def write_pump_rate(client: AsyncModbusTcpClient, value: float) -> object:
    regs = client.convert_to_registers(value, client.DATATYPE.FLOAT32, word_order=MODBUS_WORD_ORDER)
    return await client.write_registers(100, regs, device_id=DEVICE)


# --- OPC UA incubator -----------------------------------------------------------------------------


async def test_every_node_of_the_map_reads_good_with_simulated_source_time(
    incubator: IncubatorSimulator,
) -> None:
    client, idx = await opcua_client(incubator)
    try:
        values = {}
        for spec in INCUBATOR_POINTS:
            dv = await node(client, idx, spec.name).read_data_value()
            assert dv.StatusCode is not None and dv.StatusCode.is_good(), spec.name
            assert dv.SourceTimestamp is not None
            # the source time is the simulated clock's, far ahead of the wall clock at x600
            assert abs((dv.SourceTimestamp - CLOCK.now()).total_seconds()) < 0.5 * SCALE
            assert (dv.SourceTimestamp - utcnow()).total_seconds() > 60
            assert dv.Value is not None
            values[spec.name] = dv.Value.Value
        assert 36.0 < values["temperature"] < 38.0
        assert 4.0 < values["co2"] < 6.0
        assert 85.0 < values["humidity"] <= 100.0
        assert values["door_open"] is False
        assert values["temperature_setpoint"] == 37.0 and values["co2_setpoint"] == 5.0
        obj = client.get_node(ua.NodeId("Incubator", idx))
        names = {(await n.read_browse_name()).Name for n in await obj.get_children()}
        assert names == {str(p.address).split(".", 1)[1] for p in INCUBATOR_POINTS}
    finally:
        await client.disconnect()


async def test_written_setpoint_is_followed_and_out_of_range_is_refused(
    incubator: IncubatorSimulator,
) -> None:
    client, idx = await opcua_client(incubator)
    setpoint, temperature = node(client, idx, "temperature_setpoint"), node(client, idx, "temperature")
    try:
        await setpoint.write_value(ua.DataValue(ua.Variant(34.0, ua.VariantType.Double)))
        assert await setpoint.read_value() == 34.0
        assert incubator.model.temperature_setpoint == 34.0

        async def cooled() -> bool:
            return bool(abs(await temperature.read_value() - 34.0) < 0.2)

        await wait_for(cooled, timeout=15, what="temperature to follow the 34 C setpoint")

        with pytest.raises(BadOutOfRange):
            await setpoint.write_value(ua.DataValue(ua.Variant(45.0, ua.VariantType.Double)))
        with pytest.raises(BadUserAccessDenied):
            await temperature.write_value(ua.DataValue(ua.Variant(20.0, ua.VariantType.Double)))
        assert await setpoint.read_value() == 34.0
        assert incubator.model.temperature_setpoint == 34.0
    finally:
        await setpoint.write_value(ua.DataValue(ua.Variant(37.0, ua.VariantType.Double)))
        await client.disconnect()


async def test_open_door_is_visible_and_drops_co2(incubator: IncubatorSimulator) -> None:
    client, idx = await opcua_client(incubator)
    door, co2 = node(client, idx, "door_open"), node(client, idx, "co2")
    try:
        incubator.open_door()
        await wait_for(door.read_value, timeout=5, what="DoorOpen to read true")

        async def co2_low() -> bool:
            return bool(await co2.read_value() < 2.0)

        await wait_for(co2_low, timeout=10, what="CO2 to fall with the door open")
    finally:
        incubator.close_door()
        await client.disconnect()


# --- Modbus culture system ------------------------------------------------------------------------


async def test_input_registers_decode_to_plausible_day_two_values(culture: CultureSystemSimulator) -> None:
    client = await modbus_client(culture)
    try:
        v = await read_inputs(client)
        assert culture.model.seeding_density * 1.5 < v["viable_cell_density"] < 5e6
        assert 85.0 <= v["viability"] <= 95.0
        assert 0.0 <= v["cd7_percent"] < 50.0
        assert 6.8 <= v["ph"] <= 7.45
        assert 20.0 < v["dissolved_o2"] <= 100.0
        assert v["medium_pumped"] > 0.0
        assert 36.5 < v["temperature"] < 37.5
        # computed at read time: a second read a wall second later shows the culture grown
        await asyncio.sleep(1.0)
        later = await read_inputs(client)
        assert later["medium_pumped"] > v["medium_pumped"]
        # input addresses are not holding registers and vice versa
        assert (await client.read_holding_registers(0, count=2, device_id=DEVICE)).isError()
        assert (await client.read_input_registers(100, count=2, device_id=DEVICE)).isError()
    finally:
        client.close()


async def test_pump_rate_write_is_read_back_and_drives_medium_pumped(culture: CultureSystemSimulator) -> None:
    client = await modbus_client(culture)
    try:
        assert not (await write_pump_rate(client, 12.5)).isError()  # type: ignore[attr-defined]
        assert await read_pump_rate(client) == 12.5
        t1, p1 = CLOCK.now(), (await read_inputs(client))["medium_pumped"]
        await asyncio.sleep(0.5)
        p2, t2 = (await read_inputs(client))["medium_pumped"], CLOCK.now()
        hours = (t2 - t1).total_seconds() / 3600
        assert (p2 - p1) / hours == pytest.approx(12.5, rel=0.1)

        refused = await write_pump_rate(client, 80.0)
        assert refused.isError() and refused.exception_code == 3  # type: ignore[attr-defined]
        assert await read_pump_rate(client) == 12.5
    finally:
        await write_pump_rate(client, 2.0)
        client.close()


async def test_wrong_device_id_gets_a_gateway_error(culture: CultureSystemSimulator) -> None:
    client = await modbus_client(culture)
    try:
        rr = await client.read_input_registers(0, count=2, device_id=DEVICE + 1)
        assert rr.isError() and rr.exception_code == 0x0B
    finally:
        client.close()


# --- restart and runner ---------------------------------------------------------------------------


async def test_stop_then_start_comes_back_on_the_same_port_with_state_kept(
    incubator: IncubatorSimulator, culture: CultureSystemSimulator
) -> None:
    client = await modbus_client(culture)
    await write_pump_rate(client, 7.0)
    client.close()
    ua_client, idx = await opcua_client(incubator)
    await node(ua_client, idx, "co2_setpoint").write_value(
        ua.DataValue(ua.Variant(6.0, ua.VariantType.Double))
    )
    await ua_client.disconnect()
    ports = (incubator.port, culture.port)

    await culture.stop()
    await incubator.stop()
    assert not culture.running and not incubator.running
    refused = AsyncModbusTcpClient("127.0.0.1", port=culture.port, timeout=1, retries=0)
    assert not await refused.connect()
    refused.close()
    with pytest.raises((OSError, asyncio.TimeoutError)):
        await Client(incubator.endpoint, timeout=1).connect()

    await culture.start()
    await incubator.start()
    assert (incubator.port, culture.port) == ports
    client = await modbus_client(culture)
    try:
        assert await read_pump_rate(client) == 7.0
    finally:
        client.close()
    ua_client, idx = await opcua_client(incubator)
    try:
        assert await node(ua_client, idx, "co2_setpoint").read_value() == 6.0
        await node(ua_client, idx, "co2_setpoint").write_value(
            ua.DataValue(ua.Variant(5.0, ua.VariantType.Double))
        )
    finally:
        await ua_client.disconnect()


async def test_runner_serves_until_stop_is_set_then_releases_its_ports() -> None:
    stop = asyncio.Event()
    inc_port, cs_port = free_port(), free_port()
    task = asyncio.create_task(
        run_simulators("all", CLOCK, incubator_port=inc_port, culture_port=cs_port, seed=9, stop=stop)
    )

    async def culture_up() -> bool:
        c = AsyncModbusTcpClient("127.0.0.1", port=cs_port, timeout=1, retries=0)
        ok = await c.connect()
        c.close()
        return bool(ok)

    await wait_for(culture_up, timeout=10, what="the runner's culture-system simulator")
    client = Client(f"opc.tcp://127.0.0.1:{inc_port}/culturectl/incubator", timeout=5)
    await client.connect()
    await client.disconnect()
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    assert not await culture_up()
    with pytest.raises(ValueError, match="unknown simulator"):
        await run_simulators("oven", CLOCK)


async def test_a_stuck_heater_in_the_runners_incubator_kills_cells_in_its_culture_system() -> None:
    clock = ManualClock(utcnow())
    stop = asyncio.Event()
    inc_port, cs_port, control_port = free_port(), free_port(), free_port()
    task = asyncio.create_task(run_simulators("all", clock, incubator_port=inc_port, culture_port=cs_port, seed=4,
                                              stop=stop, control_port=control_port))
    cfg = DeviceConfig(name="cs", kind="culture-system", protocol="modbus", endpoint=f"modbus://127.0.0.1:{cs_port}",
                       timeout=2.0)
    driver = ModbusDriver(cfg, clock)
    control = httpx.AsyncClient(base_url=f"http://127.0.0.1:{control_port}", timeout=5)

    async def control_up() -> bool:
        try:
            return (await control.get("/faults")).status_code == 200
        except httpx.TransportError:
            return False

    async def culture() -> dict[str, float | None]:
        return {r.channel.split(".", 1)[1]: r.value for r in await driver.poll()}

    async def advance(hours: float) -> None:
        for _ in range(int(hours * 6)):  # ten clock minutes at a time, the simulators' loops running in between
            clock.advance(600)
            await asyncio.sleep(0.01)

    try:
        await wait_for(control_up, timeout=10, what="the runner's fault control interface")
        await driver.connect()
        await advance(2)
        before = await culture()
        assert before["viability"] is not None and before["viability"] >= 85.0
        r = await control.post("/faults", json={"simulator": "incubator", "fault": "heater_stuck_on"})
        assert r.status_code < 300, r.text
        await advance(4)
        hot = await culture()
        assert hot["viability"] is not None and hot["viability"] < 40.0  # from ~90 %: most cells died at 45 C
        assert hot["viable_cell_density"] is not None and before["viable_cell_density"] is not None
        assert hot["viable_cell_density"] < 0.4 * before["viable_cell_density"]
        assert (await control.delete("/faults/incubator/heater_stuck_on")).status_code < 300
    finally:
        await driver.close()
        await control.aclose()
        stop.set()
        await asyncio.wait_for(task, timeout=10)
