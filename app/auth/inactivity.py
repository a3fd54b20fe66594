"""The session rules checked on every request with a login token: the inactivity lock and password expiry.

A session remembers its last user action (sessions.last_activity_at). Which requests are user actions is decided
here, by route: live traffic (the event stream, the fragments a page re-fetches on its events, token renewal) is
not, so an unattended page cannot keep its session active. A session idle beyond the limit refuses user actions
(401 `session-idle`) until its user gives the password again (POST /api/v1/auth/unlock); live traffic goes on
only when the site keeps wall screens live (CULTURECTL_INACTIVITY_KEEP_LIVE).

A session opened after its user's password expired (CULTURECTL_PASSWORD_MAX_AGE_DAYS) refuses everything but
changing the password, who-am-I, renewal and logout (403 `password-expired`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from app.settings import Settings

RouteUse = Literal["action", "live", "exempt"]
"""action: a user action (moves last_activity_at; refused when idle); live: live traffic (never moves it; while
idle allowed only with keep_live); exempt: the session's own business (unlock, logout, who am I)."""

V1 = "/api/v1"
LIVE: frozenset[tuple[str, str]] = frozenset({
    ("GET", f"{V1}/stream"),
    ("POST", f"{V1}/auth/refresh"),
    ("GET", "/fragments/runs"),
    ("GET", "/fragments/alarms"),
    ("GET", "/runs/{run_id}/fragments/timeline"),
    ("GET", "/runs/{run_id}/fragments/record"),
})
EXEMPT: frozenset[tuple[str, str]] = frozenset({
    ("POST", f"{V1}/auth/unlock"),
    ("POST", f"{V1}/auth/logout"),
    ("GET", f"{V1}/auth/me"),
})
# What a session opened with an expired password may still do.
PASSWORD_EXPIRED_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("POST", f"{V1}/users/me/password"),
    ("POST", f"{V1}/auth/logout"),
    ("POST", f"{V1}/auth/refresh"),
    ("GET", f"{V1}/auth/me"),
})
CHANGE_PASSWORD_PATH = f"{V1}/users/me/password"
HEARTBEAT_MAX_S = 30.0


def route_use(method: str, path: str | None) -> RouteUse:
    key = ("GET" if method == "HEAD" else method, path or "")
    if key in EXEMPT:
        return "exempt"
    return "live" if key in LIVE else "action"


def heartbeat_seconds(limit_s: float) -> float:
    """How often at most the dashboard reports user input (a fifth of the limit, 1 to 30 s); the server allows
    this much beyond the limit, so a page never finds its session locked before it locks itself."""
    return max(1.0, min(HEARTBEAT_MAX_S, limit_s / 5))


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The settings behind the checks; `idle_limit` None: no inactivity lock; `password_max_age` None: none."""

    idle_limit: timedelta | None = None
    keep_live: bool = False
    password_max_age: timedelta | None = None

    @property
    def idle_refusal(self) -> timedelta | None:
        """Idle this long, a session is refused: the limit and one heartbeat."""
        if self.idle_limit is None:
            return None
        s = self.idle_limit.total_seconds()
        return timedelta(seconds=s + heartbeat_seconds(s))

    @classmethod
    def of(cls, settings: Settings) -> SessionRules:
        return cls(
            idle_limit=timedelta(minutes=settings.inactivity_minutes) if settings.inactivity_minutes > 0 else None,
            keep_live=settings.inactivity_keep_live,
            password_max_age=timedelta(days=settings.password_max_age_days) if settings.password_max_age_days else None,
        )
