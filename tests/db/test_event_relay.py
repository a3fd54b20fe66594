"""Live events on every replica (app/cluster/events.py) against a real PostgreSQL: several relays in one process,
each with its own LiveHub and replica name, on one database, as several `culturectl serve` processes would be."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from app import db
from app.cluster.events import EventRelay, decode
from app.core.live import EventFilter, LiveEvent, LiveHub
from tests.support import OwnServer, wait_for


class Collector:
    """One SSE client of a hub: every event it is given, in order."""

    def __init__(self, hub: LiveHub, last_event_id: int | None = None, accepts: EventFilter | None = None) -> None:
        self.hub = hub
        self.events: list[LiveEvent] = []
        self._before = hub.stats()["subscribers"]
        self.task = asyncio.create_task(self._run(accepts, last_event_id))

    async def _run(self, accepts: EventFilter | None, last_event_id: int | None) -> None:
        async for event in self.hub.subscribe(accepts, last_event_id):
            self.events.append(event)

    async def ready(self) -> Collector:
        await wait_for(lambda: self.hub.stats()["subscribers"] > self._before, 5, interval=0.005,
                       what="subscription registered")
        return self

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def of(self, kind: str) -> list[LiveEvent]:
        return [e for e in self.events if e.kind == kind]


@contextlib.asynccontextmanager
async def replicas(dsn: str, n: int, histories: list[int] | None = None,
                   **kw: Any) -> AsyncIterator[list[EventRelay]]:
    """n relays on one database, each with its own hub and pool, following the table."""
    out: list[EventRelay] = []
    pools: list[asyncpg.Pool] = []
    try:
        for i in range(n):
            history = histories[i] if histories else 50_000
            hub = LiveHub(history=history, max_pending=50_000)
            pool = await db.create_pool(dsn, min_size=1, max_size=3)
            pools.append(pool)
            relay = EventRelay(hub, pool, dsn, replica=f"replica-{i}", **kw)
            hub.attach(relay)
            relay.start()
            out.append(relay)
        await wait_for(lambda: all(r.following for r in out), 15, what="every relay following")
        yield out
    finally:
        for relay in out:
            await relay.stop()
            relay.hub.close()
        for pool in pools:
            pool.terminate()


async def test_an_event_published_on_one_replica_reaches_the_others_with_the_same_id(db_dsn: str) -> None:
    async with replicas(db_dsn, 3) as (a, b, c):
        clients = [await Collector(r.hub).ready() for r in (a, b, c)]
        a.hub.publish("reading", "incubator-1.temperature", {"channel": "incubator-1.temperature", "value": 37.1})
        a.hub.publish("alarm", "incubator-1.temperature:high", {"to": "active_unack"})
        for client in clients:
            await wait_for(lambda cl=client: len(cl.events) == 2, 10, what="both events on every replica")
        seen = [[(e.id, e.kind, e.key, e.data) for e in cl.events] for cl in clients]
        assert seen[0] == seen[1] == seen[2]
        assert seen[0][0][3] == {"channel": "incubator-1.temperature", "value": 37.1}
        assert a.stats()["events_written"] == 2 and b.stats()["events_written"] == 0
        assert b.stats()["events_received"] == 2
        for client in clients:
            await client.close()


async def test_ids_are_unique_and_increasing_across_replicas_publishing_at_once(db_dsn: str) -> None:
    per_replica = 2_000
    async with replicas(db_dsn, 3) as relays:
        clients = [await Collector(r.hub).ready() for r in relays]

        async def publish(relay: EventRelay) -> None:
            for i in range(per_replica):
                relay.hub.publish("step", f"{relay.replica}:{i}", {"origin": relay.replica, "n": i})
                if i % 50 == 49:
                    await asyncio.sleep(0.005)  # the three publishers interleave with the writers

        await asyncio.gather(*(publish(r) for r in relays))
        total = per_replica * len(relays)
        for client in clients:
            await wait_for(lambda cl=client: len(cl.events) >= total, 30, what="every event on every replica")
        sequences = [[(e.id, e.data["origin"], e.data["n"]) for e in cl.events] for cl in clients]
        assert sequences[0] == sequences[1] == sequences[2]  # same ids, same order, everywhere
        ids = [s[0] for s in sequences[0]]
        assert len(ids) == total and ids == sorted(set(ids))  # unique, increasing
        assert {(o, n) for _, o, n in sequences[0]} == {(r.replica, i) for r in relays for i in range(per_replica)}
        for relay in relays:  # in publish order within each replica
            mine = [n for _, o, n in sequences[0] if o == relay.replica]
            assert mine == list(range(per_replica))
        written = sum(r.stats()["batches_written"] for r in relays)
        assert written < total / 10, f"{written} batches for {total} events: not batched"
        assert sum(r.stats()["local_only"] for r in relays) == 0
        for client in clients:
            await client.close()
    conn = await db.connect(db_dsn)
    try:  # the batches do not overlap
        rows = await conn.fetch("SELECT first_id, last_id FROM live_event_batch ORDER BY first_id")
    finally:
        await conn.close()
    assert all(prev["last_id"] < row["first_id"] for prev, row in itertools.pairwise(rows))


async def test_a_client_resuming_on_another_replica_gets_what_it_missed(db_dsn: str) -> None:
    channels = [f"culture-system-1.ch{i}" for i in range(5)]
    # B's history is shorter than what the client misses: the missed events come from the table.
    async with replicas(db_dsn, 2, histories=[50_000, 10]) as (a, b):
        client = await Collector(a.hub).ready()
        for n in range(20):
            a.hub.publish("reading", channels[n % 5], {"channel": channels[n % 5], "value": n})
        a.hub.publish("step", "1:feed", {"n": -1})
        await wait_for(lambda: bool(client.of("step")), 10, what="the first events on A")
        last = client.events[-1].id
        assert client.events[-1].kind == "step"
        await client.close()  # the client goes away, the replicas go on
        for n in range(20, 120):
            (a if n % 2 else b).hub.publish("reading", channels[n % 5], {"channel": channels[n % 5], "value": n})
            if n % 10 == 0:
                (b if n % 20 else a).hub.publish("step", f"1:s{n}", {"n": n})
        await wait_for(lambda: b.stats()["events_received"] >= 21 + 100 + 10, 10, what="B has followed")

        resumed = await Collector(b.hub, last_event_id=last).ready()
        await wait_for(lambda: len(resumed.of("step")) == 10, 10, what="every missed transition")
        assert all(e.id > last for e in resumed.events)
        # published on two replicas: in the order of their batches, the same order on every replica (A's history)
        missed = [e for e in a.hub._history if e.id > last]
        assert [e.data["n"] for e in resumed.of("step")] == [e.data["n"] for e in missed if e.kind == "step"]
        assert sorted(e.data["n"] for e in resumed.of("step")) == list(range(20, 120, 10))
        latest = {e.data["channel"]: (e.id, e.data["value"]) for e in resumed.of("reading")}
        assert latest == {e.data["channel"]: (e.id, e.data["value"]) for e in missed if e.kind == "reading"}
        assert [e.id for e in resumed.events] == sorted(e.id for e in resumed.events)
        assert b.stats()["backfills"] >= 1

        # and from there on it is a live client of B
        a.hub.publish("run", "1", {"status": "held"})
        await wait_for(lambda: bool(resumed.of("run")), 10, what="a live event after the resume")
        await resumed.close()


async def test_payloads_larger_than_a_notification_arrive(db_dsn: str) -> None:
    big = {"blob": os.urandom(20_000).hex()}  # 40 kB of hex, 20 kB compressed: past NOTIFY's 8 kB
    async with replicas(db_dsn, 2, max_batch_bytes=200_000) as (a, b):
        client = await Collector(b.hub).ready()
        a.hub.publish("deviation", "7", big)
        for i in range(3_000):  # more than a batch holds, compressed too (random notes: some 240 kB in all)
            a.hub.publish("step", f"s{i}", {"n": i, "note": f"step {i} " + os.urandom(60).hex()})
        await wait_for(lambda: len(client.events) == 3_001, 20, what="the big event and the many")
        assert client.events[0].data == big
        assert [e.data["n"] for e in client.events[1:]] == list(range(3_000))
        assert a.stats()["batches_written"] >= 2
        await client.close()


async def test_a_batch_that_committed_but_seemed_to_fail_is_delivered_once(db_dsn: str) -> None:
    async with replicas(db_dsn, 2) as (a, b):
        mine, theirs = await Collector(a.hub).ready(), await Collector(b.hub).ready()
        insert = a._insert
        late: list[asyncio.Task[int]] = []

        async def committed_then_lost(payload: bytes, count: int) -> int:
            await insert(payload, count)
            raise ConnectionResetError("the answer to COMMIT was lost")

        async def committed_after_the_timeout(payload: bytes, count: int) -> int:
            late.append(asyncio.create_task(insert(payload, count)))
            raise TimeoutError

        # the follower or the writer comes first: either way the event is shown once
        a._insert = committed_then_lost  # type: ignore[method-assign]
        a.hub.publish("alarm", "x", {"n": 1})
        await wait_for(lambda: len(theirs.events) == 1 and len(mine.events) == 1, 10, what="the first event")
        # the writer gives up first (local delivery), the batch commits later: the follower skips it
        a._retry_at = 0.0
        a._insert = committed_after_the_timeout  # type: ignore[method-assign]
        a.hub.publish("alarm", "y", {"n": 2})
        await wait_for(lambda: len(theirs.events) == 2 and len(mine.events) == 2, 10, what="the second event")
        await late[0]
        a._insert = insert  # type: ignore[method-assign]
        a._retry_at = 0.0
        a.hub.publish("alarm", "z", {"n": 3})
        await wait_for(lambda: len(theirs.events) == 3 and len(mine.events) == 3, 10, what="the third event")
        await wait_for(lambda: a.stats()["batches_received"] == 3, 10, what="A has read all three batches")
        assert [e.data["n"] for e in mine.events] == [1, 2, 3]  # once each
        assert [e.data["n"] for e in theirs.events] == [1, 2, 3]
        assert a.stats()["local_only"] in (1, 2)
        assert mine.events[2].id == theirs.events[2].id  # shared again
        await mine.close()
        await theirs.close()


async def test_old_batches_are_deleted_after_the_retention(db_dsn: str) -> None:
    async with replicas(db_dsn, 1, retention_s=0.5, prune_interval=0.1) as (a,):
        a.hub.publish("step", "old", {"n": 1})
        await wait_for(lambda: a.stats()["events_received"] == 1, 10, what="the batch written")
        conn = await db.connect(db_dsn)
        try:
            first = await conn.fetchval("SELECT max(first_id) FROM live_event_batch")

            async def gone() -> bool:
                return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM live_event_batch WHERE first_id = $1)",
                                               first)

            await wait_for(gone, 10, what="the batch pruned")
        finally:
            await conn.close()


async def test_the_payload_is_compressed_json(db_dsn: str) -> None:
    async with replicas(db_dsn, 1) as (a,):
        client = await Collector(a.hub).ready()
        a.hub.publish("reading", "d.p", {"channel": "d.p", "value": 1.5})
        await wait_for(lambda: len(client.events) == 1, 10, what="delivered")
        conn = await db.connect(db_dsn)
        try:
            row = await conn.fetchrow("SELECT * FROM live_event_batch WHERE first_id = $1", client.events[0].id)
        finally:
            await conn.close()
        assert row is not None and row["count"] == 1 and row["replica"] == "replica-0"
        _token, _at, events = decode(row["payload"])
        assert events == [("reading", "d.p", {"channel": "d.p", "value": 1.5})]
        await client.close()


# -- the database stopped and started again ----------------------------------------------------------------




async def test_database_down_keeps_the_local_view_and_sharing_resumes(own_pg: OwnServer) -> None:
    async with replicas(own_pg.dsn, 2) as (a, b):
        on_a, on_b = await Collector(a.hub).ready(), await Collector(b.hub).ready()
        a.hub.publish("step", "before", {"n": 0})
        await wait_for(lambda: len(on_b.events) == 1 and len(on_a.events) == 1, 10, what="shared before")

        await own_pg.stop()
        for n in range(1, 6):
            a.hub.publish("step", f"down{n}", {"n": n})
            a.hub.publish("reading", f"d.p{n}", {"channel": f"d.p{n}", "value": n})
        await wait_for(lambda: len(on_a.events) == 11, 15, what="A's own events delivered locally")
        assert [e.data["n"] for e in on_a.of("step")] == [0, 1, 2, 3, 4, 5]
        assert a.stats()["local_only"] == 10 and a.stats()["db_up"] is False
        ids = [e.id for e in on_a.events]
        assert ids == sorted(set(ids))
        assert len(on_b.events) == 1  # not shared while the database is down

        await own_pg.start()
        await wait_for(lambda: a.following and b.following, 30, what="both following again")

        async def shared_again() -> bool:
            a.hub.publish("step", "after", {"n": 99})  # until a write succeeds
            await asyncio.sleep(0.2)
            return any(e.data.get("n") == 99 for e in on_b.events)

        await wait_for(shared_again, 30, interval=0, what="sharing resumed")
        await wait_for(lambda: a.stats()["db_up"] is True, 10, what="A's writes recovered")
        after = [e for e in on_a.events if e.data.get("n") == 99]
        assert after and after[0].id > ids[-1]  # ids keep increasing past the local ones
        assert a.stats()["batches_written"] >= 2
        await on_a.close()
        await on_b.close()


async def test_a_relay_that_cannot_reach_the_database_delivers_locally(db_dsn: str) -> None:
    from tests.support import free_port

    closed = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    hub = LiveHub()
    pool = await db.create_pool(closed, min_size=0, max_size=1)
    relay = EventRelay(hub, pool, closed, replica="alone", timeout=0.5)
    hub.attach(relay)
    relay.start()
    try:
        client = await Collector(hub).ready()
        hub.publish("alarm", "a", {"n": 1})
        hub.publish("alarm", "b", {"n": 2})
        await wait_for(lambda: len(client.events) == 2, 10, what="local delivery")
        assert [e.data["n"] for e in client.events] == [1, 2]
        assert relay.stats()["local_only"] == 2 and relay.stats()["db_up"] is False
        await client.close()
    finally:
        await relay.stop()
        pool.terminate()
