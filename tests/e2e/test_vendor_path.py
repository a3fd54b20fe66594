"""The whole path on devices we did not design: profile -> driver -> ingest -> alarms by role -> API and SSE ->
the run's binding -> the dashboard's chart by role. A degF OPC UA incubator with numeric NodeIds, a LADS-shaped
incubator reached by browse paths and a Modbus culture system at unit 17 with CDAB floats, all built from the
profiles in tests/profiles and run on 127.0.0.1 with physics on a clock at x60."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml
from pydantic import SecretStr

from app import db
from app.core.clock import ScaledClock
from app.demo.setup import ensure_demo_accounts, ensure_demo_recipe
from app.settings import Settings
from drivers.profiles import ModbusProfile, OpcUaProfile, build_library
from simulators.modbus_device import ModbusProfileDevice
from simulators.opcua_device import OpcUaProfileDevice
from simulators.physics import CultureModel, IncubatorModel
from tests.api.protocol_support import run_body
from tests.e2e.conftest import demo_bearer, demo_page, page_ready, serve
from tests.support import free_port, wait_for

if TYPE_CHECKING:
    from playwright.async_api import Browser

SCALE = 60.0
PROFILES = Path(__file__).parent.parent / "profiles"
LIB = build_library(PROFILES)
ACME_PARENTS = {"ChamberTemp": ("ACME", "CellMaster", "Chamber", "Climate"),
                "TempSet": ("ACME", "CellMaster", "Control")}


@dataclass
class Vendor:
    base_url: str
    api: httpx.AsyncClient
    acme: OpcUaProfileDevice
    lads: OpcUaProfileDevice
    bioflow: ModbusProfileDevice
    clock: ScaledClock


def _source(profile: Any, model: Any, clock: ScaledClock) -> Any:
    def values() -> dict[str, float]:
        model.step(clock.now())
        v = model.values()
        return {p.name: v[p.role] for p in profile.points if p.role in v}
    return values


@pytest.fixture(scope="module")
async def vendor(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Vendor]:
    tmp: Path = tmp_path_factory.mktemp("vendor")
    clock = ScaledClock(scale=SCALE)
    conn = await db.connect(db_dsn)
    try:
        await ensure_demo_accounts(conn, tmp)
        await ensure_demo_recipe(conn)
    finally:
        await conn.close()
    acme_p, lads_p, bio_p = LIB.get("acme-cellmaster-170"), LIB.get("lads-incubator"), LIB.get("bioflow-cs200")
    assert isinstance(acme_p, OpcUaProfile) and isinstance(lads_p, OpcUaProfile)
    assert isinstance(bio_p, ModbusProfile)
    inc, inc2 = IncubatorModel(clock.now(), 5), IncubatorModel(clock.now(), 6)
    culture = CultureModel(clock.now(), 7, "mobilized", start=clock.now())
    cold = acme_p.model_dump(mode="json", by_alias=True)
    cold["name"], cold["points"][4]["max"] = "acme-cold-room", 95.0  # TempSet up to 35 degC: the recipe asks 37
    broken = acme_p.model_dump(mode="json", by_alias=True)
    broken["name"], broken["points"][2]["node"] = "acme-misconfigured", "ns=acme;i=4242"  # ChamberRH is elsewhere
    async with OpcUaProfileDevice(acme_p, _source(acme_p, inc, clock), parents=ACME_PARENTS) as acme, \
            OpcUaProfileDevice(lads_p, _source(lads_p, inc2, clock)) as lads, \
            ModbusProfileDevice(bio_p, _source(bio_p, culture, clock)) as bioflow:
        devices = tmp / "devices.yaml"
        devices.write_text(yaml.safe_dump({"devices": [
            {"name": "acme-1", "profile": "acme-cellmaster-170", "endpoint": acme.endpoint},
            {"name": "lads-1", "profile": "lads-incubator", "profile_version": "1.0", "endpoint": lads.endpoint},
            {"name": "cs-17", "profile": "bioflow-cs200", "endpoint": bioflow.endpoint, "poll_interval": 0.3},
            {"name": "acme-2", "profile": broken, "endpoint": acme.endpoint},
            {"name": "acme-cold", "profile": cold, "endpoint": acme.endpoint},
            {"name": "cs-min", "endpoint": bioflow.endpoint, "profile": {
                "schema": 1, "name": "bioflow-vcd-only", "version": "1", "device_class": "culture-system",
                "protocol": "modbus", "modbus": {"unit_id": 17, "word_order": "CDAB"},
                "points": [{"name": "VCD", "role": "viable_cell_density", "table": "input", "address": 0,
                            "data_type": "float32", "unit": "1e6 cells/mL"}]}},
        ]}))
        settings = Settings(database_url=SecretStr(db_dsn), data_dir=tmp / "data", devices_file=devices,
                            profiles_dir=PROFILES, time_scale=SCALE, port=free_port(), ingest_flush_interval=0.2)
        async with serve(settings, clock) as (base_url, _runtime), \
                httpx.AsyncClient(base_url=base_url, timeout=10) as api:
            await demo_bearer(api)
            yield Vendor(base_url, api, acme, lads, bioflow, clock)


async def _device(api: httpx.AsyncClient, name: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/devices/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _latest(api: httpx.AsyncClient, key: str) -> dict[str, Any] | None:
    r = await api.get("/api/v1/channels")
    row = next((c for c in r.json() if c["key"] == key), None)
    return row if row and row["latest"] and row["latest"]["value"] is not None else None


async def test_vendor_devices_report_profile_check_and_canonical_values(vendor: Vendor) -> None:
    api = vendor.api
    for name in ("acme-1", "lads-1", "cs-17"):
        await wait_for(lambda n=name: _checked(api, n), timeout=20, what=f"{name} checked on connect")
        dev = await _device(api, name)
        assert dev["check_ok"] is True, dev["check"]
    acme = await _device(api, "acme-1")
    assert (acme["profile"], acme["profile_version"], acme["kind"]) == ("acme-cellmaster-170", "2.1", "incubator")
    temp = next(p for p in acme["points"] if p["name"] == "ChamberTemp")
    assert (temp["role"], temp["unit"], temp["device_unit"]) == ("temperature", "degC", "degF")
    # the incubator reports ~98.6 degF; the service stores and shows degC
    row = await wait_for(lambda: _latest(api, "acme-1.ChamberTemp"), timeout=20, what="a ChamberTemp value")
    assert row["role"] == "incubator.temperature" and 30 < row["latest"]["value"] < 45
    co2 = await wait_for(lambda: _latest(api, "lads-1.co2"), timeout=20, what="a LADS CO2 value")
    assert 0 < co2["latest"]["value"] < 20  # ppm on the wire, % here
    vcd = await wait_for(lambda: _latest(api, "cs-17.VCD"), timeout=20, what="a VCD value")
    assert vcd["latest"]["value"] > 1e4  # 1e6 cells/mL on the wire, cells/mL here
    fan = await wait_for(lambda: _latest(api, "acme-1.FanSpeed"), timeout=20, what="the unroled fan speed")
    assert fan["role"] is None


async def _checked(api: httpx.AsyncClient, name: str) -> bool:
    return (await _device(api, name))["checked_at"] is not None


async def test_a_point_the_device_lacks_raises_the_configuration_alarm(vendor: Vendor) -> None:
    api = vendor.api
    await wait_for(lambda: _checked(api, "acme-2"), timeout=20, what="acme-2 checked")
    dev = await _device(api, "acme-2")
    assert dev["state"] == "online" and dev["check_ok"] is False
    bad = [c for c in dev["check"] if not c["ok"]]
    assert [c["point"] for c in bad] == ["ChamberRH"] and "not found" in bad[0]["problems"][0]

    async def active() -> bool:
        r = await api.get("/api/v1/alarms/acme-2:configuration")
        return r.status_code == 200 and r.json()["status"] in ("active_unack", "active_ack")
    await wait_for(active, timeout=15, what="the configuration alarm of acme-2")
    # the other points are read all the same
    await wait_for(lambda: _latest(api, "acme-2.ChamberTemp"), timeout=20, what="acme-2's temperature")
    r = await api.get("/api/v1/devices/nope")
    assert r.status_code == 404 and "acme-1" in r.json()["detail"]
    # the overview shows it too, naming the point
    html = (await api.get("/")).text
    assert 'data-device="acme-2" data-check="mismatch"' in html and "ChamberRH" in html
    assert 'data-device="acme-1" data-check="ok"' in html


async def test_an_alarm_follows_the_role_in_canonical_units(vendor: Vendor) -> None:
    api = vendor.api
    alarm = "acme-1.ChamberTemp:limit"
    try:
        # the live stream carries the vendor's reading in degC: 91.4 degF = 33 degC, below LL 35 degC
        async with api.stream("GET", "/api/v1/stream", params={"kinds": "reading",
                                                               "channels": "acme-1.ChamberTemp"}) as s:
            vendor.acme.overrides["ChamberTemp"] = 91.4

            async def low_reading() -> float:
                async for line in s.aiter_lines():
                    if line.startswith("data:"):
                        data = json.loads(line[5:])
                        if data["value"] is not None and data["value"] < 34:
                            return float(data["value"])
                raise AssertionError("the stream ended")
            assert await asyncio.wait_for(low_reading(), 15) == pytest.approx(33.0, abs=0.01)

        async def fired() -> dict[str, Any] | None:
            r = await api.get(f"/api/v1/alarms/{alarm}")
            return r.json() if r.status_code == 200 and r.json()["status"] == "active_unack" else None
        row = await wait_for(fired, timeout=30, what="the LL alarm of the vendor's chamber temperature")
        assert row["value"] == pytest.approx(33.0, abs=0.01)
    finally:
        vendor.acme.overrides.clear()


async def test_binding_checks_roles_and_the_run_page_charts_by_role(vendor: Vendor, browser: Browser) -> None:
    api = vendor.api
    t0 = vendor.clock.now() + timedelta(hours=20)
    body = run_body(t0 - timedelta(days=3), planned_t0=t0.isoformat(), incubator="acme-1", culture_system="cs-17")
    r = await api.post("/api/v1/runs", json=body)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    # a culture system whose profile lacks roles the recipe uses cannot be bound: 409 naming them
    r = await api.post("/api/v1/runs", json={**body, "culture_system": "cs-min"})
    assert r.status_code == 409, r.text
    problem = r.json()
    assert problem["rule"] == "device_lacks_roles" and "culture-system.viability" in problem["missing_roles"]["cs-min"]
    assert "culture-system.viable_cell_density" not in problem["missing_roles"]["cs-min"]
    # an incubator whose setpoint limits exclude the recipe's 37 degC: 409 naming the step, point and limits
    r = await api.post("/api/v1/runs", json={**body, "incubator": "acme-cold"})
    assert r.status_code == 409, r.text
    problem = r.json()
    assert problem["rule"] == "setpoint_outside_device_limits" and "acme-cold.TempSet 30..35 degC" in problem["detail"]
    r = await api.post("/api/v1/runs", json={**body, "incubator": "lads-1", "culture_system": None})
    assert r.status_code == 201, r.text  # the LADS incubator has every incubator role the recipe uses
    lads_page = (await api.get(f"/runs/{r.json()['id']}")).text
    assert 'data-channel="lads-1.temperature"' in lads_page and 'data-channel="lads-1.co2"' in lads_page
    page = await demo_page(browser, vendor.base_url)
    await page.goto(f"/runs/{run_id}")
    await page_ready(page)
    for channel in ("acme-1.ChamberTemp", "cs-17.VCD", "cs-17.Viability"):
        await page.locator(f"[data-testid=chart][data-channel='{channel}']").wait_for()

    async def charted() -> bool:
        last = await page.evaluate("window.culturectl.charts['acme-1.ChamberTemp'].last()")
        return bool(last and 30 < last["v"] < 45)
    await wait_for(charted, timeout=20, what="a degC point on the vendor's temperature chart")
    await page.context.close()
