"""Delay from a simulator value change to its event on the SSE stream, per device protocol.

Runs the whole service on loopback (embedded PostgreSQL unless DATABASE_URL is set, both simulators, a
real uvicorn) on a clock at scale 1, so a reading's source time is the wall-clock instant the simulator
produced it (OPC UA: the server wrote the new value; Modbus: the poll read it). The delay is the wall
time the SSE client parsed the event minus that source time. Prints medians and p99; asserts nothing.

    python -m bench.latency [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import uvicorn
from pydantic import SecretStr

from app import db
from app.auth import accounts
from app.auth.principal import SYSTEM, Role
from app.clock import ScaledClock
from app.main import create_app
from app.settings import Settings
from drivers.devices import dump_devices
from simulators.culture_system import CultureSystemSimulator
from simulators.incubator import IncubatorSimulator
from simulators.runner import device_configs

BENCH_PASSWORD = "Timing-probe-42"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(seconds: float, poll_interval: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="culturectl-latency-"))
    embedded = None
    dsn = os.environ.get("DATABASE_URL")
    if dsn is None:
        embedded = db.EmbeddedPostgres(tmp / "pg")
        dsn = await asyncio.to_thread(embedded.start)
    clock = ScaledClock(scale=1.0)
    incubator = IncubatorSimulator(clock, seed=1)
    culture = CultureSystemSimulator(clock, seed=1)
    await incubator.start()
    await culture.start()
    devices = tmp / "devices.yaml"
    devices.write_text(dump_devices(device_configs(incubator, culture, poll_interval=poll_interval)))
    port = _free_port()
    settings = Settings(database_url=SecretStr(dsn), data_dir=tmp / "data", devices_file=devices, port=port)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, clock=clock), host="127.0.0.1", port=port,
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    delays: dict[str, list[float]] = {"opcua": [], "modbus": []}
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.05)
        conn = await db.connect(dsn)
        try:
            if await accounts.get_user_by_name(conn, "bench") is None:
                await accounts.create_user(conn, username="bench", display_name="Latency Bench", role=Role.OPERATOR,
                                           password=BENCH_PASSWORD, actor=SYSTEM)
        finally:
            await conn.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None) as client:
            login = await client.post("/api/v1/auth/login", json={"username": "bench", "password": BENCH_PASSWORD})
            login.raise_for_status()
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            await _collect(client, headers, seconds, delays)
    finally:
        server.should_exit = True
        await task
        await culture.stop()
        await incubator.stop()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    _report(delays, seconds, poll_interval)


async def _collect(client: httpx.AsyncClient, headers: dict[str, str], seconds: float,
                   delays: dict[str, list[float]]) -> None:
    async with client.stream("GET", "/api/v1/stream", params={"kinds": "reading"}, headers=headers) as response:
        response.raise_for_status()
        end = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds + 5):
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    now = time.time()
                    data = json.loads(line[5:])
                    if data["value"] is None:
                        continue
                    src = datetime.fromisoformat(data["time"]).timestamp()
                    proto = "opcua" if data["device"] == "incubator-1" else "modbus"
                    delays[proto].append((now - src) * 1000)
                    if time.monotonic() > end:
                        break


def _report(delays: dict[str, list[float]], seconds: float, poll_interval: float) -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{seconds:g} s of live readings, Modbus poll every {poll_interval:g} s")
    print(f"{'path':<40} {'events':>7} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for proto, label in (("opcua", "OPC UA value change -> SSE event"), ("modbus", "Modbus poll -> SSE event")):
        d = delays[proto]
        if d:
            print(f"{label:<40} {len(d):>7} {statistics.median(d):>10.1f} {_pct(d, 0.99):>8.1f} {max(d):>8.1f}")
        else:
            print(f"{label:<40} {0:>7} (no events)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.poll_interval))
