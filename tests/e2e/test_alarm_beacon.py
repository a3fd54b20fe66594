"""The alarm beacon on real servers: an OPC UA incubator with a Boolean horn and a Modbus culture system with a
beacon coil, both built from profiles that give a writable boolean point the role `alarm_beacon`, and a third
device whose communication loss is the high-priority alarm. The service switches both beacons on while the alarm
is unacknowledged and off once it is acknowledged, through the setpoint service (source "alarm"), and drives a
beacon that comes back online to the wanted state again.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import SecretStr

from app import db
from app.core.clock import ScaledClock
from app.demo.setup import ensure_demo_accounts
from app.runtime import Runtime
from app.settings import Settings
from drivers.profiles import ModbusProfile, OpcUaProfile, parse_profile
from simulators.modbus_device import ModbusProfileDevice
from simulators.opcua_device import OpcUaProfileDevice
from tests.e2e.conftest import demo_bearer, serve
from tests.support import free_port, wait_for

HORN_INCUBATOR = {
    "schema": 1, "name": "test-horn-incubator", "version": "1", "vendor": "Test", "model": "Horn 1",
    "device_class": "incubator", "protocol": "opcua", "opcua": {"namespaces": {"t": "urn:test:horn"}},
    "points": [
        {"name": "Temp", "role": "temperature", "node": "ns=t;i=1", "data_type": "Double", "unit": "degC"},
        {"name": "Horn", "role": "alarm_beacon", "node": "ns=t;i=2", "data_type": "Boolean", "unit": "bool",
         "writable": True, "min": 0, "max": 1},
    ]}
BEACON_CULTURE = {
    "schema": 1, "name": "test-beacon-culture", "version": "1", "device_class": "culture-system",
    "protocol": "modbus", "modbus": {"unit_id": 3},
    "points": [
        {"name": "pH", "role": "ph", "table": "input", "address": 0, "scale": 0.001, "unit": "pH"},
        {"name": "Beacon", "role": "alarm_beacon", "table": "coil", "address": 5, "writable": True,
         "min": 0, "max": 1},
    ]}
PROBE = {
    "schema": 1, "name": "test-probe", "version": "1", "device_class": "culture-system", "protocol": "modbus",
    "points": [{"name": "pH", "role": "ph", "table": "input", "address": 0, "scale": 0.001, "unit": "pH"}]}


@dataclass
class Site:
    api: httpx.AsyncClient
    dsn: str
    runtime: Runtime
    horn: OpcUaProfileDevice
    coil: ModbusProfileDevice
    probe: ModbusProfileDevice

    def horn_value(self) -> float:
        return float(self.horn.held["Horn"])

    def coil_value(self) -> float:
        return self.coil.value(next(p for p in self.coil.points if p.name == "Beacon"))


@pytest.fixture(scope="module")
async def site(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    tmp: Path = tmp_path_factory.mktemp("beacon")
    conn = await db.connect(db_dsn)
    try:
        await ensure_demo_accounts(conn, tmp)
    finally:
        await conn.close()
    horn_p, coil_p, probe_p = (parse_profile(p, "test") for p in (HORN_INCUBATOR, BEACON_CULTURE, PROBE))
    assert isinstance(horn_p, OpcUaProfile) and isinstance(coil_p, ModbusProfile) and isinstance(probe_p, ModbusProfile)
    async with OpcUaProfileDevice(horn_p, lambda: {"Temp": 37.0}) as horn, \
            ModbusProfileDevice(coil_p, lambda: {"pH": 7.2}) as coil, \
            ModbusProfileDevice(probe_p, lambda: {"pH": 7.1}) as probe:
        devices = tmp / "devices.yaml"
        devices.write_text(yaml.safe_dump({"devices": [
            {"name": "horn-1", "profile": HORN_INCUBATOR, "endpoint": horn.endpoint},
            {"name": "coil-1", "profile": BEACON_CULTURE, "endpoint": coil.endpoint, "poll_interval": 0.2,
             "timeout": 1.0},
            {"name": "probe-1", "profile": PROBE, "endpoint": probe.endpoint, "poll_interval": 0.2, "timeout": 1.0},
        ]}))
        settings = Settings(database_url=SecretStr(db_dsn), data_dir=tmp / "data", devices_file=devices,
                            port=free_port(), ingest_flush_interval=0.2, engine_enabled=False)
        async with serve(settings, ScaledClock(scale=1.0)) as (base_url, runtime), \
                httpx.AsyncClient(base_url=base_url, timeout=10) as api:
            await demo_bearer(api)
            yield Site(api, db_dsn, runtime, horn, coil, probe)


async def _online(api: httpx.AsyncClient, device: str) -> bool:
    r = await api.get(f"/api/v1/devices/{device}")
    assert r.status_code == 200, r.text
    return bool(r.json()["state"] == "online")


async def _alarm(api: httpx.AsyncClient, alarm_id: str) -> str:
    r = await api.get(f"/api/v1/alarms/{alarm_id}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


async def _alarm_is(api: httpx.AsyncClient, alarm_id: str, status: str) -> bool:
    return await _alarm(api, alarm_id) == status


async def _commands(site: Site, after: int = 0) -> list[dict[str, Any]]:
    """The beacon's commands after id `after`, each with its audit records."""
    conn = await db.connect(site.dsn)
    try:
        rows = await conn.fetch("SELECT id, device, point, requested, read_back, result, source, actor, reason "
                                "FROM setpoint_command WHERE source = 'alarm' AND id > $1 ORDER BY id", after)
        out = []
        for r in rows:
            audits = await conn.fetch("SELECT actor_kind, actor_name, reason, new FROM audit_log WHERE action = "
                                      "'device.setpoint' AND (new->>'command_id')::bigint = $1", r["id"])
            out.append({**dict(r), "audits": [{**dict(a), "new": json.loads(a["new"])} for a in audits]})
        return out
    finally:
        await conn.close()


async def _switched(site: Site, after: int, value: float, devices: set[str]) -> list[dict[str, Any]]:
    rows = [r for r in await _commands(site, after) if r["requested"] == value and r["result"] == "confirmed"]
    return rows if {r["device"] for r in rows} >= devices else []


def _check_records(rows: list[dict[str, Any]], value: float, reason: str) -> None:
    for r in rows:
        assert (r["source"], r["actor"], r["read_back"]) == ("alarm", "system:culturectl", value), r
        assert reason in r["reason"], r
        assert len(r["audits"]) == 1, r  # exactly one audit record per switch
        audit = r["audits"][0]
        assert (audit["actor_kind"], audit["actor_name"], audit["reason"]) == ("system", "culturectl", r["reason"])
        assert (audit["new"]["source"], audit["new"]["result"]) == ("alarm", "confirmed")


async def test_the_beacons_follow_an_unacknowledged_high_priority_alarm(site: Site) -> None:
    api = site.api
    for device in ("horn-1", "coil-1", "probe-1"):
        await wait_for(lambda d=device: _online(api, d), timeout=20, what=f"{device} online")  # type: ignore[misc]
    # at start-up each beacon is driven to the wanted state: off
    start = await wait_for(lambda: _switched(site, 0, 0.0, {"horn-1", "coil-1"}), timeout=15,
                           what="both beacons commanded off at start-up")
    _check_records(start, 0.0, "beacon off: no high-priority alarm unacknowledged")
    assert {(r["device"], r["point"]) for r in start} == {("horn-1", "Horn"), ("coil-1", "Beacon")}
    last = max(r["id"] for r in start)

    # the probe's link is lost: a high-priority alarm, unacknowledged -> both beacons on
    await site.probe.stop()
    try:
        await wait_for(lambda: _alarm_is(api, "probe-1:comm_loss", "active_unack"), timeout=15,
                       what="the probe's communication-loss alarm")
        await wait_for(lambda: site.horn_value() == 1.0 and site.coil_value() == 1.0, timeout=15,
                       what="both beacons on, on the servers")
        on = await wait_for(lambda: _switched(site, last, 1.0, {"horn-1", "coil-1"}), timeout=10,
                            what="the switch-on commands recorded")
        assert len(on) == 2, on  # one command per beacon: the state did not change again
        _check_records(on, 1.0, "beacon on: 1 high-priority alarm unacknowledged (probe-1:comm_loss)")
        last = max(r["id"] for r in on)

        # the operator acknowledges: off, though the alarm is still active
        r = await api.post("/api/v1/alarms/probe-1:comm_loss/acknowledge", json={"comment": "e2e: on my way"})
        assert r.status_code == 200 and r.json()["status"] == "active_ack", r.text
        await wait_for(lambda: site.horn_value() == 0.0 and site.coil_value() == 0.0, timeout=15,
                       what="both beacons off after the acknowledgement")
        off = await wait_for(lambda: _switched(site, last, 0.0, {"horn-1", "coil-1"}), timeout=10,
                             what="the switch-off commands recorded")
        assert len(off) == 2, off
        _check_records(off, 0.0, "beacon off: no high-priority alarm unacknowledged")
    finally:
        await site.probe.start()
    await wait_for(lambda: _alarm_is(api, "probe-1:comm_loss", "normal"), timeout=20,
                   what="the acknowledged alarm back to normal")
    assert [r for r in await _commands(site, max(r["id"] for r in off))] == []  # nothing changed: no command


async def test_a_beacon_that_comes_back_online_is_driven_again(site: Site) -> None:
    api = site.api
    await wait_for(lambda: _online(api, "coil-1"), timeout=20, what="coil-1 online")
    before = max((r["id"] for r in await _commands(site)), default=0)
    # the culture system with the beacon coil drops off the network: its own loss is a high-priority alarm
    await site.coil.stop()
    try:
        await wait_for(lambda: _alarm_is(api, "coil-1:comm_loss", "active_unack"), timeout=15,
                       what="coil-1's communication-loss alarm")
        await wait_for(lambda: site.horn_value() == 1.0, timeout=15, what="the horn on")
        site.coil.set_held("Beacon", 0.0)  # the device restarted meanwhile and lost the beacon's state
    finally:
        await site.coil.start()
    await wait_for(lambda: _online(api, "coil-1"), timeout=20, what="coil-1 back online")
    # the alarm returned, still unacknowledged: the beacon is on, and the device that came back is told so
    assert await _alarm(api, "coil-1:comm_loss") in ("returned_unack", "active_unack")
    await wait_for(lambda: site.coil_value() == 1.0, timeout=15, what="the coil on again after its return")
    rows = await _switched(site, before, 1.0, {"horn-1", "coil-1"})
    assert rows and all(r["reason"] == "beacon on: 1 high-priority alarm unacknowledged (coil-1:comm_loss)"
                        for r in rows)
    r = await api.post("/api/v1/alarms/coil-1:comm_loss/acknowledge", json={"comment": "e2e: cable replaced"})
    assert r.status_code == 200, r.text
    await wait_for(lambda: site.horn_value() == 0.0 and site.coil_value() == 0.0, timeout=15,
                   what="both beacons off after the acknowledgement")
