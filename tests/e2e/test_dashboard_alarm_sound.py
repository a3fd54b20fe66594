"""The dashboard's title counts the alarms waiting for acknowledgement, and its sound toggle beeps for new
high-priority alarms, in a real browser against a real server. The alarms are the communication losses of two
Modbus devices on 127.0.0.1 whose servers the test stops and starts again.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml
from pydantic import SecretStr

from app import db
from app.core.clock import ScaledClock
from app.demo.setup import ensure_demo_accounts
from app.settings import Settings
from drivers.profiles import ModbusProfile, parse_profile
from simulators.modbus_device import ModbusProfileDevice
from tests.e2e.conftest import demo_bearer, demo_page, serve
from tests.support import free_port, wait_for

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

PROBE = {
    "schema": 1, "name": "test-probe", "version": "1", "device_class": "culture-system", "protocol": "modbus",
    "points": [{"name": "pH", "role": "ph", "table": "input", "address": 0, "scale": 0.001, "unit": "pH"}]}
TITLE = "Overview · culturectl"


@dataclass
class Dash:
    base_url: str
    api: httpx.AsyncClient  # the operator
    probes: dict[str, ModbusProfileDevice]


def _ph() -> dict[str, float]:
    return {"pH": 7.1 + 0.01 * math.sin(time.monotonic())}  # a live probe: never a frozen value


@pytest.fixture(scope="module")
async def dash(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dash]:
    tmp: Path = tmp_path_factory.mktemp("sound")
    conn = await db.connect(db_dsn)
    try:
        await ensure_demo_accounts(conn, tmp)
    finally:
        await conn.close()
    profile = parse_profile(PROBE, "test")
    assert isinstance(profile, ModbusProfile)
    async with ModbusProfileDevice(profile, _ph) as a, ModbusProfileDevice(profile, _ph) as b:
        devices = tmp / "devices.yaml"
        devices.write_text(yaml.safe_dump({"devices": [
            {"name": name, "profile": PROBE, "endpoint": dev.endpoint, "poll_interval": 0.2, "timeout": 1.0}
            for name, dev in (("probe-a", a), ("probe-b", b))]}))
        settings = Settings(database_url=SecretStr(db_dsn), data_dir=tmp / "data", devices_file=devices,
                            port=free_port(), ingest_flush_interval=0.2, engine_enabled=False)
        async with serve(settings, ScaledClock(scale=1.0)) as (base_url, _runtime), \
                httpx.AsyncClient(base_url=base_url, timeout=10) as api:
            await demo_bearer(api)
            yield Dash(base_url, api, {"probe-a": a, "probe-b": b})


async def _alarm_is(api: httpx.AsyncClient, alarm_id: str, status: str) -> bool:
    r = await api.get(f"/api/v1/alarms/{alarm_id}")
    return r.status_code == 200 and r.json()["status"] == status


async def _online(api: httpx.AsyncClient, device: str) -> bool:
    r = await api.get(f"/api/v1/devices/{device}")
    return r.status_code == 200 and r.json()["state"] == "online"


async def _title(page: Page, expected: str) -> None:
    await page.wait_for_function("t => document.title === t", arg=expected, timeout=10_000)


async def _beeps(page: Page) -> int:
    return int(await page.evaluate("document.body.dataset.beeps"))


async def _lose(dash: Dash, device: str) -> None:
    await dash.probes[device].stop()
    await wait_for(lambda: _alarm_is(dash.api, f"{device}:comm_loss", "active_unack"), timeout=10,
                   what=f"{device}'s communication-loss alarm")


async def _ack(dash: Dash, device: str) -> None:
    r = await dash.api.post(f"/api/v1/alarms/{device}:comm_loss/acknowledge", json={"comment": "e2e: seen"})
    assert r.status_code == 200, r.text


async def test_the_title_counts_unacknowledged_alarms_and_the_sound_beeps_only_when_on(
        browser: Browser, dash: Dash, artifacts: Path) -> None:
    for device in dash.probes:
        await wait_for(lambda d=device: _online(dash.api, d), timeout=15, what=f"{device} online")  # type: ignore[misc]
    page = await demo_page(browser, dash.base_url)
    try:
        toggle = page.locator("[data-testid=sound-toggle]")
        assert await page.title() == TITLE
        assert await toggle.get_attribute("aria-pressed") == "false"  # off by default
        assert "off" in await toggle.inner_text()

        # sound off: a new high-priority alarm counts in the title and plays nothing
        await _lose(dash, "probe-a")
        await _title(page, f"(1) {TITLE}")
        assert await _beeps(page) == 0
        assert f"<title>(1) {TITLE}</title>" in (await dash.api.get("/")).text  # rendered so on load

        # sound on (a click: the gesture browsers ask for); the choice is remembered
        await toggle.click()
        assert await toggle.get_attribute("aria-pressed") == "true"
        assert await page.evaluate("localStorage.getItem('culturectl.sound')") == "on"
        await page.evaluate("window.culturectl.sound.repeatMs = 300")  # instead of 10 s
        await _lose(dash, "probe-b")
        await _title(page, f"(2) {TITLE}")
        await page.wait_for_function("() => Number(document.body.dataset.beeps) >= 1", timeout=5_000)
        await page.wait_for_function("() => Number(document.body.dataset.beeps) >= 3", timeout=5_000)  # it repeats
        await page.screenshot(path=str(artifacts / "overview-alarm-sound-on.png"))

        # acknowledgements: the count drops; the tone stops with the last high-priority alarm waiting
        await _ack(dash, "probe-a")
        await _title(page, f"(1) {TITLE}")
        assert await page.evaluate("document.body.dataset.alarmTone") == "repeating"
        await _ack(dash, "probe-b")
        await _title(page, TITLE)
        await page.wait_for_function("() => document.body.dataset.alarmTone === 'idle'", timeout=5_000)
        beeps = await _beeps(page)
        await page.wait_for_timeout(1_000)  # more than three repeat intervals: no tone comes
        assert await _beeps(page) == beeps

        await page.reload()
        await page.wait_for_function("() => document.body.dataset.ready === 'true'", timeout=20_000)
        assert await toggle.get_attribute("aria-pressed") == "true"
        assert await page.title() == TITLE
    finally:
        await page.context.close()
        for device, probe in dash.probes.items():
            await probe.start()
            await wait_for(lambda d=device: _alarm_is(dash.api, f"{d}:comm_loss", "normal"),  # type: ignore[misc]
                           timeout=20, what=f"{device} back to normal")
