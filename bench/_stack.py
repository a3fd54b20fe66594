"""The whole service on loopback for the benches: embedded PostgreSQL (unless DATABASE_URL is set), both
simulators, a real uvicorn, and an HTTP client signed in as an operator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from app import db
from app.auth import users
from app.auth.principal import SYSTEM, Role
from app.core.clock import ScaledClock
from app.main import create_app, make_server
from app.settings import Settings
from drivers.devices import dump_devices
from simulators.culture_system import CultureSystemSimulator
from simulators.incubator import IncubatorSimulator
from simulators.runner import device_configs

BENCH_PASSWORD = "Timing-probe-42"


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BenchStack:
    client: httpx.AsyncClient
    clock: ScaledClock
    incubator: IncubatorSimulator
    culture: CultureSystemSimulator
    base_url: str
    dsn: str
    data_dir: Path


@contextlib.asynccontextmanager
async def running_stack(scale: float = 1.0, poll_interval: float = 0.5, prefix: str = "culturectl-bench-",
                        **settings: Any) -> AsyncIterator[BenchStack]:
    """Start everything, yield, stop everything (the simulators, the server, the embedded database)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    embedded = None
    dsn = os.environ.get("DATABASE_URL")
    if dsn is None:
        embedded = db.EmbeddedPostgres(tmp / "pg")
        dsn = await asyncio.to_thread(embedded.start)
    clock = ScaledClock(scale=scale)
    incubator = IncubatorSimulator(clock, seed=1)
    culture = CultureSystemSimulator(clock, seed=1)
    await incubator.start()
    await culture.start()
    devices = tmp / "devices.yaml"
    devices.write_text(dump_devices(device_configs(incubator, culture, poll_interval=poll_interval)))
    port = free_port()
    cfg = Settings(database_url=SecretStr(dsn), data_dir=tmp / "data", devices_file=devices, port=port,
                   time_scale=scale, **settings)
    server = make_server(create_app(cfg, clock=clock), cfg, host="127.0.0.1")
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn exposes a flag, not an event
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        conn = await db.connect(dsn)
        try:
            if await users.get_user_by_name(conn, "bench") is None:
                await users.create_user(conn, username="bench", display_name="Bench", role=Role.OPERATOR,
                                           password=BENCH_PASSWORD, actor=SYSTEM)
        finally:
            await conn.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None) as client:
            login = await client.post("/api/v1/auth/login", json={"username": "bench", "password": BENCH_PASSWORD})
            login.raise_for_status()
            client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            client.cookies.clear()
            yield BenchStack(client, clock, incubator, culture, f"http://127.0.0.1:{port}", dsn, tmp / "data")
    finally:
        server.should_exit = True
        await task
        await culture.stop()
        await incubator.stop()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
