"""Live events across replicas: the delay from a reading published on replica A to its delivery to an SSE
subscriber on replica B, through the event relay (app/cluster/events.py: batches in live_event_batch, one NOTIFY
per batch).

Runs `replicas` relays in this one process, each with its own LiveHub, pool and LISTEN connection, on one database
(DATABASE_URL when set: a scratch database is created on that server and dropped afterwards; else an embedded
PostgreSQL in a temporary directory). A publishes `rate` readings per second (shaped like the service's reading
events, over 50 channels) for `seconds`; a subscriber on every other replica records when each arrives. Prints
the delay (median, p95, max), the events per second delivered, the batches and notifications per second; asserts
nothing. All replicas share one Python process and the machine with PostgreSQL, so the figures are an upper
bound of what separate processes see.

    python -m bench.relay [--rate 5000] [--seconds 10] [--replicas 2]

`sse_delay(dsn, ...)` is the measurement alone, for other benches (a database migrated to head).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from app import db
from app.cluster.events import EventRelay
from app.core.live import LiveHub
from bench._stack import scratch_database

CHANNELS = 50
TICK = 0.01  # the publisher's step: rate / 100 readings every 10 ms


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _reading(channel: str, channel_id: int, value: float, at: datetime) -> dict[str, Any]:
    device, _, point = channel.partition(".")
    return {"channel": channel, "channel_id": channel_id, "device": device, "point": point, "value": value,
            "time": at.isoformat(), "quality": "good"}


def _summary(delays: list[float]) -> dict[str, float]:
    return {"median": statistics.median(delays) * 1000 if delays else float("nan"),
            "p95": _pct(delays, 0.95) * 1000, "max": max(delays, default=float("nan")) * 1000, "n": len(delays)}


def _timed(deliver: Any, published: dict[tuple[str, str], float], delays: list[float]) -> Any:
    """B's hub.deliver, noting when each reading is offered to B's subscribers."""

    def timed(events: Any) -> Any:
        out = deliver(events)
        now = time.perf_counter()
        for e in out:
            sent = published.get((e.data["channel"], e.data["time"]))
            if sent is not None:
                delays.append(now - sent)
        return out

    return timed


async def sse_delay(dsn: str, rate: int = 5000, seconds: float = 10, replicas: int = 2,
                    batch_interval: float = 0.05) -> dict[str, Any]:
    """Publish `rate` readings/s on replica A for `seconds`; measure their delivery on every other replica.

    `delay_ms`: from A's publish to B's hub offering the reading to its subscribers (every reading);
    `client_delay_ms`: to the subscriber having it (readings a subscriber's queue replaced latest-wins are not
    in it); `events_per_s`: readings delivered to each other replica's hub per second."""
    hubs: list[LiveHub] = []
    relays: list[EventRelay] = []
    pools: list[asyncpg.Pool] = []
    published: dict[tuple[str, str], float] = {}  # (channel, source time) -> when A published it
    delays: list[float] = []  # publish on A -> offered to B's subscribers (every reading)
    client_delays: list[float] = []  # publish on A -> B's subscriber has it (after its queue's latest-wins)
    received = 0
    tasks: list[asyncio.Task[None]] = []
    try:
        for i in range(max(2, replicas)):
            hub = LiveHub(max_pending=10_000)
            pool = await db.create_pool(dsn, min_size=1, max_size=3)
            relay = EventRelay(hub, pool, dsn, replica=f"bench-{i}", batch_interval=batch_interval)
            hub.attach(relay)
            relay.start()
            hubs.append(hub)
            if i > 0:
                hub.deliver = _timed(hub.deliver, published, delays)  # type: ignore[method-assign]
            pools.append(pool)
            relays.append(relay)
        for _ in range(750):  # at most 15 s for every relay to follow the table
            if all(r.following for r in relays):
                break
            await asyncio.sleep(0.02)

        async def subscribe(hub: LiveHub) -> None:
            nonlocal received
            async for event in hub.subscribe():
                now = time.perf_counter()
                sent = published.get((event.data["channel"], event.data["time"]))
                received += 1
                if sent is not None:
                    client_delays.append(now - sent)

        tasks = [asyncio.create_task(subscribe(h)) for h in hubs[1:]]
        await asyncio.sleep(0.1)  # the subscriptions are registered
        a = relays[0]
        before = [r.stats() for r in relays]
        per_tick = max(1, round(rate * TICK))
        names = [f"bench-{c // 10}.p{c % 10}" for c in range(CHANNELS)]
        start = time.monotonic()
        ticks = int(seconds / TICK)
        n = 0
        for tick in range(ticks):
            at = datetime.now(UTC)
            for _ in range(per_tick):
                channel = names[n % CHANNELS]
                data = _reading(channel, n % CHANNELS + 1, 37.0 + (n % 100) / 100, at)
                published[(channel, data["time"])] = time.perf_counter()
                a.hub.publish("reading", channel, data)
                n += 1
            # absolute schedule: the rate holds even when a step runs late
            await asyncio.sleep(max(0.0, start + (tick + 1) * TICK - time.monotonic()))
        elapsed = time.monotonic() - start
        expected = n * (len(hubs) - 1)
        drain = time.monotonic() + 10
        while received < expected and time.monotonic() < drain:
            if all(r.stats()["pending"] == 0 for r in relays) and all(
                    r.stats()["events_received"] - b["events_received"] >= n for r, b in zip(relays, before,
                                                                                         strict=True)):
                await asyncio.sleep(0.2)  # delivered to every hub: what the subscribers collapsed is not coming
                break
            await asyncio.sleep(0.02)
        after = [r.stats() for r in relays]
        written = after[0]["batches_written"] - before[0]["batches_written"]
        notifies = statistics.mean(x["notifies"] - b["notifies"] for x, b in zip(after[1:], before[1:], strict=True))
        return {
            "rate": rate, "seconds": round(elapsed, 2), "replicas": len(relays), "published": n,
            "delivered": received, "subscribers": len(hubs) - 1,
            "collapsed": sum(h.stats()["replaced"] for h in hubs[1:]),
            "delay_ms": _summary(delays), "client_delay_ms": _summary(client_delays),
            "events_per_s": statistics.mean(x["events_received"] - b["events_received"]
                                            for x, b in zip(after[1:], before[1:], strict=True)) / elapsed,
            "client_events_per_s": received / elapsed / max(1, len(hubs) - 1),
            "batches_per_s": written / elapsed,
            "events_per_batch": (after[0]["events_written"] - before[0]["events_written"]) / max(1, written),
            "notifies_per_s": notifies / elapsed,
            "dropped": after[0]["dropped"], "local_only": sum(x["local_only"] for x in after),
        }
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for relay in relays:
            await relay.stop()
        for hub in hubs:
            hub.close()
        for pool in pools:
            pool.terminate()


async def main_async(args: argparse.Namespace) -> None:
    async with scratch_database("bench_relay") as scratch:
        print("culturectl live events across replicas")
        print(f"  machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
              f"{platform.release()}, Python {platform.python_version()}")
        print(f"  database: {scratch.where}, PostgreSQL {scratch.version}")
        print(f"  {args.replicas} replicas in one process, {args.rate:,} readings/s on the first for "
              f"{args.seconds:g} s, batch interval {args.batch_interval:g} s\n")
        r = await sse_delay(scratch.dsn, args.rate, args.seconds, args.replicas, args.batch_interval)
        d = r["delay_ms"]
        print(f"published {r['published']:,} readings in {r['seconds']:.1f} s; delivered {r['delivered']:,} to "
              f"{r['subscribers']} subscriber(s) ({r['collapsed']:,} collapsed latest-wins in their queues)")
        c = r["client_delay_ms"]
        print(f"delay A -> B's hub, every reading ({d['n']:,}): median {d['median']:.1f} ms, "
              f"p95 {d['p95']:.1f} ms, max {d['max']:.1f} ms")
        print(f"delay A -> B's subscriber ({c['n']:,} readings it got): median {c['median']:.1f} ms, "
              f"p95 {c['p95']:.1f} ms, max {c['max']:.1f} ms")
        print(f"events/s delivered to each other replica: {r['events_per_s']:,.0f} "
              f"(to its subscriber: {r['client_events_per_s']:,.0f})")
        print(f"batches/s written by A: {r['batches_per_s']:.1f} ({r['events_per_batch']:.0f} events each); "
              f"notifies/s received per replica: {r['notifies_per_s']:.1f}")
        print(f"dropped in A's queue: {r['dropped']}, delivered locally only: {r['local_only']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=int, default=5000, help="readings per second published on the first replica")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to publish")
    p.add_argument("--replicas", type=int, default=2, help="relays on the database (at least 2)")
    p.add_argument("--batch-interval", type=float, default=0.05, help="the relays' batch interval, seconds")
    args = p.parse_args(argv)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
