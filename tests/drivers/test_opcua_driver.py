"""OPC UA driver and supervisor against the real incubator simulator on 127.0.0.1 (one server per module)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from app.core.clock import ScaledClock, utcnow
from drivers.base import DeviceState, DeviceUnavailable, PointLimitError, PointNotWritable, Quality, Reading
from drivers.devices import DeviceConfig
from drivers.opcua import DropOldestQueue, OpcUaDriver
from drivers.points import INCUBATOR_POINTS
from drivers.supervisor import DeviceSupervisor
from simulators.incubator import IncubatorSimulator
from tests.support import free_port, wait_for

# The simulated clock starts months away from the wall clock, so a source time taken from the wall
# clock (instead of the simulator's) cannot pass the checks below.
ORIGIN = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
CHANNELS = {f"inc-1.{p.name}" for p in INCUBATOR_POINTS}


@pytest.fixture(scope="module")
def clock() -> ScaledClock:
    return ScaledClock(epoch=utcnow(), scale=10.0, origin=ORIGIN)


@pytest.fixture(scope="module")
async def sim(clock: ScaledClock) -> AsyncIterator[IncubatorSimulator]:
    simulator = IncubatorSimulator(clock, host="127.0.0.1", port=0, seed=1)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def config(endpoint: str, timeout: float = 2.0) -> DeviceConfig:
    return DeviceConfig(name="inc-1", kind="incubator", protocol="opcua", endpoint=endpoint, timeout=timeout)


def server_sessions(sim: IncubatorSimulator) -> int:
    """Sessions the simulator's server holds (asyncua keeps no public counter)."""
    server = sim._server
    assert server is not None
    return len(server.iserver._external_sessions)


def client_tasks() -> set[asyncio.Task[object]]:
    """Tasks of this process that are not the simulator server's own."""
    out = set()
    for task in asyncio.all_tasks():
        module = getattr(task.get_coro(), "cr_frame", None)
        name = module.f_globals.get("__name__", "") if module is not None else ""
        if not name.startswith(("asyncua.server", "simulators.")):
            out.add(task)
    return out


async def collect(driver: OpcUaDriver, into: list[Reading]) -> None:
    async for reading in driver.readings():
        into.append(reading)


async def test_every_point_arrives_with_the_simulator_clock_as_source_time(
    running_sim: IncubatorSimulator, clock: ScaledClock
) -> None:
    driver = OpcUaDriver(config(running_sim.endpoint), clock)
    await driver.connect()
    got: list[Reading] = []
    task = asyncio.create_task(collect(driver, got))
    try:
        await wait_for(lambda: {r.channel for r in got} >= CHANNELS, 5.0, what="a reading of every point")
    finally:
        task.cancel()
        await driver.close()
    now = clock.now()
    for r in got:
        assert r.quality is Quality.GOOD and r.value is not None
        assert r.source_time.tzinfo is not None
        # simulator time, not wall time: near the scaled clock, months before the wall clock
        assert now - timedelta(minutes=5) <= r.source_time <= now, r
    by_channel = {r.channel: r.value for r in got}
    assert 30.0 < by_channel["inc-1.temperature"] < 40.0
    assert by_channel["inc-1.door_open"] in (0.0, 1.0)
    assert by_channel["inc-1.co2_setpoint"] == pytest.approx(running_sim.model.co2_setpoint)


async def test_setpoint_write_is_read_back_and_reaches_the_device(
    running_sim: IncubatorSimulator, clock: ScaledClock
) -> None:
    driver = OpcUaDriver(config(running_sim.endpoint), clock)
    await driver.connect()
    got: list[Reading] = []
    task = asyncio.create_task(collect(driver, got))
    try:
        assert await driver.write("temperature_setpoint", 36.5) == 36.5
        assert running_sim.model.temperature_setpoint == 36.5
        await wait_for(
            lambda: any(r.channel == "inc-1.temperature_setpoint" and r.value == 36.5 for r in got),
            3.0, what="the new setpoint in the subscription",
        )
        # concurrent writes each get their own read-back, never another writer's value
        values = [31.0, 32.0, 33.0, 34.0, 35.0]
        results = await asyncio.gather(*(driver.write("temperature_setpoint", v) for v in values))
        assert results == values
    finally:
        await driver.write("temperature_setpoint", 37.0)
        task.cancel()
        await driver.close()


async def test_invalid_writes_are_refused_before_any_io(clock: ScaledClock) -> None:
    # never connected, pointing at nothing: a limit error proves the check happens first
    driver = OpcUaDriver(config(f"opc.tcp://127.0.0.1:{free_port()}/x"), clock)
    with pytest.raises(PointLimitError):
        await driver.write("temperature_setpoint", 45.0)
    with pytest.raises(PointLimitError):
        await driver.write("co2_setpoint", float("nan"))
    with pytest.raises(PointNotWritable):
        await driver.write("temperature", 37.0)
    with pytest.raises(DeviceUnavailable):
        await driver.write("temperature_setpoint", 37.0)


async def test_connecting_to_nothing_is_device_unavailable_quickly(clock: ScaledClock) -> None:
    driver = OpcUaDriver(config(f"opc.tcp://127.0.0.1:{free_port()}/x", timeout=1.0), clock)
    start = time.monotonic()
    with pytest.raises(DeviceUnavailable):
        await driver.connect()
    assert time.monotonic() - start < 2.0
    await driver.close()
    await driver.close()  # twice: close never raises


def test_drop_oldest_queue_keeps_newest_and_counts_drops() -> None:
    q = DropOldestQueue(3)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(5):
        q.put(Reading("d.p", float(i), when))
    assert q.dropped == 2 and q.qsize() == 3
    assert q.overflow_policy == "drop-oldest"


async def test_server_restart_goes_offline_marks_gap_and_recovers(
    running_sim: IncubatorSimulator, clock: ScaledClock
) -> None:
    readings: list[Reading] = []
    states: list[DeviceState] = []
    driver = OpcUaDriver(config(running_sim.endpoint), clock)
    sup = DeviceSupervisor(driver, clock, readings.append, lambda _n, s: states.append(s))
    sup.start()
    try:
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 5.0, what="ONLINE")
        await wait_for(lambda: {r.channel for r in readings} >= CHANNELS, 5.0, what="first readings")

        t_down = clock.now()
        await running_sim.stop()
        stopped = time.monotonic()
        await wait_for(lambda: sup.state is DeviceState.OFFLINE, 3.0, what="OFFLINE within 3 s")
        assert time.monotonic() - stopped <= 3.0
        await wait_for(lambda: len([r for r in readings if r.quality is Quality.BAD]) >= len(CHANNELS), 1.0,
                       what="gap readings")
        bad = [r for r in readings if r.quality is Quality.BAD]
        assert {r.channel for r in bad} == CHANNELS and len(bad) == len(CHANNELS)
        assert all(r.value is None and r.source_time >= t_down for r in bad)

        await asyncio.sleep(3.0)  # the outage itself (scenario length, not synchronisation)
        t_up = clock.now()
        await running_sim.start()
        back = time.monotonic()
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 10.0, what="ONLINE within 10 s")
        assert time.monotonic() - back <= 10.0
        n = len(readings)
        await wait_for(
            lambda: any(r.quality is Quality.GOOD and r.source_time >= t_up for r in readings[n:]),
            5.0, what="fresh readings after the restart",
        )
        # nothing GOOD claims to have been measured while the server was down
        gap_start = max(r.source_time for r in bad)
        assert not [r for r in readings if r.quality is Quality.GOOD and gap_start < r.source_time < t_up]
        assert sup.stats.connects == 2 and sup.stats.disconnects == 1
        assert server_sessions(running_sim) == 1
    finally:
        await sup.stop()
    assert sup.state is DeviceState.STOPPED
    assert states[-1] is DeviceState.STOPPED


async def test_reconnect_cycles_leave_no_sessions_or_tasks_behind(
    running_sim: IncubatorSimulator, clock: ScaledClock
) -> None:
    driver = OpcUaDriver(config(running_sim.endpoint), clock)
    baseline = len(client_tasks())
    for cycle in range(20):
        await driver.connect()
        assert server_sessions(running_sim) == 1, f"cycle {cycle}"
        got: list[Reading] = []
        task = asyncio.create_task(collect(driver, got))
        await wait_for(got.__len__, 3.0, what=f"a reading in cycle {cycle}")
        task.cancel()
        await driver.close()
        await wait_for(lambda: server_sessions(running_sim) == 0, 2.0, what="session closed on the server")
    # connect() on a connected driver replaces the session instead of adding one
    await driver.connect()
    await driver.connect()
    assert server_sessions(running_sim) == 1
    await driver.close()
    await wait_for(lambda: len(client_tasks()) <= baseline, 2.0, what="client tasks back to baseline")
