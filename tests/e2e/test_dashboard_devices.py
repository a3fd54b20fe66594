"""The devices and recipes pages in a real browser against the real service and both simulators: devices online
with their owner, a device's points with live values and calibration, a supervisor's setpoint (and a refused one),
and QA comparing two released versions of the demo recipe. At 1280x800 and 768x1024."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from app.auth.principal import Role
from app.core.clock import ScaledClock
from app.demo.setup import DEMO_PASSWORD
from app.protocol.recipe import default_recipe
from tests.e2e.conftest import DashboardSite, dashboard_site, demo_bearer, demo_page, page_ready

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

SCALE = 60.0
TABLET = {"width": 768, "height": 1024}
DEVICES = ("incubator-1", "culture-system-1")
DEVICE = "incubator-1"
STATE_DEADLINE_MS = 30_000


@dataclass
class World:
    site: DashboardSite
    supervisor: httpx.AsyncClient
    qa: httpx.AsyncClient


@pytest.fixture(scope="module")
async def world(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp("devices")
    async with dashboard_site(db_dsn, tmp, ScaledClock(scale=SCALE), seed=5) as site, \
            httpx.AsyncClient(base_url=site.base_url, timeout=10) as sup, \
            httpx.AsyncClient(base_url=site.base_url, timeout=10) as qa:
        await demo_bearer(sup, Role.SUPERVISOR)
        await demo_bearer(qa, Role.QA)
        yield World(site, sup, qa)


async def _page(browser: Browser, world: World, role: Role, path: str,
                viewport: dict[str, int] | None = None) -> Page:
    page = await demo_page(browser, world.site.base_url, role, viewport)
    await page.goto(path)
    await page_ready(page)
    return page


def _size(viewport: dict[str, int] | None) -> str:
    return "tablet" if viewport else "desktop"


async def _fits(page: Page) -> None:
    """Nothing wider than the window: wide tables scroll inside their own box."""
    assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")


async def test_devices_online_with_owner_and_a_device_with_live_points_and_calibration(
        browser: Browser, world: World, artifacts: Path) -> None:
    # a month old, valid for months: today at the site (the clock runs x60) is well inside it
    r = await world.supervisor.post(f"/api/v1/devices/{DEVICE}/points/temperature/calibrations", json={
        "calibrated_on": (date.today() - timedelta(days=30)).isoformat(),
        "due_on": (date.today() + timedelta(days=200)).isoformat(), "certificate": "CAL-2026-0042",
        "performed_by": "Metrology Ltd", "reason": "annual calibration"})
    assert r.status_code == 201, r.text
    for viewport in (None, TABLET):
        page = await _page(browser, world, Role.SUPERVISOR, "/devices", viewport)
        for name in DEVICES:
            row = page.locator(f"[data-testid=device-row][data-device='{name}']")
            await row.locator("[data-testid=device-state]:text-is('online')").wait_for(timeout=STATE_DEADLINE_MS)
            assert "this replica" in await row.locator("[data-testid=device-owner]").inner_text()
            assert "version" in await row.inner_text()  # the profile and its version
        await _fits(page)
        await page.click(f"[data-testid=device-link]:text-is('{DEVICE}')")
        await page.wait_for_url(f"**/devices/{DEVICE}")
        await page_ready(page)
        value = page.locator(f"[data-testid=point-value][data-channel='{DEVICE}.temperature']")
        # a reading arrives (or a newer one replaces the one rendered) without a reload
        before = await value.get_attribute("data-time") or ""
        await page.wait_for_function(
            "([sel, t]) => { const el = document.querySelector(sel);"
            " return el && el.dataset.time && el.dataset.time !== t && el.textContent.trim() !== '\u2014'; }",
            arg=[f"[data-testid=point-value][data-channel='{DEVICE}.temperature']", before],
            timeout=STATE_DEADLINE_MS)
        assert float((await value.inner_text()).strip()) == pytest.approx(37.0, abs=3)
        row = page.locator("[data-testid=point-row][data-point=temperature]")
        assert "good" in await row.locator("[data-testid=point-quality]").inner_text()
        cal = (await row.locator("[data-testid=point-calibration]").inner_text()).lower()
        assert "valid" in cal and "cal-2026-0042" in cal and "due" in cal
        assert "no calibration record" in await page.locator(
            "[data-testid=point-row][data-point=co2] [data-testid=point-calibration]").inner_text()
        assert "incubator" in await page.locator("[data-testid=device-facts]").inner_text()
        await page.screenshot(path=str(artifacts / f"device-{_size(viewport)}.png"), full_page=True)
        assert await page.locator("[data-testid=no-alarms]").count() + await page.locator(
            ".alarm-group").count() >= 1
        await _fits(page)
        await page.context.close()


async def _writable(world: World) -> tuple[str, float, float]:
    """The incubator's temperature setpoint point: name, current value, max."""
    dev = (await world.site.api.get(f"/api/v1/devices/{DEVICE}")).json()
    point = next(p for p in dev["points"] if p["writable"] and p["role"] == "temperature_setpoint")
    channels = (await world.site.api.get("/api/v1/channels")).json()
    latest = next(c for c in channels if c["key"] == f"{DEVICE}.{point['name']}")["latest"]
    return point["name"], float(latest["value"]), float(point["max"])


async def test_a_supervisor_sends_a_setpoint_and_a_refused_one_shows_its_problem(
        browser: Browser, world: World) -> None:
    page = await _page(browser, world, Role.SUPERVISOR, f"/devices/{DEVICE}")
    name, current, top = await _writable(world)
    form = page.locator("[data-testid=setpoint-form]")
    await form.locator("[data-testid=setpoint-point]").select_option(name)
    await form.locator("[data-testid=setpoint-reason]").fill("dashboard test: a small step")
    await form.locator("[data-testid=setpoint-value]").fill(f"{current + 0.5:g}")
    await form.locator("[data-testid=setpoint-submit]").click()
    await page.wait_for_load_state()
    confirmed = page.locator("[data-testid=setpoint-command][data-result=confirmed]")
    await confirmed.first.wait_for(timeout=STATE_DEADLINE_MS)
    assert "dashboard test" in await confirmed.first.inner_text()
    await page_ready(page)

    form = page.locator("[data-testid=setpoint-form]")
    await form.locator("[data-testid=setpoint-point]").select_option(name)
    await form.locator("[data-testid=setpoint-reason]").fill("dashboard test: too high")
    await form.locator("[data-testid=setpoint-value]").fill(f"{top + 10:g}")
    await form.locator("[data-testid=setpoint-submit]").click()
    # the rule's answer (its problem names the body's field) sits next to the value field, which is marked invalid
    error = form.locator("[data-testid=field-error][data-field=value]")
    await error.filter(has_text="outside its limits").wait_for(timeout=10_000)
    assert await form.locator("[name=value]").get_attribute("aria-invalid") == "true"
    assert await page.locator("[data-testid=setpoint-command]").count() == 1  # the refusal left no command
    await page.context.close()
    # an operator may command too (the policy's entry for the API); a QA user sees who may
    page = await _page(browser, world, Role.QA, f"/devices/{DEVICE}")
    assert await page.locator("[data-testid=setpoint-form]").count() == 0
    assert "supervisor" in await page.locator("section[aria-labelledby=sp-h]").inner_text()
    r = await page.goto("/devices/no-such-device")
    assert r is not None and r.status == 404
    await page.context.close()


def _next_version() -> tuple[str, int, int]:
    """The demo recipe again as a new version: one acceptance limit changed and one input added."""
    data: dict[str, Any] = default_recipe().model_dump(mode="json")
    data["version"] += 1
    step = next(s for s in data["steps"] if s["key"] == "receive_cells")
    next(i for i in step["inputs"] if i["name"] == "viability")["accept_min"] = 85.0
    step["inputs"].append({"name": "cd3_count", "kind": "number", "unit": "cells", "min": 0, "max": 1.0e10,
                           "description": "CD3+ cells received"})
    return yaml.safe_dump(data, sort_keys=False), default_recipe().version, int(data["version"])


async def test_qa_compares_two_versions_of_the_demo_recipe(browser: Browser, world: World, artifacts: Path) -> None:
    text, old, new = _next_version()
    key = default_recipe().key
    r = await world.qa.post("/api/v1/recipes", json={"yaml": text, "signature": {
        "meaning": "approved", "password": DEMO_PASSWORD, "comment": "viability limit 85 %, CD3+ count"}})
    assert r.status_code in (200, 201), r.text
    for viewport in (None, TABLET):
        page = await _page(browser, world, Role.QA, "/recipes", viewport)
        group = page.locator(f"[data-testid=recipe-group][data-key='{key}']")
        assert await group.locator("[data-testid=recipe-row]").count() == 2
        assert "approved" in await group.locator(f"[data-testid=recipe-row][data-ref='{key}/{new}']").inner_text()
        await _fits(page)
        await page.select_option("[data-testid=compare-a]", f"{key}/{old}")
        await page.select_option("[data-testid=compare-b]", f"{key}/{new}")
        await page.click("[data-testid=compare-submit]")
        await page.wait_for_url("**/recipes/diff?*")
        await page_ready(page)
        fields = page.locator("[data-testid=diff-field]")
        assert [await f.get_attribute("data-path") for f in await fields.all()] == ["version"]
        steps = page.locator("[data-testid=diff-step]")
        assert [(await s.get_attribute("data-step"), await s.get_attribute("data-kind"))
                for s in await steps.all()] == [("receive_cells", "changed")]
        changes = steps.first.locator("[data-testid=diff-change]")
        assert [(await c.get_attribute("data-path"), await c.get_attribute("data-kind"))
                for c in await changes.all()] == [("inputs[viability].accept_min", "changed"),
                                                  ("inputs[cd3_count]", "added")]
        limit = changes.nth(0)
        assert (await limit.locator("[data-testid=diff-old]").inner_text()).strip() == "80"
        assert (await limit.locator("[data-testid=diff-new]").inner_text()).strip() == "85"
        assert "changed" in await limit.locator("[data-testid=diff-kind]").inner_text()  # a word, not colour alone
        added = changes.nth(1)
        assert "cells" in await added.locator("[data-testid=diff-new]").inner_text()
        assert "added" in await added.locator("[data-testid=diff-kind]").inner_text()
        await _fits(page)
        await page.screenshot(path=str(artifacts / f"recipe-diff-{_size(viewport)}.png"), full_page=True)
        # the new version in words: the step's inputs with their limits
        await page.click(f"a[href='/recipes/{key}/{new}']")
        await page_ready(page)
        step = page.locator("[data-testid=recipe-step][data-step=receive_cells]")
        assert "\u2265 85 %" in await step.locator("[data-testid=step-input][data-input=viability]").inner_text()
        assert await step.locator("[data-testid=step-input][data-input=cd3_count]").count() == 1
        assert "T0" in await page.locator("[data-testid=recipe-step][data-step=seed] [data-testid=step-window]") \
            .inner_text()
        await _fits(page)
        await page.screenshot(path=str(artifacts / f"recipe-{_size(viewport)}.png"), full_page=True)
        await page.context.close()
    same = await world.qa.get(f"/recipes/diff?a={key}/{new}&b={key}/{new}")
    assert same.status_code == 200 and 'data-testid="diff-none"' in same.text
    bad = await world.qa.get("/recipes/diff", params={"a": f"{key}/{old}", "b": "nonsense"})
    assert bad.status_code == 400 and "b:" in bad.text
    unknown = await world.qa.get(f"/recipes/diff?a={key}/{old}&b={key}/99")
    assert unknown.status_code == 404
