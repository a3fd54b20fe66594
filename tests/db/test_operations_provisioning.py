"""The operations files against the real thing: every metric name the alert rules and the dashboards use is in the
/metrics answer of a running service, and every SQL statement of the Grafana dashboards runs on a migrated database
(read-only, rolled back), with Grafana's macros and the dashboards' variables filled in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import db
from tests import operations_support as ops
from tests.api.conftest import running_service

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


@pytest.fixture(scope="module")
async def exposed(db_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every series name a running service exposes (families without samples included), after a few requests."""
    async with running_service(db_dsn, Path(tmp_path_factory.mktemp("ops")), engine_enabled=True) as svc:
        assert (await svc.client.get("/healthz")).status_code == 200
        assert (await svc.client.get("/api/v1/runs/1")).status_code == 401
        text = (await svc.client.get("/metrics")).text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        names.update(s.name for s in family.samples)
    assert "culturectl_http_requests_total" in names  # the parse found the service's metrics
    return names


def test_every_metric_the_alerts_and_dashboards_use_is_exposed(exposed: set[str]) -> None:
    missing = {f"{q.where}: {name}" for q in ops.promql() for name in ops.metric_names(q.text) if name not in exposed}
    assert missing == set()


def test_every_new_metric_is_documented(exposed: set[str]) -> None:
    doc = (ops.ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    used = {name for q in ops.promql() for name in ops.metric_names(q.text)}
    undocumented = sorted(n for n in used if f"`{n}" not in doc and f"`{_family(n)}" not in doc)
    assert undocumented == []


def _family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_total"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


@pytest.fixture(scope="module")
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await db.connect(db_dsn)
    try:
        yield c
    finally:
        await c.close()


VARIABLES = {"run": "1", "channel": "incubator-1.temperature"}


@pytest.mark.parametrize("query", ops.sql(), ids=lambda q: q.where)
async def test_every_panel_sql_runs_on_the_migrated_schema(conn: asyncpg.Connection, query: ops.Query) -> None:
    text = ops.grafana_to_sql(query.text, VARIABLES)
    assert "$" not in text, f"{query.where}: a macro or variable the test does not know is left: {text}"
    tr = conn.transaction(readonly=True)  # what a read-only Grafana role may do
    await tr.start()
    try:
        await conn.fetch(text)
    except asyncpg.PostgresError as exc:
        pytest.fail(f"{query.where}: {type(exc).__name__}: {exc}\n{text}")
    finally:
        await tr.rollback()


async def test_the_run_channel_panel_draws_the_mean_and_the_runs_band(conn: asyncpg.Connection) -> None:
    board = ops.dashboards()["run-telemetry.json"]
    panel = next(p for p in ops.panels(board) if p.get("repeat") == "channel")
    tr = conn.transaction()
    await tr.start()
    try:
        device = await conn.fetchval("INSERT INTO device (name, kind, protocol, endpoint) VALUES "
                                     "('ops-incubator', 'incubator', 'opcua', 'opc.tcp://x') RETURNING id")
        channel = await conn.fetchval("INSERT INTO channel (device_id, name, unit, kind) VALUES "
                                      "($1, 'temperature', 'C', 'analog') RETURNING id", device)
        run = await conn.fetchval("INSERT INTO culture_run (code, status, incubator_device_id, t0) VALUES "
                                  "('OPS-1', 'running', $1, now() - interval '2 hours') RETURNING id", device)
        await conn.execute("INSERT INTO excursion (run_id, channel, unit, band_low, band_high, updated_at) "
                           "VALUES ($1, 'ops-incubator.temperature', 'C', 36.0, 38.0, now())", run)
        at = await conn.fetchval("SELECT date_bin('5 minutes', now() - interval '20 minutes', "
                                 "TIMESTAMPTZ '2000-01-01 00:00:00+00')")
        await conn.executemany("INSERT INTO telemetry (time, channel_id, value, quality) VALUES ($1, $2, $3, 0)",
                               [(at, channel, 36.8), (at + timedelta(seconds=1), channel, 37.2)])
        if await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'telemetry_5m'") == "r":
            await conn.execute("INSERT INTO telemetry_5m (channel_id, bucket, n, sum, min, max) "
                               "VALUES ($1, $2, 2, 74.0, 36.8, 37.2)", channel, at)
        text = ops.grafana_to_sql(panel["targets"][0]["rawSql"],
                                  {"run": str(run), "channel": "ops-incubator.temperature"})
        rows = [dict(r) for r in await conn.fetch(text)]
        other = await conn.fetch(ops.grafana_to_sql(panel["targets"][0]["rawSql"],
                                                    {"run": str(run + 1), "channel": "ops-incubator.temperature"}))
    finally:
        await tr.rollback()
    assert rows == [{"time": at, "mean": pytest.approx(37.0), "min": 36.8, "max": 37.2,
                     "band_low": 36.0, "band_high": 38.0}]
    assert other == []  # another run's panel does not show this run's devices
