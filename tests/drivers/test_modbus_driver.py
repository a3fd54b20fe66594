"""Modbus driver and supervisor against the real culture-system simulator on 127.0.0.1 (one per module).

The module shares a ManualClock with the simulator: a poll and the simulator's model then see the same
instant, so decoded values can be compared with the model exactly (up to register precision).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from app.core.clock import ManualClock
from drivers.base import (
    DeviceProtocolError,
    DeviceState,
    DeviceUnavailable,
    PointLimitError,
    PointNotWritable,
    Quality,
    Reading,
)
from drivers.devices import DeviceConfig
from drivers.modbus import ModbusDriver, plan_reads
from drivers.points import CULTURE_SYSTEM_POINTS
from drivers.supervisor import DeviceSupervisor
from simulators.culture_system import CultureSystemSimulator
from tests.support import free_port, wait_for

CHANNELS = {f"cs-1.{p.name}" for p in CULTURE_SYSTEM_POINTS}


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 4, 8, 0, tzinfo=UTC))


@pytest.fixture(scope="module")
async def sim(clock: ManualClock) -> AsyncIterator[CultureSystemSimulator]:
    # seeded three days ago, so density, CD7 and pH have moved away from their start values
    t0 = clock.now() - timedelta(days=3)
    simulator = CultureSystemSimulator(clock, host="127.0.0.1", port=0, seed=1, t0=t0)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def config(endpoint: str, poll_interval: float = 0.2, timeout: float = 1.0) -> DeviceConfig:
    return DeviceConfig(
        name="cs-1", kind="culture-system", protocol="modbus", endpoint=endpoint,
        poll_interval=poll_interval, timeout=timeout,
    )


def test_read_plan_uses_one_request_per_register_type() -> None:
    spans = plan_reads(CULTURE_SYSTEM_POINTS)
    assert [(s.register_type, s.start, s.count) for s in spans] == [("input", 0, 12), ("holding", 100, 2)]


async def test_decoded_values_equal_the_simulator_model(
    running_sim: CultureSystemSimulator, clock: ManualClock
) -> None:
    driver = ModbusDriver(config(running_sim.endpoint), clock)
    await driver.connect()  # the point check reads each point once
    checked = driver.requests
    try:
        clock.advance(3600)
        readings = await driver.poll()
    finally:
        await driver.close()
    assert {r.channel for r in readings} == CHANNELS
    assert checked == len(CULTURE_SYSTEM_POINTS) and all(c.ok for c in driver.checks)
    assert driver.requests - checked == 2  # then the whole map in two reads
    model = running_sim.model.values()
    for spec in CULTURE_SYSTEM_POINTS:
        (r,) = [r for r in readings if r.channel == f"cs-1.{spec.name}"]
        assert r.quality is Quality.GOOD and r.source_time == clock.now()
        assert r.value is not None
        expected = model[spec.name]
        if spec.data_type == "float32":
            assert r.value == pytest.approx(struct.unpack(">f", struct.pack(">f", expected))[0], rel=1e-6)
        else:
            assert abs(r.value - expected) <= spec.scale / 2 + 1e-9, spec.name
    values = {r.channel.split(".", 1)[1]: r.value for r in readings}
    assert 1e5 < values["viable_cell_density"] < 5e6
    assert 85.0 <= values["viability"] <= 95.0
    assert 6.5 < values["ph"] < 7.5
    assert 36.0 < values["temperature"] < 38.0


async def test_write_is_read_back_checked_and_serialised(
    running_sim: CultureSystemSimulator, clock: ManualClock
) -> None:
    driver = ModbusDriver(config(running_sim.endpoint), clock)
    with pytest.raises(PointLimitError):
        await driver.write("pump_rate_setpoint", 70.0)  # before any I/O: not even connected
    with pytest.raises(PointNotWritable):
        await driver.write("ph", 7.0)
    await driver.connect()
    try:
        assert await driver.write("pump_rate_setpoint", 7.5) == 7.5
        assert running_sim.model.pump_rate == 7.5
        # polls and writes at once: one request on the wire at a time, every write gets its own read-back
        values = [1.0, 2.0, 3.0, 4.0, 5.0]
        results = await asyncio.gather(
            *(driver.write("pump_rate_setpoint", v) for v in values), *(driver.poll() for _ in range(5))
        )
        assert results[: len(values)] == values
        assert all(len(batch) == len(CHANNELS) for batch in results[len(values):])
        assert driver.max_in_flight == 1
        assert await driver.write("pump_rate_setpoint", 2.0) == 2.0
    finally:
        await driver.close()


async def test_connecting_to_nothing_is_device_unavailable(clock: ManualClock) -> None:
    driver = ModbusDriver(config(f"modbus://127.0.0.1:{free_port()}"), clock)
    with pytest.raises(DeviceUnavailable):
        await driver.connect()
    with pytest.raises(DeviceUnavailable):
        await driver.poll()
    await driver.close()


async def test_wrong_device_id_is_a_protocol_error(
    running_sim: CultureSystemSimulator, clock: ManualClock
) -> None:
    driver = ModbusDriver(config(running_sim.endpoint), clock, device_id=7)
    try:
        with pytest.raises(DeviceProtocolError, match=r"answers for none of the profile's points.*GATEWAY"):
            await driver.connect()  # the point check on connect finds nothing at that unit id
    finally:
        await driver.close()


async def test_timeout_drops_the_connection_so_a_late_answer_is_never_used(clock: ManualClock) -> None:
    """A device answering after the timeout: the driver gives up, closes, and never reads the late reply."""
    closed = asyncio.Event()

    async def late_device(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            header = await reader.readexactly(7)
            tid, _pid, length, unit = struct.unpack(">HHHB", header)
            pdu = await reader.readexactly(length - 1)
            count = struct.unpack(">H", pdu[3:5])[0]
            await asyncio.sleep(1.0)  # well past the driver's 0.3 s timeout
            body = bytes([pdu[0], 2 * count]) + b"\x00\x01" * count
            writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
            await writer.drain()
            await reader.read()  # returns b"" once the driver has closed its end
        closed.set()
        writer.close()

    server = await asyncio.start_server(late_device, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    driver = ModbusDriver(config(f"modbus://127.0.0.1:{port}", timeout=0.3), clock)
    try:
        start = time.monotonic()
        with pytest.raises(DeviceUnavailable):
            await driver.connect()  # the point check's first read is answered too late
        assert time.monotonic() - start < 1.0
        assert not driver.connected
        with pytest.raises(DeviceUnavailable):
            await driver.poll()  # no reuse of the connection the late answer arrives on
        await asyncio.wait_for(closed.wait(), 3.0)
    finally:
        await driver.close()
        server.close()
        await server.wait_closed()


async def test_restart_goes_offline_marks_gap_and_reconnects(
    running_sim: CultureSystemSimulator, clock: ManualClock
) -> None:
    readings: list[Reading] = []
    sup = DeviceSupervisor(
        ModbusDriver(config(running_sim.endpoint), clock), clock, readings.append, lambda _n, _s: None
    )
    sup.start()
    try:
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 5.0, what="ONLINE")
        await wait_for(lambda: len(readings) >= 2 * len(CHANNELS), 5.0, what="first polls")

        t_last = clock.now()
        await running_sim.stop()
        clock.advance(1.0)
        stopped = time.monotonic()
        await wait_for(lambda: sup.state is DeviceState.OFFLINE, 3.0, what="OFFLINE within 3 s")
        assert time.monotonic() - stopped <= 3.0
        await wait_for(lambda: any(r.quality is Quality.BAD for r in readings), 1.0, what="gap readings")
        bad = [r for r in readings if r.quality is Quality.BAD]
        assert {r.channel for r in bad} == CHANNELS and len(bad) == len(CHANNELS)
        assert all(r.value is None and r.source_time > t_last for r in bad)

        await asyncio.sleep(3.0)  # the outage itself (scenario length, not synchronisation)
        clock.advance(60.0)
        t_up = clock.now()
        await running_sim.start()
        back = time.monotonic()
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 5.0, what="ONLINE within 5 s")
        assert time.monotonic() - back <= 5.0
        clock.advance(1.0)
        n = len(readings)
        await wait_for(
            lambda: len([r for r in readings[n:] if r.quality is Quality.GOOD]) >= len(CHANNELS),
            3.0, what="fresh readings",
        )
        assert not [r for r in readings if r.quality is Quality.GOOD and t_last < r.source_time < t_up]
        assert len([r for r in readings if r.quality is Quality.BAD]) == len(CHANNELS)  # one gap mark only
        assert sup.stats.connects == 2 and sup.stats.disconnects == 1
    finally:
        await sup.stop()
    assert sup.state is DeviceState.STOPPED
