"""`culturectl notify`: a site writes its call tree as YAML, validates it, puts it in force (audited), and asks who
is on call; a bad file is refused with every problem and where it is."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import asyncpg

from app.auth import users
from app.auth.principal import Role, cli_principal

CULTURECTL = [sys.executable, "-m", "app.cli", "notify"]
POLICY = """
rotas:
  - name: incubators
    shifts:
      - {days: [mon, tue, wed, thu, fri, sat, sun], start: "18:00", end: "08:00", users: [alice]}
      - {days: [mon, tue, wed, thu, fri, sat, sun], start: "08:00", end: "18:00", users: [carol]}
rules:
  - name: co2
    match: {priorities: [high], roles: [incubator.co2]}
    tiers:
      - notify: {rotas: [incubators]}
        repeat_every_min: 10
        repeats: 2
      - notify: {users: [bob]}
        after_min: 15
"""


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*CULTURECTL, *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_validate_apply_and_who_is_on_call(db_dsn: str, tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CULTURECTL_")},
           "CULTURECTL_DATABASE_URL": db_dsn, "CULTURECTL_SITE_TIMEZONE": "Europe/Paris"}
    good = tmp_path / "policy.yaml"
    good.write_text(POLICY)
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("repeats: 2", "repeats: 99").replace("[bob]", "[Bob!]"))

    rc, out = await _cli("validate", str(good), env=env)
    assert rc == 0 and "ok: 1 rules (co2), 1 rotas (incubators)" in out, out
    rc, out = await _cli("validate", str(bad), env=env)
    assert rc == 1 and "invalid notification policy" in out
    assert "rules.0.tiers.0.repeats: Input should be less than or equal to 20" in out, out
    assert "rules.0.tiers.1.notify.users.0: String should match pattern" in out, out

    rc, out = await _cli("apply", str(good), "--reason", "the night call tree", env=env)
    assert rc == 1 and "no active user alice, bob, carol" in out, out  # a call tree names people with accounts
    conn = await asyncpg.connect(db_dsn)
    try:
        for name in ("alice", "bob", "carol"):
            await users.create_user(conn, username=name, display_name=name.title(), role=Role.OPERATOR,
                                    password="Night-Shift-Culture-42", actor=cli_principal())
    finally:
        await conn.close()
    rc, out = await _cli("apply", str(good), "--reason", "the night call tree", env=env)
    assert rc == 0 and "notification policy version 1 in force" in out, out
    rc, out = await _cli("oncall", "--at", "2026-12-05T03:00:00+01:00", "--json", env=env)
    assert rc == 0 and json.loads(out)["rotas"] == [{"rota": "incubators", "users": ["alice"]}], out
    rc, out = await _cli("oncall", "--at", "2026-12-05T10:00:00", env=env)
    assert rc == 1 and "UTC offset" in out

    conn = await asyncpg.connect(db_dsn)
    try:
        row = await conn.fetchrow("SELECT actor_kind, reason, entity_id FROM audit_log WHERE action = "
                                  "'notification_policy.change'")
    finally:
        await conn.close()
    assert row is not None and (row["actor_kind"], row["reason"], row["entity_id"]) == (
        "system", "the night call tree", "1")
