"""The inactivity lock on the server: live traffic does not keep a session active; an idle session refuses
actions from exactly the limit on, and no page load or API call makes it active again, until its user gives the
password again (session.unlock); the heartbeat reports the time of the last input; another user logging in on the
locked screen ends it (session.end); an open event stream ends once its session may no longer listen.

Time passes by moving a session's last activity back in the database; the stream tests use a 3 s limit (streams are
checked again every second) and the plain test client, whose answer to a stream comes when the stream ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
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


async def _me(svc: Service, headers: dict[str, str]) -> dict[str, object]:
    r = await svc.client.get("/api/v1/auth/me", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


async def test_an_idle_session_is_refused_at_the_limit_and_no_request_makes_it_active_again(
        locking: Service, db_dsn: str) -> None:
    svc = locking
    user_id, _username, password, headers = await svc.user("operator")
    await _idle(db_dsn, user_id, LIMIT_MINUTES * 60 + 1)  # the limit, and no grace of a heartbeat beyond it
    before = await _activity(db_dsn, headers, svc)
    me = await _me(svc, headers)
    assert me["locked"] is True and isinstance(me["idle_s"], float) and me["idle_s"] >= LIMIT_MINUTES * 60
    for _ in range(2):  # F5 on the lock screen, twice: still the login
        assert (await svc.client.get("/", headers=headers)).status_code == 303
        r = await svc.client.get("/api/v1/runs", headers=headers)
        assert r.status_code == 401 and r.json()["type"].endswith("/session-idle")
        r = await svc.client.post("/api/v1/auth/activity", headers=headers, json={"idle_s": 0})
        assert r.status_code == 401 and r.json()["type"].endswith("/session-idle")
    assert await _activity(db_dsn, headers, svc) == before
    assert (await _me(svc, headers))["locked"] is True
    r = await svc.client.post("/api/v1/auth/unlock", headers=headers, json={"password": password})
    assert r.status_code == 200, r.text
    me = await _me(svc, headers)
    assert me["locked"] is False and isinstance(me["idle_s"], float) and me["idle_s"] < 5
    # a page of an active session: sent never to be cached (Back on a locked screen asks the server again)
    r = await svc.client.get("/", headers=headers)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    r = await svc.client.get("/login")
    assert r.headers["cache-control"] == "no-store"


async def test_the_heartbeat_reports_how_long_ago_the_last_input_was(locking: Service, db_dsn: str) -> None:
    svc = locking
    user_id, _username, _password, headers = await svc.user("operator")
    await _idle(db_dsn, user_id, 50)
    r = await svc.client.post("/api/v1/auth/activity", headers=headers, json={"idle_s": 20})
    assert r.status_code == 204, r.text
    idle = (await _me(svc, headers))["idle_s"]
    assert isinstance(idle, float) and 19 <= idle < 25, idle
    # a report never moves the last activity back before a later action, nor into the future
    r = await svc.client.post("/api/v1/auth/activity", headers=headers, json={"idle_s": 10_000})
    assert r.status_code == 204
    idle = (await _me(svc, headers))["idle_s"]
    assert isinstance(idle, float) and 19 <= idle < 25, idle
    assert (await svc.client.post("/api/v1/auth/activity", headers=headers, json={"idle_s": -3600})).status_code == 204
    idle = (await _me(svc, headers))["idle_s"]
    assert isinstance(idle, float) and 0 <= idle < 5, idle
    # no body: the input is now
    await _idle(db_dsn, user_id, 30)
    assert (await svc.client.post("/api/v1/auth/activity", headers=headers)).status_code == 204
    idle = (await _me(svc, headers))["idle_s"]
    assert isinstance(idle, float) and idle < 5, idle
    # input the limit ago: the session is idle from now on
    await _idle(db_dsn, user_id, LIMIT_MINUTES * 60 + 30)
    conn = await db.connect(db_dsn)
    try:
        await conn.execute("UPDATE sessions SET last_activity_at = now() - interval '59 seconds' WHERE user_id = $1",
                           user_id)
    finally:
        await conn.close()
    assert (await svc.client.post("/api/v1/auth/activity", headers=headers, json={"idle_s": 59})).status_code == 204
    await asyncio.sleep(1.2)
    r = await svc.client.get("/api/v1/runs", headers=headers)
    assert r.status_code == 401 and r.json()["type"].endswith("/session-idle")
    api_me = await _me(svc, (await svc.api_key())[2])
    assert api_me["idle_s"] is None and api_me["locked"] is False


SHORT_MINUTES = 0.05  # 3 s: streams are checked again every second


async def _stream(svc: Service, headers: dict[str, str]) -> tuple[int, float]:
    """Status and duration of a stream, from its start to its end (the test client answers once it ends)."""
    t0 = time.monotonic()
    r = await svc.client.get("/api/v1/stream", headers=headers, params={"kinds": "alarm"})
    assert b"culturectl live stream" in r.content
    return r.status_code, time.monotonic() - t0


async def test_an_open_stream_ends_when_its_session_goes_idle(db_dsn: str, tmp_path: Path) -> None:
    async with running_service(db_dsn, tmp_path, inactivity_minutes=SHORT_MINUTES) as svc:
        _user_id, _username, _password, headers = await svc.user("operator")
        key_stream = asyncio.create_task(_stream(svc, (await svc.api_key())[2]))
        status, took = await asyncio.wait_for(_stream(svc, headers), timeout=20)
        assert status == 200 and took < 3 + 2 + 1, took  # the limit, a check, room
        assert not key_stream.done()  # an API key's stream has no session to check
        key_stream.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await key_stream


async def test_with_keep_live_a_stream_outlives_the_lock_but_not_a_logout_or_a_disable(db_dsn: str,
                                                                                         tmp_path: Path) -> None:
    async with running_service(db_dsn, tmp_path, inactivity_minutes=SHORT_MINUTES, inactivity_keep_live=True) as svc:
        _first_id, _first_name, _pw, first = await svc.user("operator")
        second_id, _second_name, _pw2, second = await svc.user("operator")
        streams = [asyncio.create_task(_stream(svc, h)) for h in (first, second)]
        await asyncio.sleep(SHORT_MINUTES * 60 + 2)  # both sessions idle beyond the limit: wall screens go on
        assert not any(s.done() for s in streams)
        assert (await svc.client.post("/api/v1/auth/logout", headers=first)).status_code == 204
        status, _took = await asyncio.wait_for(streams[0], timeout=5)
        assert status == 200 and not streams[1].done()
        conn = await db.connect(db_dsn)
        try:
            await conn.execute("UPDATE users SET disabled = true WHERE id = $1", second_id)
        finally:
            await conn.close()
        status, _took = await asyncio.wait_for(streams[1], timeout=5)
        assert status == 200
