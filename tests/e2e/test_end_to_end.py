"""The first slice as a user sees it: simulators -> drivers -> PostgreSQL -> API and live stream."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import asyncpg
import httpx

from drivers.base import Quality, Reading
from tests.e2e.conftest import Stack
from tests.support import sse_events, wait_for

INCUBATOR_CHANNELS = {"temperature", "co2", "humidity", "door_open", "temperature_setpoint", "co2_setpoint"}


async def _device_states(stack: Stack) -> dict[str, str]:
    r = await stack.client.get("/api/v1/devices")
    assert r.status_code == 200
    return {d["name"]: d["state"] for d in r.json()}


async def _rows_per_channel(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT d.name || '.' || c.name AS key, count(t.*) AS n FROM channel c JOIN device d ON d.id = c.device_id"
            " LEFT JOIN telemetry t ON t.channel_id = c.id AND t.quality = 0 GROUP BY 1"
        )
        return {r["key"]: r["n"] for r in rows}
    finally:
        await conn.close()


async def test_devices_come_online_and_every_channel_lands_in_telemetry(stack: Stack) -> None:
    await wait_for(lambda: _all_online(stack), timeout=20, what="both devices online")
    devices = (await stack.client.get("/api/v1/devices")).json()
    assert {d["name"] for d in devices} == {"incubator-1", "culture-system-1"}
    assert all(d["points"] for d in devices)

    async def every_channel_stored() -> bool:
        counts = await _rows_per_channel(stack.settings.database_dsn() or "")
        return len(counts) == 14 and all(n > 0 for n in counts.values())

    await wait_for(every_channel_stored, timeout=20, what="rows for all 14 channels in telemetry")

    channels = (await stack.client.get("/api/v1/channels")).json()
    by_key = {c["key"]: c for c in channels}
    assert {k.split(".", 1)[1] for k in by_key if k.startswith("incubator-1.")} == INCUBATOR_CHANNELS
    temp = by_key["incubator-1.temperature"]
    assert temp["unit"] == "degC" and temp["latest"]["quality"] == "good"
    assert 30 < temp["latest"]["value"] < 40


async def _all_online(stack: Stack) -> bool:
    return set((await _device_states(stack)).values()) == {"online"}


async def test_readings_arrive_on_the_sse_stream_with_increasing_ids_and_resume(stack: Stack) -> None:
    await wait_for(lambda: _all_online(stack), timeout=20, what="both devices online")
    seen: list[tuple[int, dict[str, object]]] = []
    async with stack.client.stream("GET", "/api/v1/stream", params={"kinds": "reading"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async with asyncio.timeout(15):
            async for ev in sse_events(r):
                assert ev.event == "reading"
                seen.append((int(ev.id or 0), ev.json()))  # type: ignore[arg-type]
                channels = {d["channel"] for _, d in seen}
                if {"incubator-1.temperature", "culture-system-1.viable_cell_density"} <= channels:
                    break
    ids = [i for i, _ in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    sample = next(d for _, d in seen if d["channel"] == "incubator-1.temperature")
    assert sample["quality"] == "good" and isinstance(sample["value"], float)

    # A client that reconnects with Last-Event-ID first gets what it missed, in order.
    last = ids[0]
    async with stack.client.stream("GET", "/api/v1/stream", params={"kinds": "reading"},
                                   headers={"Last-Event-ID": str(last)}) as r:
        async with asyncio.timeout(10):
            async for ev in sse_events(r):
                assert int(ev.id or 0) > last
                break


async def test_stream_and_api_without_credentials_are_401(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as anonymous:
        for path in ("/api/v1/stream", "/api/v1/devices", "/api/v1/channels"):
            r = await anonymous.get(path)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert "credentials" in r.json()["detail"]
        # The probes and metrics stay public.
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await anonymous.get(path)).status_code == 200, path


async def test_stream_authenticates_with_the_session_cookie(stack: Stack) -> None:
    token = stack.client.headers["Authorization"].removeprefix("Bearer ")
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10,
                                 cookies={"culturectl_session": token}) as browser, \
            browser.stream("GET", "/api/v1/stream", params={"kinds": "device_state,reading"}) as r:
        assert r.status_code == 200
        async with asyncio.timeout(10):
            async for _ev in sse_events(r):
                break


async def test_stream_rejects_unknown_filters_with_problem_json(stack: Stack) -> None:
    r = await stack.client.get("/api/v1/stream", params={"channels": "nope.nothing"})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert "nope.nothing" in r.json()["detail"]


async def test_simulator_restarts_are_survived_and_outage_is_not_faked(stack: Stack) -> None:
    await wait_for(lambda: _all_online(stack), timeout=20, what="both devices online")
    dsn = stack.settings.database_dsn() or ""
    for sim, device, back_within in ((stack.culture, "culture-system-1", 5.0),
                                     (stack.incubator, "incubator-1", 10.0)):
        stopping_at = stack.clock.now()
        await sim.stop()
        down_at = stack.clock.now()
        await wait_for(lambda d=device: _state_is(stack, d, "offline"), timeout=5, what=f"{device} offline")
        await asyncio.sleep(1.0)  # an outage of a real length: about 10 clock minutes
        restart_at = stack.clock.now()
        await sim.start()
        up_at = stack.clock.now()
        started = time.monotonic()
        await wait_for(lambda d=device: _state_is(stack, d, "online"), timeout=back_within + 2,
                       what=f"{device} online again")
        assert time.monotonic() - started <= back_within

        conn = await asyncpg.connect(dsn)
        try:
            async def stored_since(d: str = device, t: object = up_at, conn: asyncpg.Connection = conn) -> bool:
                n = await conn.fetchval(
                    "SELECT count(*) FROM telemetry t JOIN channel c ON c.id = t.channel_id JOIN device d"
                    " ON d.id = c.device_id WHERE d.name = $1 AND t.time > $2 AND t.quality = 0", d, t)
                return bool(n)

            await wait_for(stored_since, timeout=10, what=f"{device} readings stored after the restart")
            # The outage is recorded as BAD rows with no value, and nothing GOOD was invented inside it.
            bad = await conn.fetch(
                "SELECT t.value FROM telemetry t JOIN channel c ON c.id = t.channel_id JOIN device d"
                " ON d.id = c.device_id WHERE d.name = $1 AND t.quality = $2 AND t.time >= $3",
                device, int(Quality.BAD), stopping_at)
            assert bad and all(r["value"] is None for r in bad)
            faked = await conn.fetchval(
                "SELECT count(*) FROM telemetry t JOIN channel c ON c.id = t.channel_id JOIN device d"
                " ON d.id = c.device_id WHERE d.name = $1 AND t.quality = 0 AND t.time > $2"
                " AND t.time < $3", device, down_at, restart_at)
            assert faked == 0
        finally:
            await conn.close()


async def _state_is(stack: Stack, device: str, state: str) -> bool:
    return (await _device_states(stack)).get(device) == state


async def test_bucketed_telemetry_is_exact_on_known_data_and_limits_are_named(stack: Stack) -> None:
    channels = {c["key"]: c["id"] for c in (await stack.client.get("/api/v1/channels")).json()}
    cid = channels["culture-system-1.ph"]
    # Known data far away from the live data, through the ingest path (which keeps the rollup):
    # one value per minute for 30 minutes in 2001.
    base = stack.clock.now().replace(year=2001, month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    assert stack.runtime.buffer is not None
    for i in range(30):
        stack.runtime.buffer.put_nowait(Reading("culture-system-1.ph", float(i), base + timedelta(minutes=i)))
    conn = await asyncpg.connect(stack.settings.database_dsn() or "")
    try:
        async def stored() -> bool:
            return await conn.fetchval("SELECT count(*) FROM telemetry WHERE channel_id = $1 AND time < $2",
                                       cid, base + timedelta(days=1)) == 30
        await wait_for(stored, timeout=10, what="the known rows committed")
    finally:
        await conn.close()
    params = {"start": base.isoformat(), "end": (base + timedelta(minutes=30)).isoformat()}
    r = await stack.client.get(f"/api/v1/channels/{cid}/telemetry", params={**params, "bucket": "10m"})
    assert r.status_code == 200, r.text
    pts = r.json()["points"]
    assert [(p["avg"], p["min"], p["max"], p["n"]) for p in pts] == [
        (4.5, 0.0, 9.0, 10), (14.5, 10.0, 19.0, 10), (24.5, 20.0, 29.0, 10)]
    raw = (await stack.client.get(f"/api/v1/channels/{cid}/telemetry", params=params)).json()["points"]
    assert [p["value"] for p in raw] == [float(i) for i in range(30)]

    # 30 days at 1 s buckets is far beyond the documented limit: 400 names it.
    big = {"start": base.isoformat(), "end": (base + timedelta(days=30)).isoformat(), "bucket": "1s"}
    r = await stack.client.get(f"/api/v1/channels/{cid}/telemetry", params=big)
    assert r.status_code == 400
    body = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert body["limit"] == stack.settings.max_points and str(stack.settings.max_points) in body["detail"]

    assert (await stack.client.get("/api/v1/channels/999999/telemetry")).status_code == 404
    naive = await stack.client.get(f"/api/v1/channels/{cid}/telemetry", params={"start": "2001-01-01T00:00:00"})
    assert naive.status_code == 422 and "offset" in naive.json()["detail"]
    bad_bucket = await stack.client.get(f"/api/v1/channels/{cid}/telemetry", params={"bucket": "soon"})
    assert bad_bucket.status_code == 422 and "soon" in bad_bucket.json()["detail"]


async def test_health_readiness_and_metrics(stack: Stack) -> None:
    assert (await stack.client.get("/healthz")).json() == {"status": "ok"}
    ready = await stack.client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["database"]["ok"] is True
    assert set(body["devices"]) == {"incubator-1", "culture-system-1"}
    metrics = (await stack.client.get("/metrics")).text
    assert "culturectl_ingest_rows_written" in metrics and 'culturectl_device_online{device="incubator-1"}' in metrics
    schema = (await stack.client.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"] and "/api/v1/stream" in schema["paths"]
