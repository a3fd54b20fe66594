"""The operations files without a database: every file well-formed, the alert rules' structure, the proxy set up
for the live stream, the compose file's mounts, ports and replicas, and Grafana's data sources and dashboards
consistent with each other. (tests/db/test_operations_provisioning.py checks the metric names against a running
service and runs every panel's SQL.)"""

from __future__ import annotations

import json
import re

import pytest

from app.main import create_app
from tests import operations_support as ops

_DURATION = re.compile(r"^\d+[smhd]$")


@pytest.mark.parametrize("path", ops.yaml_files(), ids=lambda p: str(p.relative_to(ops.ROOT)))
def test_every_yaml_file_is_well_formed(path: object) -> None:
    assert ops.load_yaml(path) is not None  # type: ignore[arg-type]


@pytest.mark.parametrize("path", sorted(ops.DASHBOARDS.glob("*.json")), ids=lambda p: p.name)
def test_every_dashboard_is_well_formed_with_unique_panel_ids(path: object) -> None:
    board = json.loads(path.read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    assert board["uid"] and board["title"] and board["panels"]
    ids = [p["id"] for p in ops.panels(board)]
    assert len(ids) == len(set(ids))
    for p in ops.panels(board):
        assert p["title"] and p["targets"], p
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]


def test_the_three_dashboards_are_there() -> None:
    titles = {b["title"] for b in ops.dashboards().values()}
    assert titles == {"culturectl: site overview", "culturectl: run telemetry", "culturectl: service health"}
    assert len({b["uid"] for b in ops.dashboards().values()}) == 3


def test_alert_rules_have_the_expected_structure() -> None:
    doc = ops.load_yaml(ops.ALERTS)
    assert set(doc) == {"groups"} and doc["groups"]
    names: list[str] = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"], group
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"Culturectl[A-Z][A-Za-z]+", rule["alert"]), rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            expr = re.sub(r'"[^"]*"', "", rule["expr"])
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), rule["alert"]
            assert "for" not in rule or _DURATION.match(str(rule["for"])), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    wanted = {"CulturectlDeviceOffline", "CulturectlSpoolFilling", "CulturectlSpoolOld", "CulturectlDatabaseDown",
              "CulturectlDeviceWithoutOwner", "CulturectlAlarmFlood", "CulturectlManyHighPriorityAlarms"}
    assert wanted <= set(names)


def test_prometheus_scrapes_both_replicas_and_loads_the_mounted_rules() -> None:
    doc = ops.load_yaml(ops.PROMETHEUS)
    job = next(j for j in doc["scrape_configs"] if j["job_name"] == "culturectl")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = sorted(t for c in job["static_configs"] for t in c["targets"])
    assert targets == ["service-1:8000", "service-2:8000"]
    mounted = {target for service, _, target in ops.mounts() if service == "prometheus"}
    assert set(doc["rule_files"]) <= mounted


def test_the_proxy_streams_sse_unbuffered_to_both_replicas() -> None:
    text = ops.NGINX.read_text(encoding="utf-8")
    upstream = re.search(r"upstream\s+culturectl\s*\{([^}]*)\}", text)
    assert upstream is not None
    assert re.findall(r"server\s+([\w.-]+:\d+)", upstream[1]) == ["service-1:8000", "service-2:8000"]
    stream = ops.nginx_blocks(text)["location = /api/v1/stream"]
    for directive in ("proxy_buffering off;", "proxy_cache off;", "proxy_pass http://culturectl;",
                      "X-Accel-Buffering no"):
        assert directive in stream, directive
    timeout = re.search(r"proxy_read_timeout\s+(\d+)([smhd]);", stream)
    assert timeout is not None and int(timeout[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[timeout[2]] >= 3600
    server = re.sub(r"#[^\n]*", "", text)
    assert "proxy_http_version 1.1;" in server and 'proxy_set_header Connection "";' in server
    for header in ("Host", "X-Forwarded-For", "X-Forwarded-Proto"):
        assert f"proxy_set_header {header} " in server, header
    assert "/api/v1/stream" in create_app().openapi()["paths"]  # the location names the real stream route


def test_every_mounted_file_exists_and_only_loopback_ports_are_published() -> None:
    found = list(ops.mounts())
    assert {s for s, _, _ in found} >= {"proxy", "prometheus", "grafana"}
    for service, source, _ in found:
        assert source.exists(), f"{service} mounts {source.relative_to(ops.ROOT)}, which does not exist"
    for name, service in ops.compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_two_replicas_share_the_key_and_have_their_own_identity() -> None:
    services = ops.compose()["services"]
    envs = [services[n]["environment"] for n in ("service-1", "service-2")]
    assert envs[0]["CULTURECTL_SECRET_KEY"] == envs[1]["CULTURECTL_SECRET_KEY"]
    assert envs[0]["CULTURECTL_DATABASE_URL"] == envs[1]["CULTURECTL_DATABASE_URL"]
    assert envs[0]["CULTURECTL_DEVICES_FILE"] == envs[1]["CULTURECTL_DEVICES_FILE"]
    assert [e["CULTURECTL_REPLICA_ID"] for e in envs] == ["service-1", "service-2"]
    assert [e["CULTURECTL_REPLICA_URL"] for e in envs] == ["http://service-1:8000", "http://service-2:8000"]
    assert "ports" not in services["service-1"] and "ports" not in services["service-2"]  # only via the proxy


def test_grafana_provisioning_points_at_the_mounted_dashboards_and_known_data_sources() -> None:
    grafana_mounts = {source: target for service, source, target in ops.mounts() if service == "grafana"}
    providers = ops.load_yaml(ops.GRAFANA / "provisioning" / "dashboards" / "culturectl.yaml")["providers"]
    assert [p["options"]["path"] for p in providers] == [grafana_mounts[ops.DASHBOARDS.resolve()]]
    sources = ops.load_yaml(ops.GRAFANA / "provisioning" / "datasources" / "culturectl.yaml")["datasources"]
    by_uid = {s["uid"]: s["type"] for s in sources}
    assert by_uid == {"prometheus": "prometheus", "culturectl-db": "grafana-postgresql-datasource"}
    postgres = next(s for s in sources if s["uid"] == "culturectl-db")
    assert postgres["url"].startswith("db:") and postgres["jsonData"]["database"] == "culturectl"
    for name, board in ops.dashboards().items():
        for p in ops.panels(board):
            for t in p["targets"]:
                ds = t.get("datasource") or p["datasource"]
                assert by_uid.get(ds["uid"]) == ds["type"], f"{name}: {p['title']} uses an unknown data source"


def test_the_sql_uses_grafanas_time_macros_and_each_prometheus_expression_names_a_metric() -> None:
    for q in ops.sql():  # the time-indexed tables are read only within the dashboard's time range
        if re.search(r"\bFROM (telemetry\w*|alarm_event)\b", q.text):
            assert "$__timeFilter(" in q.text or "$__timeFrom()" in q.text, q.where
    for q in ops.promql():
        assert ops.metric_names(q.text) or q.text.startswith("up{"), q.where


def test_grafana_macros_become_plain_sql() -> None:
    text = ("SELECT $__timeGroupAlias(t.time, $__interval), avg(v) FROM x t WHERE $__timeFilter(t.time) "
            "AND id = $run AND c IN (${channel:sqlstring}) AND t.time < $__timeTo()")
    got = ops.grafana_to_sql(text, {"run": "1", "channel": "incubator-1.it's"})
    assert "$" not in got
    assert "AS \"time\"" in got and "id = 1" in got and "IN ('incubator-1.it''s')" in got
    assert "(t.time BETWEEN (now() - interval '1 hour') AND now())" in got
