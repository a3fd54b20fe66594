"""The session rules checked on every request with a login token: the inactivity lock and password expiry.

A session remembers its last user action (sessions.last_activity_at). Which requests are user actions is decided
here, by route: live traffic (the event stream, the fragments a page re-fetches on its events, token renewal) is
not, so an unattended page cannot keep its session active. The dashboard's heartbeat (POST /api/v1/auth/activity)
reports how long ago its user's last input was, so the server knows the true time of it. A session idle for the
limit refuses user actions (401 `session-idle`), and they never move its last activity again, until its user gives
the password again (POST /api/v1/auth/unlock); live traffic goes on only when the site keeps wall screens live
(CULTURECTL_INACTIVITY_KEEP_LIVE), and an open event stream is checked again every `stream_check_seconds`.

A session opened after its user's password expired (CULTURECTL_PASSWORD_MAX_AGE_DAYS) refuses everything but
changing the password, who-am-I, renewal and logout (403 `password-expired`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from app.settings import Settings

RouteUse = Literal["action", "report", "live", "exempt"]
"""action: a user action (moves last_activity_at to now; refused when idle); report: the dashboard's heartbeat (refused
when idle; the route sets last_activity_at from the input time it reports); live: live traffic (never moves it;
while idle allowed only with keep_live); exempt: the session's own business (unlock, logout, who am I)."""

V1 = "/api/v1"
LIVE: frozenset[tuple[str, str]] = frozenset({
    ("GET", f"{V1}/stream"),
    ("POST", f"{V1}/auth/refresh"),
    ("GET", "/fragments/runs"),
    ("GET", "/fragments/alarms"),
    ("GET", "/runs/{run_id}/fragments/timeline"),
    ("GET", "/runs/{run_id}/fragments/record"),
})
REPORT: frozenset[tuple[str, str]] = frozenset({("POST", f"{V1}/auth/activity")})
EXEMPT: frozenset[tuple[str, str]] = frozenset({
    ("POST", f"{V1}/auth/unlock"),
    ("POST", f"{V1}/auth/logout"),
    ("GET", f"{V1}/auth/me"),
})
# What a session opened with an expired password may still do. The unlock too: idle, such a session could
# otherwise only log out (its password change is a user action, refused while idle); unlocked, it may still
# only change the password.
PASSWORD_EXPIRED_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("POST", f"{V1}/users/me/password"),
    ("POST", f"{V1}/auth/unlock"),
    ("POST", f"{V1}/auth/logout"),
    ("POST", f"{V1}/auth/refresh"),
    ("GET", f"{V1}/auth/me"),
})
CHANGE_PASSWORD_PATH = f"{V1}/users/me/password"
HEARTBEAT_MAX_S = 30.0
STREAM_CHECK_MAX_S = 15.0


def route_use(method: str, path: str | None) -> RouteUse:
    key = ("GET" if method == "HEAD" else method, path or "")
    if key in EXEMPT:
        return "exempt"
    if key in REPORT:
        return "report"
    return "live" if key in LIVE else "action"


def heartbeat_seconds(limit_s: float) -> float:
    """How often at most the dashboard reports user input (a fifth of the limit, 1 to 30 s). Each report says how
    long ago the last input was, so the server's idle time is the page's, however late the report comes."""
    return max(1.0, min(HEARTBEAT_MAX_S, limit_s / 5))


def stream_check_seconds(rules: SessionRules) -> float:
    """How often an open event stream of a login session checks that session again: a heartbeat, at most 15 s."""
    if rules.idle_limit is None:
        return STREAM_CHECK_MAX_S
    return min(STREAM_CHECK_MAX_S, heartbeat_seconds(rules.idle_limit.total_seconds()))


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The settings behind the checks; `idle_limit` None: no inactivity lock; `password_max_age` None: none."""

    idle_limit: timedelta | None = None
    keep_live: bool = False
    password_max_age: timedelta | None = None

    def idle(self, last_activity_at: datetime, now: datetime) -> bool:
        """Idle for the limit (or longer): user actions are refused and never move the last activity again."""
        return self.idle_limit is not None and now - last_activity_at >= self.idle_limit

    @classmethod
    def of(cls, settings: Settings) -> SessionRules:
        return cls(
            idle_limit=timedelta(minutes=settings.inactivity_minutes) if settings.inactivity_minutes > 0 else None,
            keep_live=settings.inactivity_keep_live,
            password_max_age=timedelta(days=settings.password_max_age_days) if settings.password_max_age_days else None,
        )
