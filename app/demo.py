"""Demo accounts: one user per role and an automation key, created (audited) on the demo's first start."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from app.auth import accounts
from app.auth.principal import Principal, Role
from app.problems import Problem

DEMO_PASSWORD = "demo-Culture-7"
DEMO_USERS: tuple[tuple[str, str, Role], ...] = (
    ("operator", "Olga Operator", Role.OPERATOR),
    ("supervisor", "Sam Supervisor", Role.SUPERVISOR),
    ("qa", "Quinn QA", Role.QA),
    ("admin", "Ada Admin", Role.ADMIN),
)
DEMO_ACTOR = Principal(kind="system", id=None, name="culturectl-demo", role=Role.ADMIN,
                       display_name="culturectl demo set-up")
KEY_FILE = "demo-automation.key"


@dataclass(frozen=True)
class DemoAccounts:
    users: tuple[tuple[str, Role], ...]
    password: str
    automation_key: str


def _read_key(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip() if path.exists() else ""


def _write_key(path: Path, secret: str) -> None:
    path.write_text(secret + "\n", encoding="utf-8")
    os.chmod(path, 0o600)


async def ensure_demo_accounts(conn: asyncpg.Connection, data_dir: Path) -> DemoAccounts:
    """Create the demo users and automation key unless they exist; the key's secret is kept in data_dir."""
    for username, display_name, role in DEMO_USERS:
        if await accounts.get_user_by_name(conn, username) is None:
            await accounts.create_user(conn, username=username, display_name=display_name, role=role,
                                       password=DEMO_PASSWORD, actor=DEMO_ACTOR, reason="demo set-up")
    key_path = data_dir / KEY_FILE
    secret = await asyncio.to_thread(_read_key, key_path)
    try:
        if secret:
            await accounts.principal_for_api_key(conn, secret)
    except Problem:
        secret = ""
    if not secret:
        # The secret is shown once and only its hash is stored: a lost key file means a new key.
        n = await conn.fetchval("SELECT count(*) FROM api_keys WHERE name LIKE 'demo-automation%'")
        _, secret = await accounts.create_api_key(conn, name=f"demo-automation-{n + 1}", role=Role.AUTOMATION,
                                                  actor=DEMO_ACTOR, reason="demo set-up")
        await asyncio.to_thread(_write_key, key_path, secret)
    return DemoAccounts(tuple((u, r) for u, _, r in DEMO_USERS), DEMO_PASSWORD, secret)
