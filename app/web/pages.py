"""The operator dashboard's pages and the HTML fragments they re-fetch when the live stream says something changed.

Pages are read-only views rendered with the same protocol, alarm and service functions the API uses; every action
(login, logout, step posts with signatures, alarm acknowledge/shelve) is a fetch to the JSON API from the page,
so the rules live in one place. Pages need the session cookie: without one they redirect (303) to /login.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import asyncpg
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.api.deps import ConnectionDep, RuntimeDep
from app.api.routes import alarms as alarms_api
from app.api.routes import audit as audit_api
from app.api.security import CurrentPrincipal
from app.core.problems import Problem
from app.ingest import history
from app.protocol import deviations, runs
from app.records import record_issue, record_render
from app.runtime import Runtime
from app.web import archive, equipment, people, qa, recipe_pages, render, views

ACTIVE_RUN_STATES = ("planned", "running", "held")
router = render.page_router()
public_router = APIRouter(include_in_schema=False)
# The other pages' modules, installed with these (each declares its routes on render.page_router()).
PAGE_MODULES: tuple[Any, ...] = (archive, qa, equipment, recipe_pages, people)


def install(app: FastAPI) -> None:
    """Serve the static files and the pages; turn page errors into HTML (401: a redirect to /login)."""
    app.mount("/static", StaticFiles(directory=render.HERE / "static"), name="static")
    app.include_router(public_router)
    app.include_router(router)
    for module in PAGE_MODULES:
        app.include_router(module.router)
    api_handler = app.exception_handlers[Problem]

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        if not getattr(request.state, "web_page", False):
            response = api_handler(request, exc)
            return await response if inspect.isawaitable(response) else response
        if exc.status == 401 or exc.kind == "password-expired":  # log in (again), then change the password
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.headers.get("HX-Request"):  # a fragment: send the whole page to the login
                page = request.headers.get("HX-Current-URL", "/")
                return Response(status_code=401, headers={"HX-Redirect": f"/login?next={quote(_local(page))}"})
            return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        return render.TEMPLATES.TemplateResponse(request, "error.html", {
            "status": exc.status, "title": exc.title, "detail": exc.detail,
            "principal": getattr(request.state, "principal", None), "page": "error", "sse_kinds": "device_state",
            **render.clock_context(request)},
            status_code=exc.status, headers=render.NO_STORE)

    app.add_exception_handler(Problem, on_problem)


def _local(url: str) -> str:
    """The path and query of a URL of this site (never another origin)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = parts.path if parts.path.startswith("/") and not parts.path.startswith("//") else "/"
    return path + (f"?{parts.query}" if parts.query else "")


# ---- data, loaded as the API loads it -------------------------------------------------------------------------

def _device_states(runtime: Runtime) -> list[dict[str, Any]]:
    hub = runtime.hub
    out = []
    for d in runtime.devices:
        status = hub.status.get(d.name) if hub else None
        checks = status.checks if status else []
        off = [f"{c.point}: {'; '.join(c.problems)}" for c in checks if not c.ok]
        out.append({"name": d.name, "kind": d.kind, "state": status.state.value if status else "stopped",
                    "since": status.since if status else None,
                    "profile": f"{d.profile_spec.name} {d.profile_spec.version}",
                    "check": None if not checks else ("ok" if not off else "mismatch"), "off_profile": off})
    return out


async def _run_cards(conn: asyncpg.Connection, runtime: Runtime) -> list[dict[str, Any]]:
    now = runtime.clock.now()
    rows = [r for r in await runs.list_runs(conn, None, 200) if r["status"] in ACTIVE_RUN_STATES]
    alarms = render.alarm_views(runtime)
    cards = []
    for row in sorted(rows, key=lambda r: r["id"]):
        run = await runs.run_view(conn, int(row["id"]), now)
        devices = _run_devices(run)
        cards.append({**_card(run, now), "alarms": views.alarm_summary(a for a in alarms if a["device"] in devices)})
    return cards


def _card(run: dict[str, Any], now: datetime) -> dict[str, Any]:
    titles = {s["key"]: s["title"] for s in run.get("schedule") or []}
    nxt = run.get("next_due")
    label, until = views.countdown_target(nxt)
    return {"run": run, "day": views.run_day(run["status"], views.parse_time(run.get("t0")), now),
            "next": None if nxt is None else {**nxt, "title": titles.get(nxt["key"], nxt["key"]),
                                               "window_text": views.window_text(nxt["window"])},
            "countdown_label": label, "countdown_until": until, "dose": views.dose_status(run.get("dose"))}


async def _calibrations(conn: asyncpg.Connection, runtime: Runtime, run_id: int, now: datetime) -> list[Any]:
    return await runs.run_calibrations(conn, run_id, now, runtime.settings.zone(),
                                       runtime.settings.calibration_warn_days)


def _run_devices(run: dict[str, Any]) -> set[str]:
    return {d for d in (run.get("incubator"), run.get("culture_system")) if d}


# ---- pages -----------------------------------------------------------------------------------------------------

@public_router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next_url: Annotated[str, Query(alias="next")] = "/") -> HTMLResponse:
    return render.page(request, "login.html", None, "login", next=_local(next_url))


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                   runtime: RuntimeDep) -> HTMLResponse:
    return render.page(request, "overview.html", principal, "overview", cards=await _run_cards(conn, runtime),
                 groups=views.group_alarms(render.alarm_views(runtime)), devices=_device_states(runtime))


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(run_id: int, request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                   runtime: RuntimeDep) -> HTMLResponse:
    now = runtime.clock.now()
    run, recipe = await render.run_and_recipe(conn, run_id, now)
    charts = await render.run_charts(conn, runtime, run, recipe)
    since = views.parse_time(views.chart_range(run, now)["start"])
    first_data = None if since is None else await history.first_reading(
        conn, [c["channel_id"] for c in charts if c["channel_id"]], since)
    devices = _run_devices(run)
    return render.page(request, "run.html", principal, "run", run=run, card=_card(run, now),
                 timeline=views.timeline(run.get("schedule") or [], now), forms=views.step_forms(recipe), charts=charts,
                 chart_json=render.script_json({"charts": charts, "range": views.chart_range(run, now, first_data)}),
                 groups=views.group_alarms(render.alarm_views(runtime, devices)),
                 empty_text="No active alarms on this run's devices", devices=[d for d in _device_states(runtime)
                                                                  if d["name"] in devices],
                 deviations=await deviations.list_deviations(conn, run_id, None, 200),
                 calibrations=await _calibrations(conn, runtime, run_id, now),
                 sse_channels=",".join(c["channel"] for c in charts))


@router.get("/runs/{run_id}/record", response_class=HTMLResponse)
async def record_page(run_id: int, request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                      runtime: RuntimeDep) -> HTMLResponse:
    """The batch record, the current draft, printable (the PDF renders the same template standalone)."""
    record = await record_issue.draft(conn, run_id, runtime.build_record)
    # the charts' SVG and a draft's content hash are some 100 ms of CPU for a 7-day run: off the loop
    context = await asyncio.to_thread(functools.partial(record_render.record_context, record, for_pdf=False))
    return render.page(request, record_render.TEMPLATE, principal, "record", layout="base.html", **context)


@router.get("/alarms", response_class=HTMLResponse)
async def alarms_page(
    request: Request, principal: CurrentPrincipal, conn: ConnectionDep, runtime: RuntimeDep,
    device: Annotated[str | None, Query()] = None,
    channel: Annotated[str | None, Query()] = None,
    priority: Annotated[str | None, Query()] = None,
    since: Annotated[str | None, Query()] = None,
    until: Annotated[str | None, Query()] = None,
    before_id: Annotated[int | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> HTMLResponse:
    filters = {"device": device or None, "channel": channel or None, "priority": priority or None,
               "since": since or None, "until": until or None}
    prio = filters["priority"] if filters["priority"] in views.PRIORITIES else None
    events = await alarms_api.history(
        principal, conn, runtime, device=filters["device"], channel=filters["channel"], priority=prio,  # type: ignore[arg-type]
        since=render.utc_param(filters["since"], "since"), until=render.utc_param(filters["until"], "until"),
        limit=limit, before_id=before_id)
    older = None
    if len(events) == limit:
        older = "?" + urlencode({**{k: v for k, v in filters.items() if v}, "before_id": events[-1]["id"],
                                 "limit": limit})
    return render.page(request, "alarms.html", principal, "alarms",
                       groups=views.group_alarms(render.alarm_views(runtime)), events=events, filters=filters,
                       older=older, devices=_device_states(runtime), priorities=views.PRIORITIES)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
    entity_type: Annotated[str | None, Query()] = None,
    entity_id: Annotated[str | None, Query()] = None,
    actor: Annotated[str | None, Query()] = None,
    action: Annotated[str | None, Query()] = None,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    after_seq: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=audit_api.MAX_LIMIT)] = 100,
) -> HTMLResponse:
    filters = {"entity_type": entity_type or None, "entity_id": entity_id or None, "actor": actor or None,
               "action": action or None, "from": start or None, "to": end or None}
    page = await audit_api.list_audit(
        principal, conn, entity_type=filters["entity_type"], entity_id=filters["entity_id"], actor=filters["actor"],
        action=filters["action"], start=render.utc_param(filters["from"], "from"),
        end=render.utc_param(filters["to"], "to"), after_seq=after_seq, limit=limit)
    query = {k: v for k, v in filters.items() if v}
    nxt = None if page.next_after_seq is None else "?" + urlencode(
        {**query, "after_seq": page.next_after_seq, "limit": limit})
    first = "?" + urlencode({**query, "limit": limit}) if after_seq else None
    return render.page(request, "audit.html", principal, "audit", items=page.items, filters=filters, next_page=nxt,
                 first_page=first, after_seq=after_seq)


# ---- fragments (re-fetched on stream events) -------------------------------------------------------------------

@router.get("/fragments/runs", response_class=HTMLResponse)
async def runs_fragment(request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                        runtime: RuntimeDep) -> HTMLResponse:
    return render.fragment(request, "fragments/run_cards.html", cards=await _run_cards(conn, runtime))


@router.get("/fragments/alarms", response_class=HTMLResponse)
async def alarms_fragment(request: Request, principal: CurrentPrincipal, runtime: RuntimeDep,
                          device: Annotated[list[str] | None, Query()] = None) -> HTMLResponse:
    alarms = render.alarm_views(runtime, set(device) if device else None)
    return render.fragment(request, "fragments/alarm_groups.html", groups=views.group_alarms(alarms),
                     empty_text="No active alarms" + (" on this run's devices" if device else ""))


@router.get("/runs/{run_id}/fragments/timeline", response_class=HTMLResponse)
async def timeline_fragment(run_id: int, request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                            runtime: RuntimeDep) -> HTMLResponse:
    now = runtime.clock.now()
    run = await runs.run_view(conn, run_id, now)
    return render.fragment(request, "fragments/timeline.html", run=run, card=_card(run, now),
                     timeline=views.timeline(run.get("schedule") or [], now))


@router.get("/runs/{run_id}/fragments/record", response_class=HTMLResponse)
async def record_fragment(run_id: int, request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                          runtime: RuntimeDep) -> HTMLResponse:
    now = runtime.clock.now()
    run = await runs.run_view(conn, run_id, now)
    return render.fragment(request, "fragments/run_record.html", run=run, card=_card(run, now),
                     deviations=await deviations.list_deviations(conn, run_id, None, 200),
                     calibrations=await _calibrations(conn, runtime, run_id, now))
