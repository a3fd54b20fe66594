"""Account administration: role and printed name (admin, a reason, one user.update with old and new values, not
one's own role, the last active admin kept), password expiry and password history."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from app import db
from app.auth import throttle, users
from app.auth.principal import Role, cli_principal
from app.core.problems import Problem
from tests.api.conftest import Service, bearer, new_password, running_service
from tests.api.test_auth import audit_head, audit_rows


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def test_an_admin_changes_role_and_name_with_a_reason_audited_once_with_old_and_new(service: Service) -> None:
    admin_id, _n, _p, admin = await service.user("admin")
    user_id, username, password, user_headers = await service.user("operator")
    before = await audit_head(service)
    r = await service.client.patch(f"/api/v1/users/{user_id}", headers=admin, json={
        "role": "supervisor", "display_name": "Dana K. Kim", "reason": "promoted to shift lead"})
    assert r.status_code == 200, r.text
    assert (r.json()["role"], r.json()["display_name"]) == ("supervisor", "Dana K. Kim")
    rows = await audit_rows(service, before)
    assert [(x["action"], x["actor_id"], x["entity_id"], x["reason"]) for x in rows] == [
        ("user.update", admin_id, str(user_id), "promoted to shift lead")]
    assert _json(rows[0]["old"]) == {"role": "operator", "display_name": "Operator Tester"}
    assert _json(rows[0]["new"]) == {"role": "supervisor", "display_name": "Dana K. Kim"}
    # a role change ends the user's sessions: the next login carries the new role
    assert (await service.client.get("/api/v1/auth/me", headers=user_headers)).status_code == 401
    r = await service.login_as(username, password)
    me = await service.client.get("/api/v1/auth/me", headers=bearer(r.json()["access_token"]))
    assert me.json()["role"] == "supervisor" and me.json()["display_name"] == "Dana K. Kim"

    # the name alone: one record with just that change; sessions go on
    user_headers = bearer(r.json()["access_token"])
    before = await audit_head(service)
    r = await service.client.patch(f"/api/v1/users/{user_id}", headers=admin, json={
        "display_name": "Dana Kim-Lee", "reason": "name changed (marriage)"})
    assert r.status_code == 200, r.text
    rows = await audit_rows(service, before)
    assert [(x["action"], _json(x["old"]), _json(x["new"])) for x in rows] == [
        ("user.update", {"display_name": "Dana K. Kim"}, {"display_name": "Dana Kim-Lee"})]
    assert (await service.client.get("/api/v1/auth/me", headers=user_headers)).status_code == 200


async def test_role_changes_are_refused_without_reason_for_oneself_for_unknown_users_and_non_admins(
        service: Service) -> None:
    admin_id, _n, _p, admin = await service.user("admin")
    user_id = (await service.create_user("operator"))[0]
    before = await audit_head(service)
    r = await service.client.patch(f"/api/v1/users/{user_id}", headers=admin, json={"role": "qa"})
    assert r.status_code == 422 and "reason" in r.text
    r = await service.client.patch(f"/api/v1/users/{user_id}", headers=admin, json={"role": "qa", "reason": " "})
    assert r.status_code == 422 and r.json()["type"].endswith("reason-required")
    r = await service.client.patch(f"/api/v1/users/{user_id}", headers=admin, json={"reason": "nothing"})
    assert r.status_code == 422 and r.json()["type"].endswith("nothing-to-change")
    r = await service.client.patch(f"/api/v1/users/{user_id}", headers=admin, json={"role": "root", "reason": "x"})
    assert r.status_code == 422
    r = await service.client.patch(f"/api/v1/users/{admin_id}", headers=admin, json={"role": "qa", "reason": "x"})
    assert r.status_code == 409 and r.json()["type"].endswith("cannot-change-own-role")
    r = await service.client.patch("/api/v1/users/999999", headers=admin, json={"role": "qa", "reason": "x"})
    assert r.status_code == 404
    # one's own printed name is fine (an admin's)
    r = await service.client.patch(f"/api/v1/users/{admin_id}", headers=admin,
                                   json={"display_name": "Admin Two", "reason": "typo"})
    assert r.status_code == 200
    supervisor = await service.login("supervisor")
    r = await service.client.patch(f"/api/v1/users/{user_id}", headers=supervisor, json={"role": "qa", "reason": "x"})
    assert r.status_code == 403
    # the refused changes wrote nothing; the supervisor was made and logged in
    assert [x["action"] for x in await audit_rows(service, before)] == ["user.update", "user.create", "auth.login"]


async def test_the_last_active_admin_can_be_neither_demoted_nor_disabled(service: Service) -> None:
    a_id, _n, _p, a = await service.user("admin")
    b_id, _n, _p, _b = await service.user("admin")
    conn = await db.connect(service.dsn)
    try:  # every other admin of this module's database out of the way
        await conn.execute("UPDATE users SET disabled = true WHERE role = 'admin' AND id <> ALL($1::int[])",
                           [a_id, b_id])
        r = await service.client.patch(f"/api/v1/users/{b_id}", headers=a, json={"role": "qa", "reason": "moved"})
        assert r.status_code == 200, r.text
        # A is the last active admin now: not demoted, not disabled (the command line can try either)
        for attempt in (users.update_user(conn, a_id, actor=cli_principal(), reason="x", role=Role.QA),
                        users.set_disabled(conn, a_id, True, actor=cli_principal(), reason="x")):
            with pytest.raises(Problem) as refused:
                await attempt
            assert refused.value.status == 409 and refused.value.kind == "last-admin"
        row = await users.get_user(conn, a_id)
        assert row is not None and row["role"] == "admin" and not row["disabled"]
        # a disabled admin does not count; another active admin does
        r = await service.client.patch(f"/api/v1/users/{b_id}", headers=a, json={"role": "admin", "reason": "back"})
        assert r.status_code == 200
        await users.set_disabled(conn, a_id, True, actor=cli_principal(), reason="left the site")
        assert (await users.get_user(conn, a_id))["disabled"]  # type: ignore[index]
    finally:
        await conn.execute("UPDATE users SET disabled = false WHERE role = 'admin'")
        await conn.close()


async def test_two_admins_demoting_each_other_at_once_end_with_one_admin_and_no_500(service: Service) -> None:
    a_id, a_name, a_password, a = await service.user("admin")
    b_id, b_name, b_password, b = await service.user("admin")
    conn = await db.connect(service.dsn)
    try:  # every other admin of this module's database out of the way: A and B are the last two
        await conn.execute("UPDATE users SET disabled = true WHERE role = 'admin' AND id <> ALL($1::int[])",
                           [a_id, b_id])
        for _round in range(3):
            # two transactions at once, each demoting the other (before: a deadlock, one of them a 500)
            answers = await asyncio.gather(
                service.client.patch(f"/api/v1/users/{b_id}", headers=a, json={"role": "qa", "reason": "x"}),
                service.client.patch(f"/api/v1/users/{a_id}", headers=b, json={"role": "qa", "reason": "y"}))
            assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
            assert [r.json()["type"].endswith("/last-admin") for r in answers if r.status_code == 409] == [True]
            admins = await conn.fetch("SELECT id FROM users WHERE role = 'admin' AND NOT disabled")
            assert len(admins) == 1
            # the same with the command line: demote and disable at once
            (survivor,) = (r["id"] for r in admins)
            other = b_id if survivor == a_id else a_id
            await conn.execute("UPDATE users SET role = 'admin' WHERE id = $1", other)
            second = await db.connect(service.dsn)
            try:
                outcomes = await asyncio.gather(
                    users.set_disabled(conn, survivor, True, actor=cli_principal(), reason="x"),
                    users.update_user(second, other, actor=cli_principal(), reason="y", role=Role.QA),
                    return_exceptions=True)
            finally:
                await second.close()
            refused = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(refused) == 1 and isinstance(refused[0], Problem) and refused[0].kind == "last-admin", outcomes
            assert len(await conn.fetch("SELECT id FROM users WHERE role = 'admin' AND NOT disabled")) == 1
            await conn.execute("UPDATE users SET role = 'admin', disabled = false WHERE id = ANY($1::int[])",
                               [a_id, b_id])
            # a role change ended the demoted one's sessions: both log in again
            a = bearer((await service.login_as(a_name, a_password)).json()["access_token"])
            b = bearer((await service.login_as(b_name, b_password)).json()["access_token"])
    finally:
        await conn.execute("UPDATE users SET disabled = false WHERE role = 'admin'")
        await conn.close()


async def _backdate_password(dsn: str, user_id: int, days: float) -> None:
    conn = await db.connect(dsn)
    try:
        await conn.execute("UPDATE users SET password_changed_at = now() - make_interval(secs => $2) WHERE id = $1",
                           user_id, days * 86400)
    finally:
        await conn.close()


async def test_an_expired_password_must_be_changed_before_anything_else(db_dsn: str, tmp_path: Path) -> None:
    async with running_service(db_dsn, tmp_path, password_max_age_days=30) as svc:
        user_id, username, password = await svc.create_user("operator")
        r = await svc.login_as(username, password)
        assert r.status_code == 200 and r.json()["password_expired"] is False
        await _backdate_password(db_dsn, user_id, 29)
        fresh = bearer(r.json()["access_token"])
        assert (await svc.client.get("/api/v1/runs", headers=fresh)).status_code == 200

        await _backdate_password(db_dsn, user_id, 31)
        conn = await db.connect(db_dsn)
        try:  # that session was opened two days ago, before the password expired: it goes on
            await conn.execute("UPDATE sessions SET issued_at = now() - interval '2 days' WHERE user_id = $1",
                               user_id)
        finally:
            await conn.close()
        # a login after the expiry may only change the password
        assert (await svc.client.get("/api/v1/runs", headers=fresh)).status_code == 200
        r = await svc.login_as(username, password)
        assert r.status_code == 200 and r.json()["password_expired"] is True
        expired = bearer(r.json()["access_token"])
        r = await svc.client.get("/api/v1/runs", headers=expired)
        assert r.status_code == 403 and r.json()["type"].endswith("/password-expired")
        assert r.json()["change_password"] == "/api/v1/users/me/password"
        assert (await svc.client.get("/", headers=expired)).status_code == 303  # the dashboard: to the login
        assert (await svc.client.get("/api/v1/auth/me", headers=expired)).status_code == 200
        before = await audit_head(svc)
        new = new_password()
        r = await svc.client.post("/api/v1/users/me/password", headers=expired,
                                  json={"current_password": password, "new_password": new})
        assert r.status_code == 204, r.text
        assert [x["action"] for x in await audit_rows(svc, before)] == ["user.password"]
        assert (await svc.client.get("/api/v1/runs", headers=expired)).status_code == 200
        r = await svc.login_as(username, new)
        assert r.json()["password_expired"] is False


async def test_an_expired_password_signs_nothing_and_acknowledges_nothing_whenever_the_session_began(
        db_dsn: str, tmp_path: Path) -> None:
    async with running_service(db_dsn, tmp_path, password_max_age_days=30) as svc:
        user_id, username, password, headers = await svc.user("operator")
        conn = await db.connect(db_dsn)
        try:
            run = int(await conn.fetchval("INSERT INTO culture_run (code) VALUES ($1) RETURNING id",
                                          f"EXP-{user_id}"))
            await _backdate_password(db_dsn, user_id, 31)  # expired after this session was opened (2 days ago)
            await conn.execute("UPDATE sessions SET issued_at = now() - interval '2 days' WHERE user_id = $1",
                               user_id)
        finally:
            await conn.close()
        sign = {"entity_type": "culture_run", "entity_id": str(run), "meaning": "performed", "password": password}
        assert (await svc.client.get("/api/v1/runs", headers=headers)).status_code == 200
        before = await audit_head(svc)
        r = await svc.client.post("/api/v1/signatures", headers=headers, json=sign)
        assert r.status_code == 403 and r.json()["type"].endswith("/password-expired"), r.text
        assert r.json()["change_password"] == "/api/v1/users/me/password"
        rows = await audit_rows(svc, before)
        assert [(x["action"], _json(x["new"])["cause"]) for x in rows] == [("signature.failed", "password expired")]
        # a wrong password is a wrong password (the expiry is told only to who knows the password)
        r = await svc.client.post("/api/v1/signatures", headers=headers, json={**sign, "password": "Not-It-123456"})
        assert r.status_code == 401 and r.json()["type"].endswith("/signature-password")
        # the remote acknowledgement's password check refuses it the same way
        limits = svc.app.state.runtime.limits
        token = throttle.activate(limits)
        conn = await db.connect(db_dsn)
        try:
            with pytest.raises(users.PasswordExpired):
                await users.verify_password_for(conn, user_id, password, purpose="remote acknowledgement",
                                                client=None, rule="login_rate", refuse_expired=True)
            # the lock screen and a password change still take it
            assert await users.verify_password_for(conn, user_id, password, purpose="session unlock", client=None,
                                                   rule="login_rate")
        finally:
            throttle.reset(token)
            await conn.close()

        # a session opened after the expiry: renewal says so, and its lock screen still unlocks
        r = await svc.login_as(username, password)
        expired = bearer(r.json()["access_token"])
        assert r.json()["password_expired"] is True
        r = await svc.client.post("/api/v1/auth/refresh", headers=expired)
        assert r.status_code == 200 and r.json()["password_expired"] is True
        r = await svc.client.post("/api/v1/auth/unlock", headers=expired, json={"password": password})
        assert r.status_code == 200 and r.json()["unlocked"] is True, r.text
        r = await svc.client.post("/api/v1/users/me/password", headers=expired,
                                  json={"current_password": password, "new_password": new_password()})
        assert r.status_code == 204, r.text


async def test_the_last_passwords_may_not_be_reused(db_dsn: str, tmp_path: Path) -> None:
    async with running_service(db_dsn, tmp_path, password_history=3) as svc:
        user_id, username, first = await svc.create_user("operator")
        headers = bearer((await svc.login_as(username, first)).json()["access_token"])

        async def change(current: str, new: str) -> int:
            r = await svc.client.post("/api/v1/users/me/password", headers=headers,
                                      json={"current_password": current, "new_password": new})
            if r.status_code == 422:
                assert r.json()["rule"] == "not-reused", r.text
            return r.status_code

        second, third, fourth = new_password(), new_password(), new_password()
        assert await change(first, second) == 204
        assert await change(second, third) == 204
        assert await change(third, first) == 422  # the last 3: third (current), second, first
        assert await change(third, second) == 422
        assert await change(third, third) == 422
        assert await change(third, fourth) == 204
        assert await change(fourth, first) == 204  # first is 4 passwords back now
        conn = await db.connect(db_dsn)
        try:  # only what the rule needs is kept: the 2 previous hashes, never a password
            hashes = await conn.fetch("SELECT password_hash FROM password_history WHERE user_id = $1", user_id)
            assert len(hashes) == 2 and all(h["password_hash"].startswith("$argon2id$") for h in hashes)
        finally:
            await conn.close()


async def test_the_set_role_and_set_name_commands(service: Service) -> None:
    from tests.api.test_users_and_keys import _culturectl

    user_id, username, _password = await service.create_user("operator")
    before = await audit_head(service)
    code, out, err = await _culturectl(service.dsn, "user", "set-role", username, "qa", "--reason", "moved to QA")
    assert code == 0, err
    code, out, err = await _culturectl(service.dsn, "user", "set-name", username, "Lee Q. Ashe", "--reason", "typo")
    assert code == 0 and "Lee Q. Ashe" in out, err
    rows = await audit_rows(service, before)
    assert [(x["action"], x["actor_kind"], _json(x["new"])) for x in rows] == [
        ("user.update", "system", {"role": "qa"}), ("user.update", "system", {"display_name": "Lee Q. Ashe"})]
    code, _out, err = await _culturectl(service.dsn, "user", "set-role", username, "root", "--reason", "x")
    assert code != 0 and "not a role" in err
    assert user_id
