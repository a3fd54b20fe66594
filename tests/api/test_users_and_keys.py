"""Users API and API keys: shown once, stored hashed, revoked at once; the `culturectl user|apikey` commands."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

from app import db
from tests.api.conftest import Service, bearer, lockout_threshold, new_password
from tests.api.test_auth import audit_head, audit_rows

KEYS = "/api/v1/apikeys"
ME = "/api/v1/auth/me"


async def test_admin_creates_a_user_who_can_log_in_and_every_change_is_audited_once(service: Service) -> None:
    admin_id, _name, _pw, admin = await service.user("admin")
    password = new_password()
    before = await audit_head(service)
    r = await service.client.post("/api/v1/users", headers=admin, json={
        "username": "dana.kim", "display_name": "Dana Kim", "role": "supervisor", "password": password,
        "reason": "new shift lead"})
    assert r.status_code == 201, r.text
    user = r.json()
    assert user["username"] == "dana.kim" and user["role"] == "supervisor" and not user["disabled"]
    assert "password" not in str(user).replace("password_changed_at", "")
    rows = await audit_rows(service, before)
    assert [(x["action"], x["actor_kind"], x["actor_id"], x["entity_id"]) for x in rows] == [
        ("user.create", "user", admin_id, str(user["id"]))]
    assert password not in str(rows)
    assert (await service.login_as("dana.kim", password)).status_code == 200

    r = await service.client.post("/api/v1/users", headers=admin, json={
        "username": "dana.kim", "display_name": "Dana Kim", "role": "supervisor", "password": password})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    # Server-owned fields cannot come from the body.
    for extra in ({"disabled": True}, {"id": 99}, {"created_at": "2020-01-01T00:00:00Z"}, {"failed_logins": 0}):
        r = await service.client.post("/api/v1/users", headers=admin, json={
            "username": "eve.x", "display_name": "Eve", "role": "operator", "password": password, **extra})
        assert r.status_code == 422, extra
    r = await service.client.post("/api/v1/users", headers=admin, json={
        "username": "Bad Name", "display_name": "X", "role": "operator", "password": password})
    assert r.status_code == 422 and "not valid" in r.json()["detail"]
    r = await service.client.post(f"/api/v1/users/{admin_id}/disable", headers=admin, json={"reason": "oops"})
    assert r.status_code == 409 and "own account" in r.json()["detail"]
    r = await service.client.post("/api/v1/users/999999/disable", headers=admin, json={"reason": "x"})
    assert r.status_code == 404


async def test_api_key_is_shown_once_stored_hashed_and_works_until_revoked(service: Service) -> None:
    admin_id, _name, _pw, admin = await service.user("admin")
    before = await audit_head(service)
    r = await service.client.post(KEYS, headers=admin, json={"name": "feed-script", "reason": "media feed robot"})
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    _ck, prefix, secret = key.split("_", 2)
    assert key.startswith("ck_") and prefix == created["prefix"] and len(secret) >= 40
    assert created["role"] == "automation" and created["created_by"] == admin_id and created["last_used_at"] is None

    # Never shown again; the database holds only the SHA-256 of the secret.
    listed = (await service.client.get(KEYS, headers=admin)).json()
    assert [k for k in listed if k["id"] == created["id"]] and secret not in str(listed) and "key" not in listed[0]
    conn = await db.connect(service.dsn)
    try:
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", created["id"])
        assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
        dump = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM api_keys t")
        assert secret not in dump
        audit_dump = await conn.fetchval("SELECT string_agg(a::text, ' ') FROM audit_log a")
        assert secret not in audit_dump
    finally:
        await conn.close()
    rows = await audit_rows(service, before)
    assert [(x["action"], x["actor_id"], x["entity_id"]) for x in rows] == [
        ("apikey.create", admin_id, str(created["id"]))]

    # The key works in X-API-Key and as a Bearer token; its use is recorded.
    for headers in ({"X-API-Key": key}, bearer(key)):
        me = await service.client.get(ME, headers=headers)
        assert me.status_code == 200
        assert me.json() == {"kind": "apikey", "id": created["id"], "name": "feed-script",
                             "display_name": "API key feed-script", "role": "automation", "can_sign": False,
                             "idle_s": None, "locked": False}  # a key has no session to lock
    used = next(k for k in (await service.client.get(KEYS, headers=admin)).json() if k["id"] == created["id"])
    assert used["last_used_at"] is not None
    # A near miss is refused.
    wrong = f"ck_{prefix}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    assert (await service.client.get(ME, headers={"X-API-Key": wrong})).status_code == 401

    r = await service.client.post(f"{KEYS}/{created['id']}/revoke", headers=admin, json={})
    assert r.status_code == 422 and "reason" in r.json()["detail"]
    r = await service.client.post(f"{KEYS}/{created['id']}/revoke", headers=admin, json={"reason": "script retired"})
    assert r.status_code == 200 and r.json()["revoked"] is True
    r = await service.client.get(ME, headers={"X-API-Key": key})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    revokes = await audit_rows(service, before, "apikey.revoke")
    assert [(x["actor_id"], x["reason"]) for x in revokes] == [(admin_id, "script retired")]


async def test_key_roles_and_what_keys_may_not_do(service: Service) -> None:
    admin = await service.login("admin")
    r = await service.client.post(KEYS, headers=admin, json={"name": "root-key", "role": "admin"})
    assert r.status_code == 422 and "administration is personal" in r.json()["detail"]
    r = await service.client.post(KEYS, headers=admin, json={"name": "x-key", "secret_hash": "00"})
    assert r.status_code == 422
    _kid, _key, qa_key = await service.api_key("qa")
    # A key has no password and no session.
    r = await service.client.post("/api/v1/users/me/password", headers=qa_key,
                                  json={"current_password": "a", "new_password": "b"})
    assert r.status_code == 403 and "API keys" in r.json()["detail"]
    r = await service.client.post("/api/v1/auth/logout", headers=qa_key)
    assert r.status_code == 400 and "revoking" in r.json()["detail"]
    # Its role applies: a qa key may list users, not create keys.
    assert (await service.client.get("/api/v1/users", headers=qa_key)).status_code == 200
    assert (await service.client.post(KEYS, headers=qa_key, json={"name": "k2"})).status_code == 403


async def _culturectl(dsn: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "CULTURECTL_DATABASE_URL": dsn}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_user_and_apikey_commands(service: Service) -> None:
    dsn = service.dsn
    password = new_password()
    before = await audit_head(service)
    code, out, err = await _culturectl(dsn, "user", "create", "lee.cli", "--role", "qa", "--display-name",
                                       "Lee Cli", "--password-stdin", stdin=password + "\n")
    assert code == 0, err
    assert "user lee.cli created" in out
    code, _out, err = await _culturectl(dsn, "user", "create", "weak.one", "--role", "qa", "--display-name",
                                        "Weak", "--password-stdin", stdin="short\n")
    assert code == 1 and "at least 12 characters" in err
    r = await service.login_as("lee.cli", password)
    assert r.status_code == 200
    headers = bearer(r.json()["access_token"])

    code, out, _ = await _culturectl(dsn, "user", "list")
    assert code == 0 and "lee.cli" in out and "Lee Cli" in out
    code, out, _ = await _culturectl(dsn, "user", "disable", "lee.cli", "--reason", "on leave")
    assert code == 0 and (await service.client.get(ME, headers=headers)).status_code == 401
    code, out, _ = await _culturectl(dsn, "user", "enable", "lee.cli", "--reason", "back")
    assert code == 0
    with lockout_threshold(service, 5):
        for i in range(5):
            await service.login_as("lee.cli", f"Wrong-Password-{i}")
    assert (await service.login_as("lee.cli", password)).status_code == 403
    code, out, _ = await _culturectl(dsn, "user", "unlock", "lee.cli", "--reason", "identity checked")
    assert code == 0 and (await service.login_as("lee.cli", password)).status_code == 200
    code, _out, err = await _culturectl(dsn, "user", "unlock", "nobody.here", "--reason", "x")
    assert code == 1 and "no user named 'nobody.here'" in err

    code, out, err = await _culturectl(dsn, "apikey", "create", "cli-robot", "--role", "automation")
    assert code == 0, err
    key = out.strip()
    assert key.startswith("ck_") and "shown only now" in err
    assert (await service.client.get(ME, headers={"X-API-Key": key})).json()["name"] == "cli-robot"
    code, out, _ = await _culturectl(dsn, "apikey", "list")
    assert code == 0 and "cli-robot" in out and key.split("_", 2)[2] not in out
    code, out, _ = await _culturectl(dsn, "apikey", "revoke", "cli-robot", "--reason", "done")
    assert code == 0 and (await service.client.get(ME, headers={"X-API-Key": key})).status_code == 401

    rows = [x for x in await audit_rows(service, before) if x["actor_kind"] == "system"
            and x["actor_name"].startswith("cli:")]
    assert [x["action"] for x in rows] == ["user.create", "user.disable", "user.enable", "user.unlock",
                                           "apikey.create", "apikey.revoke"]
