"""The security headers in a real browser (Debian's Chromium, Playwright) against a real server and simulators.

The dashboard's pages (login, overview, a run with live charts, its batch record, the alarms), the live stream and
the API reference pages (/docs: Swagger UI, /redoc: ReDoc) run under the service's real Content-Security-Policy
(app/api/headers.py) with no violation and no console error; the API reference pages ask nothing of any other
site. The headers themselves are checked on an HTML page, a JSON answer and the SSE stream (which still streams).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from app.api.headers import PERMISSIONS_POLICY
from app.core.clock import ScaledClock
from app.demo.setup import DEMO_PASSWORD
from tests.e2e.conftest import DESKTOP, dashboard_site, page_ready

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Request

# Stores each securitypolicyviolation of the page in window.__csp (set before any of the page's scripts runs).
WATCH_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push({directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile,
                     line: e.lineNumber, sample: e.sample});
});
"""


@dataclass
class Site:
    base_url: str
    api: httpx.AsyncClient  # signed in as the operator (bearer)
    run_id: int


@dataclass
class Watched:
    """A browser context whose pages report CSP violations, console messages and every request."""
    context: BrowserContext
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    async def page(self) -> Page:
        page = await self.context.new_page()

        def on_console(msg: ConsoleMessage) -> None:
            # errors, and any word of the policy (ReDoc warns of the schema's nullable oneOf: not ours to judge)
            if msg.type == "error" or "Content Security Policy" in msg.text:
                self.console.append(f"{page.url}: {msg.type}: {msg.text}")

        page.on("console", on_console)
        return page


async def _violations(page: Page) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await page.evaluate("window.__csp || []")
    return found


@pytest.fixture(scope="module")
async def site(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    tmp: Path = tmp_path_factory.mktemp("csp")
    async with dashboard_site(db_dsn, tmp, ScaledClock(scale=60.0), seed=5) as world:
        yield Site(world.base_url, world.api, world.run_id)


@pytest.fixture
async def watched(browser: Browser, site: Site) -> AsyncIterator[Watched]:
    context = await browser.new_context(viewport=DESKTOP, base_url=site.base_url)  # type: ignore[arg-type]
    await context.add_init_script(WATCH_VIOLATIONS)
    w = Watched(context)

    def on_request(request: Request) -> None:
        w.requests.append(request.url)

    context.on("request", on_request)
    try:
        yield w
    finally:
        await context.close()


def _assert_common_headers(headers: httpx.Headers) -> None:
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["permissions-policy"] == PERMISSIONS_POLICY
    assert "strict-transport-security" not in headers  # CULTURECTL_COOKIE_SECURE is off: plain HTTP
    csp = headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'", csp
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'", csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert directives["style-src"].startswith("'self' 'nonce-"), csp


async def test_headers_on_a_page_a_json_answer_and_the_live_stream(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.base_url, timeout=10) as anonymous:
        page = await anonymous.get("/login")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        _assert_common_headers(page.headers)
        again = await anonymous.get("/login")  # a new nonce for each response
        assert again.headers["content-security-policy"] != page.headers["content-security-policy"]
        refused = await anonymous.get("/api/v1/devices")  # problem JSON carries them too
        assert refused.status_code == 401
        _assert_common_headers(refused.headers)
    answer = await site.api.get("/api/v1/devices")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    _assert_common_headers(answer.headers)
    # The stream has the headers and still streams: its first event (the opening comment) arrives at once.
    async with site.api.stream("GET", "/api/v1/stream", params={"kinds": "reading"}) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        _assert_common_headers(stream.headers)

        async def first_reading() -> str:
            async for line in stream.aiter_lines():
                if line.startswith("event: reading"):
                    return line
            return ""

        assert await asyncio.wait_for(first_reading(), timeout=15) == "event: reading"


async def test_the_dashboard_runs_under_the_policy_without_a_violation(watched: Watched, site: Site) -> None:
    page = await watched.page()
    await page.goto("/login")
    await page.wait_for_selector("form#login")
    assert await _violations(page) == []
    await page.fill("form#login input[name=username]", "operator")
    await page.fill("form#login input[name=password]", DEMO_PASSWORD)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(lambda url: "/login" not in url)
    await page_ready(page)
    await page.wait_for_selector("[data-testid=run-card]")
    assert await _violations(page) == [], "overview"

    await page.goto(f"/runs/{site.run_id}")
    await page_ready(page)
    # live charts: points drawn from the history and from the stream
    await page.wait_for_function("() => Object.values(window.culturectl.charts).some(c => c.count() > 0)")
    # the timeline's bars are placed by app.js (the policy allows no style= attribute)
    left = await page.eval_on_selector("[data-testid=step] .track .win", "el => el.style.left")
    assert left.endswith("%"), left
    assert await _violations(page) == [], "run page"

    await page.goto(f"/runs/{site.run_id}/record")
    await page_ready(page)
    # the record's own <style> (print rules) carries the response's nonce and applies
    nonce_styles = await page.evaluate("Array.from(document.querySelectorAll('style')).map(s => s.nonce !== '')")
    assert nonce_styles and all(nonce_styles)
    assert await _violations(page) == [], "batch record page"

    await page.goto("/alarms")
    await page_ready(page)
    assert await _violations(page) == [], "alarms page"
    assert watched.console == []
    assert all(url.startswith(site.base_url) or url.startswith("data:") for url in watched.requests), \
        watched.requests


async def test_the_api_reference_pages_come_from_the_service_alone(watched: Watched, site: Site) -> None:
    page = await watched.page()
    await page.goto("/docs")
    await page.wait_for_selector(".opblock", timeout=20_000)  # Swagger UI listed the operations
    assert await page.locator(".opblock").count() > 20
    assert await _violations(page) == [], "/docs"

    await page.goto("/redoc")
    # ReDoc rendered the operations (their sections) and its search box
    await page.wait_for_selector("[data-section-id^='operation/']", timeout=20_000)
    await page.wait_for_selector("input[role=search], [role=search] input", timeout=20_000)
    assert await page.locator("[data-section-id^='operation/']").count() > 20
    assert await _violations(page) == [], "/redoc"

    assert watched.console == []
    foreign = [url for url in watched.requests
               if not (url.startswith(site.base_url + "/") or url.startswith(("data:", "blob:")))]
    assert foreign == [], foreign
    assert any(url.endswith("/openapi.json") for url in watched.requests)
