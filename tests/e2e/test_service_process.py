"""`culturectl serve` as a real process: alarm transitions survive a kill -9 during a database outage, an outage
logs one line down and one up per loop, and SIGTERM ends the service in seconds whatever its SSE clients do.

The simulators run in this process on a clock 60x faster than the wall clock, shared with the service through its
epoch; PostgreSQL is an embedded server of this module's own, stopped and started for the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import sys
import tempfile
import termios
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from app import db
from app.auth import users
from app.auth.principal import Role, cli_principal
from app.core.clock import ScaledClock, utcnow
from drivers.devices import dump_devices
from simulators.culture_system import CultureSystemSimulator
from simulators.faults import Fault
from simulators.incubator import IncubatorSimulator
from simulators.runner import device_configs
from tests.support import OwnServer, free_port, sse_events, wait_for

SCALE = 60.0
PASSWORD = "Seven-Day-Culture-42"
DOOR = "incubator-1.door_open:limit"


@dataclass
class World:
    pg: OwnServer
    clock: ScaledClock
    incubator: IncubatorSimulator
    culture: CultureSystemSimulator
    data_dir: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
async def world() -> AsyncIterator[World]:
    base = Path(tempfile.mkdtemp(prefix="culturectl-process-"))
    pg = OwnServer(base / "pgdata")
    epoch = utcnow()
    clock = ScaledClock(epoch=epoch, scale=SCALE)
    incubator = IncubatorSimulator(clock, seed=3)
    culture = CultureSystemSimulator(clock, seed=3, t0=clock.now() - timedelta(days=1))
    try:
        dsn = await pg.start()
        await db.upgrade_async(dsn)
        conn = await db.connect(dsn)
        try:
            await users.create_user(conn, username="watcher", display_name="Wall Screen", role=Role.OPERATOR,
                                       password=PASSWORD, actor=cli_principal())
        finally:
            await conn.close()
        await incubator.start()
        await culture.start()
        devices = base / "devices.yaml"
        devices.write_text(dump_devices(device_configs(incubator, culture, poll_interval=0.2)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CULTURECTL_") and k != "DATABASE_URL"}
        env.update({
            "CULTURECTL_DATABASE_URL": dsn, "CULTURECTL_DATA_DIR": str(base / "data"),
            "CULTURECTL_DEVICES_FILE": str(devices), "CULTURECTL_TIME_SCALE": str(SCALE),
            "CULTURECTL_CLOCK_EPOCH": epoch.isoformat(), "CULTURECTL_LOG_LEVEL": "info",
            "CULTURECTL_INGEST_FLUSH_INTERVAL": "0.2",
        })
        yield World(pg, clock, incubator, culture, base / "data", env)
    finally:
        await culture.stop()
        await incubator.stop()
        await pg.stop()
        await asyncio.to_thread(shutil.rmtree, base, True)


class Service:
    """One `culturectl serve` process; its log goes to a file the test reads."""

    def __init__(self, world: World, log: Path) -> None:
        self.world = world
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        out = self.log.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.cli", "serve", "--port", str(self.port),
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=self.world.env)
        finally:
            out.close()

        async def ready() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.text()
            try:
                async with httpx.AsyncClient(base_url=self.url, timeout=2) as c:
                    r = await c.get("/readyz")
            except httpx.TransportError:
                return False
            devices = r.json().get("devices") or {}
            return r.status_code == 200 and {d["state"] for d in devices.values()} == {"online"}

        await wait_for(ready, timeout=60, what="the service ready with both devices online")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as c:
            return await c.get(path)

    async def metric(self, name: str) -> float:
        body = (await self.get("/metrics")).text
        return next(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name + " "))

    async def metric_is(self, name: str, value: float) -> bool:
        try:
            return await self.metric(name) == value
        except (httpx.TransportError, StopIteration):
            return False

    async def end(self, sig: signal.Signals) -> float:
        """Send `sig`; return the wall seconds until the process was gone."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        await asyncio.wait_for(self.proc.wait(), timeout=30)
        return time.monotonic() - t0

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def service(world: World, log: Path) -> AsyncIterator[Service]:
    svc = Service(world, log)
    try:
        await svc.start()
        yield svc
    finally:
        await svc.stop()


def _spooled_events(data_dir: Path) -> list[dict[str, object]]:
    """The alarm journal rows waiting in the spool (read as another process would, WAL allows it)."""
    path = data_dir / "spool.sqlite3"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT payload FROM record WHERE kind = 'alarm_event' ORDER BY id").fetchall()
    finally:
        conn.close()
    return [{"alarm": a[0], "to": a[3], "severity": a[4], "key": a[11]} for a in (json.loads(r[0]) for r in rows)]


async def _journal(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(
            "SELECT alarm_id, to_state, severity, reason, at, record_key FROM alarm_event ORDER BY at, id"))
    finally:
        await conn.close()


async def test_alarm_transitions_during_an_outage_survive_kill_9(world: World, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    async with service(world, log) as svc:
        outage_from = world.clock.now()
        await world.pg.stop()
        try:
            await wait_for(lambda: svc.metric_is("culturectl_database_up", 0), 30, what="the writer to see it down")
            await world.incubator.inject(Fault.door_left_open)  # H after 60 s (1 s wall), HH after 5 min (5 s)

            def door_hh_spooled() -> bool:
                return any(e["alarm"] == DOOR and e["severity"] == "hh" for e in _spooled_events(world.data_dir))

            await wait_for(door_hh_spooled, 30, what="the door's HH escalation on disk in the spool")
            assert await svc.metric("culturectl_spool_records") > 0
            assert svc.proc is not None
            svc.proc.send_signal(signal.SIGKILL)  # the transitions exist only in the spool now
            await svc.proc.wait()
        finally:
            await world.incubator.clear(Fault.door_left_open)
            await world.pg.start()
    spooled = _spooled_events(world.data_dir)
    async with service(world, tmp_path / "restart.log"):
        async def replayed() -> list[asyncpg.Record]:
            return [r for r in await _journal(world.pg.dsn) if r["at"] >= outage_from]
        await wait_for(lambda: _spool_empty(world.data_dir), 30, what="the spool written to the database")
        rows = await replayed()
    got = [(r["alarm_id"], r["to_state"], r["severity"]) for r in rows]
    # every transition that waited in the spool is in the journal, once
    spooled_keys = Counter((str(e["alarm"]), str(e["to"]), e["severity"]) for e in spooled)
    assert spooled_keys and not spooled_keys - Counter(got)
    assert ("culturectl:historian", "active_unack", "comm_loss") in got
    door = [(to, sev) for a, to, sev in got if a == DOOR]
    assert door[:2] == [("active_unack", "h"), ("active_unack", "hh")]
    keys = [str(r["record_key"]) for r in rows if r["record_key"] is not None]
    assert len(keys) == len(set(keys)) and {str(e["key"]) for e in spooled} <= set(keys)


def _spool_empty(data_dir: Path) -> bool:
    conn = sqlite3.connect(f"file:{data_dir / 'spool.sqlite3'}?mode=ro", uri=True)
    try:
        return bool(conn.execute("SELECT count(*) FROM record").fetchone()[0] == 0)
    finally:
        conn.close()


async def test_a_database_outage_logs_one_line_down_and_one_up_per_loop(world: World, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    async with service(world, log) as svc:
        mark = len(svc.text())
        await world.pg.stop()
        try:
            await wait_for(lambda: svc.metric_is("culturectl_database_up", 0), 30, what="the writer to see it down")
            # The outage itself: every loop keeps failing for a while (the engine ticks up to 1/s, the alarm pass
            # 4/s); what is measured is how much they log meanwhile.
            await asyncio.sleep(8)
            assert await svc.metric("culturectl_spool_rows") > 0
            assert await svc.metric("culturectl_spool_age_seconds") > 0
            ready = await svc.get("/readyz")
            assert ready.status_code == 503 and ready.json()["ingest"]["last_error"]
        finally:
            await world.pg.start()
        await wait_for(lambda: svc.metric_is("culturectl_database_up", 1), 30, what="the writer back")
        await wait_for(lambda: svc.metric_is("culturectl_spool_rows", 0), 30, what="the backlog replayed")
        assert await svc.metric("culturectl_ingest_spooled_rows_total") > 0
        assert await svc.metric("culturectl_ingest_replayed_rows_total") > 0
        ready = (await svc.get("/readyz")).json()
        assert ready["status"] == "ready" and ready["ingest"]["last_error"] is None  # the state now, not history
        def recovered() -> bool:  # each of them (the sender and the record keeper log their own recovery too)
            lines = svc.text()[mark:].splitlines()
            return all(any(f" {logger}: " in line and " INFO " in line and "recovered" in line for line in lines)
                       for logger in ("culturectl.protocol", "culturectl.alarms"))

        await wait_for(recovered, 30, what="the engine and the alarm service to log their recovery")
        outage = svc.text()[mark:]
    lines = outage.splitlines()
    for logger, back in (("culturectl.protocol", "recovered"), ("culturectl.alarms", "recovered"),
                         ("culturectl.ingest", "reachable again")):
        mine = [line for line in lines if f" {logger}: " in line]
        down = [line for line in mine if " WARNING " in line and "unavailable" in line]
        up = [line for line in mine if " INFO " in line and back in line]
        assert (len(down), len(up)) == (1, 1), (logger, mine)
    assert "Traceback" not in outage and " ERROR " not in outage
    assert len(outage) < 20_000, "the outage filled the log"


def _stuck_client(port: int, token: str) -> socket.socket:
    """An SSE client that sends its request and never reads: its receive buffer fills, the server's send blocks."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    return sock


def _full(stuck: list[socket.socket], seen: list[list[int]]) -> bool:
    """Each stuck client holds unread bytes and no more arrive (two looks half a second apart): its receive window
    is closed and the server's sends to it block (how many bytes that takes depends on the kernel's accounting)."""
    now = [_unread(sock) for sock in stuck]
    seen.append(now)
    return len(seen) >= 2 and all(n > 0 for n in now) and seen[-2] == now


def _unread(sock: socket.socket) -> int:
    """Bytes waiting unread in a client socket's receive buffer."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


async def test_sigterm_ends_the_service_in_seconds_with_reading_and_stuck_sse_clients(
    world: World, tmp_path: Path
) -> None:
    async with service(world, tmp_path / "serve.log") as svc, httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
        r = await http.post("/api/v1/auth/login", json={"username": "watcher", "password": PASSWORD})
        token = r.json()["access_token"]
        stuck = [_stuck_client(svc.port, token) for _ in range(3)]
        got: list[dict[str, object]] = []
        seen_unread: list[list[int]] = []

        async def read() -> None:
            async with http.stream("GET", "/api/v1/stream", params={"kinds": "reading"},
                                   headers={"Authorization": f"Bearer {token}"}, timeout=None) as s:
                async for ev in sse_events(s):
                    got.append(ev.json())  # type: ignore[arg-type]

        reader = asyncio.create_task(read())
        try:
            await wait_for(lambda: len(got) > 20, 15, what="the reading client to get events")
            await wait_for(lambda: svc.metric_is("culturectl_live_subscribers", 4), 15, what="four open streams")
            await wait_for(lambda: _full(stuck, seen_unread), 15, interval=0.5,
                           what="the stuck clients' receive buffers full")
            seconds = await svc.end(signal.SIGTERM)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 5)  # the reading client's stream ended
        finally:
            reader.cancel()
            for sock in stuck:
                sock.close()
    # uvicorn re-raises the signal once it has shut down cleanly: the exit status says SIGTERM, the log says how
    assert svc.proc is not None and svc.proc.returncode in (0, -signal.SIGTERM), svc.text()[-3000:]
    assert "culturectl service stopped" in svc.text()
    assert seconds < 8, f"SIGTERM took {seconds:.1f} s"
    assert reader.done()
    # nothing waited in memory: the last readings the client saw before the end are stored
    last = [e for e in got if e["quality"] == "good"][-5:]
    conn = await asyncpg.connect(world.pg.dsn)
    try:
        for e in last:
            stored = await conn.fetchval("SELECT count(*) FROM telemetry WHERE channel_id = $1 AND time = $2",
                                         e["channel_id"], datetime.fromisoformat(str(e["time"])))
            assert stored == 1, e
    finally:
        await conn.close()
