"""The operator dashboard in a real browser (Debian's Chromium driven by Playwright's async API) against a real
server, both simulators and PostgreSQL, on a clock at x60 (one wall second is one clock minute).

Screenshots of the overview and run pages (1280x800 and tablet width) are saved in test-artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from pydantic import SecretStr

from app.auth.principal import Role
from app.core.clock import ScaledClock
from app.demo.setup import DEMO_PASSWORD
from app.settings import Settings
from simulators.culture_system import CultureSystemSimulator
from simulators.faults import Fault
from simulators.incubator import IncubatorSimulator
from tests.api.protocol_support import INPUTS, LOTS
from tests.e2e.conftest import DESKTOP, dashboard_site, demo_page, page_ready, serve
from tests.support import free_port, wait_for

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

SCALE = 60.0
TABLET = {"width": 768, "height": 1024}
TEMP = "incubator-1.temperature"


@dataclass
class Dash:
    base_url: str
    incubator: IncubatorSimulator
    culture: CultureSystemSimulator
    api: httpx.AsyncClient  # signed in as the operator
    run_id: int


@pytest.fixture(scope="module")
async def dash(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dash]:
    tmp: Path = tmp_path_factory.mktemp("dash")
    async with dashboard_site(db_dsn, tmp, ScaledClock(scale=SCALE), seed=3) as site:
        yield Dash(site.base_url, site.sims.incubator, site.sims.culture, site.api, site.run_id)


async def _page(browser: Browser, dash: Dash, role: Role = Role.OPERATOR,
                viewport: dict[str, int] | None = None) -> Page:
    return await demo_page(browser, dash.base_url, role, viewport)


_ready = page_ready


async def test_login_shows_the_role_and_a_wrong_password_is_refused(browser: Browser, dash: Dash) -> None:
    ctx = await browser.new_context(viewport=DESKTOP, base_url=dash.base_url)  # type: ignore[arg-type]
    page = await ctx.new_page()
    await page.goto("/login")
    await page.fill("form#login input[name=username]", "operator")
    await page.fill("form#login input[name=password]", "not-the-password")
    await page.click("form#login button[type=submit]")
    alert = page.locator("[role=alert]")
    await alert.wait_for()
    assert "password" in (await alert.inner_text()).lower()
    await ctx.close()
    page = await _page(browser, dash)
    assert "(operator)" in await page.locator("[data-testid=whoami]").inner_text()
    await page.click("[data-testid=logout]")
    await page.wait_for_url(re.compile(r"/login"))
    await page.goto("/")
    await page.wait_for_url(re.compile(r"/login"))  # the session ended
    await page.context.close()


async def test_overview_shows_the_run_devices_and_next_step(browser: Browser, dash: Dash, artifacts: Path) -> None:
    page = await _page(browser, dash)
    card = page.locator(f"[data-testid=run-card][data-run-id='{dash.run_id}']")
    await card.wait_for()
    assert "Planned" in await card.locator("[data-testid=run-day]").inner_text()
    assert await card.locator("[data-testid=next-step]").inner_text()
    countdown = card.locator("[data-testid=countdown]")
    first = await countdown.inner_text()
    await wait_for(lambda: _changed(countdown, first), timeout=10, what="the countdown to move")
    for device in ("incubator-1", "culture-system-1"):
        state = page.locator(f"[data-testid=device-state][data-device='{device}']")
        assert "online" in (await state.inner_text()).lower()
    await page.screenshot(path=str(artifacts / "overview-1280x800.png"), full_page=True)
    await page.set_viewport_size(TABLET)
    await page.screenshot(path=str(artifacts / "overview-tablet.png"), full_page=True)
    await page.context.close()


async def _changed(locator: Any, before: str) -> bool:
    return bool(await locator.inner_text() != before)


async def test_a_live_value_reaches_the_chart_without_reloading(browser: Browser, dash: Dash, artifacts: Path) -> None:
    page = await _page(browser, dash)
    await page.goto(f"/runs/{dash.run_id}")
    await _ready(page)
    await page.locator(f"[data-testid=chart][data-channel='{TEMP}']").wait_for()
    first = await page.evaluate(f"window.culturectl.charts['{TEMP}'].last()")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    async def moved() -> bool:
        last = await page.evaluate(f"window.culturectl.charts['{TEMP}'].last()")
        return bool(last and last["receivedAt"] and (first is None or last["t"] > first["t"]))

    await wait_for(moved, timeout=15, what="a new temperature point on the chart")
    last = await page.evaluate(f"window.culturectl.charts['{TEMP}'].last()")
    assert 30 < last["v"] < 45 and navigations == []
    assert await page.evaluate(f"window.culturectl.charts['{TEMP}'].count()") <= 2500
    await page.screenshot(path=str(artifacts / "run-1280x800.png"), full_page=True)
    await page.set_viewport_size(TABLET)
    await page.screenshot(path=str(artifacts / "run-tablet.png"), full_page=True)
    await page.context.close()


async def test_an_injected_fault_raises_an_alarm_the_operator_acknowledges(browser: Browser, dash: Dash) -> None:
    page = await _page(browser, dash)
    alarm_id = "incubator-1.door_open:limit"
    row = page.locator(f"[data-testid=alarm-row][data-alarm-id='{alarm_id}']")
    await dash.incubator.inject(Fault.door_left_open)
    try:
        await row.first.wait_for(timeout=20_000)  # open > 60 s: one wall second at x60
        status = row.first.locator("[data-testid=alarm-status]")
        await wait_for(lambda: _contains(status, "unacknowledged"), timeout=10, what="the alarm unacknowledged")
        assert (await row.first.locator("[data-testid=alarm-priority]").inner_text()).strip()
        await row.first.locator("[data-testid=ack]").click()
        dialog = page.locator("dialog[data-testid=comment-dialog]")
        await dialog.locator("textarea[name=comment]").fill("door closed by the operator")
        await dialog.locator("[data-testid=comment-confirm]").click()
        await wait_for(lambda: _acknowledged(status), timeout=10, what="the alarm acknowledged on the page")
    finally:
        await dash.incubator.clear(Fault.door_left_open)
    r = await dash.api.get(f"/api/v1/alarms/{alarm_id}")
    assert r.json()["status"] in ("active_ack", "normal")
    # the alarms page shows the journal: the activation and the acknowledgement, with who and why
    await page.goto("/alarms")
    await _ready(page)
    events = page.locator(f"[data-testid=alarm-event][data-alarm-id='{alarm_id}']")
    assert await events.count() >= 2
    assert "door closed by the operator" in " ".join(await events.all_inner_texts())
    await page.context.close()


async def _contains(locator: Any, *words: str) -> bool:
    text = (await locator.inner_text()).lower()
    return any(w in text for w in words)


async def _acknowledged(locator: Any) -> bool:
    text = (await locator.inner_text()).lower()
    return "acknowledged" in text and "unacknowledged" not in text


async def test_step_out_of_its_window_shows_the_reason_and_inside_it_is_signed_and_recorded(
        browser: Browser, dash: Dash) -> None:
    page = await _page(browser, dash)
    await page.goto(f"/runs/{dash.run_id}")
    await _ready(page)
    # receiving the cells opens at T0 - 6 h: too early now
    await page.click("[data-testid=enter-step][data-step=receive_cells]")
    form = page.locator("[data-testid=step-form][data-step=receive_cells]")
    await _fill(form, INPUTS["receive_cells"])
    await form.locator("[data-testid=submit-step]").click()
    await _sign_if_asked(page)
    error = form.locator("[data-testid=form-error]")
    await error.wait_for()
    text = await error.inner_text()
    assert "before" in text.lower() and "earliest" in text.lower(), text
    step = page.locator("[data-testid=timeline] [data-testid=step][data-step=receive_cells]")
    assert await step.get_attribute("data-status") != "done"
    # a value outside its range is shown next to its field
    await page.click("[data-testid=enter-step][data-step=coat_vessels]")
    form = page.locator("[data-testid=step-form][data-step=coat_vessels]")
    await _fill(form, {**INPUTS["coat_vessels"], "coat_temperature": 80})
    await form.locator("[data-testid=submit-step]").click()
    await _sign_if_asked(page)
    field = form.locator("[data-testid=field-error][data-field=coat_temperature]")
    await field.wait_for()
    assert await field.inner_text()
    # a missing lot is named next to its reagent; inside its window, with the lots and the operator's signature,
    # the timeline shows it done
    await _fill(form, INPUTS["coat_vessels"])
    await form.locator("[data-testid=submit-step]").click()
    await _sign_if_asked(page)
    lot = form.locator("[data-testid=field-error][data-field='lots.dl4']")
    await lot.wait_for()
    assert "DL-4" in await lot.inner_text()
    await _fill(form, {f"lots.{m}.{part}": value for m, v in LOTS["coat_vessels"].items() for part, value in v.items()})
    await form.locator("[data-testid=submit-step]").click()
    assert await _sign_if_asked(page), "coating needs a signature: the dialog must ask for it"
    # the form says it was recorded (or why not), then the timeline shows it done
    await wait_for(lambda: _answered(form), timeout=15, what="the form to show the service's answer")
    assert "Recorded" in await form.locator(".success").inner_text(), \
        await form.locator("[data-testid=form-error]").inner_text()
    coat = page.locator("[data-testid=timeline] [data-testid=step][data-step=coat_vessels]")
    await wait_for(lambda: _status(coat, "done"), timeout=15, what="coating done on the timeline")
    r = await dash.api.get(f"/api/v1/runs/{dash.run_id}")
    assert next(s for s in r.json()["schedule"] if s["key"] == "coat_vessels")["status"] == "done"
    await page.context.close()


async def _answered(form: Any) -> bool:
    texts = [await form.locator(sel).inner_text() for sel in (".success", "[data-testid=form-error]")]
    return any(t.strip() for t in texts)


async def _status(locator: Any, status: str) -> bool:
    return bool(await locator.get_attribute("data-status") == status)


async def _fill(form: Any, values: dict[str, Any]) -> None:
    for name, value in values.items():
        field = form.locator(f"[name='{name}']")
        tag = await field.evaluate("e => e.tagName.toLowerCase() + ':' + (e.type || '')")
        if tag.startswith("select"):
            await field.select_option(str(value))
        elif tag.endswith("checkbox"):
            await field.set_checked(bool(value))
        else:
            await field.fill(str(value))


async def _sign_if_asked(page: Page) -> bool:
    dialog = page.locator("dialog[data-testid=api-sign-dialog]")
    try:
        await dialog.wait_for(state="visible", timeout=3_000)
    except Exception:
        return False
    await dialog.locator("input[name=password]").fill(DEMO_PASSWORD)
    await dialog.locator("select[name=meaning]").select_option("performed")
    await dialog.locator("[data-testid=api-sign-confirm]").click()
    return True


async def test_an_open_page_keeps_its_session_past_the_token_lifetime(browser: Browser, db_dsn: str,
                                                                      tmp_path: Path) -> None:
    """A wall screen: the token lives 12 s here, the page renews it and is still signed in after 15 s."""
    clock = ScaledClock(scale=SCALE)
    settings = Settings(database_url=SecretStr(db_dsn), data_dir=tmp_path / "data", port=free_port(),
                        connect_devices=False, token_ttl_minutes=0.2)
    async with serve(settings, clock) as (base_url, _runtime):
        ctx = await browser.new_context(viewport=DESKTOP, base_url=base_url)  # type: ignore[arg-type]
        page = await ctx.new_page()
        await page.goto("/login")
        await page.fill("form#login input[name=username]", "operator")
        await page.fill("form#login input[name=password]", DEMO_PASSWORD)
        await page.click("form#login button[type=submit]")
        await page.wait_for_url(lambda url: "/login" not in url)
        await _ready(page)
        await page.wait_for_function("() => (window.culturectl.renewals || 0) >= 3", timeout=30_000)
        await page.reload()
        await _ready(page)
        assert "/login" not in page.url
        assert "(operator)" in await page.locator("[data-testid=whoami]").inner_text()
        await ctx.close()


async def test_keyboard_only_login_and_the_audit_view_for_qa_only(browser: Browser, dash: Dash) -> None:
    ctx = await browser.new_context(viewport=TABLET, base_url=dash.base_url)  # type: ignore[arg-type]
    page = await ctx.new_page()
    await page.goto("/audit")
    await page.wait_for_url(re.compile(r"/login\?next=%2Faudit|/login\?next=/audit"))
    await page.focus("form#login input[name=username]")
    await page.keyboard.type("qa")
    await page.keyboard.press("Tab")
    await page.keyboard.type(DEMO_PASSWORD)
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(r"/audit"))
    await _ready(page)
    assert await page.locator("[data-testid=audit-row]").count() > 0
    await page.fill("form#audit-filter input[name=action]", "run.create")
    await page.press("form#audit-filter input[name=action]", "Enter")
    await page.wait_for_url(re.compile(r"action=run.create"))
    rows = page.locator("[data-testid=audit-row]")
    assert await rows.count() >= 1
    for text in await rows.all_inner_texts():
        assert "run.create" in text
    await ctx.close()
    operator = await _page(browser, dash)
    r = await operator.goto("/audit")
    assert r is not None and r.status == 403
    assert "operator" in (await operator.content())
    await operator.context.close()

