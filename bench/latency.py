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
import time
from datetime import datetime

import httpx

from bench._stack import pct, running_stack


async def main(seconds: float, poll_interval: float) -> None:
    delays: dict[str, list[float]] = {"opcua": [], "modbus": []}
    async with running_stack(1.0, poll_interval, prefix="culturectl-latency-") as stack:
        await _collect(stack.client, {}, seconds, delays)
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
            print(f"{label:<40} {len(d):>7} {statistics.median(d):>10.1f} {pct(d, 0.99):>8.1f} {max(d):>8.1f}")
        else:
            print(f"{label:<40} {0:>7} (no events)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.poll_interval))
