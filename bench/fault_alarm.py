"""Delay from a fault injected in a simulator to its alarm event on the SSE stream of a running service.

The whole service runs on loopback (bench/_stack.py) on a clock at --scale (default 60: one wall second is one
clock minute, so the door's 60 s on-delay is 1 wall second). For each fault, --repeat times: wait until the alarm is
normal, inject the fault, time the wall delay until the SSE client parses the alarm's activation, clear the fault and
acknowledge the return. The figure that matters is the delay beyond the alarm's own on-delay (converted to wall
seconds): detection (driver, sampling) + evaluation + the alarm pass + the stream. Prints medians; asserts nothing.

    python -m bench.fault_alarm [--scale 60] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench._stack import BenchStack, running_stack
from simulators.faults import Fault


@dataclass(frozen=True)
class Case:
    label: str
    simulator: str
    fault: Fault
    alarm: str
    on_delay_clock_s: float  # the alarm's own delay, clock seconds
    point: str | None = None


CASES = (
    Case("door left open -> door H", "incubator", Fault.door_left_open, "incubator-1.door_open:limit", 60.0),
    Case("OPC UA server down -> comm loss", "incubator", Fault.opcua_restart, "incubator-1:comm_loss", 0.0),
    Case("Modbus timeouts -> comm loss", "culture", Fault.modbus_timeout, "culture-system-1:comm_loss", 0.0),
    Case("frozen temperature -> stale", "incubator", Fault.frozen_sensor, "incubator-1.temperature:stale", -1.0,
         "temperature"),
    Case("OPC UA NaN (Good) -> bad quality", "incubator", Fault.nan_value, "incubator-1.temperature:bad_quality",
         60.0, "temperature"),
    Case("Modbus viability 200% -> bad quality", "culture", Fault.out_of_range,
         "culture-system-1.viability:bad_quality", 60.0, "viability"),
    Case("OPC UA silent server -> comm loss", "incubator", Fault.no_answer, "incubator-1:comm_loss", 0.0),
)


async def _reader(stack: BenchStack, seen: dict[str, list[tuple[float, dict[str, Any]]]]) -> None:
    import json

    async with stack.client.stream("GET", "/api/v1/stream", params={"kinds": "alarm"}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                seen.setdefault(data["id"], []).append((time.monotonic(), data))


async def _wait(pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.005)
    return False


async def _normal(stack: BenchStack, alarm: str) -> None:
    for _ in range(600):
        a = (await stack.client.get(f"/api/v1/alarms/{alarm}")).json()
        if a["status"] == "normal":
            return
        if a["status"] == "returned_unack":
            await stack.client.post(f"/api/v1/alarms/{alarm}/acknowledge", json={"comment": "bench"})
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{alarm} did not return to normal")


async def main(scale: float, repeat: int) -> None:
    results: dict[str, list[float]] = {}
    stale_floor = 5.0
    async with running_stack(scale, 0.5, prefix="culturectl-faults-", alarm_stale_floor=stale_floor) as stack:
        seen: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        reader = asyncio.create_task(_reader(stack, seen))
        try:
            await asyncio.sleep(3)  # devices online, first samples in
            for case in CASES:
                sim = stack.incubator if case.simulator == "incubator" else stack.culture
                for _ in range(repeat):
                    await _normal(stack, case.alarm)
                    before = len(seen.get(case.alarm, []))
                    t0 = time.monotonic()
                    await sim.inject(case.fault, point=case.point)
                    ok = await _wait(lambda a=case.alarm, b=before: any(
                        d["to"] == "active_unack" for _, d in seen.get(a, [])[b:]), 60)
                    if ok:
                        t1 = next(t for t, d in seen[case.alarm][before:] if d["to"] == "active_unack")
                        results.setdefault(case.label, []).append(t1 - t0)
                    await sim.clear(case.fault, point=case.point)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"clock x{scale:g}, {repeat} injections per fault, Modbus poll 0.5 s, alarm pass 0.5 s")
    print(f"{'fault -> alarm':<36} {'n':>3} {'median s':>9} {'min s':>7} {'max s':>7} {'on-delay s':>11} "
          f"{'beyond s':>9}")
    for case in CASES:
        d = results.get(case.label, [])
        delay = stale_floor if case.on_delay_clock_s < 0 else case.on_delay_clock_s / scale
        if not d:
            print(f"{case.label:<36} {0:>3} (no alarm)")
            continue
        med = statistics.median(d)
        print(f"{case.label:<36} {len(d):>3} {med:>9.2f} {min(d):>7.2f} {max(d):>7.2f} {delay:>11.2f} "
              f"{med - delay:>9.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.scale, args.repeat))
