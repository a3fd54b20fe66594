"""Abuse limits: logins and signatures slowed per client address and per user name (429 + Retry-After before the
password is checked), the lockout as the last line with its automatic unlock, audit and metrics; caps on open live
streams (503, on a real uvicorn); the largest request body (413, Content-Length and chunked)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app import db
from app.api.limits import limits_from
from app.auth import throttle
from app.auth.principal import Role
from app.demo import stack as stack_builder
from app.settings import Settings
from tests.api.conftest import Service, bearer, running_service
from tests.api.test_auth import audit_head, audit_rows
from tests.support import free_port

LOGIN = "/api/v1/auth/login"
LIMITED = {"login_throttle_after": 2, "login_throttle_client_after": 3, "signature_throttle_after": 2,
           "signature_throttle_client_after": 100, "throttle_delay_s": 1.0, "throttle_max_delay_s": 4.0,
           "throttle_window_s": 600.0, "lockout_threshold": 8}


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
async def limited(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    async with running_service(db_dsn, tmp_path_factory.mktemp("limits"), **LIMITED) as svc:
        yield svc


@pytest.fixture
def now(limited: Service) -> FakeTime:
    fake = FakeTime()
    limits: throttle.Limits = limited.app.state.runtime.limits
    limits.now = fake
    limits._keys.clear()
    return fake


@contextlib.asynccontextmanager
async def client_at(svc: Service, address: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=svc.app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://culturectl.test") as c:
        yield c


async def login_from(svc: Service, address: str, username: str, password: str) -> httpx.Response:
    async with client_at(svc, address) as c:
        return await c.post(LOGIN, json={"username": username, "password": password})


async def failed_logins(svc: Service, user_id: int) -> int:
    conn = await db.connect(svc.dsn)
    try:
        return int(await conn.fetchval("SELECT failed_logins FROM users WHERE id = $1", user_id))
    finally:
        await conn.close()


def metric(text: str, line_start: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


async def test_a_user_name_under_attack_from_many_clients_is_slowed_before_the_password_is_checked(
        limited: Service, now: FakeTime) -> None:
    user_id, username, password = await limited.create_user(Role.OPERATOR)
    before = await audit_head(limited)
    for i in range(3):  # two free failures; the third trips the user name's limit
        r = await login_from(limited, f"10.1.0.{i + 1}", username, f"Wrong-Password-{i}")
        assert r.status_code == 401, r.text
    # a fourth client, with the right password: refused before the password is checked
    r = await login_from(limited, "10.1.0.9", username, password)
    assert r.status_code == 429, r.text
    assert r.headers["Retry-After"] == "1" and r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert (body["rule"], body["key"], body["retry_after_s"]) == ("login_rate", "user", 1)
    assert await failed_logins(limited, user_id) == 3  # a slowed attempt does not count toward the lockout
    assert [x["action"] for x in await audit_rows(limited, before)] == ["auth.login_failed"] * 3 + ["auth.throttled"]
    # progressive: the wait doubles per further failure, up to the cap
    waits = []
    for i in range(4):
        now.t += 10
        r = await login_from(limited, f"10.1.1.{i}", username, f"Still-Wrong-{i}")
        assert r.status_code == 401
        r = await login_from(limited, f"10.1.1.{i}", username, password)
        assert r.status_code == 429
        waits.append(int(r.headers["Retry-After"]))
    assert waits == [2, 4, 4, 4]
    now.t += 4
    assert (await login_from(limited, "10.1.1.9", username, password)).status_code == 200
    # once per trip: one audit record however many attempts were refused
    trips = await audit_rows(limited, before, "auth.throttled")
    assert len(trips) == 1 and trips[0]["actor_kind"] == "system"
    new = json.loads(trips[0]["new"])
    assert (new["rule"], new["key"], new["value"]) == ("login_rate", "user", username)
    assert trips[0]["entity_type"] == "auth_limit"
    text = (await limited.client.get("/metrics")).text
    assert metric(text, 'culturectl_auth_throttled_total{key="user",limit="login_rate"}') >= 5
    assert metric(text, 'culturectl_auth_throttle_trips_total{key="user",limit="login_rate"}') >= 1


async def test_a_client_is_slowed_on_every_name_and_other_clients_are_not(limited: Service, now: FakeTime) -> None:
    names = [(await limited.create_user(Role.OPERATOR))[1:] for _ in range(5)]
    for i in range(4):  # three free failures from one address, on different names: the fourth trips the client
        r = await login_from(limited, "10.2.0.1", names[i][0], "Not-The-Password-1")
        assert r.status_code == 401
    r = await login_from(limited, "10.2.0.1", names[4][0], names[4][1])
    assert r.status_code == 429 and (r.json()["rule"], r.json()["key"]) == ("login_rate", "client")
    assert "10.2.0.1" in r.json()["detail"]
    # another client is not slowed by the first one's failures on other names
    assert (await login_from(limited, "10.2.0.2", names[4][0], names[4][1])).status_code == 200
    now.t += 1
    assert (await login_from(limited, "10.2.0.1", names[4][0], names[4][1])).status_code == 200


async def test_signatures_are_slowed_per_signer(limited: Service, now: FakeTime) -> None:
    conn = await db.connect(limited.dsn)
    try:
        run = int(await conn.fetchval("INSERT INTO culture_run (code) VALUES ('LIM-1') RETURNING id"))
    finally:
        await conn.close()
    user_id, _, password, headers = await limited.user(Role.SUPERVISOR)

    def body(pw: str) -> dict[str, Any]:
        return {"entity_type": "culture_run", "entity_id": str(run), "meaning": "reviewed", "password": pw}

    for _ in range(3):
        r = await limited.client.post("/api/v1/signatures", json=body("wrong-one"), headers=headers)
        assert r.status_code == 401
    r = await limited.client.post("/api/v1/signatures", json=body(password), headers=headers)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert (r.json()["rule"], r.json()["key"]) == ("signature_rate", "user")
    assert await failed_logins(limited, user_id) == 3
    now.t += 1
    r = await limited.client.post("/api/v1/signatures", json=body(password), headers=headers)
    assert r.status_code == 201, r.text


async def test_the_lockout_is_the_last_line_and_unlocks_by_itself(limited: Service, now: FakeTime) -> None:
    user_id, username, password = await limited.create_user(Role.OPERATOR)
    before = await audit_head(limited)
    for i in range(8):  # an attacker who waits out every delay still reaches the lockout
        now.t += 10
        r = await login_from(limited, f"10.3.0.{i + 1}", username, f"Wrong-{i}-Password")
        assert r.status_code == (403 if i == 7 else 401), r.text
    assert "unlocks by itself at" in r.json()["detail"] and "admin unlocks it sooner" in r.json()["detail"]
    assert 1700 < int(r.headers["Retry-After"]) <= 1800
    now.t += 10
    r = await login_from(limited, "10.3.0.20", username, password)
    assert r.status_code == 403 and "locked" in r.json()["detail"]
    # thirty minutes later (the database's clock): the next login unlocks it, audited by the system
    conn = await db.connect(limited.dsn)
    try:
        await conn.execute("UPDATE users SET locked_at = locked_at - interval '31 minutes' WHERE id = $1", user_id)
    finally:
        await conn.close()
    now.t += 10
    r = await login_from(limited, "10.3.0.20", username, password)
    assert r.status_code == 200, r.text
    unlocks = await audit_rows(limited, before, "user.unlock")
    assert len(unlocks) == 1 and unlocks[0]["actor_kind"] == "system" and "automatic" in unlocks[0]["reason"]
    text = (await limited.client.get("/metrics")).text
    assert metric(text, "culturectl_auth_lockouts_total") >= 1
    assert metric(text, "culturectl_auth_auto_unlocks_total") >= 1


async def test_an_oversized_body_is_413_before_it_is_parsed(limited: Service) -> None:
    big = b'{"username": "x", "password": "' + b"a" * (1024 * 1024) + b'"}'
    r = await limited.client.post(LOGIN, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["limit_bytes"] == 1024 * 1024
    assert r.headers["content-type"].startswith("application/problem+json")

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    r = await limited.client.post(LOGIN, content=chunks(big), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["rule"] == "max_body_bytes"
    # a small chunked body reaches the route
    r = await limited.client.post(LOGIN, content=chunks(b'{"username": "nobody-at-all", "password": "x"}'),
                                  headers={"content-type": "application/json"})
    assert r.status_code in (401, 429)
    assert metric((await limited.client.get("/metrics")).text, "culturectl_http_body_too_large_total") >= 2


async def test_open_streams_are_capped_per_principal_and_in_total(db_dsn: str, tmp_path: Path) -> None:
    settings = Settings(database_url=SecretStr(db_dsn), data_dir=tmp_path, connect_devices=False,
                        engine_enabled=False, notify_enabled=False, host="127.0.0.1", port=free_port(),
                        sse_max_streams_per_principal=2, sse_max_streams=3)
    async with stack_builder.service(settings, settings.make_clock()) as svc, \
            httpx.AsyncClient(base_url=svc.base_url, timeout=10) as api:
        from app.auth import apikeys
        from app.auth.principal import cli_principal

        conn = await db.connect(db_dsn)
        try:
            keys = [(await apikeys.create_api_key(conn, name=f"sse-{i}", role=Role.AUTOMATION,
                                                  actor=cli_principal()))[1] for i in range(2)]
        finally:
            await conn.close()
        async with contextlib.AsyncExitStack() as stack:
            async def open_stream(key: str) -> httpx.Response:
                return await stack.enter_async_context(api.stream("GET", "/api/v1/stream", headers=bearer(key)))

            first = [await open_stream(keys[0]) for _ in range(2)]
            assert all(r.status_code == 200 for r in first)
            r = await open_stream(keys[0])
            assert r.status_code == 503
            body = await r.aread()
            assert b"sse_streams_per_principal" in body and b'"limit":2' in body.replace(b" ", b"")
            assert (await open_stream(keys[1])).status_code == 200
            r = await open_stream(keys[1])
            assert r.status_code == 503 and b"sse_streams_total" in await r.aread()
            await first[0].aclose()
            for _ in range(50):  # the closed stream's place comes free once the server sees the disconnect
                r = await api.get("/metrics")
                if 'culturectl_live_subscribers 2.0' in r.text:
                    break
                await asyncio.sleep(0.1)
            assert (await open_stream(keys[1])).status_code == 200
            text = (await api.get("/metrics")).text
            assert metric(text, 'culturectl_sse_refused_total{cap="sse_streams_per_principal"}') == 1
            assert metric(text, 'culturectl_sse_refused_total{cap="sse_streams_total"}') == 1


def test_with_the_defaults_one_attacker_locks_an_account_rarely_and_not_for_long() -> None:
    """The arithmetic of docs/identity.md ("What one attacker can do"): one user name, one client, one replica,
    every attempt made the moment the throttle allows it, the account locked at the threshold and unlocked by
    itself at the first attempt after the unlock time (which resets its count, not the throttle's)."""
    defaults = {name: Settings.model_fields[name].default for name in (
        "lockout_threshold", "lockout_unlock_minutes", "login_throttle_after", "login_throttle_client_after",
        "throttle_delay_s", "throttle_max_delay_s", "throttle_window_s")}
    assert (defaults["lockout_threshold"], defaults["throttle_window_s"]) == (20, 3600.0)
    settings = Settings(database_url=SecretStr("postgresql://unused/x"), **defaults)
    limits = limits_from(settings)
    clock = FakeTime()
    clock.t = 0.0
    limits.now = clock
    keys: dict[throttle.KeyKind, str | None] = {"client": "10.9.9.9", "user": "operator.one"}
    failures, locked_at, locked_s, locks = 0, None, 0.0, []
    horizon = 24 * 3600.0
    while clock.t < horizon:
        waits = [throttle.retry_after(limits.rules[("login_rate", kind)],
                                      limits._keys[("login_rate", kind, str(value))].failures, clock.t)
                 for kind, value in keys.items() if ("login_rate", kind, value) in limits._keys]
        if max(waits, default=0.0) > 0:
            clock.t += max(waits)
            continue
        assert limits.refusal("login_rate", keys) is None
        if locked_at is not None and clock.t - locked_at >= settings.lockout_unlock_minutes * 60:
            locked_s += clock.t - locked_at
            locked_at, failures = None, 0
        if locked_at is None:
            failures += 1
            if failures >= settings.lockout_threshold:
                locked_at = clock.t
                locks.append(clock.t)
        limits.failed("login_rate", keys)  # a wrong password counts toward the throttle, locked or not
    if locked_at is not None:
        locked_s += min(horizon, locked_at + settings.lockout_unlock_minutes * 60) - locked_at
    assert 43 * 60 <= locks[0] <= 44 * 60  # the first lock after about 43.5 minutes
    gaps = [b - a for a, b in itertools.pairwise(locks)]
    assert gaps and min(gaps) >= 125 * 60  # locked again about 128 minutes later (30 locked + ~98 to relock)
    assert 0.2 < locked_s / horizon < 0.3  # about a quarter of the time
