"""The inactivity lock in a real browser: a wall screen (CULTURECTL_INACTIVITY_KEEP_LIVE) locks itself after a few
seconds without input, its live chart keeps moving behind the lock, the page takes no input and keeps the focus in
the lock dialog; a wrong password is refused, the right one unlocks (audited session.unlock); another user logging
in on the locked screen ends the first session, and the browser's other tab reloads as the new user's page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from app import db
from app.core.clock import ScaledClock
from app.demo.setup import DEMO_PASSWORD
from tests.e2e.conftest import DESKTOP, dashboard_site
from tests.support import wait_for

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

SCALE = 60.0
TEMP = "incubator-1.temperature"
LIMIT_MINUTES = 0.05  # 3 wall seconds


@dataclass
class Wall:
    base_url: str
    dsn: str
    run_id: int


async def _audit(wall: Wall, action: str) -> list[tuple[str, str | None]]:
    """(actor, reason) of each record of `action`, oldest first (read from the database: a bearer token of this
    service's sessions would be locked after its 3 idle seconds too)."""
    conn = await db.connect(wall.dsn)
    try:
        rows = await conn.fetch("SELECT actor_name, reason FROM audit_log WHERE action = $1 ORDER BY seq", action)
        return [(r["actor_name"], r["reason"]) for r in rows]
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def wall(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Wall]:
    tmp: Path = tmp_path_factory.mktemp("wall")
    async with dashboard_site(db_dsn, tmp, ScaledClock(scale=SCALE), seed=5, inactivity_minutes=LIMIT_MINUTES,
                              inactivity_keep_live=True) as site:
        yield Wall(site.base_url, db_dsn, site.run_id)


async def _login_to(browser: Browser, wall: Wall, path: str) -> Page:
    ctx = await browser.new_context(viewport=DESKTOP, base_url=wall.base_url)  # type: ignore[arg-type]
    page = await ctx.new_page()
    await page.goto(f"/login?next={path}")
    await page.fill("form#login input[name=username]", "operator")
    await page.fill("form#login input[name=password]", DEMO_PASSWORD)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(lambda url: "/login" not in url)
    return page


# Predicates as functions: the page's CSP allows no eval of a string.
async def page_ready(page: Page) -> None:
    await page.wait_for_function("() => document.body.dataset.ready === 'true'", timeout=20_000)


async def _locked(page: Page) -> None:
    await page.wait_for_function("() => document.body.dataset.locked === 'true'", timeout=15_000)


async def _chart_t(page: Page) -> float:
    last = await page.evaluate(f"() => window.culturectl.charts['{TEMP}'] && window.culturectl.charts['{TEMP}'].last()")
    return float(last["t"]) if last else 0.0


async def test_the_wall_screen_locks_stays_live_and_unlocks_with_the_password(browser: Browser, wall: Wall) -> None:
    page = await _login_to(browser, wall, f"/runs/{wall.run_id}")
    await page_ready(page)
    await _locked(page)
    dialog = page.locator("[data-testid=lock-dialog]")
    assert await dialog.is_visible()
    assert "Screen locked" in await dialog.inner_text()

    # the page behind takes no input: inert, the pointer lands on the dialog, the focus stays in it
    assert await page.evaluate("() => document.querySelector('main').inert && document.querySelector('header').inert")
    hit = await page.evaluate("""() => {
        const b = document.getElementById('logout').getBoundingClientRect();
        const el = document.elementFromPoint(b.x + b.width / 2, b.y + b.height / 2);
        return el ? (el.closest('#lock-dialog') ? 'dialog' : el.id || el.tagName) : null; }""")
    assert hit == "dialog"
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await page.mouse.click(40, 60)  # the page header, under the backdrop
    assert await page.evaluate("() => document.body.dataset.locked") == "true"
    for _ in range(6):
        await page.keyboard.press("Tab")
        assert await page.evaluate("() => !!document.activeElement.closest('#lock-dialog')")
    await page.keyboard.press("Escape")
    assert await dialog.is_visible()

    # a wall screen: the live chart keeps moving behind the lock
    before = await _chart_t(page)

    async def moved() -> bool:
        return await _chart_t(page) > before

    await wait_for(moved, timeout=15, what="a new temperature point behind the lock")
    assert await page.evaluate("() => document.body.dataset.locked") == "true"

    await page.fill("#lock-password", "Wrong-Password-42")
    await page.press("#lock-password", "Enter")
    await page.locator("[data-testid=lock-error]").filter(has_text="wrong password").wait_for(timeout=10_000)
    assert await page.evaluate("() => document.body.dataset.locked") == "true"

    await page.fill("#lock-password", DEMO_PASSWORD)
    await page.press("#lock-password", "Enter")
    await page.wait_for_function("() => document.body.dataset.locked === 'false'", timeout=10_000)
    assert not await dialog.is_visible() and navigations == []
    assert [a for a, _ in await _audit(wall, "session.unlock")] == ["operator"]
    assert await _audit(wall, "session.unlock_failed") == [("operator", "wrong password")]
    await page.context.close()


async def test_another_user_logging_in_on_the_locked_screen_ends_the_first_session(browser: Browser,
                                                                                    wall: Wall) -> None:
    page = await _login_to(browser, wall, "/")
    await page_ready(page)
    other_tab = await page.context.new_page()  # the same browser, the same session
    await other_tab.goto("/alarms")
    await page_ready(other_tab)
    first = {c["name"]: c["value"] for c in await page.context.cookies()}
    await _locked(page)
    await _locked(other_tab)
    await page.fill("#lock-username", "supervisor")
    await page.fill("#lock-password", DEMO_PASSWORD)
    await page.press("#lock-password", "Enter")
    await page.locator("[data-testid=whoami]").filter(has_text="(supervisor)").wait_for(timeout=15_000)
    # the other tab is not "unlocked" as the first user: it reloads, as the new user's page
    await other_tab.locator("[data-testid=whoami]").filter(has_text="(supervisor)").wait_for(timeout=15_000)
    assert other_tab.url.endswith("/alarms")
    async with httpx.AsyncClient(base_url=wall.base_url, cookies=first, timeout=10) as old:
        r = await old.get("/api/v1/auth/me")
        assert r.status_code == 401 and r.json()["type"].endswith("/session-revoked")
    assert await _audit(wall, "session.end") == [("supervisor", "another user logged in on the locked screen")]
    await page.context.close()
