"""The whole service on loopback for the benches: embedded PostgreSQL (unless DATABASE_URL is set), both
simulators, a real uvicorn, and an HTTP client signed in as an operator."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app import db
from app.auth import users
from app.auth.principal import SYSTEM, Role
from app.core.clock import ScaledClock
from app.demo import stack
from simulators.culture_system import CultureSystemSimulator
from simulators.incubator import IncubatorSimulator

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
    """Start everything (app.demo.stack), yield with a signed-in client, stop everything."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    async with stack.running_stack(tmp, free_port(), scale=scale, dsn=os.environ.get("DATABASE_URL"), seed=1,
                                   poll_interval=poll_interval, **settings) as running:
        conn = await db.connect(running.dsn)
        try:
            if await users.get_user_by_name(conn, "bench") is None:
                await users.create_user(conn, username="bench", display_name="Bench", role=Role.OPERATOR,
                                        password=BENCH_PASSWORD, actor=SYSTEM)
        finally:
            await conn.close()
        async with httpx.AsyncClient(base_url=running.base_url, timeout=None) as client:
            login = await client.post("/api/v1/auth/login", json={"username": "bench", "password": BENCH_PASSWORD})
            login.raise_for_status()
            client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            client.cookies.clear()
            yield BenchStack(client, running.clock, running.incubator, running.culture, running.base_url,
                             running.dsn, tmp / "data")
