"""The service in-process (httpx over ASGITransport, lifespan running) on a fresh database, with helpers that
make users and API keys of any role.

`service.client` never keeps cookies (each test says which credentials it sends), so a request without
headers is a request without credentials. Streams (SSE) are tested on a real uvicorn in tests/e2e/.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from app import db
from app.auth import apikeys, users
from app.auth.principal import Role, cli_principal
from app.core.clock import Clock
from app.main import create_app
from app.settings import Settings

_counter = itertools.count(1)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_password() -> str:
    """A password that meets the rules (12+ characters, several classes), different every time."""
    return f"Tissue-Culture-{next(_counter)}-{uuid.uuid4().hex[:6]}"


@dataclass
class Service:
    client: httpx.AsyncClient
    dsn: str
    app: FastAPI
    settings: Settings
    users: dict[str, int] = field(default_factory=dict)

    async def create_user(self, role: Role | str, *, password: str | None = None,
                          username: str | None = None) -> tuple[int, str, str]:
        """A user made through app.auth.users (audited as user.create by the cli principal)."""
        role = Role(role)
        username = username or f"{role.value}-{next(_counter)}-{uuid.uuid4().hex[:4]}"
        password = password or new_password()
        conn = await db.connect(self.dsn)
        try:
            row = await users.create_user(conn, username=username, display_name=f"{role.value.title()} Tester",
                                             role=role, password=password, actor=cli_principal())
        finally:
            await conn.close()
        self.users[username] = row["id"]
        return row["id"], username, password

    async def login_as(self, username: str, password: str) -> httpx.Response:
        return await self.client.post("/api/v1/auth/login", json={"username": username, "password": password})

    async def user(self, role: Role | str) -> tuple[int, str, str, dict[str, str]]:
        """(user_id, username, password, headers) of a fresh, logged-in user of `role`."""
        user_id, username, password = await self.create_user(role)
        r = await self.login_as(username, password)
        assert r.status_code == 200, r.text
        return user_id, username, password, bearer(r.json()["access_token"])

    async def login(self, role: Role | str) -> dict[str, str]:
        """Headers of a fresh, logged-in user of `role`."""
        return (await self.user(role))[3]

    async def api_key(self, role: Role | str = Role.AUTOMATION) -> tuple[int, str, dict[str, str]]:
        """(key_id, key, headers) of a fresh API key of `role` (made on the command line's behalf)."""
        conn = await db.connect(self.dsn)
        try:
            row, key = await apikeys.create_api_key(conn, name=f"key-{next(_counter)}-{uuid.uuid4().hex[:4]}",
                                                     role=role, actor=cli_principal())
        finally:
            await conn.close()
        return row["id"], key, {"X-API-Key": key}


@contextlib.asynccontextmanager
async def running_service(dsn: str, data_dir: Path, *, clock: Clock | None = None,
                          **settings: Any) -> AsyncIterator[Service]:
    """The app with its lifespan running, and a cookie-less client on it (on `clock`, e.g. a ManualClock)."""
    settings.setdefault("engine_enabled", False)  # API tests drive the schedule by hand; engine tests turn it on
    # API tests fail passwords on purpose from one client address: the abuse-limit tests (test_limits.py) turn the
    # throttle on
    for name in ("login_throttle_after", "login_throttle_client_after", "signature_throttle_after",
                 "signature_throttle_client_after"):
        settings.setdefault(name, 1000)
    s = Settings(database_url=SecretStr(dsn), data_dir=data_dir, connect_devices=False, **settings)
    app = create_app(s, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://culturectl.test", timeout=30) as client:
            async def forget_cookies(response: httpx.Response) -> None:
                client.cookies.clear()

            client.event_hooks["response"].append(forget_cookies)
            yield Service(client=client, dsn=dsn, app=app, settings=s)


@contextlib.contextmanager
def lockout_threshold(svc: Service, threshold: int) -> Iterator[None]:
    """The service's CULTURECTL_LOCKOUT_THRESHOLD for a test of the lockout (the default is 20)."""
    settings = svc.app.state.runtime.settings
    before = settings.lockout_threshold
    settings.lockout_threshold = threshold
    try:
        yield
    finally:
        settings.lockout_threshold = before


@pytest.fixture(scope="module")
async def service(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    async with running_service(db_dsn, tmp_path_factory.mktemp("api")) as svc:
        yield svc
