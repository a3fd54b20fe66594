"""A whole culturectl on loopback: both simulators, a real uvicorn, a fresh database."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from pydantic import SecretStr

from app import db
from app.auth import users
from app.auth.principal import Role, cli_principal
from app.core.clock import ScaledClock
from app.demo import stack as stack_builder
from app.demo.setup import DEMO_PASSWORD
from app.runtime import Runtime
from app.settings import Settings
from simulators.culture_system import CultureSystemSimulator
from simulators.incubator import IncubatorSimulator
from tests.support import free_port

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

# 1 wall second = 10 clock minutes: a day passes in 2.4 s.
E2E_SCALE = 600.0


@dataclass
class Stack:
    base_url: str
    clock: ScaledClock
    incubator: IncubatorSimulator
    culture: CultureSystemSimulator
    runtime: Runtime
    client: httpx.AsyncClient
    settings: Settings


@contextlib.asynccontextmanager
async def serve(settings: Settings, clock: ScaledClock) -> AsyncIterator[tuple[str, Runtime]]:
    """Run the service on a real uvicorn on 127.0.0.1 until the block ends (app.demo.stack builds it)."""
    async with stack_builder.service(settings, clock) as svc:
        yield svc.base_url, svc.runtime


E2E_PASSWORD = "Seven-Day-Culture-42"
DESKTOP = {"width": 1280, "height": 800}


async def demo_bearer(api: httpx.AsyncClient, role: Role = Role.OPERATOR) -> None:
    """Sign `api` in as the demo user of `role` with a bearer token (cookies dropped: the token alone speaks)."""
    r = await api.post("/api/v1/auth/login", json={"username": role.value, "password": DEMO_PASSWORD})
    assert r.status_code == 200, r.text
    api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    api.cookies.clear()


async def page_ready(page: Page) -> None:
    # A function, not an expression: Playwright polls an expression with eval(), which the pages' CSP refuses.
    await page.wait_for_function("() => document.body.dataset.ready === 'true'", timeout=20_000)


async def demo_page(browser: Browser, base_url: str, role: Role = Role.OPERATOR,
                    viewport: dict[str, int] | None = None) -> Page:
    """A new browser context logged in through the login page as the demo user of `role`."""
    ctx = await browser.new_context(viewport=viewport or DESKTOP, base_url=base_url)  # type: ignore[arg-type]
    page = await ctx.new_page()
    await page.goto("/")
    await page.wait_for_url(re.compile(r"/login"))
    await page.fill("form#login input[name=username]", role.value)
    await page.fill("form#login input[name=password]", DEMO_PASSWORD)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(lambda url: "/login" not in url)
    await page_ready(page)
    return page


async def login(client: httpx.AsyncClient, dsn: str, role: Role) -> str:
    """Create a user of `role` through app.auth.users and log it in over HTTP; returns the token."""
    username = f"e2e-{role.value}"
    conn = await db.connect(dsn)
    try:
        if await users.get_user_by_name(conn, username) is None:
            await users.create_user(conn, username=username, display_name=f"E2E {role.value.title()}",
                                       role=role, password=E2E_PASSWORD, actor=cli_principal())
    finally:
        await conn.close()
    r = await client.post("/api/v1/auth/login", json={"username": username, "password": E2E_PASSWORD})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


@pytest.fixture(scope="module")
async def stack(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("e2e")
    clock = ScaledClock(scale=E2E_SCALE)
    async with stack_builder.simulators(clock, tmp / "devices.yaml", seed=7, culture_t0=clock.now() - timedelta(days=1),
                                        poll_interval=0.2) as sims:
        settings = Settings(database_url=SecretStr(db_dsn), data_dir=tmp / "data", devices_file=sims.devices_file,
                            time_scale=E2E_SCALE, port=free_port(), ingest_flush_interval=0.2, max_points=2000)
        async with serve(settings, clock) as (base_url, runtime), \
                httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            # Every API call needs credentials: an operator logs in and the client sends its token.
            token = await login(client, db_dsn, Role.OPERATOR)
            client.headers["Authorization"] = f"Bearer {token}"
            client.cookies.clear()
            yield Stack(base_url, clock, sims.incubator, sims.culture, runtime, client, settings)


# -- the browser (the dashboard's tests) ----------------------------------------------------------------------------

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(os.environ.get("CULTURECTL_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def chromium_path() -> str:
    """Debian's Chromium (installed by .ci/system-deps); CULTURECTL_CHROMIUM overrides."""
    for candidate in (os.environ.get("CULTURECTL_CHROMIUM"), *CHROMIUM_PATHS):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("Chromium is needed for the dashboard tests: run `bash .ci/system-deps` (Debian's chromium) "
                       "or set CULTURECTL_CHROMIUM to a Chromium binary")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def artifacts() -> Path:
    """Where tests save screenshots (test-artifacts/ in the repository, ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@dataclass
class DashboardSite:
    """The dashboard's world: the demo's accounts and recipe, both simulators, the service, an API client signed in
    as the operator, and a run planned on both devices with T0 in 20 clock hours (vessel coating open now)."""

    base_url: str
    api: httpx.AsyncClient
    run_id: int
    sims: stack_builder.Simulators


@contextlib.asynccontextmanager
async def dashboard_site(db_dsn: str, tmp: Path, clock: ScaledClock, *, seed: int,
                         **settings: Any) -> AsyncIterator[DashboardSite]:
    """See DashboardSite; `settings` are the service's settings besides the usual ones."""
    from app.demo.setup import ensure_demo_accounts, ensure_demo_recipe
    from tests.api.protocol_support import run_body

    conn = await db.connect(db_dsn)
    try:  # the demo's users (operator, supervisor, qa, admin) and its released recipe
        await ensure_demo_accounts(conn, tmp)
        await ensure_demo_recipe(conn)
    finally:
        await conn.close()
    async with stack_builder.simulators(clock, tmp / "devices.yaml", seed=seed, poll_interval=0.5) as sims:
        config = Settings(database_url=SecretStr(db_dsn), data_dir=tmp / "data", devices_file=sims.devices_file,
                          time_scale=clock.scale, port=free_port(), ingest_flush_interval=0.2, **settings)
        async with serve(config, clock) as (base_url, _runtime), \
                httpx.AsyncClient(base_url=base_url, timeout=10) as api:
            await demo_bearer(api)
            t0 = clock.now() + timedelta(hours=20)
            r = await api.post("/api/v1/runs", json=run_body(t0 - timedelta(days=3), planned_t0=t0.isoformat(),
                                                             incubator="incubator-1",
                                                             culture_system="culture-system-1"))
            assert r.status_code == 201, r.text
            yield DashboardSite(base_url, api, int(r.json()["id"]), sims)
