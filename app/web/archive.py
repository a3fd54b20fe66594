"""The runs archive: every run, filtered and paged, each linking to its run page and batch record.

The filters are app.protocol.runs.RunFilter, the one query GET /api/v1/runs answers with too; this module only reads
them from the page's query string (a bad one: 400 naming the parameter, shown above the list) and builds the links.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse

from app.api.deps import INT64_MAX, ConnectionDep, RuntimeDep
from app.api.security import CurrentPrincipal
from app.core.problems import Problem
from app.protocol import runs
from app.web import render

router = render.page_router()

STATUS_WORDS = {"planned": "Planned", "running": "Running", "held": "Held for QA", "completed": "Completed",
                "aborted": "Aborted"}
TEXT_FILTERS = ("code", "recipe", "donor_id", "patient_id", "graft_din", "device")
FILTERS = ("status", *TEXT_FILTERS, "from", "to", "date_of")
PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50


def _cursor(text: str | None, name: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= INT64_MAX:
        raise render.bad_filter(name, f"{text!r} is not a run id")
    return int(text)


def _time(text: str | None, name: str) -> datetime | None:
    try:
        return render.utc_param(text, name)
    except Problem as exc:
        raise render.bad_filter(name, exc.detail.removeprefix(f"{name}: ")) from None


def parse_filters(params: Mapping[str, str]) -> tuple[runs.RunFilter, int]:
    """The page's query string as the API's filters and the page size; 400 naming the first bad parameter."""
    status = params.get("status") or None
    if status is not None and status not in get_args(runs.RunStatus):
        known = ", ".join(get_args(runs.RunStatus))
        raise render.bad_filter("status", f"{status!r} is not a run status; one of {known}")
    date_of = params.get("date_of") or "created"
    if date_of not in ("created", "t0"):
        raise render.bad_filter("date_of", f"{date_of!r}: the date is 'created' or 't0'")
    size = params.get("limit") or str(DEFAULT_PAGE_SIZE)
    if not size.isdigit() or not 1 <= int(size) <= 1000:
        raise render.bad_filter("limit", f"{size!r} is not a page size (1 to 1000)")
    texts = {k: (params.get(k) or "").strip() or None for k in TEXT_FILTERS}
    filters = runs.RunFilter(status=status, **texts, start=_time(params.get("from"), "from"),
                             end=_time(params.get("to"), "to"), date_of=date_of,  # type: ignore[arg-type]
                             before_id=_cursor(params.get("before_id"), "before_id"),
                             after_id=_cursor(params.get("after_id"), "after_id"))
    return filters, int(size)


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    older: str | None  # the query strings of the neighbouring pages, the filters kept
    newer: str | None


def paged(rows: list[dict[str, Any]], filters: runs.RunFilter, query: Mapping[str, str], size: int) -> Page:
    """One page of `rows` (fetched with size + 1, newest first) and the links to the older and newer pages."""
    more = len(rows) > size
    if more:  # the extra row is beyond the page in the direction of travel
        rows = rows[1:] if filters.after_id is not None else rows[:-1]
    base = {**{k: v for k, v in query.items() if v}, "limit": str(size)}
    older = newer = None
    if rows and (filters.after_id is not None or more):
        older = "?" + urlencode({**base, "before_id": rows[-1]["id"]})
    if filters.before_id is not None or (filters.after_id is not None and more):
        newer = "?" + urlencode({**base, "after_id": rows[0]["id"]} if rows else base)
    return Page(rows, older, newer)


def row_view(run: Mapping[str, Any]) -> dict[str, Any]:
    """What a row of the archive shows of a run (API's RunSummary)."""
    record = run.get("record_version")
    return {**run, "status_text": STATUS_WORDS.get(str(run["status"]), str(run["status"])),
            "recipe_text": f"{run['recipe_key']} v{run['recipe_version']}" if run.get("recipe_key") else "—",
            "devices": [d for d in (run.get("incubator"), run.get("culture_system")) if d],
            "record_pdf": None if not record else f"/api/v1/runs/{run['id']}/record/versions/{record}/pdf"}


def _query(request: Request) -> dict[str, str]:
    return {k: request.query_params.get(k, "") for k in FILTERS}


async def _archive(request: Request, conn: ConnectionDep) -> dict[str, Any]:
    query = _query(request)
    try:
        filters, size = parse_filters(request.query_params)
    except Problem as exc:
        return {"problem": exc, "rows": [], "older": None, "newer": None, "query": query, "size": DEFAULT_PAGE_SIZE,
                "query_string": urlencode({k: v for k, v in query.items() if v})}
    page = paged(await runs.list_runs(conn, None, size + 1, filters), filters, query, size)
    return {"problem": None, "rows": [row_view(r) for r in page.rows], "older": page.older, "newer": page.newer,
            "query": query, "size": size, "query_string": request.url.query}


@router.get("/runs", response_class=HTMLResponse)
async def runs_archive(request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                       runtime: RuntimeDep) -> HTMLResponse:
    ctx = await _archive(request, conn)
    response = render.page(request, "runs.html", principal, "runs", statuses=STATUS_WORDS, page_sizes=PAGE_SIZES,
                           device_names=[d.name for d in runtime.devices], **ctx)
    if ctx["problem"] is not None:
        response.status_code = ctx["problem"].status
    return response


@router.get("/fragments/archive", response_class=HTMLResponse)
async def archive_fragment(request: Request, principal: CurrentPrincipal, conn: ConnectionDep) -> HTMLResponse:
    """The archive's table again (the live stream said a run changed), for the same query."""
    return render.fragment(request, "fragments/runs_table.html", **await _archive(request, conn))
