"""One replica's place among the replicas on a database: its device leases and the leader lease, kept by one loop.

Every `interval` wall seconds the loop records the replica as seen, renews the leases it holds, reads the lease
table and the live replicas, then hands over and claims what `app.cluster.share.plan` says. A claimed device lease
starts the device's supervisor and alarm evaluation here (`on_gain`); a lost or handed-over one stops them
(`on_lose`) before the lease row is released, so two replicas never read one device through a handover.

Fencing. Each held lease has a local deadline: the loop's clock when the renewal was sent plus the lease time. The
database's expiry is later than that (its clock read the renewal after it was sent), so while `may_write` is true
nobody else can hold the lease. Device writes check it (`write_window`) immediately before writing and are cut at
the deadline; the database-side check (`app.cluster.leases.holds`) guards the records written with them.

When the database cannot be reached the leases cannot be renewed: writes stop at the deadline. Reading goes on
only while no other replica can take over: the replica asks its peers (their `/readyz`); if one of them reaches
the database it will claim the expired leases, so this replica stops its devices; if none does (the database is
down for everyone) it keeps reading and spooling, and renews the same leases, same epochs, when the database is
back (a holder that never changed means nobody else held the lease meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app import db
from app.cluster import leases
from app.cluster.share import LEADER, LeaseView, device_lease, lease_device, plan
from app.core.aio import wait_event
from app.core.outage import OutageLog
from app.core.problems import Problem

log = logging.getLogger("culturectl.cluster")

Callback = Callable[[str], Awaitable[None]]
Probe = Callable[[str], Awaitable[bool]]


@dataclass
class Held:
    epoch: int
    deadline: float  # loop time: writes under this lease stop here


async def _never(_name: str) -> None:
    return None


async def probe_ready(url: str) -> bool:
    """Whether the replica at `url` reaches the database now (its /readyz answers 200 within a second)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(url.rstrip("/") + "/readyz")).status_code == 200
    except (httpx.HTTPError, OSError):
        return False


class Cluster:
    """See the module docstring."""

    def __init__(self, pool: asyncpg.Pool | None, replica_id: str, url: str, devices: Sequence[str], *,
                 ttl: float = 10.0, interval: float = 1.0, on_gain: Callback = _never, on_lose: Callback = _never,
                 probe: Probe = probe_ready,
                 states: Callable[[], Mapping[str, tuple[str, datetime | None]]] | None = None) -> None:
        self.pool = pool
        self.replica_id = replica_id
        self.url = url
        self.devices = list(devices)
        self.ttl = ttl
        self.interval = interval
        self.margin = min(2.0, ttl / 4)  # a write needs this much of its lease left to start
        self.on_gain = on_gain
        self.on_lose = on_lose
        self.probe = probe
        self.states = states  # device -> (state, since) of the devices this replica supervises
        self.device_states: dict[str, tuple[str | None, datetime | None]] = {}  # every device, from the table
        self.held: dict[str, Held] = {}
        self.owners: dict[str, str | None] = {}  # lease -> holder, as the last pass read it
        self.peers: list[leases.Replica] = []  # live replicas, this one included, as the last pass read them
        self.stats: dict[str, int] = {"takeovers": 0, "handovers": 0, "lost": 0, "renew_failures": 0, "passes": 0}
        self.db_ok = False
        self._outage = OutageLog(log, "cluster: database unavailable, leases not renewed")
        self._wake = asyncio.Event()
        self._stopping = False
        self._lock = asyncio.Lock()
        self._started: set[str] = set()  # leases whose `on_gain` succeeded
        self._releasing: set[str] = set()  # leases whose `on_lose` runs: owned still, writes refused
        self._connected_since: float | None = None  # loop time of the first good pass since the last failure

    # -- what the rest of the service asks -------------------------------------------------------------------

    def owns(self, device: str) -> bool:
        """Whether this replica reads the device and evaluates its alarms."""
        return device_lease(device) in self.held

    def is_leader(self) -> bool:
        """Whether this replica runs the site-wide jobs (schedule engine, timed passes, record keeper)."""
        return LEADER in self.held

    def owned_devices(self) -> set[str]:
        return {d for n in self.held if (d := lease_device(n)) is not None}

    def write_window(self, device: str) -> float:
        """Wall seconds a write to `device` may take from now (0: this replica may not write to it)."""
        held = self.held.get(device_lease(device))
        if held is None or device_lease(device) in self._releasing:
            return 0.0
        left = held.deadline - asyncio.get_running_loop().time() - self.margin
        return max(0.0, left)

    def epoch(self, device: str) -> int | None:
        held = self.held.get(device_lease(device))
        return held.epoch if held is not None else None

    async def fence(self, conn: db.DBConnection, device: str) -> None:
        """In the caller's transaction: raise unless this replica holds the device's lease (at the epoch it
        knows), and keep anyone from claiming it until the transaction ends."""
        epoch = self.epoch(device)
        if epoch is None or self.write_window(device) <= 0 or not await leases.holds(
                conn, device_lease(device), self.replica_id, epoch):
            raise Problem(503, "not-device-owner", "Not the device's owner",
                          f"replica {self.replica_id} does not hold the lease of {device} now (it moved, or the "
                          f"database cannot renew it); try again", rule="device_lease", device=device,
                          owner=self.owners.get(device_lease(device)))

    def owner_of(self, device: str) -> str | None:
        if self.owns(device):
            return self.replica_id
        return self.owners.get(device_lease(device))

    def leader(self) -> str | None:
        return self.replica_id if self.is_leader() else self.owners.get(LEADER)

    def url_of(self, replica: str) -> str | None:
        return next((p.url for p in self.peers if p.id == replica), None)

    def view(self) -> dict[str, Any]:
        return {
            "replica": self.replica_id, "leader": self.leader(), "is_leader": self.is_leader(),
            "owned": sorted(self.owned_devices()),
            "replicas": [{"id": p.id, "url": p.url, "seen_at": p.seen_at.isoformat()} for p in self.peers],
            "database": self.db_ok, **self.stats,
        }

    # -- the loop ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """The lease rows, then a first pass: a replica alone on the database owns its devices from the start."""
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            await leases.ensure(conn, [device_lease(d) for d in self.devices] + [LEADER])
        await self.step()

    async def run(self) -> None:
        while not self._stopping:
            await wait_event(self._wake, self.interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster pass failed; retrying")

    async def step(self) -> None:
        """One pass: seen, renew, read, hand over, claim (see the module docstring)."""
        if self.pool is None:
            return
        async with self._lock:
            loop = asyncio.get_running_loop()
            sent = loop.time()
            timeout = max(1.0, self.ttl / 3)
            try:
                # every statement bounded: a half-open connection must not keep this replica from its deadline
                async with asyncio.timeout(timeout), self.pool.acquire() as conn:
                    await leases.heartbeat(conn, self.replica_id, self.url)
                    renewed = await leases.renew(conn, self.replica_id, self.ttl)
                    if self.states is not None:
                        await leases.report_states(conn, self.replica_id, {
                            device_lease(d): st for d, st in self.states().items()
                            if device_lease(d) in renewed})
                    rows = await leases.leases(conn)
                    peers = [r for r in await leases.replicas(conn, self.ttl) if r.live]
            except (*db.UNAVAILABLE, asyncpg.PostgresError) as exc:  # any failed pass renews nothing
                self.db_ok = False
                self._connected_since = None
                self.stats["renew_failures"] += 1
                self._outage.failed(exc)
                await self._expired()
                return
            self.db_ok = True
            if self._connected_since is None:
                self._connected_since = sent
            self._outage.ok()
            self.stats["passes"] += 1
            for name in [n for n in self.held if n not in renewed]:  # someone else holds it now
                log.warning("lease %s lost to %s", name, next((r.holder for r in rows if r.name == name), None))
                await self._lose(name)
            for name, epoch in renewed.items():
                if name in self.held:
                    self.held[name] = Held(epoch, sent + self.ttl)
                else:  # held under this replica's id by an earlier process of it
                    await self._gain(name, epoch, sent)
            for name in [n for n in self.held if n not in self._started]:  # a start that failed: again
                await self._start(name)
            self.owners = {r.name: (None if r.expired else r.holder) for r in rows}
            self.device_states = {d: (r.state, r.state_since) for r in rows if (d := lease_device(r.name)) is not None}
            self.peers = peers
            views = {r.name: r.view() for r in rows}
            # Back from an outage (or just started): leases others held stay theirs to renew for a lease time; a
            # holder that is alive renews them, and only the leases of a dead one are taken.
            settled = sent - self._connected_since >= self.ttl
            for name, view in list(views.items()):
                if not settled and view.holder not in (None, self.replica_id):
                    views[name] = LeaseView(view.holder, False)
            for name in self.held:
                views[name] = LeaseView(self.replica_id, False)
            todo = plan(self.replica_id, views, [p.id for p in peers])
            for name in todo.release:
                await self._handover([name])
            for name in todo.claim:
                try:
                    async with asyncio.timeout(timeout), self.pool.acquire() as conn:
                        claimed = await leases.claim(conn, self.replica_id, name, self.ttl)
                except (*db.UNAVAILABLE, asyncpg.PostgresError) as exc:
                    self._outage.failed(exc)
                    return
                if claimed is not None:
                    await self._gain(name, claimed, sent)

    async def _gain(self, name: str, epoch: int, sent: float) -> None:
        self.held[name] = Held(epoch, sent + self.ttl)
        self.owners[name] = self.replica_id
        if lease_device(name) is not None:
            self.stats["takeovers"] += 1
        log.info("lease %s taken (epoch %d)", name, epoch)
        await self._start(name)

    async def _start(self, name: str) -> None:
        """Start what the lease holds (`on_gain`, bounded); a failure is tried again at the next pass."""
        try:
            async with asyncio.timeout(max(1.0, self.ttl / 3)):
                await self.on_gain(name)
        except Exception:
            log.exception("starting what lease %s holds failed; trying again at the next pass", name)
            return
        self._started.add(name)

    async def _stop_held(self, name: str) -> None:
        """Stop what the lease holds (`on_lose`, bounded), then forget the lease. While it stops, the lease still
        counts as owned (its last transitions are written as its owner's) but nothing may be written to the
        device."""
        self._releasing.add(name)
        try:
            async with asyncio.timeout(max(1.0, self.ttl / 3)):
                await self.on_lose(name)
        except Exception:
            log.exception("stopping what lease %s held failed", name)
        finally:
            self.held.pop(name, None)
            self._started.discard(name)
            self._releasing.discard(name)

    async def _lose(self, name: str) -> None:
        self.stats["lost"] += 1
        await self._stop_held(name)

    async def _handover(self, names: Sequence[str]) -> None:
        """Stop what the leases hold, then release their rows (the next holder starts only after this)."""
        for name in names:
            await self._stop_held(name)
        assert self.pool is not None
        async with asyncio.timeout(max(1.0, self.ttl / 3)), self.pool.acquire() as conn:
            released = await leases.release(conn, self.replica_id, names)
        self.stats["handovers"] += sum(1 for n in released if lease_device(n) is not None)
        for name in released:
            self.owners[name] = None
            log.info("lease %s handed over", name)

    async def _expired(self) -> None:
        """The database is unreachable: leases past their deadline stop here if a peer can take them over."""
        now = asyncio.get_running_loop().time()
        late = [n for n, h in self.held.items() if h.deadline <= now]
        if not late:
            return
        others = [p.url for p in self.peers if p.id != self.replica_id]
        reachable = False
        for url in others:
            if await self.probe(url):
                reachable = True
                break
        if not reachable:
            return  # the database is down for everyone: keep reading and spooling, write nothing
        for name in late:
            log.warning("lease %s expired while the database was unreachable; a peer takes it over", name)
            await self._lose(name)

    async def hand_over_all(self) -> None:
        """SIGTERM: stop every device this replica holds (all at once, each bounded), then release every lease
        held under its id and leave; the other replicas take over at their next pass."""
        self._stopping = True
        self._wake.set()
        async with self._lock:
            await asyncio.gather(*(self._stop_held(n) for n in list(self.held) if n != LEADER))
            await self._release_all()

    async def _release_all(self) -> None:
        if self.pool is None:
            return
        self.held.clear()
        try:
            async with asyncio.timeout(2.0), self.pool.acquire() as conn:
                await leases.release_all(conn, self.replica_id)
                await leases.heartbeat(conn, self.replica_id, self.url, stopping=True)
        except (*db.UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("cluster: leases not released (the database is unreachable; they expire): %s", exc)
