"""Three `culturectl serve` replicas on one PostgreSQL, four simulated devices: each device owned by exactly one
replica, the leader's jobs on one; a setpoint and an alarm action sent to a replica that does not own the device
are carried out by its owner; every replica's stream carries every device's readings and a client resumes on
another replica; then a replica killed (SIGKILL), one stopped (SIGTERM) and the leader killed: the devices move
within the lease time, readings go on, and no reading, alarm transition, deviation or setpoint is written twice.

Leases are short here (3 s, passes every 0.3 s) so the test is quick; the takeover it measures is bounded by the
lease time plus one pass plus the device's reconnect, whatever the lease time (bench/failover.py measures it with
the defaults).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app import db
from app.auth import users
from app.auth.principal import Role, cli_principal
from app.core.clock import ScaledClock, utcnow
from app.demo import setup as demo
from drivers.devices import DeviceConfig, dump_devices
from simulators.culture_system import CultureSystemSimulator
from simulators.faults import Fault
from simulators.incubator import IncubatorSimulator
from tests.support import free_port, sse_events, wait_for

SCALE = 60.0
TTL = 3.0
INTERVAL = 0.3
PASSWORD = "Seven-Day-Culture-42"
KEY = "replicas-share-this-service-key-0123456789"
# A dead replica's devices: free after the lease time, claimed at the next pass, connected a moment later.
TAKEOVER_BOUND = TTL + 2 * INTERVAL + 4.0


@dataclass
class Site:
    dsn: str
    clock: ScaledClock
    sims: dict[str, IncubatorSimulator | CultureSystemSimulator]
    base: Path
    env: dict[str, str]
    replicas: dict[str, Replica] = field(default_factory=dict)


class Replica:
    """One `culturectl serve` process with its own port, data directory and replica id."""

    def __init__(self, site: Site, rid: str) -> None:
        self.site, self.id = site, rid
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = site.base / f"{rid}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(self.site.env)
        env.update({"CULTURECTL_REPLICA_ID": self.id, "CULTURECTL_REPLICA_URL": self.url,
                    "CULTURECTL_DATA_DIR": str(self.site.base / self.id)})
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), stdout=out,
                stderr=asyncio.subprocess.STDOUT, env=env)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def ready(self) -> dict[str, Any] | None:
        if not self.alive:
            raise AssertionError(f"replica {self.id} exited:\n{self.text()[-3000:]}")
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=2) as c:
                r = await c.get("/readyz")
        except httpx.TransportError:
            return None
        return r.json() if r.status_code == 200 else None

    async def kill(self, sig: signal.Signals) -> float:
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=30)
        except TimeoutError:
            log = self.text()[-5000:]
            raise AssertionError(f"replica {self.id} still running 30 s after {sig.name}:\n{log}") from None
        return t0

    async def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture(scope="module")
async def site(db_dsn: str) -> AsyncIterator[Site]:
    base = Path(tempfile.mkdtemp(prefix="culturectl-replicas-"))
    epoch = utcnow()
    clock = ScaledClock(epoch=epoch, scale=SCALE)
    sims: dict[str, IncubatorSimulator | CultureSystemSimulator] = {
        "incubator-1": IncubatorSimulator(clock, seed=1), "incubator-2": IncubatorSimulator(clock, seed=2),
        "culture-system-1": CultureSystemSimulator(clock, seed=1, t0=clock.now() - timedelta(days=1)),
        "culture-system-2": CultureSystemSimulator(clock, seed=2, t0=clock.now() - timedelta(days=1)),
    }
    s: Site | None = None
    try:
        for sim in sims.values():
            await sim.start()
        conn = await db.connect(db_dsn)
        try:
            await users.create_user(conn, username="op", display_name="Night Operator", role=Role.OPERATOR,
                                       password=PASSWORD, actor=cli_principal())
        finally:
            await conn.close()
        devices = [DeviceConfig(name=n, kind=s.kind, protocol="opcua" if s.kind == "incubator" else "modbus",
                                endpoint=s.endpoint, **({} if s.kind == "incubator" else {"poll_interval": 0.2}))
                   for n, s in sims.items()]
        (base / "devices.yaml").write_text(dump_devices(devices))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CULTURECTL_") and k != "DATABASE_URL"}
        env.update({
            "CULTURECTL_DATABASE_URL": db_dsn, "CULTURECTL_DEVICES_FILE": str(base / "devices.yaml"),
            "CULTURECTL_TIME_SCALE": str(SCALE), "CULTURECTL_CLOCK_EPOCH": epoch.isoformat(),
            "CULTURECTL_SECRET_KEY": KEY, "CULTURECTL_LEASE_TTL_S": str(TTL),
            "CULTURECTL_LEASE_INTERVAL_S": str(INTERVAL), "CULTURECTL_INGEST_FLUSH_INTERVAL": "0.2",
            "CULTURECTL_ENGINE_INTERVAL": "0.5", "CULTURECTL_LOG_LEVEL": "info",
        })
        s = Site(db_dsn, clock, sims, base, env)
        yield s
    finally:
        for r in s.replicas.values() if s is not None else ():
            await r.stop()
        for sim in sims.values():
            with contextlib.suppress(Exception):
                await sim.stop()
        await asyncio.to_thread(shutil.rmtree, base, True)


async def _views(replicas: list[Replica]) -> dict[str, dict[str, Any]] | None:
    out = {}
    for r in replicas:
        view = await r.ready()
        if view is None:
            return None
        out[r.id] = view
    return out


async def _settled(site: Site, live: list[Replica]) -> dict[str, str] | None:
    """device -> owner once every device has exactly one owner among `live`, online there, and one of them leads."""
    views = await _views(live)
    if views is None:
        return None
    owners: dict[str, str] = {}
    for rid, v in views.items():
        for device in v["cluster"]["owned"]:
            if device in owners or v["devices"][device]["state"] != "online":
                return None
            owners[device] = rid
    leaders = [rid for rid, v in views.items() if v["cluster"]["is_leader"]]
    if set(owners) != set(site.sims) or len(leaders) != 1:
        return None
    share = -(-len(site.sims) // len(live))  # nobody above its fair share: no handover to come
    if any(list(owners.values()).count(r.id) > share for r in live):
        return None
    return owners


async def _leader(live: list[Replica]) -> Replica:
    views = await _views(live)
    assert views is not None
    return next(r for r in live if views[r.id]["cluster"]["is_leader"])


async def _token(r: Replica) -> str:
    async with httpx.AsyncClient(base_url=r.url, timeout=5) as c:
        resp = await c.post("/api/v1/auth/login", json={"username": "op", "password": PASSWORD})
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(**db.asyncpg_connect_kwargs(dsn))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _collect(r: Replica, token: str, sink: list[tuple[str, dict[str, Any]]], ready: asyncio.Event,
                   last_id: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    async with httpx.AsyncClient(base_url=r.url, timeout=None) as c, \
            c.stream("GET", "/api/v1/stream", headers=headers) as s:
        ready.set()
        async for ev in sse_events(s):
            if ev.id is not None:
                data = ev.json()
                sink.append((ev.id, data if isinstance(data, dict) else {}))


async def test_three_replicas_share_the_devices_and_survive_a_kill_a_stop_and_the_leaders_death(site: Site) -> None:
    for rid in ("r1", "r2", "r3"):
        site.replicas[rid] = Replica(site, rid)
        await site.replicas[rid].start()
    live = list(site.replicas.values())
    owners = await wait_for(lambda: _settled(site, live), 90, 0.2, "four devices owned once, online, one leader")
    assert len(set(owners.values())) >= 2, f"the devices spread over the replicas: {owners}"

    # The schedule engine runs on the leader only: a demo run planned a day ago has missed preparation steps.
    conn = await db.connect(site.dsn)
    try:
        await demo.ensure_demo_accounts(conn, site.base)
        await demo.ensure_demo_recipe(conn)
        run = await demo.create_demo_run(conn, site.clock.now(), site.clock.now() - timedelta(days=1))
    finally:
        await conn.close()

    # A setpoint sent to a replica that does not own the incubator: written once, by the owner.
    owner = site.replicas[owners["incubator-1"]]
    other = next(r for r in live if r is not owner)
    token = await _token(other)
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=other.url, timeout=30, headers=auth) as c:
        resp = await c.post("/api/v1/devices/incubator-1/setpoints",
                            json={"point": "temperature_setpoint", "value": 37.4, "reason": "replicas: forwarded"})
        assert resp.status_code == 200, resp.text + "\n" + owner.text()[-4000:]
        assert resp.json()["result"] == "confirmed"
        device_view = (await c.get("/api/v1/devices/incubator-1")).json()
        assert (device_view["owner"], device_view["owned_here"], device_view["state"]) == (owner.id, False, "online")
    sim = site.sims["incubator-1"]
    assert isinstance(sim, IncubatorSimulator) and sim.model.temperature_setpoint == 37.4

    # Every replica's stream carries the readings of devices it does not own.
    seen: list[tuple[str, dict[str, Any]]] = []
    opened = asyncio.Event()
    reader = asyncio.create_task(_collect(other, token, seen, opened))
    try:
        await asyncio.wait_for(opened.wait(), 10)
        await wait_for(lambda: any(d.get("device") == "incubator-1" for _, d in seen), 15, what="a reading of "
                       "incubator-1 on a replica that does not own it")
        # The door left open on the incubator: its alarm evaluated and journaled once, by its owner.
        await sim.inject(Fault.door_left_open)
        await wait_for(lambda: _fetch(site.dsn, "SELECT 1 FROM alarm_event WHERE alarm_id = $1 AND severity = 'h'",
                                      "incubator-1.door_open:limit"), 20, 0.2, "the door alarm in the journal")
        async with httpx.AsyncClient(base_url=other.url, timeout=30, headers=auth) as c:
            ack = await c.post("/api/v1/alarms/incubator-1.door_open:limit/acknowledge",
                               json={"comment": "replicas: acknowledged on another replica"})
            assert ack.status_code == 200, ack.text
            assert ack.json()["status"] == "active_ack"
        await sim.clear(Fault.door_left_open)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await reader
    # A client that resumes on a third replica with its last id gets what it missed, with the same ids.
    last_id = seen[-1][0]
    third = next(r for r in live if r is not owner and r is not other)
    resumed: list[tuple[str, dict[str, Any]]] = []
    opened = asyncio.Event()
    reader = asyncio.create_task(_collect(third, await _token(third), resumed, opened, last_id))
    try:
        await wait_for(lambda: len(resumed) > 0, 15, what="events after resuming on another replica")
        assert all(int(i) > int(last_id) for i, _ in resumed)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await reader

    # SIGKILL a replica that does not lead: its devices move to the others within the lease time.
    leader = await _leader(live)
    victim = next(r for r in live if r is not leader and r.id in owners.values())
    moved = [d for d, o in owners.items() if o == victim.id]
    killed_at = await victim.kill(signal.SIGKILL)
    live.remove(victim)
    owners = await wait_for(lambda: _settled(site, live), 30, 0.1, "the killed replica's devices taken over")
    takeover = time.monotonic() - killed_at
    assert takeover < TAKEOVER_BOUND, f"takeover took {takeover:.1f} s"
    assert all(owners[d] != victim.id for d in moved)

    # SIGTERM the one that does not lead: it hands its devices over within 2 s (plus the device's connect).
    quitter = next(r for r in live if r is not leader)
    stopped_at = await quitter.kill(signal.SIGTERM)
    live.remove(quitter)
    owners = await wait_for(lambda: _settled(site, live), 30, 0.1, "the stopped replica's devices handed over")
    handover = time.monotonic() - stopped_at
    assert handover < 2.0 + 3.0, f"handover took {handover:.1f} s"

    # The leader killed: a restarted replica takes everything over, leadership included.
    back = Replica(site, "r4")
    site.replicas["r4"] = back
    await back.start()
    await wait_for(lambda: back.ready(), 60, 0.2, "r4 ready")
    killed_at = await leader.kill(signal.SIGKILL)
    live = [back]
    await wait_for(lambda: _settled(site, live), 30, 0.1, "r4 owning every device and leading")
    assert time.monotonic() - killed_at < TAKEOVER_BOUND + 2
    # readings go on on the new owner
    mark = site.clock.now()
    await wait_for(lambda: _fetch(site.dsn, "SELECT 1 FROM telemetry t JOIN channel c ON c.id = t.channel_id "
                                            "JOIN device d ON d.id = c.device_id WHERE d.name = 'incubator-2' "
                                            "AND c.name = 'temperature' AND t.time > $1", mark),
                   20, 0.2, "readings of incubator-2 after the leader's death")

    # Nothing written twice, by anyone.
    dup_readings = await _fetch(site.dsn, "SELECT channel_id, time FROM telemetry GROUP BY 1, 2 HAVING count(*) > 1")
    assert not dup_readings
    dup_transitions = await _fetch(site.dsn, "SELECT alarm_id, at, to_state FROM alarm_event "
                                             "GROUP BY 1, 2, 3 HAVING count(*) > 1")
    assert not dup_transitions, dup_transitions
    door = await _fetch(site.dsn, "SELECT to_state, actor FROM alarm_event WHERE alarm_id = $1 ORDER BY at, id",
                        "incubator-1.door_open:limit")
    assert [r["to_state"] for r in door][:2] == ["active_unack", "active_ack"], door
    missed = await _fetch(site.dsn, "SELECT step_key, count(*) AS n FROM deviation "
                                    "WHERE run_id = $1 AND rule = 'missed_step' GROUP BY 1", run.id)
    assert missed and all(r["n"] == 1 for r in missed), missed
    setpoints = await _fetch(site.dsn, "SELECT count(*) AS n FROM audit_log WHERE action = 'device.setpoint' "
                                       "AND entity_id = 'incubator-1' AND reason = 'replicas: forwarded'")
    assert setpoints[0]["n"] == 1
    # The gap in each channel of a moved device is no longer than the takeover, in wall seconds.
    gaps = await _fetch(site.dsn, """
        SELECT d.name || '.' || c.name AS name, max(extract(epoch FROM t.time - t.prev)) / $1 AS wall_gap FROM (
            SELECT channel_id, time, lag(time) OVER (PARTITION BY channel_id ORDER BY time) AS prev FROM telemetry
        ) t JOIN channel c ON c.id = t.channel_id JOIN device d ON d.id = c.device_id
        WHERE t.prev IS NOT NULL AND c.role IN ('temperature', 'co2') GROUP BY 1""", SCALE)
    worst = {r["name"]: float(r["wall_gap"]) for r in gaps}
    assert worst and max(worst.values()) < TAKEOVER_BOUND + 2, worst
