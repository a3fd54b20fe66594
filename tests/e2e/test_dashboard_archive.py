"""The runs archive and QA's deviations in a real browser against the real service (tests/e2e/conftest.py
dashboard_site): finding a run among several by donor and patient, paging; QA working through the deviations and
closing one with a signature after a refused attempt; both readable at tablet width."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.auth.principal import Role
from app.core.clock import ScaledClock
from app.demo.setup import DEMO_PASSWORD
from tests.api.protocol_support import INPUTS, LOTS, run_body
from tests.e2e.conftest import DashboardSite, dashboard_site, demo_page, page_ready

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

TABLET = {"width": 768, "height": 1024}
PATIENT = "P-ARCHIVE"


@dataclass
class World:
    site: DashboardSite
    runs: dict[str, dict[str, object]]  # donor id -> the run as planned (code, id)
    deviation_id: int


async def _plan(site: DashboardSite, clock: ScaledClock, donor: str) -> dict[str, object]:
    t0 = clock.now() + timedelta(hours=20)  # the coating's window is open now
    r = await site.api.post("/api/v1/runs", json=run_body(t0 - timedelta(days=3), planned_t0=t0.isoformat(),
                                                          donor_id=donor, patient_id=PATIENT,
                                                          incubator="incubator-1", culture_system="culture-system-1"))
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.fixture(scope="module")
async def world(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp("archive")
    clock = ScaledClock(scale=60.0)
    async with dashboard_site(db_dsn, tmp, clock, seed=5) as site:
        planned = {donor: await _plan(site, clock, donor) for donor in ("D-ARC-1", "D-ARC-2", "D-ARC-3")}
        # a deviation as the rules open it: the coating recorded at 30 degC, outside its acceptance limits
        run_id = planned["D-ARC-2"]["id"]
        r = await site.api.post(f"/api/v1/runs/{run_id}/steps/coat_vessels", json={
            "inputs": {**INPUTS["coat_vessels"], "coat_temperature": 30.0}, "lots": LOTS["coat_vessels"],
            "signature": {"meaning": "performed", "password": DEMO_PASSWORD}})
        assert r.status_code == 201, r.text
        [dev] = r.json()["deviations"]
        yield World(site, planned, int(dev["id"]))


async def _no_page_overflow(page: Page) -> bool:
    return bool(await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1"))


async def test_the_archive_finds_a_run_by_donor_and_patient_and_pages(browser: Browser, world: World,
                                                                      artifacts: Path) -> None:
    page = await demo_page(browser, world.site.base_url, Role.SUPERVISOR)
    await page.goto("/runs")
    await page_ready(page)
    rows = page.locator("[data-testid=run-row]")
    assert await rows.count() >= 4  # the site's run and these three, of every status
    form = page.locator("[data-testid=runs-filter]")
    await form.locator("input[name=donor_id]").fill("d-arc-2")
    await form.locator("input[name=patient_id]").fill(PATIENT)
    await form.locator("button[type=submit]").click()
    await page.wait_for_url("**/runs?*donor_id=d-arc-2*")
    wanted = world.runs["D-ARC-2"]
    row = page.locator(f"[data-testid=run-row][data-run-id='{wanted['id']}']")
    assert await rows.count() == 1
    text = await row.inner_text()
    assert "D-ARC-2" in text and PATIENT in text and "planned" in text.lower() and "incubator-1" in text
    assert "1 open" in await row.locator("[data-testid=open-deviations]").inner_text()
    assert "not issued" in text  # no batch record version before release
    # paging: two per page among the patient's three runs, older then newer again, the filter kept
    await page.goto(f"/runs?patient_id={PATIENT}&limit=2")
    ids = [int(world.runs[d]["id"]) for d in ("D-ARC-3", "D-ARC-2", "D-ARC-1")]
    assert [int(x) for x in await rows.evaluate_all("rs => rs.map(r => r.dataset.runId)")] == ids[:2]
    await page.click("[data-testid=page-next]")
    await page.wait_for_url("**before_id=*")
    assert [int(x) for x in await rows.evaluate_all("rs => rs.map(r => r.dataset.runId)")] == ids[2:]
    assert await page.locator("[data-testid=page-next]").count() == 0
    await page.click("[data-testid=page-prev]")
    await page.wait_for_url("**after_id=*")
    assert [int(x) for x in await rows.evaluate_all("rs => rs.map(r => r.dataset.runId)")] == ids[:2]
    assert PATIENT in page.url
    # the code opens the run's page
    await page.click(f"[data-testid=run-row][data-run-id='{ids[0]}'] [data-testid=run-link]")
    await page.wait_for_url(f"**/runs/{ids[0]}")
    # a bad filter: the page says which parameter, and lists nothing
    response = await page.goto("/runs?from=yesterday&donor_id=D-ARC-1")
    assert response is not None and response.status == 400
    problem = page.locator("[data-testid=filter-problem]")
    assert await problem.get_attribute("data-parameter") == "from" and "from" in await problem.inner_text()
    assert await page.locator("input[name=donor_id]").input_value() == "D-ARC-1"  # the form keeps what was typed
    # at tablet width the table scrolls in its box, the page itself does not
    await page.set_viewport_size(TABLET)
    await page.goto("/runs")
    await page_ready(page)
    assert await _no_page_overflow(page)
    await page.locator("[data-testid=run-link]").first.focus()
    await page.screenshot(path=str(artifacts / "runs-archive-tablet.png"), full_page=True)
    await page.context.close()


async def _sign(page: Page, password: str) -> None:
    dialog = page.locator("dialog[data-testid=api-sign-dialog]")
    await dialog.wait_for(state="visible")
    await dialog.locator("input[name=password]").fill(password)
    await dialog.locator("[data-testid=api-sign-confirm]").click()


async def test_qa_closes_a_deviation_with_a_signature_after_a_refused_attempt(browser: Browser, world: World,
                                                                               artifacts: Path) -> None:
    dev_id = world.deviation_id
    code = str(world.runs["D-ARC-2"]["code"])
    page = await demo_page(browser, world.site.base_url, Role.QA, TABLET)
    await page.goto("/deviations")
    await page_ready(page)
    row = page.locator(f"[data-testid=deviation-row][data-deviation-id='{dev_id}']")
    assert "open" in (await row.locator("[data-testid=deviation-status]").inner_text()).lower()
    assert code in await row.inner_text() and "acceptance_limit" in await row.inner_text()
    assert await _no_page_overflow(page)
    await page.goto(f"/deviations?run={code}&status=open")  # the filters: this run's open ones
    assert await page.locator("[data-testid=deviation-row]").count() == 1
    await row.locator("[data-testid=deviation-link]").click()
    await page.wait_for_url(f"**/deviations/{dev_id}")
    await page_ready(page)
    facts = await page.locator("[data-testid=deviation-facts]").inner_text()
    assert "acceptance_limit" in facts and "coat_vessels" in facts
    assert code in await page.locator("[data-testid=deviation-run]").inner_text()
    assert await page.locator("[data-testid=chart]").count() >= 1  # the run's charts around the event
    # a comment, then the close: first without a reason (next to its field), then a wrong password
    comment = page.locator("[data-testid=comment-form]")
    await comment.locator("textarea[name=text]").fill("coating re-checked with the thermometer log")
    await comment.locator("[data-testid=comment-submit]").click()
    await page.locator("[data-testid=comment]").first.wait_for()
    await page_ready(page)
    form = page.locator("[data-testid=close-form]")
    await form.locator("[data-testid=close-submit]").click()
    await _sign(page, DEMO_PASSWORD)
    reason_error = form.locator("[data-testid=field-error][data-field=reason]")
    await reason_error.wait_for(state="visible")
    assert (await reason_error.inner_text()).strip()
    assert await form.locator("textarea[name=reason]").get_attribute("aria-invalid") == "true"
    await form.locator("textarea[name=reason]").fill("coating temperature logged low by a loose probe")
    await form.locator("select[name=classification]").select_option("major")
    await form.locator("textarea[name=impact]").fill("none: the coating was at 37 degC by the incubator's record")
    await form.locator("[data-testid=close-submit]").click()  # major: its corrective actions are required
    await _sign(page, DEMO_PASSWORD)
    actions_error = form.locator("[data-testid=field-error][data-field=actions]")
    await actions_error.filter(has_text="major").wait_for()
    assert await form.locator("textarea[name=actions]").get_attribute("aria-invalid") == "true"
    await form.locator("textarea[name=actions]").fill("probe fixed; operators retrained")
    await form.locator("[data-testid=close-submit]").click()
    await _sign(page, "not-the-password")
    error = form.locator("[data-testid=form-error]")
    await error.wait_for(state="visible")
    assert "password" in (await error.inner_text()).lower()
    assert await page.locator("[data-testid=closure]").count() == 0
    # meanwhile an operator watches the runs archive and the same deviation's page
    watcher = await demo_page(browser, world.site.base_url, Role.OPERATOR)
    await watcher.goto(f"/runs?patient_id={PATIENT}")
    await page_ready(watcher)
    run_row = watcher.locator(f"[data-testid=run-row][data-run-id='{world.runs['D-ARC-2']['id']}']")
    assert "1 open" in await run_row.locator("[data-testid=open-deviations]").inner_text()
    other = await watcher.context.new_page()
    await other.goto(f"/deviations/{dev_id}")
    await page_ready(other)
    assert await other.locator("[data-testid=deviation-changed]").is_hidden()
    await form.locator("[data-testid=close-submit]").click()
    await _sign(page, DEMO_PASSWORD)
    closure = page.locator("[data-testid=closure]")
    await closure.wait_for()
    # both follow without a reload: the archive's count, and a notice on the deviation (its page is not replaced)
    await run_row.locator("[data-testid=open-deviations]").filter(has_text="none").wait_for(timeout=10_000)
    changed = other.locator("[data-testid=deviation-changed]")
    await changed.filter(has_text="closed").wait_for(timeout=10_000)
    await watcher.context.close()
    text = await closure.inner_text()
    assert "major" in text and "loose probe" in text and "retrained" in text and "qa" in text
    assert "approved" in (await page.locator("[data-testid=closure-signature]").inner_text()).lower()
    assert await page.locator("[data-testid=close-form]").count() == 0
    await page.screenshot(path=str(artifacts / "deviation-closed-tablet.png"), full_page=True)
    # the work list shows it closed; the audit trail has the closure and its signature
    await page.goto("/deviations")
    status = page.locator(f"[data-testid=deviation-row][data-deviation-id='{dev_id}'] [data-testid=deviation-status]")
    assert "closed" in (await status.inner_text()).lower()
    await page.goto(f"/audit?entity_type=deviation&entity_id={dev_id}")
    actions = await page.locator("[data-testid=audit-row] code").all_inner_texts()
    assert {"deviation.comment", "signature.failed", "deviation.close", "signature.create"} <= set(actions)
    await page.context.close()


async def test_an_operator_reads_a_deviation_but_has_no_close_form(browser: Browser, world: World) -> None:
    page = await demo_page(browser, world.site.base_url, Role.OPERATOR)
    await page.goto(f"/deviations/{world.deviation_id}")
    await page_ready(page)
    assert await page.locator("[data-testid=deviation-facts]").count() == 1
    assert await page.locator("[data-testid=close-form]").count() == 0
    await page.context.close()
