"""The drivers against devices shaped like other vendors' (built from the profiles in tests/profiles), on real
OPC UA and Modbus TCP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.clock import ScaledClock
from drivers.base import DeviceProtocolError, PointLimitError, Quality, Reading
from drivers.devices import DeviceConfig, parse_devices
from drivers.modbus import ModbusDriver
from drivers.opcua import OpcUaDriver
from drivers.profiles import ModbusProfile, OpcUaProfile, build_library
from simulators.modbus_device import ModbusProfileDevice
from simulators.opcua_device import OpcUaProfileDevice

PROFILES = Path(__file__).parent.parent / "profiles"
LIB = build_library(PROFILES)
ACME_PARENTS = {"ChamberTemp": ("ACME", "CellMaster", "Chamber", "Climate"),
                "ChamberCO2": ("ACME", "CellMaster", "Chamber", "Gas"),
                "TempSet": ("ACME", "CellMaster", "Control"), "CO2Set": ("ACME", "CellMaster", "Control")}
INCUBATOR = {"temperature": 37.0, "co2": 5.0, "humidity": 93.0, "door_open": 0.0}
CULTURE = {"viable_cell_density": 1.5e6, "viability": 92.5, "cd7_percent": 12.0, "ph": 7.21, "dissolved_o2": 41.3,
           "temperature": 36.9, "medium_pumped": 250.0, "pump_running": 1.0}


def _by_role(profile: Any, values: dict[str, float], extra: dict[str, float] | None = None) -> dict[str, float]:
    out = {p.name: values[p.role] for p in profile.points if p.role in values}
    return {**out, **(extra or {})}


def _device(name: str, profile: str, endpoint: str, **extra: Any) -> DeviceConfig:
    text = yaml.safe_dump({"devices": [{"name": name, "profile": profile, "endpoint": endpoint, **extra}]})
    return parse_devices(text, PROFILES)[0]


async def _collect(driver: Any, names: set[str], timeout: float = 10) -> dict[str, Reading]:
    seen: dict[str, Reading] = {}

    async def pump() -> bool:
        async for r in driver.readings():
            seen[r.channel.split(".", 1)[1]] = r
            if names <= set(seen):
                return True
        return False

    await asyncio.wait_for(pump(), timeout)
    return seen


@pytest.fixture
async def acme() -> AsyncIterator[OpcUaProfileDevice]:
    prof = LIB.get("acme-cellmaster-170")
    assert isinstance(prof, OpcUaProfile)
    async with OpcUaProfileDevice(prof, lambda: _by_role(prof, INCUBATOR, {"FanSpeed": 1200.0}),
                                  parents=ACME_PARENTS) as dev:
        yield dev


async def test_numeric_guid_and_uri_nodeids_in_degf_arrive_in_degc(acme: OpcUaProfileDevice) -> None:
    driver = OpcUaDriver(_device("acme-1", "acme-cellmaster-170", acme.endpoint), ScaledClock())
    await driver.connect()
    try:
        assert [c.point for c in driver.checks if not c.ok] == [], [c.as_dict() for c in driver.checks]
        temp = next(c for c in driver.checks if c.point == "ChamberTemp")
        assert temp.data_type == "Float" and temp.unit == "degF" and temp.where.startswith("ns=2;i=1042")
        seen = await _collect(driver, {"ChamberTemp", "ChamberRH", "DoorState", "FanSpeed"})
        assert seen["ChamberTemp"].value == pytest.approx(37.0, abs=0.01)  # 98.6 degF on the wire
        assert seen["ChamberTemp"].quality is Quality.GOOD
        assert seen["DoorState"].value == 0.0 and seen["FanSpeed"].value == 1200.0
        # the setpoint by its role, in degC; the device holds degF
        back = await driver.write("temperature_setpoint", 37.5)
        assert back == pytest.approx(37.5, abs=1e-4)
        assert acme.held["TempSet"] == pytest.approx(99.5, abs=1e-4)
        with pytest.raises(PointLimitError, match="outside"):
            await driver.write("TempSet", 45.0)
    finally:
        await driver.close()


async def test_a_missing_node_and_a_wrong_unit_are_reported_not_fatal(acme: OpcUaProfileDevice) -> None:
    prof = LIB.get("acme-cellmaster-170")
    data = prof.model_dump(mode="json", by_alias=True)
    data["name"] = "acme-broken"
    data["points"][1]["node"] = "ns=acme;i=9999"  # ChamberCO2 is not there
    data["points"][0]["unit"] = "degC"  # the server's EngineeringUnits say degF
    cfg = parse_devices(yaml.safe_dump({"devices": [{"name": "acme-2", "profile": data,
                                                      "endpoint": acme.endpoint}]}))[0]
    driver = OpcUaDriver(cfg, ScaledClock())
    await driver.connect()
    try:
        checks = {c.point: c for c in driver.checks}
        assert not checks["ChamberCO2"].found and "BadNodeIdUnknown" in checks["ChamberCO2"].problems[0]
        assert checks["ChamberTemp"].found and "EngineeringUnits say 'degF', the profile says 'degC'" in \
            checks["ChamberTemp"].problems[0]
        seen = await _collect(driver, {"ChamberRH"})
        assert "ChamberCO2" not in seen
    finally:
        await driver.close()


async def test_a_lads_shaped_device_maps_by_browse_paths_and_converts_units() -> None:
    prof = LIB.get("lads-incubator")
    assert isinstance(prof, OpcUaProfile)
    values = {**_by_role(prof, INCUBATOR)}
    values["co2"] = 5.0  # %: the device reports 50 000 ppm
    values["humidity"] = 93.0  # %RH: the device reports 0.93
    async with OpcUaProfileDevice(prof, lambda: values) as dev:
        driver = OpcUaDriver(_device("lads-1", "lads-incubator", dev.endpoint), ScaledClock())
        await driver.connect()
        try:
            assert all(c.ok for c in driver.checks), [c.as_dict() for c in driver.checks]
            seen = await _collect(driver, {"temperature", "co2", "humidity", "door_open"})
            assert seen["co2"].value == pytest.approx(5.0) and seen["humidity"].value == pytest.approx(93.0)
            assert await driver.write("co2_setpoint", 5.5) == pytest.approx(5.5)
        finally:
            await driver.close()


@pytest.fixture
async def bioflow() -> AsyncIterator[ModbusProfileDevice]:
    prof = LIB.get("bioflow-cs200")
    assert isinstance(prof, ModbusProfile)
    writes: list[tuple[str, float]] = []
    dev = ModbusProfileDevice(prof, lambda: _by_role(prof, CULTURE, {"PumpCycles": 123456.0, "LidClosed": 1.0}),
                              on_write=lambda p, v: writes.append((p, v)))
    async with dev:
        yield dev


async def test_unit_17_cdab_counters_bits_and_coil(bioflow: ModbusProfileDevice) -> None:
    driver = ModbusDriver(_device("cs-17", "bioflow-cs200", bioflow.endpoint), ScaledClock())
    await driver.connect()
    try:
        readings = {r.channel.split(".", 1)[1]: r for r in await driver.poll()}
        assert readings["VCD"].value == pytest.approx(1.5e6)
        assert readings["Viability"].value == pytest.approx(92.5)
        assert readings["pH"].value == pytest.approx(7.21)
        assert readings["DO"].value == pytest.approx(41.3)
        assert readings["MediaTemp"].value == pytest.approx(36.9, abs=1e-5)
        assert readings["MediumTotal"].value == pytest.approx(250.0)
        assert readings["PumpCycles"].value == 123456.0
        assert readings["PumpRunning"].value == 1.0 and readings["LidClosed"].value == 1.0
        assert all(r.quality is Quality.GOOD for r in readings.values())
        # after the point check (one read per point), four requests for twelve points, none touching the two
        # registers the device refuses
        assert all(c.ok for c in driver.checks)
        reads = [r for r in bioflow.requests[len(driver.points):] if r[0] in (1, 2, 3, 4)]
        assert len(reads) == 4 and not any(fc == 4 and a <= 11 and a + n > 10 for fc, a, n in reads)
        # writes: FC16 for the float setpoint (the profile asks for it), FC5 for the coil
        assert await driver.write("pump_rate_setpoint", 30.0) == pytest.approx(30.0)
        assert bioflow.requests[-2][0] == 16
        assert await driver.write("PumpEnable", 1.0) == 1.0
        assert bioflow.requests[-2][0] == 5
        with pytest.raises(PointLimitError):
            await driver.write("pump_rate_setpoint", 60.0)  # 1 mL/min: above the device's 0.8
    finally:
        await driver.close()


async def test_a_gap_the_profile_does_not_declare_splits_the_read(bioflow: ModbusProfileDevice) -> None:
    prof = LIB.get("bioflow-cs200")
    data = prof.model_dump(mode="json", by_alias=True)
    data["modbus"]["unreadable"] = []
    cfg = parse_devices(yaml.safe_dump({"devices": [{"name": "cs-x", "profile": data,
                                                      "endpoint": bioflow.endpoint}]}))[0]
    driver = ModbusDriver(cfg, ScaledClock())
    await driver.connect()
    try:
        # every point answers on its own, the merged read over the gap is refused: the driver reads that span's
        # points one by one from then on, and nothing is lost
        first = {r.channel.split(".", 1)[1]: r for r in await driver.poll()}
        assert len(first) == 12 and first["MediumTotal"].value == pytest.approx(250.0)
        refused = [r for r in bioflow.requests if r[0] == 4 and r[1] == 0 and r[2] == 17]
        assert len(refused) == 1
        await driver.poll()
        assert len([r for r in bioflow.requests if r[0] == 4 and r[1] == 0 and r[2] == 17]) == 1
    finally:
        await driver.close()


async def test_another_unit_id_is_answered_by_the_gateway_with_an_error(bioflow: ModbusProfileDevice) -> None:
    driver = ModbusDriver(_device("cs-1", "bioflow-cs200", bioflow.endpoint), ScaledClock(), device_id=1)
    try:
        with pytest.raises(DeviceProtocolError, match=r"none of the profile's points.*GATEWAY_NO_RESPONSE"):
            await driver.connect()
    finally:
        await driver.close()


async def test_a_value_that_decodes_to_nan_is_bad(bioflow: ModbusProfileDevice) -> None:
    bioflow.overrides["Viability"] = float("nan")
    driver = ModbusDriver(_device("cs-n", "bioflow-cs200", bioflow.endpoint), ScaledClock())
    await driver.connect()
    try:
        readings = {r.channel.split(".", 1)[1]: r for r in await driver.poll()}
        assert readings["Viability"].quality is Quality.BAD and readings["Viability"].value is None
    finally:
        await driver.close()
