"""People pages (admin) in a real browser against the real service: unlock a locked user, create a user (a refused
attempt first), an API key shown once then revoked, a session revoked, the notification policy page (its editor's
refusal, a test send); non-admins get 403. Screenshots at 1280x800 and 768x1024 in test-artifacts/."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.async_api import expect

from app.auth.principal import Role
from app.core.clock import ScaledClock
from tests.e2e.conftest import DashboardSite, dashboard_site, demo_bearer, demo_page, page_ready

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

TABLET = {"width": 768, "height": 1024}
PASSWORD = "Seven-Day-Culture-People-42"
LOCKOUT = 3


@pytest.fixture(scope="module")
async def site(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DashboardSite]:
    tmp: Path = tmp_path_factory.mktemp("people")
    async with dashboard_site(db_dsn, tmp, ScaledClock(scale=60.0), seed=5, lockout_threshold=LOCKOUT,
                              login_throttle_after=1000, login_throttle_client_after=1000) as s:
        yield s


@pytest.fixture(scope="module")
async def admin_api(site: DashboardSite) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=site.base_url, timeout=10) as api:
        await demo_bearer(api, Role.ADMIN)
        yield api


async def _user(admin_api: httpx.AsyncClient, role: str = "operator") -> tuple[int, str]:
    name = f"pp-{uuid.uuid4().hex[:8]}"
    r = await admin_api.post("/api/v1/users", json={"username": name, "display_name": f"P. {name}", "role": role,
                                                    "password": PASSWORD, "reason": "e2e"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"]), name


async def _login(site: DashboardSite, username: str, password: str = PASSWORD) -> httpx.Response:
    async with httpx.AsyncClient(base_url=site.base_url, timeout=10) as c:
        return await c.post("/api/v1/auth/login", json={"username": username, "password": password})


async def _admin(browser: Browser, site: DashboardSite, viewport: dict[str, int] | None = None) -> Page:
    page = await demo_page(browser, site.base_url, Role.ADMIN, viewport)
    page.on("dialog", lambda dialog: dialog.accept())  # the revoke forms' confirm()
    return page


async def _state(page: Page, username: str) -> str:
    return (await page.locator(f"[data-testid=user-row][data-username='{username}'] "
                               "[data-testid=user-state]").inner_text()).strip().lower()


async def test_non_admins_get_403_on_people(browser: Browser, site: DashboardSite) -> None:
    for role in (Role.OPERATOR, Role.QA):
        page = await demo_page(browser, site.base_url, role)
        assert await page.locator("header nav a[href='/people']").count() == 0
        for path in ("/people", "/people/notifications", "/people/1"):
            response = await page.goto(path)
            assert response is not None and response.status == 403, path
        await page.context.close()
    # a supervisor keeps the rotas and their overrides (as the API lets them) but sends no test and manages nobody
    page = await demo_page(browser, site.base_url, Role.SUPERVISOR)
    await page.click("header nav a[href='/people/notifications']")
    await page.wait_for_url("**/people/notifications")
    await page_ready(page)
    assert await page.locator("[data-testid=policy-editor]").count() == 1
    assert await page.locator("[data-testid=notify-test]").count() == 0
    response = await page.goto("/people")
    assert response is not None and response.status == 403
    await page.context.close()


async def test_an_admin_unlocks_a_locked_user_who_then_logs_in(browser: Browser, site: DashboardSite,
                                                               admin_api: httpx.AsyncClient) -> None:
    user_id, name = await _user(admin_api)
    for _ in range(LOCKOUT):
        await _login(site, name, "Not-The-Password-1")
    assert (await _login(site, name)).status_code == 403  # locked: even the right password
    page = await _admin(browser, site)
    await page.goto("/people")
    assert "locked" in await _state(page, name)
    await page.click(f"[data-testid=user-row][data-username='{name}'] a")
    await page.wait_for_url(f"**/people/{user_id}")
    form = page.locator("[data-testid=user-unlock]")
    await form.locator("button[type=submit]").click()  # no reason: the browser refuses (required), nothing sent
    assert await form.locator("input[name=reason]").evaluate("e => !e.validity.valid && e === document.activeElement")
    assert "locked" in (await page.locator("[data-testid=person-state]").inner_text()).lower()
    await form.locator("input[name=reason]").fill("identity checked on the phone")
    async with page.expect_navigation():
        await form.locator("button[type=submit]").click()
    await page_ready(page)
    assert (await page.locator("[data-testid=person-state]").inner_text()).strip().lower().endswith("active")
    assert await page.locator("[data-testid=user-unlock]").count() == 0
    assert (await _login(site, name)).status_code == 200
    await page.context.close()


async def test_creating_a_user_shows_the_refusal_next_to_its_field_then_succeeds(
        browser: Browser, site: DashboardSite) -> None:
    page = await _admin(browser, site)
    await page.goto("/people")
    name = f"pn-{uuid.uuid4().hex[:8]}"
    form = page.locator("[data-testid=user-create]")
    await form.locator("input[name=username]").fill(name)
    await form.locator("input[name=display_name]").fill("Pat New")
    await form.locator("select[name=role]").select_option("supervisor")
    await form.locator("input[name=password]").fill("short")
    await form.locator("input[name=reason]").fill("new shift lead")
    await form.locator("button[type=submit]").click()
    slot = form.locator("[data-testid=field-error][data-field=password]")
    await expect(slot).not_to_be_empty()
    assert "12" in await slot.inner_text() or "character" in await slot.inner_text()
    assert await form.locator("input[name=password]").get_attribute("aria-invalid") == "true"
    await form.locator("input[name=password]").fill(PASSWORD)
    await form.locator("button[type=submit]").click()
    await page.wait_for_url(re.compile(r"/people/\d+$"))
    await page_ready(page)
    assert (await page.locator("[data-testid=person-role]").inner_text()).strip() == "supervisor"
    assert "Pat New" in await page.locator("h1").inner_text()
    assert (await _login(site, name)).status_code == 200
    # the same name again: the refusal is next to the user name
    await page.goto("/people")
    await form.locator("input[name=username]").fill(name)
    await form.locator("input[name=display_name]").fill("Pat Again")
    await form.locator("input[name=password]").fill(PASSWORD)
    await form.locator("button[type=submit]").click()
    taken = form.locator("[data-testid=field-error][data-field=username]")
    await expect(taken).to_contain_text("already exists")
    await page.context.close()


async def test_an_api_key_is_shown_once_works_then_is_revoked(browser: Browser, site: DashboardSite,
                                                              artifacts: Path) -> None:
    page = await _admin(browser, site)
    await page.goto("/people")
    name = f"lims-{uuid.uuid4().hex[:6]}"
    form = page.locator("[data-testid=key-create]")
    await form.locator("input[name=name]").fill(name)
    await form.locator("select[name=role]").select_option("automation")
    await form.locator("button[type=submit]").click()
    shown = page.locator("[data-testid=new-key]")
    await shown.wait_for(state="visible")
    key = (await shown.inner_text()).strip()
    assert key.startswith("ck_")
    await page.screenshot(path=str(artifacts / "people-key-shown-1280x800.png"), full_page=True)
    await page.reload()
    await page_ready(page)
    assert key not in await page.content()  # the server never renders it
    row = page.locator(f"[data-testid=key-row][data-name='{name}']")
    assert "in use" in (await row.locator("[data-testid=key-state]").inner_text()).lower()
    async with httpx.AsyncClient(base_url=site.base_url, timeout=10) as c:
        assert (await c.get("/api/v1/runs", headers={"X-API-Key": key})).status_code == 200
        await row.locator("input[name=reason]").fill("script retired")
        async with page.expect_navigation():
            await row.locator("button[type=submit]").click()
        await page_ready(page)
        state = page.locator(f"[data-testid=key-row][data-name='{name}'] [data-testid=key-state]")
        assert "revoked" in (await state.inner_text()).lower()
        assert (await c.get("/api/v1/runs", headers={"X-API-Key": key})).status_code == 401
    await page.context.close()


async def test_an_admin_revokes_a_session_whose_next_call_is_401(browser: Browser, site: DashboardSite,
                                                                 admin_api: httpx.AsyncClient,
                                                                 artifacts: Path) -> None:
    _id, name = await _user(admin_api)
    token = (await _login(site, name)).json()["access_token"]
    page = await _admin(browser, site)
    await page.goto("/people#sessions")
    row = page.locator(f"[data-testid=session-row][data-username='{name}']")
    assert await row.count() == 1
    assert token not in await page.content()
    await row.locator("input[name=reason]").fill("left logged in on the bench PC")
    async with page.expect_navigation():
        await row.locator("button[type=submit]").click()
    await page_ready(page)
    assert await page.locator(f"[data-testid=session-row][data-username='{name}']").count() == 0
    async with httpx.AsyncClient(base_url=site.base_url, timeout=10) as c:
        r = await c.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
    await page.screenshot(path=str(artifacts / "people-1280x800.png"), full_page=True)
    await page.set_viewport_size(TABLET)
    await page.screenshot(path=str(artifacts / "people-tablet.png"), full_page=True)
    assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    await page.context.close()


async def test_the_notification_policy_page_shows_rules_rotas_refusals_and_test_sends(
        browser: Browser, site: DashboardSite, admin_api: httpx.AsyncClient, artifacts: Path) -> None:
    _id, name = await _user(admin_api, "supervisor")
    policy = {"rules": [{"name": "high-alarms", "match": {"priorities": ["high"]},
                         "tiers": [{"notify": {"rotas": ["bench"]}},
                                   {"notify": {"roles": ["supervisor"]}, "after_min": 15}]}],
              "rotas": [{"name": "bench", "shifts": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                                                      "start": "00:00", "end": "00:00", "users": [name]}]}]}
    r = await admin_api.put("/api/v1/notifications/policy", json={"policy": policy, "reason": "e2e rota"})
    assert r.status_code == 201, r.text
    page = await _admin(browser, site, TABLET)
    await page.goto("/people/notifications")
    await page_ready(page)
    rule = page.locator("[data-testid=rule][data-rule='high-alarms']")
    assert "priority high" in await rule.inner_text() and "Tier 2" in await rule.inner_text()
    assert name in await page.locator("[data-testid=oncall] li[data-rota=bench]").inner_text()
    assert name in await page.locator("[data-testid=rota][data-rota=bench]").inner_text()
    # a test send: the on-call user has no contact point, so nothing is sent, and the page says so per user
    rota = page.locator("[data-testid=rota][data-rota=bench]")
    await rota.locator("[data-testid=notify-test] button").click()
    send = rota.locator(f"[data-testid=notify-test-send][data-username='{name}']")
    await send.wait_for()
    assert await send.get_attribute("data-ok") == "false" and "no enabled contact point" in await send.inner_text()
    # the editor: a tier that notifies nobody is refused with its place in the document
    editor = page.locator("[data-testid=policy-editor]")
    broken = policy | {"rules": [{**policy["rules"][0], "tiers": [{"notify": {}}]}]}  # type: ignore[dict-item]
    await editor.locator("textarea[name=policy]").fill(json.dumps(broken))
    await editor.locator("input[name=reason]").fill("try a broken one")
    await editor.locator("button[type=submit]").click()
    error = editor.locator("[data-testid=form-error]")
    await error.wait_for(state="visible")
    assert "policy.rules.0.tiers.0" in await error.inner_text()
    await page.screenshot(path=str(artifacts / "people-notifications-tablet.png"), full_page=True)
    assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    await page.context.close()
