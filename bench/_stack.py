"""The whole service on loopback for the benches: embedded PostgreSQL (unless DATABASE_URL is set), both
simulators, a real uvicorn, and an HTTP client signed in as an operator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import uuid
import warnings
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


@dataclass(frozen=True)
class Scratch:
    """A bench's own database, migrated to head; `where` says which server; `tmp` is a scratch directory."""

    dsn: str
    where: str
    version: str
    tmp: Path


@contextlib.asynccontextmanager
async def scratch_database(name: str) -> AsyncIterator[Scratch]:
    """A new database `<name>_<random>` on DATABASE_URL's server (dropped afterwards), or on an embedded PostgreSQL
    in a temporary directory when DATABASE_URL is unset."""
    url = os.environ.get("DATABASE_URL")
    tmp = Path(tempfile.mkdtemp(prefix="culturectl-bench-"))
    server: db.EmbeddedPostgres | None = None
    try:
        if url:
            admin = db.plain_dsn(url)
            where = f"DATABASE_URL ({db.redact(admin)})"
        else:
            server = db.EmbeddedPostgres(tmp / "pgdata")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
                admin = await asyncio.to_thread(server.start)
            where = "embedded PostgreSQL (temporary directory)"
        dbname = f"{name}_{uuid.uuid4().hex[:8]}"
        dsn = await db.create_database(admin, dbname)
        try:
            await db.upgrade_async(dsn)
            conn = await db.connect(dsn)
            try:
                version = str(await conn.fetchval("SHOW server_version"))
            finally:
                await conn.close()
            yield Scratch(dsn, where, version, tmp)
        finally:
            with contextlib.suppress(Exception):
                await db.drop_database(admin, dbname)
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(tmp, ignore_errors=True)


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
