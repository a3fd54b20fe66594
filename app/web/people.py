"""People (admin): users, API keys, sessions in use, and the notification rules and on-call rotas editor.

Read views loaded with the API's own route functions; every change is a form the browser sends to the JSON API
(app/web/static/forms.js; the notification test's answer is drawn by app/web/static/people.js).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from app.api.deps import ConnectionDep, RuntimeDep, SmallId
from app.api.routes import apikeys as apikeys_api
from app.api.routes import notifications as notifications_api
from app.api.routes import sessions as sessions_api
from app.api.routes import users as users_api
from app.api.routes.auth import UserPublic
from app.api.security import CurrentPrincipal
from app.auth import apikeys, sessions, users
from app.auth.policy import V1
from app.auth.principal import Role
from app.notify import rules
from app.web import render

router = render.page_router()

ROLES = [r.value for r in Role]
KEY_ROLES = sorted(r.value for r in apikeys.KEY_ROLES)
STATE_ICONS = {"active": "●", "disabled": "⊘", "locked": "🔒"}


# ---- pure views (tests/unit/test_people_views.py) ---------------------------------------------------------------

def user_state(user: Mapping[str, Any]) -> str:
    """A user's state in words: active, disabled, locked (or both of the last two)."""
    words = [w for w, on in (("disabled", user["disabled"]), ("locked", user["locked"])) if on]
    return ", ".join(words) or "active"


def span_text(span: timedelta) -> str:
    """A duration as people say it: 40 min, 5 h, 12 days."""
    seconds = max(span.total_seconds(), 0.0)
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


def password_age(changed_at: datetime, now: datetime, max_age_days: int) -> dict[str, Any]:
    """How old a password is, and whether it is past CULTURECTL_PASSWORD_MAX_AGE_DAYS (0: no limit)."""
    age = now - changed_at
    expired = max_age_days > 0 and age >= timedelta(days=max_age_days)
    text = span_text(age) + (f" (expired: the limit is {max_age_days} days)" if expired else "")
    return {"text": text, "expired": expired}


def _listed(label: str, values: Sequence[str]) -> str | None:
    return f"{label} {', '.join(values)}" if values else None


def match_text(match: rules.Match) -> str:
    """Which alarms a rule takes, in words."""
    parts = [_listed("priority", match.priorities), _listed("kind", match.kinds), _listed("device", match.devices),
             _listed("point role", match.roles), _listed("alarm", match.alarms),
             {"any": None, "bound": "serving a run", "unbound": "serving no run"}[match.run]]
    said = [p for p in parts if p]
    return "; ".join(said) if said else "any alarm"


def tier_text(n: int, tier: rules.Tier) -> str:
    """One tier of a call tree, in words."""
    who = [p for p in (_listed("users", tier.notify.users), _listed("on call in", tier.notify.rotas),
                       _listed("every", tier.notify.roles)) if p]
    text = f"Tier {n}: " + "; ".join(who)
    if tier.notify.channels:
        text += f" (by {', '.join(tier.notify.channels)} only)"
    if n > 1:
        text += f", after {tier.after_min:g} min without acknowledgement"
    if tier.repeats:
        text += f", repeated {tier.repeats} times, every {tier.repeat_every_min:g} min"
    return text


def shift_text(shift: rules.Shift) -> str:
    """A shift in words: days, times (local), who."""
    if shift.start == shift.end:
        hours = "all day"
    else:
        hours = f"{shift.start:%H:%M} to {shift.end:%H:%M}" + (" (next day)" if shift.end < shift.start else "")
    return f"{', '.join(shift.days)} {hours}: {', '.join(shift.users)}"


def policy_view(content: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The policy in force as the page shows it (rules in order, rotas); None when none was saved."""
    if content is None:
        return None
    try:
        policy = rules.Policy.model_validate(content)
    except ValidationError:  # stored versions were validated when saved; an older schema is shown as JSON only
        return None
    return {
        "rules": [{"name": r.name, "description": r.description, "match": match_text(r.match),
                   "delay_min": r.delay_min, "tiers": [tier_text(n, t) for n, t in enumerate(r.tiers, start=1)],
                   "tells": [w for w, on in (("acknowledged", r.notify_acknowledged),
                                             ("returned", r.notify_returned)) if on]}
                  for r in policy.rules],
        "rotas": [{"name": r.name, "description": r.description, "shifts": [shift_text(s) for s in r.shifts]}
                  for r in policy.rotas],
    }


# ---- pages -----------------------------------------------------------------------------------------------------

def _user_rows(listed: Sequence[Any], logins: Mapping[int, datetime], now: datetime,
               max_age_days: int) -> list[dict[str, Any]]:
    out = []
    for u in listed:
        row = u.model_dump()
        out.append({**row, "state": user_state(row), "last_login": logins.get(row["id"]),
                    "password_age": password_age(row["password_changed_at"], now, max_age_days)})
    return out


@router.get("/people", response_class=HTMLResponse)
async def people_page(request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                      runtime: RuntimeDep) -> HTMLResponse:
    listed = await users_api.list_users(principal, conn)
    rows = _user_rows(listed, await sessions.last_logins(conn), datetime.now(UTC),
                      runtime.settings.password_max_age_days)
    names = {u["id"]: u["username"] for u in rows}
    keys = [k.model_dump() for k in await apikeys_api.list_keys(principal, conn)]
    in_use = [s.model_dump() for s in await sessions_api.list_sessions(principal, conn, None)]
    return render.page(request, "people.html", principal, "people", users=rows, keys=keys, sessions=in_use,
                       names=names, roles=ROLES, key_roles=KEY_ROLES, state_icons=STATE_ICONS)


# What the notifications page's forms do (API route by method and path): shown only to the roles the policy allows.
NOTIFY_ACTIONS = {"edit": ("PUT", "policy"), "override": ("POST", "overrides"), "test": ("POST", "test")}


@router.get("/people/notifications", response_class=HTMLResponse)
async def notifications_page(request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                             runtime: RuntimeDep) -> HTMLResponse:
    versions = await notifications_api.policy_versions(principal, conn, limit=50)
    current = versions[0] if versions else None
    now = runtime.clock.now()
    oncall = await notifications_api.oncall(principal, conn, runtime, at=None)
    overrides = await notifications_api.list_overrides(principal, conn, since=now, include_revoked=False)
    content = current["content"] if current else {"rules": [], "rotas": []}
    routes = {what: (method, f"{V1}/notifications/{path}") for what, (method, path) in NOTIFY_ACTIONS.items()}
    may = {what: render.may(principal, *route) for what, route in routes.items()}
    who = {what: render.who_may(*route) for what, route in routes.items()}
    return render.page(request, "notifications.html", principal, "notifications", may=may, who=who, current=current,
                       versions=versions, view=policy_view(current["content"] if current else None),
                       oncall=oncall, overrides=overrides, document=json.dumps(content, indent=2),
                       starts_at=now.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
                       ends_at=(now + timedelta(hours=8)).astimezone(UTC).replace(microsecond=0).isoformat()
                       .replace("+00:00", "Z"), time_zone=runtime.settings.site_timezone)


@router.get("/people/{user_id}", response_class=HTMLResponse)
async def person_page(user_id: SmallId, request: Request, principal: CurrentPrincipal, conn: ConnectionDep,
                      runtime: RuntimeDep) -> HTMLResponse:
    row = users.user_public(await users.require_user(conn, user_id))
    person = _user_rows([UserPublic(**row)], await sessions.last_logins(conn), datetime.now(UTC),
                        runtime.settings.password_max_age_days)[0]
    in_use = [s.model_dump() for s in await sessions_api.list_sessions(principal, conn, user_id)]
    keys = [k.model_dump() for k in await apikeys_api.list_keys(principal, conn) if k.created_by == user_id]
    return render.page(request, "person.html", principal, "people", person=person, sessions=in_use, keys=keys,
                       roles=ROLES, state_icons=STATE_ICONS, own=principal.id == user_id)
