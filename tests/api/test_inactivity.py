"""The inactivity lock on the server: live traffic does not keep a session active; an idle session refuses
actions until its user gives the password again (session.unlock); another user logging in on the locked screen
ends it (session.end)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from app import db
from tests.api.conftest import Service, bearer, running_service
from tests.api.test_auth import audit_head, audit_rows

LIMIT_MINUTES = 1.0


@pytest.fixture(scope="module")
async def locking(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    async with running_service(db_dsn, tmp_path_factory.mktemp("lock"), inactivity_minutes=LIMIT_MINUTES,
                               lockout_threshold=3) as svc:
        yield svc


async def _activity(dsn: str, token_headers: dict[str, str], svc: Service) -> datetime:
    me = await svc.client.get("/api/v1/auth/me", headers=token_headers)
    conn = await db.connect(dsn)
    try:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "SELECT max(last_activity_at) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL", me.json()["id"])
    finally:
        await conn.close()


async def _idle(dsn: str, user_id: int, seconds: float) -> None:
    conn = await db.connect(dsn)
    try:
        await conn.execute("UPDATE sessions SET last_activity_at = now() - make_interval(secs => $2) "
                           "WHERE user_id = $1", user_id, seconds)
    finally:
        await conn.close()


async def test_live_traffic_does_not_keep_a_session_active_and_an_idle_one_needs_the_password(
        locking: Service, db_dsn: str) -> None:
    svc = locking
    user_id, _username, password, headers = await svc.user("operator")
    await _idle(db_dsn, user_id, 20)
    before = await _activity(db_dsn, headers, svc)
    # token renewal, fragments and who-am-I are not user actions
    for method, path in (("POST", "/api/v1/auth/refresh"), ("GET", "/fragments/alarms"), ("GET", "/api/v1/auth/me")):
        r = await svc.client.request(method, path, headers=headers)
        assert r.status_code == 200, (path, r.text)
    assert await _activity(db_dsn, headers, svc) == before
    # a user action is
    assert (await svc.client.post("/api/v1/auth/activity", headers=headers)).status_code == 204
    assert await _activity(db_dsn, headers, svc) > before

    await _idle(db_dsn, user_id, LIMIT_MINUTES * 60 + 20)
    for method, path in (("GET", "/api/v1/runs"), ("POST", "/api/v1/auth/activity"), ("POST", "/api/v1/auth/refresh")):
        r = await svc.client.request(method, path, headers=headers)
        assert r.status_code == 401 and r.json()["type"].endswith("/session-idle"), (path, r.status_code, r.text)
    for path in ("/", "/fragments/alarms"):  # the dashboard's pages and parts: to the login
        assert (await svc.client.get(path, headers=headers)).status_code == 303, path
    assert (await svc.client.get("/api/v1/auth/me", headers=headers)).status_code == 200

    before_seq = await audit_head(svc)
    r = await svc.client.post("/api/v1/auth/unlock", headers=headers, json={"password": "Not-The-Password-1"})
    assert r.status_code == 401 and r.json()["type"].endswith("/wrong-password")
    rows = await audit_rows(svc, before_seq)
    assert [x["action"] for x in rows] == ["session.unlock_failed"]
    conn = await db.connect(db_dsn)
    try:  # counted like a failed login
        assert await conn.fetchval("SELECT failed_logins FROM users WHERE id = $1", user_id) == 1
    finally:
        await conn.close()
    assert (await svc.client.get("/api/v1/runs", headers=headers)).status_code == 401

    before_seq = await audit_head(svc)
    r = await svc.client.post("/api/v1/auth/unlock", headers=headers, json={"password": password})
    assert r.status_code == 200 and r.json()["unlocked"] is True, r.text
    rows = await audit_rows(svc, before_seq)
    assert [(x["action"], x["actor_id"], x["entity_id"]) for x in rows] == [("session.unlock", user_id, str(user_id))]
    assert (await svc.client.get("/api/v1/runs", headers=headers)).status_code == 200


async def test_wrong_passwords_on_the_locked_screen_lock_the_account(locking: Service, db_dsn: str) -> None:
    user_id, _username, _password, headers = await locking.user("operator")
    await _idle(db_dsn, user_id, LIMIT_MINUTES * 60 + 20)
    codes = [(await locking.client.post("/api/v1/auth/unlock", headers=headers,
                                        json={"password": f"Wrong-Password-{i}"})).status_code for i in range(3)]
    assert codes[:2] == [401, 401] and codes[2] in (401, 403)
    assert (await locking.client.get("/api/v1/auth/me", headers=headers)).status_code == 401  # locked: session ended


async def test_another_user_logging_in_on_the_locked_screen_ends_the_first_session(locking: Service,
                                                                                   db_dsn: str) -> None:
    first_id, first_name, _pw, first = await locking.user("operator")
    second_id, second_name, second_pw = await locking.create_user("supervisor")
    await _idle(db_dsn, first_id, LIMIT_MINUTES * 60 + 20)
    before = await audit_head(locking)
    r = await locking.client.post("/api/v1/auth/unlock", headers=first,
                                  json={"username": second_name, "password": second_pw})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unlocked"] is False and body["login"]["user"]["username"] == second_name
    assert "culturectl_session=" in r.headers.get("set-cookie", "")  # the new user's cookie
    rows = await audit_rows(locking, before)
    assert [(x["action"], x["actor_name"], x["entity_id"]) for x in rows] == [
        ("auth.login", second_name, str(second_id)), ("session.end", second_name, str(first_id))]
    r = await locking.client.get("/api/v1/auth/me", headers=first)
    assert r.status_code == 401 and r.json()["type"].endswith("/session-revoked")
    second = bearer(body["login"]["access_token"])
    assert (await locking.client.get("/api/v1/runs", headers=second)).json() is not None
    assert (await locking.client.get("/api/v1/auth/me", headers=second)).json()["name"] == second_name
    # a wrong password of the other user changes nothing for the first session
    third_id, third_name, _third_pw, third = await locking.user("operator")
    await _idle(db_dsn, third_id, LIMIT_MINUTES * 60 + 20)
    r = await locking.client.post("/api/v1/auth/unlock", headers=third,
                                  json={"username": second_name, "password": "Wrong-Password-9"})
    assert r.status_code == 401
    assert (await locking.client.get("/api/v1/auth/me", headers=third)).status_code == 200
    assert first_name != third_name


async def test_wall_screens_keep_live_traffic_behind_the_lock(db_dsn: str, tmp_path: Path) -> None:
    async with running_service(db_dsn, tmp_path, inactivity_minutes=LIMIT_MINUTES, inactivity_keep_live=True) as svc:
        user_id, _username, _password, headers = await svc.user("operator")
        await _idle(db_dsn, user_id, LIMIT_MINUTES * 60 + 20)
        for path in ("/fragments/alarms", "/fragments/runs"):
            assert (await svc.client.get(path, headers=headers)).status_code == 200, path
        assert (await svc.client.post("/api/v1/auth/refresh", headers=headers)).status_code == 200
        assert (await svc.client.get("/api/v1/runs", headers=headers)).status_code == 401


async def test_no_lock_when_the_limit_is_zero(db_dsn: str, tmp_path: Path) -> None:
    async with running_service(db_dsn, tmp_path, inactivity_minutes=0) as svc:
        user_id, _username, _password, headers = await svc.user("operator")
        await _idle(db_dsn, user_id, 7 * 24 * 3600)
        assert (await svc.client.get("/api/v1/runs", headers=headers)).status_code == 200
