"""The operations files (docs/operations/: proxy, Prometheus, Grafana; docker-compose.yml) read for the tests: the
PromQL expressions and the SQL they hold, the metric names the PromQL uses, and Grafana's macros turned into SQL
PostgreSQL runs as is."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "docs" / "operations"
COMPOSE = ROOT / "docker-compose.yml"
NGINX = OPS / "nginx.conf"
PROMETHEUS = OPS / "prometheus" / "prometheus.yml"
ALERTS = OPS / "prometheus" / "alerts.yml"
GRAFANA = OPS / "grafana"
DASHBOARDS = GRAFANA / "dashboards"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def yaml_files() -> list[Path]:
    return sorted([*OPS.rglob("*.yml"), *OPS.rglob("*.yaml"), COMPOSE])


def dashboards() -> dict[str, dict[str, Any]]:
    """file name -> dashboard JSON."""
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def _kind(datasource: Any) -> str:
    return str((datasource or {}).get("type", "")) if isinstance(datasource, dict) else ""


@dataclass(frozen=True)
class Query:
    where: str  # "<file>: <panel title>" or "<file>: variable <name>" or "alerts.yml: <alert>"
    text: str


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board.get("panels", []):
        yield p
        yield from p.get("panels", [])  # panels inside a collapsed row


def promql() -> list[Query]:
    """Every PromQL expression: the alert rules and the dashboards' Prometheus targets."""
    out = [Query(f"alerts.yml: {r['alert']}", str(r["expr"]))
           for g in load_yaml(ALERTS)["groups"] for r in g["rules"]]
    for name, board in dashboards().items():
        for p in panels(board):
            for t in p.get("targets", []):
                if _kind(t.get("datasource") or p.get("datasource")) == "prometheus":
                    out.append(Query(f"{name}: {p['title']}", str(t["expr"])))
    return out


def sql() -> list[Query]:
    """Every SQL statement of the dashboards: panel targets and template variables."""
    out: list[Query] = []
    for name, board in dashboards().items():
        for v in board.get("templating", {}).get("list", []):
            if _kind(v.get("datasource")) == "grafana-postgresql-datasource":
                query = v["query"] if isinstance(v["query"], str) else v["query"]["rawSql"]
                out.append(Query(f"{name}: variable {v['name']}", str(query)))
        for p in panels(board):
            for t in p.get("targets", []):
                if _kind(t.get("datasource") or p.get("datasource")) == "grafana-postgresql-datasource":
                    out.append(Query(f"{name}: {p['title']}", str(t["rawSql"])))
    return out


_NAME = re.compile(r"\b(culturectl_[a-z0-9_]+)\b")


def metric_names(expr: str) -> set[str]:
    """The culturectl metric names an expression reads (label values in quotes are not names)."""
    return set(_NAME.findall(re.sub(r'"[^"]*"', '""', expr)))


# A Grafana time range of one hour ending now; intervals of 5 minutes.
_FROM = "(now() - interval '1 hour')"
_TO = "now()"
_GROUP = "to_timestamp(floor(extract(epoch FROM {col}) / 300) * 300)"


def grafana_to_sql(text: str, variables: dict[str, str]) -> str:
    """Grafana's PostgreSQL macros and the dashboard's variables replaced as Grafana would for one request."""
    s = re.sub(r"\$__timeFilter\(\s*([^)]+?)\s*\)", lambda m: f"({m[1]} BETWEEN {_FROM} AND {_TO})", text)
    s = re.sub(r"\$__timeGroupAlias\(\s*([^,)]+?)\s*,[^)]*\)", lambda m: _GROUP.format(col=m[1]) + ' AS "time"', s)
    s = re.sub(r"\$__timeGroup\(\s*([^,)]+?)\s*,[^)]*\)", lambda m: _GROUP.format(col=m[1]), s)
    s = s.replace("$__timeFrom()", _FROM).replace("$__timeTo()", _TO)
    for name, value in variables.items():
        quoted = "'" + value.replace("'", "''") + "'"
        s = s.replace(f"${{{name}:sqlstring}}", quoted)
        s = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, s)
    return s


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def mounts() -> Iterator[tuple[str, Path, str]]:
    """(service, host path, container path) of every bind mount of a repository file in docker-compose.yml."""
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            spec = volume if isinstance(volume, str) else f"{volume['source']}:{volume['target']}"
            source, _, rest = spec.partition(":")
            if source.startswith("."):
                yield name, (ROOT / source).resolve(), rest.split(":", 1)[0]


def nginx_blocks(text: str) -> dict[str, str]:
    """`location ...` heading -> the directives of that block (nginx.conf has no nested locations)."""
    text = re.sub(r"#[^\n]*", "", text)
    return {m[1].strip(): m[2] for m in re.finditer(r"(location[^{]+)\{([^}]*)\}", text)}
