"""QA's deviations: the work list (open first, by age and severity) and a page per deviation, signed to close.

The list is GET /api/v1/deviations in its work order (the route function itself); a deviation's page shows what
GET /api/v1/deviations/{id} does, with its run and the run's charts around the event. Commenting and closing are
forms to POST /api/v1/deviations/{id}/comments and /close (app/web/static/forms.js): the API checks and audits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse

from app.api.deps import ConnectionDep, RecordId, RuntimeDep
from app.api.routes import deviations as deviations_api
from app.api.security import CurrentPrincipal
from app.auth.policy import V1
from app.auth.principal import Principal
from app.core.problems import Problem
from app.protocol import deviations
from app.records import signatures
from app.web import render, views
from app.web.archive import STATUS_WORDS

router = render.page_router()

FILTERS = ("status", "run", "severity", "rule")
PAGE_SIZE = 50
CHART_HOURS = 6  # the deviation page's charts: this long before and after the deviation opened
CLASSIFICATIONS = (("minor", "minor"), ("major", "major"), ("critical", "critical"))


def parse_filters(params: Mapping[str, str]) -> dict[str, Any]:
    """The work list's query string as the API route's arguments; 400 naming the first bad parameter."""
    status = params.get("status") or None
    if status not in (None, "open", "closed"):
        raise render.bad_filter("status", f"{status!r}: a deviation is 'open' or 'closed'")
    out: dict[str, Any] = {"status": status, "run_code": (params.get("run") or "").strip() or None,
                           "severity": (params.get("severity") or "").strip() or None,
                           "rule": (params.get("rule") or "").strip() or None, "limit": PAGE_SIZE,
                           "after": (params.get("after") or "").strip() or None}
    size = params.get("limit") or ""
    if size and (not size.isdigit() or not 1 <= int(size) <= 1000):
        raise render.bad_filter("limit", f"{size!r} is not a page size (1 to 1000)")
    if size:
        out["limit"] = int(size)
    if out["after"] is not None:
        try:
            deviations.parse_work_cursor(out["after"])
        except Problem as exc:
            raise render.bad_filter("after", exc.detail.removeprefix("after: ")) from None
    return out


def age_text(opened: str | datetime | None, now: datetime) -> str:
    """How long a deviation has been open, in days and hours (minutes under an hour)."""
    t = views.parse_time(opened)
    if t is None:
        return ""
    minutes = max(0, int((now - t).total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    if days:
        return f"{days} d {rest // 60} h"
    return f"{rest // 60} h {rest % 60} min" if rest >= 60 else f"{rest} min"


def fact_items(facts: Any) -> list[tuple[str, str]]:
    """A deviation's facts as label and text: one row per key, nested values as indented JSON."""
    if facts is None:
        return []
    if not isinstance(facts, Mapping):
        return [("facts", json.dumps(facts, indent=1, sort_keys=True))]
    out = []
    for key, value in facts.items():
        text = json.dumps(value, indent=1, sort_keys=True) if isinstance(value, (Mapping, list)) else (
            "—" if value is None else str(value))
        out.append((str(key).replace("_", " "), text))
    return out


def relevant_charts(charts: Sequence[Mapping[str, Any]], facts: Any) -> list[Mapping[str, Any]]:
    """The charts of the channel the deviation names (or its device's), else all of the run's."""
    named = facts if isinstance(facts, Mapping) else {}
    channel, device = named.get("channel"), named.get("device")
    picked = [c for c in charts if channel is not None and c["channel"] == channel]
    if not picked and device is not None:
        picked = [c for c in charts if str(c["channel"]).startswith(f"{device}.")]
    return picked or list(charts)


def chart_window(opened: str | datetime, now: datetime, hours: int = CHART_HOURS) -> dict[str, Any]:
    """opened ± hours, not past now; `fixed` when it ends before now (the charts then do not follow live)."""
    t = views.parse_time(opened)
    assert t is not None
    end = t + timedelta(hours=hours)
    return {"start": (t - timedelta(hours=hours)).isoformat(), "end": min(end, now).isoformat(), "fixed": end < now}


def _allowed(principal: Principal, action: str) -> bool:
    return render.may(principal, "POST", f"{V1}/deviations/{{deviation_id}}/{action}")


async def _work_list(request: Request, principal: Principal, conn: ConnectionDep, now: datetime) -> dict[str, Any]:
    query = {k: request.query_params.get(k, "") for k in FILTERS}
    kept = {k: v for k, v in query.items() if v}
    try:
        args = parse_filters(request.query_params)
    except Problem as exc:
        return {"problem": exc, "rows": [], "next_page": None, "first_page": None, "query": query,
                "query_string": urlencode(kept)}
    limit = args.pop("limit")
    rows = await deviations_api.list_deviations(principal, conn, limit=limit + 1, order="work", **args)
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = "?" + urlencode({**kept, "after": rows[-1]["work_cursor"], "limit": limit})
    first = "?" + urlencode({**kept, "limit": limit}) if args["after"] is not None else None
    for r in rows:
        r["age"] = age_text(r["opened_at"], now) if r["status"] == "open" else ""
    return {"problem": None, "rows": rows, "next_page": nxt, "first_page": first, "query": query,
            "query_string": request.url.query}


@router.get("/deviations", response_class=HTMLResponse)
async def deviations_page(request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                          runtime: RuntimeDep) -> HTMLResponse:
    ctx = await _work_list(request, principal, conn, runtime.clock.now())
    response = render.page(request, "deviations.html", principal, "deviations", **ctx)
    if ctx["problem"] is not None:
        response.status_code = ctx["problem"].status
    return response


@router.get("/fragments/deviations", response_class=HTMLResponse)
async def deviations_fragment(request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                              runtime: RuntimeDep) -> HTMLResponse:
    """The work list's table again (the live stream said a deviation changed), for the same query."""
    ctx = await _work_list(request, principal, conn, runtime.clock.now())
    return render.fragment(request, "fragments/deviation_rows.html", **ctx)


@router.get("/deviations/{deviation_id}", response_class=HTMLResponse)
async def deviation_page(deviation_id: RecordId, request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                         runtime: RuntimeDep) -> HTMLResponse:
    now = runtime.clock.now()
    dev = await deviations_api.get_deviation(deviation_id, principal, conn)
    run, recipe = await render.run_and_recipe(conn, int(dev["run_id"]), now)
    charts = relevant_charts(await render.run_charts(conn, runtime, run, recipe), dev.get("facts"))
    window = chart_window(dev["opened_at"], now)
    signed = [s.model_dump(mode="json") for s in
              await signatures.list_signatures(conn, "deviation", str(deviation_id))]
    return render.page(request, "deviation.html", principal, "deviation", dev=dev, run=run,
                       run_status=STATUS_WORDS.get(str(run["status"]), run["status"]), facts=fact_items(dev["facts"]),
                       charts=charts, chart_json=render.script_json({"charts": charts, "range": window}),
                       sse_channels=",".join(str(c["channel"]) for c in charts), signatures=signed,
                       may_close=_allowed(principal, "close"), may_comment=_allowed(principal, "comments"),
                       classifications=CLASSIFICATIONS, chart_hours=CHART_HOURS)
