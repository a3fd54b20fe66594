"""Dashboard figures in a real browser (Debian's Chromium, Playwright): the run page's load time with 7 days of data,
and the delay from a reading to its point on the chart.

The whole service runs on loopback at clock scale 1 (bench/_stack.py). Seven days of history (one sample every 30 s
on every channel the run page charts) are written before the browser starts, with their 5-minute rollup; the run's
T0 is 7 days ago. Load time: from navigation start to `document.body.dataset.ready` (initial data fetched through
the bucketed telemetry API and drawn, SSE connected), medians of --loads fresh page loads. Reading -> chart: for
--seconds, each new last point of the temperature (OPC UA) and cell density (Modbus) charts, the time it was drawn
minus its source time (the device's clock, which is wall time at scale 1). Prints; asserts nothing.

    python -m bench.dashboard [--loads 5] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from datetime import timedelta

from app import db
from app.demo.setup import DEMO_PASSWORD, ensure_demo_accounts, ensure_demo_recipe
from bench._stack import pct, running_stack

CHANNELS = {  # channel -> (base, noise amplitude)
    "incubator-1.temperature": (37.0, 0.05), "incubator-1.co2": (5.0, 0.05), "incubator-1.humidity": (93.0, 0.5),
    "culture-system-1.viable_cell_density": (5.0e5, 2.0e4), "culture-system-1.viability": (90.0, 0.4),
    "culture-system-1.cd7_percent": (30.0, 0.5),
}
STEP_S = 30
DAYS = 7
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


async def backfill(dsn: str, days: int) -> int:
    """Seven days of synthetic history before now on every charted channel, with the 5-minute rollup."""
    conn = await db.connect(dsn)
    try:
        rows = 0
        rollup_is_table = await conn.fetchval(
            "SELECT relkind = 'r' FROM pg_class WHERE relname = 'telemetry_5m'")
        for channel, (base, amp) in CHANNELS.items():
            device, _, point = channel.partition(".")
            cid = await conn.fetchval("SELECT c.id FROM channel c JOIN device d ON d.id = c.device_id "
                                      "WHERE d.name = $1 AND c.name = $2", device, point)
            if cid is None:
                raise LookupError(f"no channel {channel}")
            status = await conn.execute(
                "INSERT INTO telemetry (channel_id, time, value, quality) SELECT $1, t, "
                "$2 + $3 * sin(extract(epoch FROM t) / 3600.0) + $3 * (random() - 0.5), 0 "
                "FROM generate_series(now() - make_interval(days => $4), now() - interval '1 minute', "
                "make_interval(secs => $5)) AS t ON CONFLICT DO NOTHING",
                cid, base, amp, days, STEP_S)
            rows += int(status.split()[-1])
            if rollup_is_table:
                await conn.execute(
                    "INSERT INTO telemetry_5m (channel_id, bucket, n, sum, min, max) SELECT channel_id, "
                    "date_bin('5 minutes', time, timestamptz '2000-01-01'), count(value), sum(value), min(value), "
                    "max(value) FROM telemetry WHERE channel_id = $1 AND time < now() - interval '1 minute' "
                    "GROUP BY 1, 2 ON CONFLICT (channel_id, bucket) DO UPDATE SET n = EXCLUDED.n, sum = EXCLUDED.sum, "
                    "min = EXCLUDED.min, max = EXCLUDED.max", cid)
        return rows
    finally:
        await conn.close()


async def main(loads: int, seconds: float) -> None:
    from playwright.async_api import async_playwright

    from tests.e2e.conftest import chromium_path

    async with running_stack(1.0, 0.5, prefix="culturectl-dash-") as stack:
        dsn = stack.dsn
        conn = await db.connect(dsn)
        try:
            await ensure_demo_accounts(conn, stack.data_dir)
            await ensure_demo_recipe(conn)
        finally:
            await conn.close()
        t = time.monotonic()
        rows = await backfill(dsn, DAYS)
        fill_s = time.monotonic() - t
        t0 = stack.clock.now() - timedelta(days=DAYS)
        r = await stack.client.post("/api/v1/runs", json={
            "recipe_key": "htlp-dl4-tnfa", "donor_id": "D-1", "patient_id": "P-1", "patient_weight_kg": 70,
            "target_dose_per_kg": 4.0e6, "cell_source": "mobilized", "hsct_at": (t0 - timedelta(days=3)).isoformat(),
            "planned_t0": t0.isoformat(), "incubator": "incubator-1", "culture_system": "culture-system-1"})
        r.raise_for_status()
        run_id = r.json()["id"]
        load_ms: list[float] = []
        counts: dict[str, int] = {}
        delays: dict[str, list[float]] = {"incubator-1.temperature": [], "culture-system-1.viable_cell_density": []}
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            ctx = await browser.new_context(viewport={"width": 1280, "height": 800}, base_url=stack.base_url)
            page = await ctx.new_page()
            await page.goto("/login")
            await page.fill("form#login input[name=username]", "operator")
            await page.fill("form#login input[name=password]", DEMO_PASSWORD)
            await page.click("form#login button[type=submit]")
            await page.wait_for_function("document.body.dataset.ready === 'true'", timeout=30_000)
            for _ in range(loads):
                start = time.perf_counter()
                await page.goto(f"/runs/{run_id}", wait_until="commit")
                await page.wait_for_function("document.body.dataset.ready === 'true'", timeout=60_000, polling=10)
                load_ms.append((time.perf_counter() - start) * 1000)
            for ch in CHANNELS:
                counts[ch] = int(await page.evaluate(f"window.culturectl.charts[{ch!r}].count()"))
            seen: dict[str, float] = {}
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for ch, out in delays.items():
                    last = await page.evaluate(f"window.culturectl.charts[{ch!r}].last()")
                    if last and last.get("receivedAt") and last["t"] != seen.get(ch):
                        seen[ch] = last["t"]
                        out.append(float(last["drawnAt"]) - float(last["t"]) * 1000.0)
                await asyncio.sleep(0.02)
            await browser.close()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{rows:,} history rows ({DAYS} days x {len(CHANNELS)} channels, one per {STEP_S} s) "
          f"written in {fill_s:.1f} s")
    print(f"run page load with {DAYS} days of data: median {statistics.median(load_ms):.0f} ms, "
          f"min {min(load_ms):.0f}, max {max(load_ms):.0f} ({loads} loads)")
    print("points per series in the browser: " + ", ".join(f"{c.split('.')[1]} {n}" for c, n in counts.items()))
    print(f"{'reading -> point drawn on the chart':<44} {'n':>4} {'median ms':>10} {'p99 ms':>8}")
    for ch, d in delays.items():
        if d:
            print(f"{ch:<44} {len(d):>4} {statistics.median(d):>10.0f} {pct(d, 0.99):>8.0f}")
        else:
            print(f"{ch:<44} {0:>4} (no live points)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(main(args.loads, args.seconds))
