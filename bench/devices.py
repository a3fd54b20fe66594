"""Device benchmark: the Modbus poller's cost per reading with profiles (merged reads vs one request per point) at
several point counts, and how long `device browse` takes on an OPC UA server with ~2,000 variables.

Run `python -m bench.devices` (`--help` for the flags). The devices run on 127.0.0.1 in a second thread with their
own event loop, so the CPU figures (thread time of the poller's thread) are the client's only. Figures are medians
over the repetitions; it prints, it does not assert.

Rows:
- `shipped simulator, 8 points`: the shipped culture-system profile on the pymodbus-based simulator (the path the
  demo runs), merged as the service reads it.
- `N float32 points, merged | per point`: a generated profile of N neighbouring float32 input registers (CDAB) on
  our Modbus TCP device server, read as the service does (merged) and one request per point.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from app.core.clock import ScaledClock
from drivers.devices import DeviceConfig, parse_devices
from drivers.discovery import browse_opcua, connect_opcua
from drivers.modbus import ModbusDriver
from drivers.profiles import ModbusProfile, OpcUaProfile, build_library, parse_profile
from simulators.culture_system import CultureSystemSimulator
from simulators.modbus_device import ModbusProfileDevice
from simulators.opcua_device import OpcUaProfileDevice


class DeviceThread:
    """An event loop in another thread, for the device servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any]) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(120)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def generated_profile(n: int) -> ModbusProfile:
    prof = parse_profile({
        "schema": 1, "name": f"bench-{n}", "version": "1", "device_class": "culture-system", "protocol": "modbus",
        "modbus": {"unit_id": 17, "word_order": "CDAB"},
        "points": [{"name": f"P{i:04d}", "table": "input", "address": 2 * i, "data_type": "float32",
                    "unit": "mL"} for i in range(n)]}, f"bench-{n}")
    assert isinstance(prof, ModbusProfile)
    return prof


async def poll_rate(cfg: DeviceConfig, merge: bool, polls: int) -> tuple[float, float, int]:
    """(readings per wall second, client CPU microseconds per reading, requests per poll)."""
    driver = ModbusDriver(cfg, ScaledClock(), merge=merge)
    await driver.connect()
    try:
        await driver.poll()
        before = driver.requests
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        count = 0
        for _ in range(polls):
            count += len(await driver.poll())
        wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
        return count / wall, cpu / count * 1e6, (driver.requests - before) // polls
    finally:
        await driver.close()


def median_of(reps: int, fn: Callable[[], tuple[float, float, int]]) -> tuple[float, float, int]:
    runs = [fn() for _ in range(reps)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[0][2])


def _runner(cfg: DeviceConfig, merge: bool, polls: int) -> Callable[[], tuple[float, float, int]]:
    return lambda: asyncio.run(poll_rate(cfg, merge, polls))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--points", default="8,32,120,480", help="point counts of the generated profiles")
    ap.add_argument("--polls", type=int, default=40, help="polls per repetition")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (median reported)")
    ap.add_argument("--variables", type=int, default=2000, help="extra variables on the OPC UA server to browse")
    args = ap.parse_args()
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"medians of {args.reps} x {args.polls} polls")
    devices = DeviceThread()
    try:
        print(f"{'Modbus poller':40} {'readings/s':>12} {'CPU us/reading':>15} {'requests/poll':>14}")
        sim = CultureSystemSimulator(ScaledClock())
        devices.run(sim.start())
        cfg = DeviceConfig(name="cs", kind="culture-system", endpoint=sim.endpoint)
        r = median_of(args.reps, lambda: asyncio.run(poll_rate(cfg, True, args.polls)))
        print(f"{'shipped simulator, 8 points, merged':40} {r[0]:12.0f} {r[1]:15.1f} {r[2]:14d}")
        devices.run(sim.stop())
        for n in (int(x) for x in args.points.split(",")):
            prof = generated_profile(n)
            values = {f"P{i:04d}": float(i) for i in range(n)}
            dev = ModbusProfileDevice(prof, lambda values=values: values)  # type: ignore[misc]
            devices.run(dev.start())
            cfg = parse_devices(yaml.safe_dump({"devices": [
                {"name": "b", "profile": prof.model_dump(mode="json", by_alias=True), "endpoint": dev.endpoint}]}))[0]
            merged = median_of(args.reps, _runner(cfg, True, args.polls))
            single = median_of(max(1, args.reps // 2), _runner(cfg, False, max(2, args.polls // 4)))
            for label, row in (("merged", merged), ("per point", single)):
                print(f"{f'{n} float32 points, {label}':40} {row[0]:12.0f} {row[1]:15.1f} {row[2]:14d}")
            print(f"{'':40} merged / per point: {merged[0] / single[0]:.1f}x readings/s, "
                  f"{single[1] / merged[1]:.1f}x less CPU per reading")
            devices.run(dev.stop())

        acme = build_library(Path(__file__).resolve().parents[1] / "tests" / "profiles").get("acme-cellmaster-170")
        assert isinstance(acme, OpcUaProfile)
        server = OpcUaProfileDevice(acme, dict, extra_variables=args.variables)
        devices.run(server.start())

        async def browse_once() -> tuple[float, int]:
            t = time.perf_counter()
            client = await connect_opcua(server.endpoint, None, 30.0)
            try:
                found = len((await browse_opcua(client)).variables)
            finally:
                await client.disconnect()
            return time.perf_counter() - t, found

        times = [asyncio.run(browse_once()) for _ in range(3)]
        print(f"\nbrowse: {times[0][1]} variables, median {statistics.median(t for t, _ in times):.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t, _ in times)})")
        devices.run(server.stop())
    finally:
        devices.stop()


if __name__ == "__main__":
    main()
