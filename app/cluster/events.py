"""Live events on every replica: each replica's events shared through one PostgreSQL table, followed by all.

A replica's `LiveHub.publish` hands each event to its `EventRelay` (`send`: never blocks, never awaits). The
relay's writer task collects the events for `batch_interval` seconds (or until `max_batch` wait) and writes them
as ONE row of `live_event_batch` in one transaction:

1. `pg_advisory_xact_lock(LOCK_KEY)`: one writer at a time across the replicas, so batches commit in id order;
2. `first_id = greatest(newest last_id + 1, now in microseconds, this replica's newest id + 1)`: ids keep
   increasing across restarts and after a failover to a database whose table is empty;
3. the events as one payload (JSON, zlib-compressed) and `NOTIFY culturectl_events, '<first_id>'`: the
   notification is a few bytes whatever the batch holds, and there is one per batch, not one per event.

The events of a batch have the ids first_id .. first_id + count - 1.

Every replica (the writer's own too) follows the table: a dedicated connection LISTENs; on each notification,
every `poll_interval` seconds and after each reconnect it reads the batches with `last_id` above the newest it
has seen, in order, and delivers their events with their ids into its hub (`LiveHub.deliver`). Because the
commits are serialized, "everything above the newest seen" never skips a batch, and every replica delivers the
same events with the same ids in the same order.

While a batch cannot be written (the database is down or too slow) the relay delivers it to its own hub with
local ids (`LiveHub.next_local_id`): the operators connected to this replica keep their live view; the other
replicas do not see those events. A write that failed but may have committed (the answer to COMMIT was lost) is
settled by its batch token: whichever comes first, the follower reading it from the table or the writer giving
up on it, delivers it, and the other does not, so no event is shown twice.

A client that resumes with a Last-Event-ID older than its hub's history is caught up from the table (`backfill`):
the events after that id within the retention, readings and device states collapsed to the latest per key,
transitions all. Batches older than `retention_s` are deleted by every replica every `prune_interval` seconds (a
DELETE bounded by id, which is time: idempotent and cheap).

The table is UNLOGGED (see the migration 20261201_0016): no WAL for a ring of a few minutes of live events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any, NamedTuple

import asyncpg

from app import db
from app.core.aio import wait_event
from app.core.live import LiveEvent, LiveHub
from app.core.outage import OutageLog

log = logging.getLogger("culturectl.cluster")

CHANNEL = "culturectl_events"
LOCK_KEY = 0x63756C7475726502  # "culture" + 0x02: the batch writers' lock (the audit trail's is + 0x01)

_INSERT = f"""
    WITH ins AS (
        INSERT INTO live_event_batch (first_id, last_id, count, replica, created_at, payload)
        SELECT n.first_id, n.first_id + $1 - 1, $1, $2, clock_timestamp(), $3
        FROM (SELECT greatest(coalesce((SELECT max(last_id) FROM live_event_batch), 0) + 1,
                              (extract(epoch FROM clock_timestamp()) * 1e6)::bigint,
                              $4::bigint) AS first_id) n
        RETURNING first_id
    )
    SELECT first_id, pg_notify('{CHANNEL}', first_id::text) FROM ins
"""
_FOLLOW = ("SELECT first_id, last_id, replica, payload FROM live_event_batch WHERE last_id > $1 "
           "ORDER BY first_id LIMIT $2")
_BACKFILL = ("SELECT first_id, last_id, replica, payload FROM live_event_batch WHERE last_id > $1 AND first_id <= $2 "
             "ORDER BY first_id LIMIT $3")
_PRUNE = "DELETE FROM live_event_batch WHERE last_id < (extract(epoch FROM clock_timestamp()) * 1e6)::bigint - $1"


class _Out(NamedTuple):
    """An event waiting to be written: what was published and when (wall seconds)."""

    kind: str
    key: str
    data: dict[str, Any]
    at: float


def _plain(o: Any) -> Any:
    """JSON for what the live stream's encoder would turn into JSON anyway (FastAPI's jsonable_encoder), so an
    event reads the same on every replica."""
    if isinstance(o, datetime | date | dtime):
        return o.isoformat()
    if isinstance(o, timedelta):
        return o.total_seconds()
    if isinstance(o, Decimal):
        return int(o) if o.as_tuple().exponent >= 0 else float(o)  # type: ignore[operator]
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, uuid.UUID | PurePath):
        return str(o)
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    if isinstance(o, bytes):
        return o.decode()
    if is_dataclass(o) and not isinstance(o, type):
        return asdict(o)
    from fastapi.encoders import jsonable_encoder  # the rare rest (pydantic models ...)

    return jsonable_encoder(o)


def encode(token: str, events: Sequence[_Out]) -> bytes:
    """One batch's payload: zlib of {"b": token, "t": oldest publish time, "e": [[kind, key, data], ...]}."""
    body = {"b": token, "t": min(e.at for e in events), "e": [[e.kind, e.key, e.data] for e in events]}
    return zlib.compress(json.dumps(body, separators=(",", ":"), default=_plain).encode(), 3)


def decode(payload: bytes) -> tuple[str, float, list[tuple[str, str, dict[str, Any]]]]:
    """The token, the oldest publish time and the events (kind, key, data) of a batch's payload."""
    body = json.loads(zlib.decompress(payload))
    return str(body["b"]), float(body["t"]), [(str(k), str(key), data) for k, key, data in body["e"]]


def default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class EventRelay:
    """Shares a hub's events with every replica on the database and delivers theirs (see the module doc)."""

    def __init__(
        self, hub: LiveHub, pool: asyncpg.Pool, dsn: str, *, replica: str | None = None,
        batch_interval: float = 0.05, retention_s: float = 600.0, max_batch: int = 2_000,
        max_batch_bytes: int = 1_000_000, max_pending: int = 100_000, poll_interval: float = 1.0,
        prune_interval: float | None = None, backfill_batches: int = 2_000, timeout: float = 2.0,
        retry_max: float = 2.0,
    ) -> None:
        self.hub = hub
        self.replica = replica or default_replica()
        self._pool = pool
        self._dsn = dsn
        self.batch_interval = batch_interval
        self.retention_s = retention_s
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_pending = max_pending
        self.poll_interval = poll_interval
        self.prune_interval = prune_interval if prune_interval is not None else min(30.0, retention_s / 10)
        self.backfill_batches = backfill_batches
        self.timeout = timeout
        self.retry_max = retry_max
        # The outgoing queue: in publish order; `_where` finds a snapshot kind's newest pending event by key,
        # for latest-wins when the queue is full.
        self._out: OrderedDict[int, _Out] = OrderedDict()
        self._where: dict[str, int] = {}
        self._seq = 0
        self._first_at = 0.0  # monotonic time the oldest pending event was queued
        self._wake = asyncio.Event()  # something is pending (or stopping)
        self._full = asyncio.Event()  # a whole batch is pending
        self._instance = uuid.uuid4().hex[:12]
        self._batches = 0
        # This relay's recent batches by token: "written" (in flight or committed), "local" (delivered here with
        # local ids after its write failed), "shared" (delivered from the table): each batch is delivered once.
        self._own: OrderedDict[str, str] = OrderedDict()
        self._last_seen: int | None = None  # newest last_id delivered from the table
        self._first_written: int | None = None  # first_id of this relay's first batch
        self._notified = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._failing: set[str] = set()  # "write", "follow": the parts that cannot reach the database now
        self._outage = OutageLog(log, "live events: database (events stay on this replica)")
        self._next_prune = 0.0
        self._follow_ok = False
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.batches_written = 0
        self.events_written = 0
        self.batches_received = 0
        self.events_received = 0
        self.notifies = 0
        self.local_only = 0
        self.dropped = 0
        self.backfills = 0
        self.last_delay_seconds = 0.0

    # -- the hub's side ---------------------------------------------------------------------------------------

    def send(self, kind: str, key: str, data: dict[str, Any]) -> None:
        """Queue an event for the next batch. Full queue (database slow): a snapshot kind replaces its key's
        pending event, or else the oldest pending snapshot; transitions are always kept."""
        collapse = f"{kind}:{key}" if self.hub.is_collapsible(kind) else None
        if len(self._out) >= self.max_pending:
            if collapse is not None:
                if collapse in self._where:
                    del self._out[self._where.pop(collapse)]
                elif not self._drop_oldest_snapshot():
                    self.dropped += 1  # nothing but transitions pending: this snapshot goes
                    return
                self.dropped += 1
            elif self._drop_oldest_snapshot():
                self.dropped += 1
        self._seq += 1
        if not self._out:
            self._first_at = time.monotonic()
            self._wake.set()
        self._out[self._seq] = _Out(kind, key, data, time.time())
        if collapse is not None:
            self._where[collapse] = self._seq
        if len(self._out) >= self.max_batch:
            self._full.set()

    def _drop_oldest_snapshot(self) -> bool:
        for seq, ev in self._out.items():
            if self.hub.is_collapsible(ev.kind):
                del self._out[seq]
                collapse = f"{ev.kind}:{ev.key}"
                if self._where.get(collapse) == seq:
                    del self._where[collapse]
                return True
        return False

    def _take(self, n: int) -> list[_Out]:
        out: list[_Out] = []
        while self._out and len(out) < n:
            seq, ev = self._out.popitem(last=False)
            collapse = f"{ev.kind}:{ev.key}"
            if self._where.get(collapse) == seq:
                del self._where[collapse]
            out.append(ev)
        if self._out:
            self._first_at = time.monotonic() - self.batch_interval  # already waited: the next batch goes now
        else:
            self._wake.clear()
        if len(self._out) < self.max_batch:
            self._full.clear()
        return out

    async def backfill(self, after: int) -> list[LiveEvent]:
        """The shared events after id `after` up to the newest this replica has delivered, in id order:
        readings and device states collapsed to the latest per key, transitions all. Bounded by
        `backfill_batches` batches and the retention; empty while the database cannot be read."""
        upto = self._last_seen
        if upto is None or upto <= after:
            return []
        self.backfills += 1
        try:
            async with self._pool.acquire(timeout=self.timeout) as conn:
                rows = await conn.fetch(_BACKFILL, after, upto, self.backfill_batches, timeout=self.timeout)
        except (*db.UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.debug("live events: backfill after %d failed: %s", after, exc)
            return []
        return await asyncio.to_thread(self._collapse, rows, after, upto)

    def _collapse(self, rows: Sequence[Mapping[str, Any]], after: int, upto: int) -> list[LiveEvent]:
        latest: dict[str, LiveEvent] = {}
        transitions: list[LiveEvent] = []
        for row in rows:
            try:
                _token, _at, events = decode(row["payload"])
            except (zlib.error, ValueError, KeyError, TypeError):
                continue
            for i, (kind, key, data) in enumerate(events):
                event_id = row["first_id"] + i
                if not after < event_id <= upto:
                    continue
                event = self.hub.make_event(event_id, kind, key, data)
                if self.hub.is_collapsible(kind):
                    latest[event.key] = event
                else:
                    transitions.append(event)
        return sorted([*latest.values(), *transitions], key=lambda e: e.id)

    # -- running ----------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, float | int | bool]:
        return {
            "batches_written": self.batches_written,
            "events_written": self.events_written,
            "batches_received": self.batches_received,
            "events_received": self.events_received,
            "notifies": self.notifies,
            "local_only": self.local_only,
            "dropped": self.dropped,
            "backfills": self.backfills,
            "pending": len(self._out),
            "last_delay_seconds": self.last_delay_seconds,
            "db_up": not self._failing,
        }

    @property
    def following(self) -> bool:
        """The follower is connected and has read the table once."""
        return self._conn is not None and self._last_seen is not None and "follow" not in self._failing

    def start(self) -> None:
        """Start the writer and the follower (attach the relay to the hub separately: `hub.attach(relay)`)."""
        self._tasks = [asyncio.create_task(self._write_loop(), name="live-events-writer"),
                       asyncio.create_task(self._follow_loop(), name="live-events-follower")]

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending (delivered locally if it cannot be), then stop following."""
        self._stopping = True
        self._wake.set()
        self._full.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if task.get_name() != "live-events-writer":
                continue
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._out:  # what the database did not take in time stays on this replica
            self._deliver_local(self._take(len(self._out)))
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- writing ----------------------------------------------------------------------------------------------

    async def _next_batch(self) -> list[_Out]:
        while not self._out:
            if self._stopping:
                return []
            self._wake.clear()
            await self._wake.wait()
        while len(self._out) < self.max_batch and not self._stopping:
            remaining = self._first_at + self.batch_interval - time.monotonic()
            if remaining <= 0:
                break
            await wait_event(self._full, remaining)
        return self._take(self.max_batch)

    async def _write_loop(self) -> None:
        while True:
            events = await self._next_batch()
            if not events:
                return
            try:
                parts = self._split(events)
            except (TypeError, ValueError) as exc:  # an event that is not JSON: a bug, but live views go on
                log.error("live events: a batch could not be encoded (%s); delivered on this replica only", exc)
                self._deliver_local(events)
                continue
            for part in parts:
                await self._ship(part)

    def _split(self, events: list[_Out]) -> list[tuple[bytes, str, list[_Out]]]:
        """Payloads of at most `max_batch_bytes` (halving; a single bigger event goes alone)."""
        self._batches += 1
        token = f"{self._instance}:{self._batches}"
        payload = encode(token, events)
        if len(payload) <= self.max_batch_bytes or len(events) == 1:
            return [(payload, token, events)]
        half = len(events) // 2
        return self._split(events[:half]) + self._split(events[half:])

    async def _ship(self, part: tuple[bytes, str, list[_Out]]) -> None:
        payload, token, events = part
        if "write" in self._failing and time.monotonic() < self._retry_at:
            self._deliver_local(events)
            return
        self._own[token] = "written"
        while len(self._own) > 1_000:
            self._own.popitem(last=False)
        try:
            first_id = await self._insert(payload, len(events))
        except asyncio.CancelledError:
            self._deliver_local(events, token)
            raise
        except (*db.UNAVAILABLE, asyncpg.PostgresError) as exc:
            # Down, too slow, or refused: the events stay on this replica. The COMMIT may still have happened:
            # if the follower has delivered the batch already nothing is delivered here, and if it shows up later
            # the follower skips it.
            self._deliver_local(events, token)
            self._retry_delay = min(self.retry_max, max(0.1, self._retry_delay * 2))
            self._retry_at = time.monotonic() + self._retry_delay
            self._failed("write", exc)
            return
        self._retry_delay = 0.0
        self._recovered("write")
        if self._first_written is None:
            self._first_written = first_id
        self.batches_written += 1
        self.events_written += len(events)
        self._notified.set()  # our own batch: no need to wait for the notification's round trip

    async def _insert(self, payload: bytes, count: int) -> int:
        """Write one batch (lock, row, notification, commit) within `timeout` seconds; its first id."""
        async with asyncio.timeout(self.timeout), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            first_id: int = await conn.fetchval(_INSERT, count, self.replica, payload, self.hub.last_id + 1)
            return first_id

    def _deliver_local(self, events: list[_Out], token: str | None = None) -> None:
        if not events:
            return
        if token is not None:
            if self._own.get(token) == "shared":  # it did commit, and it has been delivered from the table
                return
            self._own[token] = "local"
        first = self.hub.next_local_id()
        self.hub.deliver((first + i, e.kind, e.key, e.data) for i, e in enumerate(events))
        self.local_only += len(events)

    def _failed(self, part: str, exc: BaseException) -> None:
        self._failing.add(part)
        self._outage.failed(exc)

    def _recovered(self, part: str) -> None:
        self._failing.discard(part)
        if not self._failing:
            self._outage.ok()

    # -- following --------------------------------------------------------------------------------------------

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.notifies += 1
        self._notified.set()

    def _on_lost(self, _conn: Any) -> None:
        self._notified.set()  # wake the loop: its next read fails and it reconnects

    async def _follow_loop(self) -> None:
        delay = 0.0
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except (*db.UNAVAILABLE, asyncpg.PostgresError) as exc:
                self._failed("follow", exc)
            except Exception:  # a bug: say so, and keep following
                log.exception("live events: the follower failed; it starts again")
            finally:
                await self._close_conn()
            delay = 0.1 if self._follow_ok else min(self.retry_max, max(0.1, delay * 2))
            self._follow_ok = False
            await asyncio.sleep(delay)

    async def _follow(self) -> None:
        conn = await asyncio.wait_for(db.connect(self._dsn), self.timeout)
        self._conn = conn
        await db.assume_app_role(conn)
        conn.add_termination_listener(self._on_lost)
        await conn.add_listener(CHANNEL, self._on_notify)  # before the first read: no batch falls in between
        if self._last_seen is None:
            newest = await conn.fetchval("SELECT max(last_id) FROM live_event_batch", timeout=self.timeout)
            start = int(newest or 0)
            if self._first_written is not None:  # we wrote before we could follow: deliver our batches too
                start = min(start, self._first_written - 1)
            self._last_seen = start
        await self._catch_up(conn)
        self._recovered("follow")
        self._follow_ok = True
        while True:
            await wait_event(self._notified, self.poll_interval)
            self._notified.clear()
            await self._catch_up(conn)
            if db.server_read_only(conn):  # a demoted primary: the batches are written on the new one now
                raise ConnectionError("the server became read-only (a failover): following the new primary")
            if time.monotonic() >= self._next_prune:
                await conn.execute(_PRUNE, int(self.retention_s * 1_000_000), timeout=self.timeout)
                self._next_prune = time.monotonic() + self.prune_interval

    async def _catch_up(self, conn: asyncpg.Connection, page: int = 200) -> None:
        while True:
            assert self._last_seen is not None
            rows = await conn.fetch(_FOLLOW, self._last_seen, page, timeout=self.timeout)
            for row in rows:
                self._receive(row)
            if len(rows) < page:
                return
            await asyncio.sleep(0)  # a long catch-up lets the rest of the service run

    def _receive(self, row: Mapping[str, Any]) -> None:
        assert self._last_seen is not None
        first_id, after = int(row["first_id"]), self._last_seen
        self._last_seen = max(after, int(row["last_id"]))
        self.batches_received += 1
        try:
            token, at, events = decode(row["payload"])
        except (zlib.error, ValueError, KeyError, TypeError) as exc:
            log.error("live events: batch %d from %s is unreadable (%s); skipped", first_id, row["replica"], exc)
            return
        mine = self._own.get(token)
        if mine == "local":  # delivered here already, when its write seemed to fail
            return
        if mine is not None:
            self._own[token] = "shared"
        self.hub.deliver((first_id + i, kind, key, data) for i, (kind, key, data) in enumerate(events)
                         if first_id + i > after)
        self.events_received += len(events)
        self.last_delay_seconds = max(0.0, time.time() - at)

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), self.timeout)
        except Exception:  # broken or unreachable: nothing left to say to it
            conn.terminate()
