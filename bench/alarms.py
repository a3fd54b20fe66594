"""Alarm evaluation benchmark: cost of `evaluate` per reading, pure CPU, no database.

Run `python -m bench.alarms` (or `python bench/alarms.py`); `--readings` and `--runs` change the size.
Scenarios: values well inside the limits; seeded noise around the H limit (the state machine works:
delays, deadband, activations); and every reading evaluated against 6 definitions of one channel
(limit, rate, stale, bad quality, comm loss, plus a tick of the stale alarm). Figures are medians of
the runs. It prints, it does not assert.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.alarms import AlarmDefinition, Limit, LimitAlarm, default_definitions, evaluate, initial_state
from app.alarms.evaluate import tick
from drivers.base import Quality

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _series(n: int, noisy: bool, seed: int) -> list[tuple[datetime, float]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        at = T0 + timedelta(seconds=i)
        if noisy:  # 30-min blocks alternating inside and chattering around H = 38.0
            level = 38.05 if (i // 1800) % 2 else 37.0
            out.append((at, level + rng.gauss(0, 0.1)))
        else:
            out.append((at, 37.0 + rng.gauss(0, 0.05)))
    return out


def _run(defs: Sequence[AlarmDefinition], series: list[tuple[datetime, float]], with_tick: bool) -> float:
    states = [initial_state(f"inc1.temperature.{d.name}", T0) for d in defs]
    good = Quality.GOOD
    start = time.perf_counter()
    for at, v in series:
        for k, d in enumerate(defs):
            states[k], _ = evaluate(d, states[k], v, good, at)
        if with_tick:
            states[2], _ = tick(defs[2], states[2], at)
    return time.perf_counter() - start


def _service_run(series: list[tuple[datetime, float]], excursion: bool) -> float:
    """The service's hot path: `AlarmService.on_reading` for the incubator temperature (all its alarms, and the run's
    excursion accounting when bound), live stream publishing included; no database."""
    from app.alarms.excursion import ExcursionState, default_rules
    from app.alarms.journal import Excursion
    from app.alarms.service import AlarmService
    from app.core.clock import ManualClock
    from app.core.live import LiveHub
    from drivers.base import Reading
    from drivers.devices import DeviceConfig

    dev = DeviceConfig(name="inc1", kind="incubator", protocol="opcua", endpoint="opc.tcp://127.0.0.1:1/x")
    svc = AlarmService(ManualClock(T0), LiveHub(history=100), [dev])
    if excursion:
        svc._excursions["inc1.temperature"] = [Excursion(1, "inc1.temperature", default_rules()[0], ExcursionState())]
    readings = [Reading("inc1.temperature", v, at) for at, v in series]
    start = time.perf_counter()
    for r in readings:
        svc.on_reading(r)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Print ns/reading and readings/s per scenario."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--readings", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    temp = default_definitions()["incubator.temperature"]
    limit = temp[0]
    six: list[AlarmDefinition] = [
        *temp,
        LimitAlarm(name="limit_fast", deadband=0.2, h=Limit(value=38.5), l=Limit(value=35.5)),
    ]
    scenarios: list[tuple[str, Callable[[], float]]] = [
        ("normal values, 1 limit definition", lambda: _run([limit], _series(a.readings, False, a.seed), False)),
        ("noisy values near H, 1 limit definition", lambda: _run([limit], _series(a.readings, True, a.seed), False)),
        ("noisy values, 6 definitions + stale tick", lambda: _run(six, _series(a.readings, True, a.seed), True)),
        ("service hot path, normal values", lambda: _service_run(_series(a.readings, False, a.seed), False)),
        ("service hot path, noisy + run excursion", lambda: _service_run(_series(a.readings, True, a.seed), True)),
    ]
    print(f"python {platform.python_version()} on {platform.machine()}; {a.readings} readings x {a.runs} runs")
    print(f"{'scenario':44} {'ns/reading':>12} {'readings/s':>12}")
    for name, fn in scenarios:
        secs = statistics.median(fn() for _ in range(a.runs))
        per = secs / a.readings
        print(f"{name:44} {per * 1e9:12.0f} {1 / per:12,.0f}")


if __name__ == "__main__":
    main()
