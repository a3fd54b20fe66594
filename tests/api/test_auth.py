"""Login, tokens and cookies, logout, expiry, lockout and unlock, disabled users, password rules."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest

from app import db
from tests.api.conftest import Service, bearer, lockout_threshold, new_password, running_service
from tests.support import wait_for

ME = "/api/v1/auth/me"
LOGIN = "/api/v1/auth/login"


async def audit_rows(service: Service, after: int = 0, action: str | None = None) -> list[dict[str, Any]]:
    conn = await db.connect(service.dsn)
    try:
        rows = await conn.fetch("SELECT * FROM audit_log WHERE seq > $1 AND ($2::text IS NULL OR action = $2) "
                                "ORDER BY seq", after, action)
        return [dict(r) for r in rows]
    finally:
        await conn.close()


async def audit_head(service: Service) -> int:
    conn = await db.connect(service.dsn)
    try:
        return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log"))
    finally:
        await conn.close()


async def test_login_returns_a_token_and_an_httponly_strict_cookie_and_is_audited(service: Service) -> None:
    user_id, username, password = await service.create_user("operator")
    before = await audit_head(service)
    r = await service.login_as(username, password)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["access_token"] and body["expires_at"]
    assert body["user"]["username"] == username and body["user"]["role"] == "operator"
    assert password not in r.text and "password_hash" not in body["user"]
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("culturectl_session=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # CULTURECTL_COOKIE_SECURE is off by default

    # The token authenticates; so does the cookie alone (the dashboard).
    me = await service.client.get(ME, headers=bearer(body["access_token"]))
    seen = me.json()
    assert seen.pop("locked") is False and 0 <= seen.pop("idle_s") < 60  # a login session: its idle time
    assert seen == {"kind": "user", "id": user_id, "name": username, "display_name": "Operator Tester",
                    "role": "operator", "can_sign": True}
    token = r.cookies["culturectl_session"]
    by_cookie = await service.client.get(ME, headers={"Cookie": f"culturectl_session={token}"})
    assert by_cookie.status_code == 200 and by_cookie.json()["name"] == username

    rows = await audit_rows(service, before)
    assert [(x["action"], x["actor_kind"], x["actor_id"], x["entity_id"]) for x in rows] == [
        ("auth.login", "user", user_id, str(user_id))]
    assert rows[0]["client"] == "10.0.0.7"


async def test_wrong_password_is_401_audited_without_the_password(service: Service) -> None:
    user_id, username, password = await service.create_user("qa")
    before = await audit_head(service)
    wrong = password + "-wrong"
    r = await service.login_as(username, wrong)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "wrong username or password"
    r = await service.login_as("nobody-here", wrong)
    assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
    rows = await audit_rows(service, before)
    assert [(x["action"], x["entity_id"], x["reason"]) for x in rows] == [
        ("auth.login_failed", str(user_id), "wrong password"), ("auth.login_failed", None, "unknown username")]
    assert all(wrong not in str(x) and password not in str(x) for x in rows)


async def test_unknown_fields_and_garbage_credentials_are_rejected(service: Service) -> None:
    _uid, username, password = await service.create_user("operator")
    r = await service.client.post(LOGIN, json={"username": username, "password": password, "role": "admin"})
    assert r.status_code == 422 and "role" in r.json()["detail"]
    for headers in ({"Authorization": "Bearer not-a-token"}, {"X-API-Key": "ck_0000000_nope"},
                    {"Authorization": "Basic dXNlcjpwYXNz"}, {"Cookie": "culturectl_session=abc"}):
        r = await service.client.get(ME, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"].startswith("Bearer")
    # A well-formed token signed with another key.
    forged = jwt.encode({"sub": "1", "jti": "x", "iat": 0, "exp": 4102444800, "iss": "culturectl"}, "k" * 40,
                        algorithm="HS256")
    r = await service.client.get(ME, headers=bearer(forged))
    assert r.status_code == 401 and r.json()["detail"] == "the token is not valid"


async def test_logout_revokes_the_session_at_once(service: Service) -> None:
    user_id, _username, _pw, headers = await service.user("supervisor")
    other = await service.login("supervisor")
    before = await audit_head(service)
    r = await service.client.post("/api/v1/auth/logout", headers=headers)
    assert r.status_code == 204
    assert 'culturectl_session=""' in r.headers["set-cookie"]  # the cookie is cleared
    r = await service.client.get(ME, headers=headers)
    assert r.status_code == 401 and "ended" in r.json()["detail"]
    assert (await service.client.get(ME, headers=other)).status_code == 200  # other sessions go on
    rows = await audit_rows(service, before)
    assert [(x["action"], x["actor_id"]) for x in rows] == [("auth.logout", user_id)]


async def test_token_expires_after_its_ttl(db_dsn: str, tmp_path: Path) -> None:
    async with running_service(db_dsn, tmp_path, token_ttl_minutes=0.1) as short:
        headers = await short.login("operator")
        assert (await short.client.get(ME, headers=headers)).status_code == 200

        async def expired() -> bool:
            r = await short.client.get(ME, headers=headers)
            return r.status_code == 401 and "expired" in r.json()["detail"]

        await wait_for(expired, timeout=30, what="the token to expire")
        # The signing key was generated into the data directory, readable by the owner only.
        key_file = tmp_path / "secret.key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600 and len(key_file.read_text()) >= 32


async def test_five_failed_logins_lock_the_account_until_an_admin_unlocks_it(service: Service) -> None:
    with lockout_threshold(service, 5):  # the default is 20
        user_id, username, password = await service.create_user("operator")
        admin = await service.login("admin")
        before = await audit_head(service)
        for attempt in range(1, 5):
            r = await service.login_as(username, f"Wrong-Password-{attempt}")
            assert r.status_code == 401, attempt
        # A success in between resets the count: the lockout is for consecutive failures.
        assert (await service.login_as(username, password)).status_code == 200
        for attempt in range(1, 5):
            assert (await service.login_as(username, f"Wrong-Password-{attempt}")).status_code == 401
        r = await service.login_as(username, "Wrong-Password-5")
        assert r.status_code == 403 and "locked" in r.json()["detail"]
        # Now even the right password is refused.
        r = await service.login_as(username, password)
        assert r.status_code == 403 and "unlocks by itself at" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) > 1700  # until the automatic unlock (30 min)
        locks = await audit_rows(service, before, "user.lock")
        assert len(locks) == 1 and locks[0]["actor_kind"] == "system" and locks[0]["entity_id"] == str(user_id)
        assert locks[0]["new"] is not None and "5 consecutive failed" in locks[0]["reason"]

        listed = {u["id"]: u for u in (await service.client.get("/api/v1/users", headers=admin)).json()}
        assert listed[user_id]["locked"] is True and listed[user_id]["failed_logins"] == 5

        r = await service.client.post(f"/api/v1/users/{user_id}/unlock", headers=admin, json={})
        assert r.status_code == 422 and "reason" in r.json()["detail"]
        r = await service.client.post(f"/api/v1/users/{user_id}/unlock", headers=admin,
                                      json={"reason": "user called the help desk, identity checked"})
        assert r.status_code == 200 and r.json()["locked"] is False and r.json()["failed_logins"] == 0
        assert (await service.login_as(username, password)).status_code == 200
        unlocks = await audit_rows(service, before, "user.unlock")
        assert [(x["entity_id"], x["reason"]) for x in unlocks] == [
            (str(user_id), "user called the help desk, identity checked")]


async def test_a_locked_or_disabled_user_is_refused_at_once_with_a_live_token(service: Service) -> None:
    admin = await service.login("admin")
    # Locked by wrong current passwords (a password check counts toward the lockout too).
    user_id, _username, password, headers = await service.user("operator")
    with lockout_threshold(service, 5):
        for i in range(5):
            r = await service.client.post("/api/v1/users/me/password", headers=headers, json={
                "current_password": f"Not-It-At-All-{i}", "new_password": new_password()})
            assert r.status_code == 401 if i < 4 else r.status_code in (401, 403)
    r = await service.client.get(ME, headers=headers)
    assert r.status_code == 401, r.text

    # Disabled while logged in: the next request fails; enabling needs a new login (sessions ended).
    user_id, username, password, headers = await service.user("supervisor")
    assert (await service.client.get("/api/v1/devices", headers=headers)).status_code == 200
    r = await service.client.post(f"/api/v1/users/{user_id}/disable", headers=admin,
                                  json={"reason": "left the company"})
    assert r.status_code == 200 and r.json()["disabled"] is True
    r = await service.client.get("/api/v1/devices", headers=headers)
    assert r.status_code == 401
    r = await service.login_as(username, password)
    assert r.status_code == 403 and "disabled" in r.json()["detail"]
    r = await service.client.post(f"/api/v1/users/{user_id}/enable", headers=admin, json={"reason": "rehired"})
    assert r.status_code == 200 and r.json()["disabled"] is False
    assert (await service.client.get(ME, headers=headers)).status_code == 401
    assert (await service.login_as(username, password)).status_code == 200


@pytest.mark.parametrize(("password", "rule", "words"), [
    ("Short-1", "min-length", "at least 12 characters"),
    ("xx-{username}-123456", "contains-username", "must not contain the username"),
    ("abcdefghijklmnop", "character-classes", "two character classes"),
    ("123456789012345", "character-classes", "two character classes"),
])
async def test_password_rules_are_named_in_the_422(service: Service, password: str, rule: str,
                                                    words: str) -> None:
    admin = await service.login("admin")
    username = f"rules-{rule}"
    r = await service.client.post("/api/v1/users", headers=admin, json={
        "username": username, "display_name": "Rule Tester", "role": "operator",
        "password": password.format(username=username)})
    assert r.status_code == 422, r.text
    assert r.json()["rule"] == rule and words in r.json()["detail"]


async def test_own_password_change(service: Service) -> None:
    user_id, username, password, headers = await service.user("qa")
    second = await service.login_as(username, password)
    other_session = bearer(second.json()["access_token"])
    before = await audit_head(service)
    r = await service.client.post("/api/v1/users/me/password", headers=headers,
                                  json={"current_password": password, "new_password": password})
    assert r.status_code == 422 and r.json()["rule"] == "not-reused"
    fresh = new_password()
    r = await service.client.post("/api/v1/users/me/password", headers=headers,
                                  json={"current_password": password, "new_password": fresh})
    assert r.status_code == 204
    assert (await service.client.get(ME, headers=headers)).status_code == 200  # this session goes on
    assert (await service.client.get(ME, headers=other_session)).status_code == 401  # the others end
    assert (await service.login_as(username, password)).status_code == 401
    assert (await service.login_as(username, fresh)).status_code == 200
    rows = await audit_rows(service, before, "user.password")
    assert [(x["actor_id"], x["entity_id"]) for x in rows] == [(user_id, str(user_id))]
    assert fresh not in str(rows) and password not in str(rows)


async def test_refresh_renews_the_session_until_its_longest_duration(db_dsn: str, tmp_path: Path) -> None:
    async with running_service(db_dsn, tmp_path, token_ttl_minutes=0.1, session_max_hours=8 / 3600) as short:
        headers = await short.login("operator")
        before = await audit_head(short)
        r = await short.client.post("/api/v1/auth/refresh", headers=headers)
        assert r.status_code == 200, r.text
        renewed = bearer(r.json()["access_token"])
        assert "culturectl_session=" in r.headers["set-cookie"]
        assert await audit_rows(short, before) == []  # a renewal changes no record
        # the renewed token outlives the first one's 6 s
        old_exp = jwt.decode(headers["Authorization"][7:], options={"verify_signature": False})["exp"]
        assert r.json()["expires_at"] > "" and jwt.decode(
            r.json()["access_token"], options={"verify_signature": False})["exp"] >= old_exp
        assert (await short.client.get(ME, headers=renewed)).status_code == 200

        current = renewed

        async def too_long() -> bool:  # keep renewing with the newest token, as the dashboard does
            nonlocal current
            resp = await short.client.post("/api/v1/auth/refresh", headers=current)
            if resp.status_code == 200:
                current = bearer(resp.json()["access_token"])
                return False
            assert resp.status_code == 401, resp.text
            return "longest" in resp.json()["detail"]

        await wait_for(too_long, timeout=20, what="the session to reach its 8 s longest duration")


async def test_refresh_after_logout_or_with_an_api_key_is_refused(service: Service) -> None:
    headers = await service.login("supervisor")
    assert (await service.client.post("/api/v1/auth/logout", headers=headers)).status_code == 204
    r = await service.client.post("/api/v1/auth/refresh", headers=headers)
    assert r.status_code == 401
    _, _, key = await service.api_key("operator")
    assert (await service.client.post("/api/v1/auth/refresh", headers=key)).status_code == 403
