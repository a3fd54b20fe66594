"""How every dashboard page and fragment is rendered: the templates, the page context, the routers.

Each page module (app/web/pages.py, archive.py, qa.py, equipment.py, recipe_pages.py, people.py) declares its
routes on `page_router()` and renders with `page()` and `fragment()`; app/web/pages.py installs them all. Actions on
a page are forms the browser sends to the JSON API (app/web/static/forms.js), so the rules live in the API alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.api.headers import NONCE_STATE
from app.auth.inactivity import heartbeat_seconds
from app.auth.policy import access_for
from app.auth.principal import Principal
from app.core.problems import Problem
from app.devices import registry
from app.protocol import recipes, runs
from app.protocol.recipe import Recipe
from app.runtime import Runtime
from app.web import views

HERE = Path(__file__).resolve().parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.filters["utc"] = views.fmt_time
TEMPLATES.env.filters["num"] = views.fmt_number
TEMPLATES.env.globals.update(status_text=views.alarm_status_text, priority_icons=views.PRIORITY_ICONS)
# Every page and fragment: never kept by the browser, so Back on a locked screen cannot show one from its cache
# (the page asks the server again, and the inactivity lock redirects it to the login).
NO_STORE = {"Cache-Control": "no-store"}
# What each page listens to on its one SSE connection.
PAGE_KINDS = {
    "overview": "alarm,device_state,step,run,deviation",
    "run": "reading,alarm,device_state,step,run,deviation",
    "alarms": "alarm,device_state",
    "audit": "device_state,alarm",  # alarm: the title's count
    "record": "alarm",  # the title's count; the record itself is a snapshot (reload for a newer one)
    "runs": "alarm,run,deviation",
    "deviations": "alarm,deviation",
    "deviation": "alarm,deviation,reading",
    "devices": "alarm,device_state",
    "device": "alarm,device_state,reading",
    "recipes": "alarm",
    "people": "alarm",
    "notifications": "alarm",
}


def _mark_page(request: Request) -> None:
    """Before the credentials are checked: a 401 of this request becomes a redirect to the login page."""
    request.state.web_page = True


def page_router() -> APIRouter:
    """A router of dashboard pages: not in the OpenAPI document, and a missing login redirects to /login."""
    return APIRouter(include_in_schema=False, dependencies=[Depends(_mark_page)])


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def clock_context(request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    clock = runtime.clock
    limit_s = runtime.settings.inactivity_minutes * 60  # the inactivity lock (app/web/static/session.js)
    return {"clock_now": clock.now().isoformat(), "clock_scale": clock.scale,
            "session_ttl": runtime.settings.token_ttl_minutes * 60, "inactivity_s": limit_s,
            "inactivity_heartbeat_s": heartbeat_seconds(limit_s) if limit_s > 0 else 0,
            "inactivity_keep_live": runtime.settings.inactivity_keep_live}


def alarm_views(runtime: Runtime, devices: set[str] | None = None) -> list[dict[str, Any]]:
    """The active alarms as the API shows them, of `devices` only when given."""
    if runtime.alarms is None:
        return []
    out = [a.view() for a in runtime.alarms.active()]
    return [a for a in out if devices is None or a["device"] in devices]


async def run_charts(conn: asyncpg.Connection, runtime: Runtime, run: Mapping[str, Any],
                     recipe: Recipe | None) -> list[dict[str, Any]]:
    """The charts of a run (views.chart_specs): its devices' points by role, with their alarm limits and the
    recipe's excursion bands; the run page's and a deviation's page's."""
    units, roles = await registry.channel_units_and_roles(conn)
    limits: dict[str, dict[str, float]] = {}
    if runtime.alarms is not None:
        for key in units:
            alarm = runtime.alarms.alarms.get(f"{key}:limit")
            if alarm is not None:
                limits[key] = views.limit_bands(alarm.defn.model_dump(mode="json"))
    return views.chart_specs(run, runtime.channel_ids, units, limits, recipe, roles)


def page(request: Request, name: str, principal: Principal | None, page_name: str, **ctx: Any) -> HTMLResponse:
    # the title counts the alarms waiting for acknowledgement; the page keeps it current from its `alarm` events
    unack = views.unacknowledged(alarm_views(runtime_of(request))) if principal is not None else {}
    return TEMPLATES.TemplateResponse(request, name, {
        "principal": principal, "page": page_name, "sse_kinds": PAGE_KINDS.get(page_name, ""),
        **clock_context(request), "unack_count": len(unack), "unack_json": json.dumps(unack, sort_keys=True),
        "csp_nonce": getattr(request.state, NONCE_STATE, ""), **ctx},  # for a <style> element (the record's)
        headers=NO_STORE)


def fragment(request: Request, name: str, **ctx: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, {**clock_context(request), **ctx}, headers=NO_STORE)


def script_json(data: Any) -> str:
    """JSON to embed in a <script> element: no "</" can end it early."""
    return json.dumps(data).replace("</", "<\\/")


def bad_filter(name: str, detail: str) -> Problem:
    """A list page's query parameter that is none (400 naming it; the page shows it above the list)."""
    return Problem(400, "invalid-filter", "Invalid filter", f"{name}: {detail}", rule="invalid_filter", parameter=name)


def may(principal: Principal, method: str, path: str) -> bool:
    """Whether the policy lets `principal` call the API route (`path` as declared): a page shows a form only then."""
    access = access_for(method, path)
    return access is not None and access.allows(principal)


def who_may(method: str, path: str) -> str:
    """Who the policy lets call the API route, in words (a page says so where it shows no form)."""
    access = access_for(method, path)
    return "nobody" if access is None else access.describe()


async def run_and_recipe(conn: asyncpg.Connection, run_id: int, now: datetime) -> tuple[dict[str, Any], Recipe | None]:
    """A run as the API shows it, and its recipe (None for a run without one)."""
    run = await runs.run_view(conn, run_id, now)
    recipe = None
    if run.get("recipe"):
        recipe = recipes.recipe_of(await recipes.recipe_row(conn, int(run["recipe"]["id"])))
    return run, recipe


def utc_param(text: str | None, name: str) -> datetime | None:
    """A time from a filter form (datetime-local, read as UTC) or with an offset."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(400, "invalid-time", "Invalid time",
                      f"{name}: {text!r} is not a time; use YYYY-MM-DDTHH:MM (UTC)") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
