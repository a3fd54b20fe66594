"""Remote acknowledgement: the page a notification's single-use link opens.

The link names one delivery (to one person): the page shows the alarm and asks for that person's password and a
comment, so the acknowledgement stays an attributable act (a wrong password counts toward the lockout). The
acknowledgement goes through the alarm service like one from the dashboard (journal and audit record
`alarm.acknowledge`), and the link is spent in the same transaction; the journal notes which link was used. Then
the page shows the alarm's trend. A used, expired or unknown link acknowledges nothing, and neither does the link
of an earlier activation of the same alarm; such a page shows why, not the alarm. Three wrong passwords end a
link.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.alarms.service import AckLink
from app.api.deps import ConnectionDep
from app.api.security import client_address
from app.auth import throttle, users
from app.auth.policy import access_for
from app.core.problems import Problem
from app.ingest import history
from app.notify import outbox
from app.runtime import Runtime

router = APIRouter(include_in_schema=False)
ACK_ROUTE = ("POST", "/api/v1/alarms/{alarm_id}/acknowledge")  # who may acknowledge from the link: as in the API
TREND_HOURS = 6.0
MAX_FORM = 8192
LINK_TRIES = 3  # wrong passwords through one link before it ends (the account's lockout counts them too)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _render(request: Request, status: int, **ctx: Any) -> HTMLResponse:
    from app.web.render import TEMPLATES, clock_context

    return TEMPLATES.TemplateResponse(request, "ack.html", {"principal": None, "page": "ack", "sse_kinds": "",
                                                            **clock_context(request), **ctx}, status_code=status,
                                      headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


async def _link(request: Request, conn: asyncpg.Connection, token: str) -> tuple[asyncpg.Record | None, str | None]:
    """The link's delivery, and why it cannot be used (None: it can)."""
    row = await outbox.by_token(conn, token) if 20 <= len(token) <= 100 else None
    if row is None:
        return None, "This acknowledgement link is not valid."
    now = _runtime(request).clock.now()
    if row["ack_used_at"] is not None:
        return row, "This link was used already: each link acknowledges once."
    if row["ack_expires_at"] is None or row["ack_expires_at"] <= now:
        return row, "This link has expired. Acknowledge from the dashboard, or from a newer notification."
    if row["superseded"]:  # never acknowledge an activation its recipient was not told of
        return row, "This link belongs to an earlier activation of this alarm: use the newest notification."
    return row, None


def _alarm(request: Request, alarm_id: str) -> dict[str, Any]:
    svc = _runtime(request).alarms
    alarm = svc.alarms.get(alarm_id) if svc is not None else None
    return alarm.view() if alarm is not None else {"id": alarm_id, "status": "unknown", "description": "",
                                                   "channel": None, "priority": None, "value": None}


async def trend(request: Request, conn: asyncpg.Connection, channel: str | None) -> dict[str, Any] | None:
    """The channel's last hours as an SVG polyline (server-drawn: the page needs no script), or None."""
    runtime = _runtime(request)
    cid = runtime.channel_ids.get(channel) if channel else None
    if cid is None:
        return None
    end = runtime.clock.now()
    start = end - timedelta(hours=TREND_HOURS)
    pts = await history.query_telemetry(conn, cid, start, end, timedelta(minutes=5), 200)
    vals = [(p.time, p.avg) for p in pts if isinstance(p, history.BucketPoint) and p.avg is not None]
    if len(vals) < 2:
        return {"channel": channel, "points": "", "min": None, "max": None, "hours": TREND_HOURS, "n": len(vals)}
    lo = min(v for _, v in vals)
    hi = max(v for _, v in vals)
    span = (hi - lo) or 1.0
    width, height = 600.0, 160.0
    t0 = vals[0][0]
    total = max((vals[-1][0] - t0).total_seconds(), 1.0)
    coords = " ".join(f"{(t - t0).total_seconds() / total * width:.1f},{height - (v - lo) / span * height:.1f}"
                      for t, v in vals)
    return {"channel": channel, "points": coords, "min": lo, "max": hi, "hours": TREND_HOURS, "n": len(vals),
            "last": vals[-1][1]}


@router.get("/ack/{token}", response_class=HTMLResponse)
async def ack_page(token: str, request: Request, conn: ConnectionDep) -> HTMLResponse:
    row, why = await _link(request, conn, token)
    # a link that cannot be used shows why, not the alarm: it may have been forwarded
    alarm = _alarm(request, row["alarm_id"]) if row is not None and why is None else None
    status = 200 if why is None else 404 if row is None else 410
    return _render(request, status, token=token, link=row, alarm=alarm, problem=why, done=False, trend=None)


@router.post("/ack/{token}", response_class=HTMLResponse)
async def ack_post(token: str, request: Request, conn: ConnectionDep) -> HTMLResponse:
    runtime = _runtime(request)
    row, why = await _link(request, conn, token)
    if row is None or why is not None:
        return _render(request, 404 if row is None else 410, token=token, link=row, problem=why, done=False,
                       alarm=None, trend=None)
    alarm = _alarm(request, row["alarm_id"])
    body = await request.body()
    form = {k: v[0] for k, v in parse_qs(body[:MAX_FORM].decode("utf-8", "replace")).items()}
    password, comment = form.get("password", ""), form.get("comment", "").strip()

    def again(status: int, error: str) -> HTMLResponse:
        return _render(request, status, token=token, link=row, alarm=alarm, problem=None, error=error, done=False,
                       comment=comment, trend=None)

    if not comment:
        return again(422, "A comment is required: say what you found or what you will do.")
    if len(comment) > 2000:
        return again(422, "The comment is longer than 2000 characters.")
    user = await users.get_user_by_name(conn, row["username"])
    client = client_address(request)
    try:  # the login's abuse limits: a slowed attempt checks no password and counts toward nothing
        verified = user is not None and bool(password) and await users.verify_password_for(
            conn, user["id"], password, purpose="remote acknowledgement", client=client,
            threshold=runtime.settings.lockout_threshold, rule="login_rate", refuse_expired=True)
    except throttle.Throttled as exc:
        page = again(429, f"Too many failed attempts: try again in {exc.extra['retry_after_s']} s.")
        page.headers.update(exc.headers or {})
        return page
    except users.PasswordExpired:  # the right password, but CULTURECTL_PASSWORD_MAX_AGE_DAYS old: not an identity
        return again(403, f"The password of {row['username']} has expired: change it on the dashboard (log in), "
                          "then use this link again.")
    if user is None or not verified:
        # a forwarded link must not be a way to guess the password (or to lock the person out): a few tries, then
        # the link ends
        failures: dict[int, int] = request.app.state.__dict__.setdefault("ack_failures", {})
        failures[int(row["id"])] = failures.get(int(row["id"]), 0) + 1
        if failures[int(row["id"])] >= LINK_TRIES:
            await outbox.expire_link(conn, int(row["id"]), runtime.clock.now())
            return _render(request, 410, token=token, link=row, alarm=None, done=False, trend=None,
                           problem=f"{LINK_TRIES} wrong passwords: this link no longer works. Acknowledge from the "
                                   f"dashboard.")
        return again(401, f"The password of {row['username']} is not right, or the account is locked or disabled.")
    principal = users.user_principal(user)
    access = access_for(*ACK_ROUTE)
    if access is None or not access.allows(principal):
        return again(403, f"Role {principal.role.value} may not acknowledge alarms "
                          f"(allowed: {access.describe() if access else 'nobody'}).")
    if runtime.alarms is None:
        return again(503, "The alarm service is not running; try again in a moment or use the dashboard.")
    delivery_id = int(row["id"])

    try:
        alarm = await runtime.alarms.act(row["alarm_id"], "acknowledge", principal=principal, comment=comment,
                                         client=f"{client or '?'} (remote acknowledgement link, delivery "
                                                f"{delivery_id})",
                                         link=AckLink(delivery_id, str(row["username"]), str(row["channel"])))
    except Problem as exc:
        if exc.status == 409:
            return _render(request, 409, token=token, link=row, alarm=alarm, done=False, trend=await trend(
                request, conn, alarm["channel"]), problem=f"Nothing to acknowledge: the alarm is "
                                                          f"{alarm['status'].replace('_', ' ')}.")
        return again(exc.status, exc.detail)
    return _render(request, 200, token=token, link=row, alarm=alarm, problem=None, done=True,
                   by=principal.display_name or principal.name, trend=await trend(request, conn, alarm["channel"]))
