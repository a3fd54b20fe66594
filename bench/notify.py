"""Notification benchmark: what the outbox costs the alarm service, and how fast the sender drains it.

Run `python -m bench.notify` (`--alarms`, `--users`, `--runs` change the size). On an embedded PostgreSQL (or
DATABASE_URL) with a local webhook receiver on 127.0.0.1, each run:
1. activates `--alarms` service alarms with no policy and flushes them (the journal alone), then as many with a
   policy whose tier notifies `--users` users (the journal and the outbox in the same transactions): the flush time
   per transition, side by side;
2. drains the deliveries (alarms x users webhooks) with one sender, then a second batch with two senders on the same
   outbox: deliveries per second, and how many arrived twice (Idempotency-Key seen more than once).
Figures are medians of the runs. It prints, it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import SecretStr

from app import db
from app.alarms.service import AlarmService
from app.auth import users
from app.auth.principal import SYSTEM, Role
from app.core.clock import ManualClock
from app.core.live import LiveHub
from app.notify import contacts, store
from app.notify.channels import Channels
from app.notify.rules import Policy
from app.notify.sender import Sender
from app.settings import Settings
from tests.notify.support import WebhookReceiver


async def _setup(dsn: str, hooks: WebhookReceiver, n_users: int) -> None:
    conn = await db.connect(dsn)
    try:
        for i in range(n_users):
            name = f"bench-{i:02d}"
            await users.create_user(conn, username=name, display_name=name, role=Role.OPERATOR,
                                    password="Bench-Notify-Culture-42", actor=SYSTEM)
            await contacts.create(conn, username=name, kind="webhook", address=hooks.url(f"/{name}"), actor=SYSTEM,
                                  reason="bench")
    finally:
        await conn.close()


async def _policy(dsn: str, n_users: int, clock: ManualClock) -> None:
    policy = Policy.model_validate({"rules": [{"name": "bench", "match": {"kinds": ["service"]}, "tiers": [
        {"notify": {"users": [f"bench-{i:02d}" for i in range(n_users)]}}]}]})
    conn = await db.connect(dsn)
    try:
        await store.save(conn, policy, principal=SYSTEM, reason="bench", at=clock.now())
    finally:
        await conn.close()


async def _flush_cost(svc: AlarmService, prefix: str, n: int, clock: ManualClock) -> float:
    """Seconds per transition of activating n service alarms and flushing them."""
    for i in range(n):
        svc.service_condition(f"{prefix}_{i}", False, clock.now(), "bench alarm")
    start = time.perf_counter()
    await svc.flush()
    return (time.perf_counter() - start) / n


async def _drain(senders: list[Sender], expected: int, hooks: WebhookReceiver, before: int) -> float:
    """Seconds until `expected` more webhook requests arrived, the senders passing concurrently."""
    start = time.perf_counter()
    while len(hooks.requests) - before < expected:
        await asyncio.gather(*(s.pass_once() for s in senders))
        if time.perf_counter() - start > 300:
            raise RuntimeError(f"only {len(hooks.requests) - before} of {expected} deliveries in 300 s")
    return time.perf_counter() - start


async def main(n_alarms: int, n_users: int, runs: int) -> None:
    logging.getLogger("culturectl").setLevel(logging.ERROR)  # a line per activated alarm otherwise
    dsn_env = os.environ.get("DATABASE_URL")
    tmp = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    embedded: db.EmbeddedPostgres | None = None
    if dsn_env is None:
        embedded = db.EmbeddedPostgres(tmp / "pg")
        server = await asyncio.to_thread(embedded.start)
    else:
        server = dsn_env
    name = f"bench_notify_{os.getpid()}"
    dsn = await db.create_database(server, name)
    journal_only, with_outbox, one, two, dup = [], [], [], [], 0
    try:
        await db.upgrade_async(dsn)
        pool = await db.create_pool(dsn)
        with WebhookReceiver() as hooks:
            await _setup(dsn, hooks, n_users)
            settings = Settings(data_dir=tmp, webhook_secret=SecretStr("bench-secret"), webhook_timeout=10.0)
            for run in range(runs):
                clock = ManualClock()
                clock.advance(run * 86400.0)
                svc = AlarmService(clock, LiveHub(), [], pool=pool)  # no policy loaded: the journal alone
                journal_only.append(await _flush_cost(svc, f"plain_{run}", n_alarms, clock))
                await _policy(dsn, n_users, clock)
                async with pool.acquire() as conn:
                    await svc.refresh(conn)
                with_outbox.append(await _flush_cost(svc, f"notify_{run}_a", n_alarms, clock))

                def sender(replica: str, s: AlarmService = svc, c: ManualClock = clock) -> Sender:
                    return Sender(pool, c, Channels(settings, c.now), s, b"k" * 32, "http://127.0.0.1", settings.zone(),
                                  replica=replica)

                before = len(hooks.requests)
                one.append(n_alarms * n_users / await _drain([sender("one")], n_alarms * n_users, hooks, before))
                await _flush_cost(svc, f"notify_{run}_b", n_alarms, clock)
                before = len(hooks.requests)
                two.append(n_alarms * n_users / await _drain([sender("r1"), sender("r2")], n_alarms * n_users, hooks,
                                                             before))
            keys = Counter(r.headers["idempotency-key"] for r in hooks.requests)
            dup = sum(n - 1 for n in keys.values() if n > 1)
        await pool.close()
    finally:
        await db.drop_database(server, name)
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    med = statistics.median
    print(f"machine: {platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}; "
          f"{n_alarms} alarms x {n_users} users per batch, {runs} runs (medians)")
    print(f"flush per transition, journal only        {med(journal_only) * 1e6:8.0f} us")
    print(f"flush per transition, journal + outbox    {med(with_outbox) * 1e6:8.0f} us   "
          f"(x{med(with_outbox) / med(journal_only):.2f})")
    print(f"deliveries/s, one sender                  {med(one):8.0f}")
    print(f"deliveries/s, two senders, one outbox     {med(two):8.0f}   (x{med(two) / med(one):.2f})")
    print(f"deliveries received twice                 {dup:8d}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alarms", type=int, default=100)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    a = parser.parse_args()
    asyncio.run(main(a.alarms, a.users, a.runs))
