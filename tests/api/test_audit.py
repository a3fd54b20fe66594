"""The audit trail through the API (QA) and the `culturectl audit verify` command."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime

import asyncpg

from app import db
from app.auth.principal import Role
from tests.api.conftest import Service

AUDIT = "/api/v1/audit"


async def _owner(service: Service) -> asyncpg.Connection:
    return await db.connect(service.dsn)


async def test_qa_reads_the_trail_filtered_and_paged(service: Service) -> None:
    qa = await service.login(Role.QA)
    admin_id, admin_name, _, admin = await service.user(Role.ADMIN)
    conn = await _owner(service)
    try:
        t0: datetime = await conn.fetchval("SELECT clock_timestamp()")  # after the admin's login
    finally:
        await conn.close()
    user_ids = []
    for i in range(3):
        r = await service.client.post("/api/v1/users", headers=admin, json={
            "username": f"filter-{i}-{os.getpid()}", "display_name": f"Filter {i}", "role": "operator",
            "password": f"Filter-Password-{i}-xyz"})
        assert r.status_code == 201, r.text
        user_ids.append(r.json()["id"])
    r = await service.client.post(f"/api/v1/users/{user_ids[1]}/disable", headers=admin,
                                  json={"reason": "left the site"})
    assert r.status_code == 200, r.text

    r = await service.client.get(AUDIT, params={"actor": admin_name, "from": t0.isoformat()}, headers=qa)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["action"] for i in items] == ["user.create"] * 3 + ["user.disable"]
    assert all(i["actor_kind"] == "user" and i["actor_id"] == admin_id and i["actor_role"] == "admin"
               for i in items)
    assert all(i["client"] == "10.0.0.7" and i["at"].endswith("Z") for i in items)
    assert "password" not in str(items).lower().replace("password_changed_at", "")

    disable = items[-1]
    assert (disable["entity_type"], disable["entity_id"], disable["reason"]) == ("user", str(user_ids[1]),
                                                                                 "left the site")
    assert disable["old"]["disabled"] is False and disable["new"]["disabled"] is True

    by_entity = (await service.client.get(AUDIT, params={"entity_type": "user", "entity_id": user_ids[1]},
                                          headers=qa)).json()["items"]
    assert [i["action"] for i in by_entity] == ["user.create", "user.disable"]
    by_action = (await service.client.get(AUDIT, params={"action": "user.disable", "actor": admin_name},
                                          headers=qa)).json()["items"]
    assert [i["seq"] for i in by_action] == [disable["seq"]]
    prefix = (await service.client.get(AUDIT, params={"action": "user.", "actor": admin_name},
                                       headers=qa)).json()["items"]
    assert len(prefix) == 4
    before = (await service.client.get(AUDIT, params={"to": t0.isoformat(), "actor": admin_name},
                                       headers=qa)).json()["items"]
    assert [i["action"] for i in before] == ["auth.login"]

    # paging: 2 at a time, in seq order, no record twice
    seen: list[int] = []
    after = 0
    while True:
        page = (await service.client.get(AUDIT, params={"actor": admin_name, "limit": 2, "after_seq": after},
                                         headers=qa)).json()
        seen += [i["seq"] for i in page["items"]]
        if page["next_after_seq"] is None:
            break
        after = page["next_after_seq"]
    assert seen == [i["seq"] for i in before + items]


async def test_who_may_read_the_trail_and_bad_queries(service: Service) -> None:
    assert (await service.client.get(AUDIT)).status_code == 401
    assert (await service.client.get(f"{AUDIT}/verify")).status_code == 401
    for role in (Role.OPERATOR, Role.SUPERVISOR, Role.AUTOMATION):
        headers = await service.login(role)
        assert (await service.client.get(AUDIT, headers=headers)).status_code == 403
        assert (await service.client.get(f"{AUDIT}/verify", headers=headers)).status_code == 403
    _, _, key = await service.api_key(Role.QA)
    assert (await service.client.get(AUDIT, headers=key)).status_code == 200  # a QA reporting script
    qa = await service.login(Role.QA)
    r = await service.client.get(AUDIT, params={"limit": 501}, headers=qa)
    assert r.status_code == 422 and "500" in r.text
    r = await service.client.get(AUDIT, params={"from": "2026-11-21T12:00:00"}, headers=qa)
    assert r.status_code == 400 and "UTC offset" in r.json()["detail"]


async def test_verify_reports_ok_then_the_first_broken_row(service: Service) -> None:
    qa = await service.login(Role.QA)
    r = await service.client.get(f"{AUDIT}/verify", headers=qa)
    assert r.status_code == 200
    report = r.json()
    assert report["ok"] is True and report["first_broken"] is None and report["rows"] == report["last_seq"] > 0

    conn = await _owner(service)
    victim = report["last_seq"] // 2
    original = await conn.fetchval("SELECT reason FROM audit_log WHERE seq = $1", victim)

    async def set_reason(reason: str | None) -> None:
        async with conn.transaction():  # as a superuser bypassing the trigger would
            await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
            await conn.execute("UPDATE audit_log SET reason = $2 WHERE seq = $1", victim, reason)
            await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")

    try:
        await set_reason("rewritten history")
        report = (await service.client.get(f"{AUDIT}/verify", headers=qa)).json()
        assert report["ok"] is False
        assert report["first_broken"]["seq"] == victim and report["first_broken"]["kind"] == "edited"

        # the command says the same, with exit status 1
        code, out = await _cli_verify(service.dsn)
        assert code == 1 and f"BROKEN at seq {victim} (edited)" in out, out
    finally:
        await set_reason(original)  # as it was: later tests see an intact chain
        await conn.close()
    report = (await service.client.get(f"{AUDIT}/verify", headers=qa)).json()
    assert report["ok"] is True
    code, out = await _cli_verify(service.dsn)
    assert code == 0 and "audit trail ok" in out, out


async def _cli_verify(dsn: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULTURECTL_")}
    env["CULTURECTL_DATABASE_URL"] = dsn
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "audit", "verify", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()
