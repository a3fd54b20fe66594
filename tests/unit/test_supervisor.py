"""DeviceSupervisor with the scripted FakeDriver: online only after a reading, gap marks, backoff, logging once per
outage, and a device that connects but never answers staying offline."""

from __future__ import annotations

import logging
import random
import time
from datetime import UTC, datetime

import pytest

from app.core.clock import ManualClock
from drivers.base import DeviceProtocolError, DeviceState, DeviceUnavailable, Quality, Reading
from drivers.devices import DeviceConfig
from drivers.fake import FakeDriver
from drivers.modbus import ModbusDriver
from drivers.opcua import OpcUaDriver
from drivers.points import INCUBATOR_POINTS
from drivers.supervisor import DeviceSupervisor, backoff_delay, make_driver
from tests.support import wait_for

CHANNELS = {f"fake-1.{p.name}" for p in INCUBATOR_POINTS}


def make(
    fail_connects: int = 0, initial: float = 0.01, maximum: float = 0.04, jitter: float = 0.2
) -> tuple[DeviceSupervisor, FakeDriver, list[Reading], list[DeviceState], ManualClock]:
    clock = ManualClock(datetime(2026, 5, 1, tzinfo=UTC))
    driver = FakeDriver("fake-1", INCUBATOR_POINTS, clock)
    driver.fail_connects = fail_connects
    readings: list[Reading] = []
    states: list[DeviceState] = []
    sup = DeviceSupervisor(
        driver, clock, readings.append, lambda _name, s: states.append(s),
        backoff_initial=initial, backoff_max=maximum, jitter=jitter, rng=random.Random(7),
    )
    return sup, driver, readings, states, clock


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (6, 5.0), (50, 5.0)],
)
def test_backoff_doubles_then_caps(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, 0.5, 5.0, jitter=0.0) == expected


def test_backoff_jitter_stays_within_bounds_and_never_exceeds_the_cap() -> None:
    rng = random.Random(1)
    early = [backoff_delay(2, 0.5, 5.0, 0.2, rng) for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in early)
    assert len({round(d, 6) for d in early}) > 50  # jittered, not one fixed delay
    capped = [backoff_delay(30, 0.5, 5.0, 0.2, rng) for _ in range(200)]
    assert all(4.0 <= d <= 5.0 for d in capped)


async def test_readings_flow_to_the_callback_and_state_goes_online() -> None:
    sup, driver, readings, states, _ = make()
    sup.start()
    try:
        await wait_for(lambda: sup.state is DeviceState.CONNECTING and driver.connected, 2.0, what="connected")
        assert sup.state is DeviceState.CONNECTING  # a connection alone is not online
        driver.push("temperature", 37.1)
        driver.push("co2", 5.0)
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 2.0, what="ONLINE")
        await wait_for(lambda: len(readings) == 2, 2.0, what="two readings")
        assert [r.value for r in readings] == [37.1, 5.0]
        assert sup.stats.readings == 2 and sup.stats.last_reading_time == readings[-1].source_time
        assert states[:2] == [DeviceState.CONNECTING, DeviceState.ONLINE]
        assert await sup.write("temperature_setpoint", 36.0) == 36.0
    finally:
        await sup.stop()
    assert sup.state is DeviceState.STOPPED and not driver.connected


async def test_outage_logs_once_down_once_up_and_marks_the_gap_once(caplog: pytest.LogCaptureFixture) -> None:
    sup, driver, readings, states, clock = make()
    caplog.set_level(logging.DEBUG, logger="culturectl.devices")
    sup.start()
    try:
        driver.push("temperature", 37.0)
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 2.0, what="ONLINE")
        await wait_for(lambda: len(readings) == 1, 2.0, what="a reading")
        clock.advance(10)
        driver.fail_connects = 5  # the device stays away for several attempts
        driver.drop(DeviceUnavailable("link down"))
        await wait_for(lambda: sup.state is DeviceState.OFFLINE, 2.0, what="OFFLINE")
        with pytest.raises(DeviceUnavailable):
            await sup.write("temperature_setpoint", 36.0)
        driver.push("temperature", 37.0)
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 3.0, what="ONLINE again")
        assert driver.connect_calls == 7
    finally:
        await sup.stop()
    records = [r for r in caplog.records if r.name == "culturectl.devices" and r.levelno >= logging.INFO]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.WARNING, "fake-1 is offline: link down"),
        (logging.INFO, "fake-1 is back online"),
    ]
    bad = [r for r in readings if r.quality is Quality.BAD]
    assert {r.channel for r in bad} == CHANNELS and len(bad) == len(CHANNELS)
    assert all(r.value is None and r.source_time == clock.now() for r in bad)
    assert sup.stats.connects == 2 and sup.stats.disconnects == 1 and sup.stats.last_error
    assert DeviceState.OFFLINE in states


async def test_backoff_while_down_is_capped_and_jittered() -> None:
    sup, driver, _, _, _ = make(fail_connects=8, initial=0.01, maximum=0.04, jitter=0.25)
    seen: list[float] = []
    driver.push("temperature", 37.0)  # what the device says once it answers
    sup.start()
    try:
        await wait_for(lambda: seen.append(sup.stats.last_backoff) or sup.state is DeviceState.ONLINE,
                       3.0, interval=0.005, what="ONLINE after 8 failures")
    finally:
        await sup.stop()
    assert driver.connect_calls == 9
    assert max(seen) <= 0.04
    assert max(seen) >= 0.04 * 0.75  # reached the cap


async def test_a_device_down_at_start_is_marked_offline_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup, driver, readings, _, _ = make(fail_connects=3)
    driver.connect_error = DeviceProtocolError("bad namespace")
    caplog.set_level(logging.INFO, logger="culturectl.devices")
    driver.push("temperature", 37.0)
    sup.start()
    try:
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 3.0, what="ONLINE")
    finally:
        await sup.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "culturectl.devices"]
    assert len(warnings) == 1 and "bad namespace" in warnings[0].getMessage()
    assert len([r for r in readings if r.quality is Quality.BAD]) == len(CHANNELS)
    assert sup.stats.disconnects == 0  # never was online


async def test_a_device_that_connects_but_never_answers_stays_offline_with_one_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup, driver, readings, states, _ = make(initial=0.005, maximum=0.02)
    driver.mute_reads = 12  # twelve connections accepted, not one answered
    caplog.set_level(logging.INFO, logger="culturectl.devices")
    sup.start()
    try:
        await wait_for(lambda: driver.connect_calls >= 6, 3.0, what="several reconnect attempts")
        assert sup.state is DeviceState.OFFLINE
        with pytest.raises(DeviceUnavailable):
            await sup.write("temperature_setpoint", 36.0)  # setpoints are refused while it does not answer
        await wait_for(lambda: driver.mute_reads == 0, 3.0, what="the silent connections used up")
        driver.push("temperature", 37.0)
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 3.0, what="ONLINE once it answers")
    finally:
        await sup.stop()
    assert states.count(DeviceState.ONLINE) == 1 and states.count(DeviceState.OFFLINE) == 1
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name == "culturectl.devices" and r.levelno >= logging.INFO]
    assert lines == [(logging.WARNING, "fake-1 is offline: fake-1: read timed out"),
                     (logging.INFO, "fake-1 is back online")]
    assert len([r for r in readings if r.quality is Quality.BAD]) == len(CHANNELS)  # one gap mark
    assert sup.stats.last_backoff >= 0.02 * 0.8  # the backoff grew to its cap: attempts did not reset it


async def test_a_failing_reading_callback_does_not_take_the_device_down() -> None:
    clock = ManualClock()
    driver = FakeDriver("fake-1", INCUBATOR_POINTS, clock)
    calls: list[Reading] = []

    def on_reading(r: Reading) -> None:
        calls.append(r)
        raise RuntimeError("consumer bug")

    sup = DeviceSupervisor(driver, clock, on_reading, lambda _n, _s: None)
    sup.start()
    try:
        driver.push("temperature", 37.0)
        driver.push("temperature", 37.1)
        await wait_for(lambda: len(calls) == 2, 2.0, what="both readings delivered")
        assert sup.state is DeviceState.ONLINE
    finally:
        await sup.stop()


def test_make_driver_chooses_by_protocol() -> None:
    clock = ManualClock()
    opc = DeviceConfig(name="i", kind="incubator", protocol="opcua", endpoint="opc.tcp://127.0.0.1:4840/x")
    mb = DeviceConfig(name="c", kind="culture-system", protocol="modbus", endpoint="modbus://127.0.0.1:5020")
    assert isinstance(make_driver(opc, clock), OpcUaDriver)
    assert isinstance(make_driver(mb, clock), ModbusDriver)


async def test_an_outage_counts_one_reconnect_and_its_wall_time_offline() -> None:
    sup, driver, _, _, _ = make()
    sup.start()
    try:
        driver.push("temperature", 37.0)
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 2.0, what="ONLINE")
        assert sup.stats.reconnects == 0 and sup.stats.offline_total() == 0.0  # never down yet
        before = time.monotonic()
        driver.fail_connects = 2
        driver.drop(DeviceUnavailable("link down"))
        await wait_for(lambda: sup.state is DeviceState.OFFLINE, 2.0, what="OFFLINE")
        since = sup.stats.offline_since_monotonic
        assert since is not None and since >= before
        assert sup.stats.offline_total(since + 5.0) == 5.0  # the outage in progress counts
        driver.push("temperature", 37.0)
        await wait_for(lambda: sup.state is DeviceState.ONLINE, 3.0, what="ONLINE again")
        after = time.monotonic()
    finally:
        await sup.stop()
    assert sup.stats.reconnects == 1 and sup.stats.offline_since_monotonic is None
    assert 0.0 < sup.stats.offline_seconds <= after - before
    assert sup.stats.offline_total() == sup.stats.offline_seconds  # nothing in progress: the total stands still
