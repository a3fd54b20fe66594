"""Device failover between replicas: the takeover time after a replica is killed, and the live-event delay across
replicas at 5,000 readings/s.

Two `culturectl serve` processes (replicas) on one database (DATABASE_URL when set: a scratch database on that
server, dropped afterwards; else an embedded PostgreSQL in a temporary directory), with the default lease settings
unless given, and the two simulators in this process. `--kills` times: the replica that owns the incubator is
killed with SIGKILL, and the time from the kill until the other replica reports the incubator online is the
takeover time; the killed replica is then started again and the devices settle before the next kill. Prints the
takeover time (median and worst) and, through `bench.relay.sse_delay`, the delay from a reading published on one
replica to its delivery on another at `--rate` readings/s. Asserts nothing.

    python -m bench.failover [--kills 10] [--stops 5] [--ttl 10] [--interval 1] [--rate 5000] [--seconds 10]

Then `--stops` times the same with SIGTERM: the handover time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from app.core.clock import ScaledClock, utcnow
from bench._stack import free_port, scratch_database
from bench.relay import sse_delay
from drivers.devices import dump_devices
from simulators.culture_system import CultureSystemSimulator
from simulators.incubator import IncubatorSimulator
from simulators.runner import device_configs

KEY = "bench-failover-shared-service-key-0123456789"
DEVICE = "incubator-1"


class Replica:
    def __init__(self, rid: str, port: int, env: dict[str, str], base: Path) -> None:
        self.id, self.port, self.base = rid, port, base
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**env, "CULTURECTL_REPLICA_ID": rid, "CULTURECTL_REPLICA_URL": self.url,
                    "CULTURECTL_DATA_DIR": str(base / rid)}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with (self.base / f"{self.id}.log").open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), stdout=out,
                stderr=asyncio.subprocess.STDOUT, env=self.env)

    async def ready(self) -> dict[str, Any] | None:
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=2) as c:
                r = await c.get("/readyz")
        except httpx.TransportError:
            return None
        return r.json() if r.status_code == 200 else None

    async def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            await self.proc.wait()


async def _until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {what} within {timeout:g} s")


async def _owner_online(replicas: list[Replica], device: str) -> Replica | None:
    """The replica that owns `device` and reports it online, when every device has exactly one owner."""
    views = {r.id: await r.ready() for r in replicas}
    if any(v is None for v in views.values()):
        return None
    owners = [r for r in replicas if device in (views[r.id] or {})["cluster"]["owned"]]
    if len(owners) != 1 or (views[owners[0].id] or {})["devices"][device]["state"] != "online":
        return None
    return owners[0]


async def _settled(replicas: list[Replica], devices: int) -> bool:
    views = [await r.ready() for r in replicas]
    if any(v is None for v in views):
        return False
    counts = [len(v["cluster"]["owned"]) for v in views if v is not None]
    return sum(counts) == devices and max(counts) <= -(-devices // len(replicas))


async def takeovers(dsn: str, base: Path, kills: int, ttl: float, interval: float,
                    sig: signal.Signals = signal.SIGKILL) -> list[float]:
    clock = ScaledClock(epoch=utcnow(), scale=60.0)
    incubator, culture = IncubatorSimulator(clock, seed=1), CultureSystemSimulator(clock, seed=1)
    await incubator.start()
    await culture.start()
    devices = base / "devices.yaml"
    devices.write_text(dump_devices(device_configs(incubator, culture, poll_interval=0.2)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULTURECTL_") and k != "DATABASE_URL"}
    env.update({"CULTURECTL_DATABASE_URL": dsn, "CULTURECTL_DEVICES_FILE": str(devices),
                "CULTURECTL_SECRET_KEY": KEY, "CULTURECTL_LEASE_TTL_S": str(ttl),
                "CULTURECTL_LEASE_INTERVAL_S": str(interval), "CULTURECTL_LOG_LEVEL": "warning",
                "CULTURECTL_TIME_SCALE": "60", "CULTURECTL_CLOCK_EPOCH": clock.epoch.isoformat()})
    replicas = [Replica(f"b{i}", free_port(), env, base) for i in (1, 2)]
    times: list[float] = []
    try:
        for r in replicas:
            await r.start()
        for n in range(kills):
            await _until(lambda: _settled(replicas, 2), 120, "settled devices")
            victim = await _until(lambda: _owner_online(replicas, DEVICE), 60, f"an owner of {DEVICE}")
            t0 = time.monotonic()
            await victim.kill(sig)
            survivors = [r for r in replicas if r is not victim]
            await _until(lambda s=survivors: _owner_online(s, DEVICE), 120, f"{DEVICE} taken over")
            times.append(time.monotonic() - t0)
            print(f"  {sig.name} {n + 1}: {DEVICE} online on the other replica after {times[-1]:.2f} s", flush=True)
            fresh = Replica(victim.id, free_port(), env, base)
            replicas[replicas.index(victim)] = fresh
            await fresh.start()
            await _until(fresh.ready, 60, "the restarted replica")
    except TimeoutError:
        for r in replicas:  # what the replicas said, to see why
            log = base / f"{r.id}.log"
            print(f"--- {r.id}:\n" + (log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"))
        raise
    finally:
        for r in replicas:
            await r.kill()
        await culture.stop()
        await incubator.stop()
    return times


async def main_async(args: argparse.Namespace) -> None:
    async with scratch_database("bench_failover") as scratch:
        dsn, base = scratch.dsn, scratch.tmp
        print("culturectl device failover between replicas")
        print(f"  machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
              f"{platform.release()}, Python {platform.python_version()}; database: {scratch.where}, "
              f"PostgreSQL {scratch.version}")
        print(f"  2 replicas as processes, lease time {args.ttl:g} s, pass every {args.interval:g} s, "
              f"{args.kills} kills (SIGKILL of the incubator's owner)\n")
        times = await takeovers(dsn, base, args.kills, args.ttl, args.interval)
        print(f"\ntakeover after SIGKILL: median {statistics.median(times):.2f} s, worst {max(times):.2f} s, "
              f"best {min(times):.2f} s ({len(times)} kills)\n")
        stops = await takeovers(dsn, base, args.stops, args.ttl, args.interval, signal.SIGTERM)
        print(f"\nhandover after SIGTERM: median {statistics.median(stops):.2f} s, worst {max(stops):.2f} s "
              f"({len(stops)} stops; the device online on the other replica)")
        print(f"\nlive events across replicas at {args.rate:,} readings/s for {args.seconds:g} s:")
        r = await sse_delay(dsn, args.rate, args.seconds, 2)
        d, c = r["delay_ms"], r["client_delay_ms"]
        print(f"  delay to the other replica: median {d['median']:.1f} ms, p95 {d['p95']:.1f} ms, "
              f"max {d['max']:.1f} ms ({d['n']:,} readings, {r['events_per_s']:,.0f}/s)")
        print(f"  to its SSE subscriber: median {c['median']:.1f} ms, p95 {c['p95']:.1f} ms")
        print(f"  batches/s {r['batches_per_s']:.1f}, notifies/s {r['notifies_per_s']:.1f}, "
              f"dropped {r['dropped']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--stops", type=int, default=5, help="SIGTERMs after the kills")
    p.add_argument("--ttl", type=float, default=10.0, help="lease time, seconds (the default setting)")
    p.add_argument("--interval", type=float, default=1.0, help="lease pass interval, seconds (the default)")
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    main()
