"""The commands a newcomer runs first: `culturectl demo` and `culturectl db upgrade`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import httpx

from app import db
from app.demo.setup import DEMO_PASSWORD, KEY_FILE
from tests.support import free_port, wait_for

CULTURECTL = [sys.executable, "-m", "app.cli"]


async def _run_demo(data_dir: Path, port: int, exit_after: float) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULTURECTL_")}
    proc = await asyncio.create_subprocess_exec(
        *CULTURECTL, "demo", "--port", str(port), "--data-dir", str(data_dir), "--exit-after", str(exit_after),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    return proc


async def _online(client: httpx.AsyncClient) -> bool:
    """Both devices online, as the public readiness probe reports them (the API needs credentials)."""
    try:
        r = await client.get("/readyz")
    except httpx.TransportError:
        return False
    devices = r.json().get("devices") or {} if r.status_code == 200 else {}
    return len(devices) == 2 and {d["state"] for d in devices.values()} == {"online"}


async def _done_steps(client: httpx.AsyncClient, key: str) -> list[str]:
    auth = {"Authorization": f"Bearer {key}"}
    runs = (await client.get("/api/v1/runs", headers=auth)).json()
    if not runs:
        return []
    view = (await client.get(f"/api/v1/runs/{runs[0]['id']}", headers=auth)).json()
    return [s["key"] for s in view["schedule"] if s["status"] == "done"]


async def _last_time(data_dir: Path) -> object:
    with db.EmbeddedPostgres(data_dir / "pg") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval("SELECT max(time) FROM telemetry")
        finally:
            await conn.close()


async def test_demo_starts_everything_stops_cleanly_and_reuses_its_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    port = free_port()
    keys_seen: set[str] = set()
    for run in range(2):
        proc = await _run_demo(data_dir, port, exit_after=10 if run == 0 else 6)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                await wait_for(lambda c=client: _online(c), timeout=45, what="demo devices online")
                ready = await client.get("/readyz")
                assert ready.status_code == 200
                # The demo's users and automation key work: what it prints is what a newcomer types.
                login = await client.post("/api/v1/auth/login",
                                          json={"username": "operator", "password": DEMO_PASSWORD})
                assert login.status_code == 200, login.text
                key = (data_dir / KEY_FILE).read_text().strip()
                devices = await client.get("/api/v1/devices", headers={"Authorization": f"Bearer {key}"})
                assert devices.status_code == 200 and len(devices.json()) == 2
                keys_seen.add(key)
                # The demo run exists and its automation client records the preparation steps in their windows.
                done = await wait_for(lambda c=client, k=key: _done_steps(c, k), timeout=30,
                                      what="the demo run's first recorded step")
                assert "coat_vessels" in done
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text = out.decode()
        assert proc.returncode == 0, text
        assert f"http://127.0.0.1:{port}" in text and "opc.tcp://127.0.0.1:" in text and "modbus://127.0.0.1:" in text
        assert "culturectl demo stopped" in text and "demo run        id " in text
        assert f"automation key  {key}" in text and "operator (operator)" in text
        # The embedded server was stopped with the demo.
        assert not (data_dir / "pg" / "postmaster.pid").exists()
        if run == 0:
            first_last = await _last_time(data_dir)
            assert first_last is not None
    assert len(keys_seen) == 1, "the second run reuses the demo key it kept"
    # The second run continued the simulated clock: its data comes after the first run's.
    assert await _last_time(data_dir) > first_last  # type: ignore[operator]


async def test_db_upgrade_command_migrates_the_configured_database(pg_server: str) -> None:
    name = "t_cli_upgrade"
    dsn = await db.create_database(pg_server, name)
    try:
        env = {**os.environ, "CULTURECTL_DATABASE_URL": dsn}
        proc = await asyncio.create_subprocess_exec(*CULTURECTL, "db", "upgrade", env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, out.decode()
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT to_regclass('telemetry') IS NOT NULL")
        finally:
            await conn.close()
    finally:
        await db.drop_database(pg_server, name)
