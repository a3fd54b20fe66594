"""Abuse limits on password checks: failed attempts per client address and per user name slow the next attempts
(429 with Retry-After) before the account's lockout (app.auth.users) is reached.

The rule (`retry_after`) is pure: given the times of a key's recent failures and now, the seconds until the next
attempt is allowed (0: allowed). The first `free` failures within `window_s` cost nothing; after the next one an
attempt waits `base_s`, and the wait doubles with each further failure up to `max_s`, counted from the last failure.

`Limits` keeps the failures of one process in memory (per replica: replicas do not share them; the lockout itself
is in the database and is shared). The request's `Limits` is found through `current()` (set for each request by
the API's middleware, app/api/limits.py); without one (command line, demo) nothing is throttled.

Two rules: `login_rate` (logins and the remote acknowledgement page) and `signature_rate` (a password entered
again: electronic signatures, a password change). Each has two keys: `client` (the address) and `user` (the user
name). A refused attempt checks no password, so it does not count toward the lockout. A limit that trips (a key
passes its free failures) is audited once as `auth.throttled` until its failures age out or the user succeeds.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from app.auth.principal import SYSTEM
from app.core.problems import Problem
from app.db import DBConnection
from app.records import audit

RuleName = Literal["login_rate", "signature_rate"]
KeyKind = Literal["client", "user"]
RULES: tuple[RuleName, ...] = ("login_rate", "signature_rate")
KINDS: tuple[KeyKind, ...] = ("client", "user")
CAPACITY = 20_000  # keys kept at most (the oldest are forgotten first): a spray of names cannot grow memory


@dataclass(frozen=True, slots=True)
class Rule:
    """How one key kind of one rule is slowed."""

    free: int  # failures within the window that cost nothing
    base_s: float  # the first wait
    max_s: float  # the longest wait
    window_s: float  # failures older than this are forgotten

    def keep(self) -> int:
        """Failures worth keeping: past this many the wait is at its cap anyway."""
        return self.free + 2 + math.ceil(math.log2(max(self.max_s / self.base_s, 1.0)))


def retry_after(rule: Rule, failures: Sequence[float], now: float) -> float:
    """Seconds until the next attempt of a key with these failure times (oldest first) is allowed; 0: allowed."""
    recent = [t for t in failures if now - t < rule.window_s]
    excess = len(recent) - rule.free
    if excess <= 0:
        return 0.0
    delay = min(rule.max_s, rule.base_s * 2.0 ** (excess - 1))
    return max(0.0, recent[-1] + delay - now)


@dataclass(slots=True)
class _Key:
    failures: deque[float]
    tripped: bool = False


@dataclass(frozen=True, slots=True)
class Trip:
    """A key that has just passed its free failures."""

    rule: RuleName
    kind: KeyKind
    value: str
    failures: int
    retry_after_s: float


class Throttled(Problem):
    """429: too many failed attempts of this client or user name; retry after `retry_after_s` seconds."""

    def __init__(self, rule: RuleName, kind: KeyKind, value: str, wait: float, limits: Limits) -> None:
        seconds = max(1, math.ceil(wait))
        what = "logins" if rule == "login_rate" else "password entries"
        r = limits.rules[(rule, kind)]
        who = f"from this client address ({value})" if kind == "client" else f"for user name {value!r}"
        super().__init__(429, "too-many-attempts", "Too many attempts",
                         f"too many failed {what} {who} (more than {r.free} within {r.window_s:g} s): try again in "
                         f"{seconds} s; the password was not checked", rule=rule, key=kind, retry_after_s=seconds)
        self.headers = {"Retry-After": str(seconds)}


@dataclass
class Limits:
    """The abuse limits of one process: failures per key, the lockout's automatic unlock, and their counters."""

    rules: dict[tuple[RuleName, KeyKind], Rule] = field(default_factory=dict)
    unlock_minutes: float = 0.0  # a locked account unlocks by itself this long after the lock; 0: only an admin
    password_max_age: timedelta | None = None  # signatures refuse a password older than this (None: no expiry)
    now: Callable[[], float] = time.monotonic  # wall seconds (tests replace it)
    capacity: int = CAPACITY
    _keys: dict[tuple[RuleName, KeyKind, str], _Key] = field(default_factory=dict)
    # counters, read by the metrics collector
    throttled: dict[tuple[RuleName, KeyKind], int] = field(default_factory=dict)  # refused attempts
    trips: dict[tuple[RuleName, KeyKind], int] = field(default_factory=dict)
    lockouts: int = 0
    auto_unlocks: int = 0
    streams: dict[str, int] = field(default_factory=dict)  # open live streams per principal (app/api/limits.py)
    sse_refused: dict[str, int] = field(default_factory=dict)  # cap -> refused streams
    body_too_large: int = 0

    def refusal(self, rule: RuleName, keys: dict[KeyKind, str | None]) -> Throttled | None:
        """The refusal of an attempt now (the longest wait among its keys, counted), or None: go ahead."""
        now = self.now()
        worst: tuple[float, KeyKind, str] | None = None
        for kind, value in keys.items():
            r = self.rules.get((rule, kind))
            entry = self._keys.get((rule, kind, value)) if value is not None and r is not None else None
            if entry is None or r is None or value is None:
                continue
            wait = retry_after(r, entry.failures, now)
            if wait > 0 and (worst is None or wait > worst[0]):
                worst = (wait, kind, value)
        if worst is None:
            return None
        self.throttled[(rule, worst[1])] = self.throttled.get((rule, worst[1]), 0) + 1
        return Throttled(rule, worst[1], worst[2], worst[0], self)

    def failed(self, rule: RuleName, keys: dict[KeyKind, str | None]) -> list[Trip]:
        """Count a failed attempt on each key; the keys that trip with it (each once until it is cleared)."""
        now = self.now()
        trips = []
        for kind, value in keys.items():
            r = self.rules.get((rule, kind))
            if r is None or value is None:
                continue
            k = (rule, kind, value)
            entry = self._keys.pop(k, None) or _Key(deque(maxlen=r.keep()))
            self._keys[k] = entry  # most recently failed last: the oldest keys are forgotten first
            while entry.failures and now - entry.failures[0] >= r.window_s:
                entry.failures.popleft()
            if len(entry.failures) <= r.free:
                entry.tripped = False  # the earlier trip aged out
            entry.failures.append(now)
            if len(entry.failures) > r.free and not entry.tripped:
                entry.tripped = True
                self.trips[(rule, kind)] = self.trips.get((rule, kind), 0) + 1
                trips.append(Trip(rule, kind, value, len(entry.failures), retry_after(r, entry.failures, now)))
        while len(self._keys) > self.capacity:
            self._keys.pop(next(iter(self._keys)))
        return trips

    def succeeded(self, rule: RuleName, user: str) -> None:
        """The user proved who they are: their name's failures are forgotten (the client's are not)."""
        self._keys.pop((rule, "user", user), None)


_CURRENT: contextvars.ContextVar[Limits | None] = contextvars.ContextVar("culturectl_limits", default=None)


def current() -> Limits | None:
    """The limits of the request being served (None outside a request: nothing is throttled)."""
    return _CURRENT.get()


def activate(limits: Limits | None) -> contextvars.Token[Limits | None]:
    return _CURRENT.set(limits)


def reset(token: contextvars.Token[Limits | None]) -> None:
    _CURRENT.reset(token)


def check(rule: RuleName, *, client: str | None, user: str | None) -> None:
    """Raise `Throttled` (429) when the client or the user name must wait; before any password is checked."""
    limits = current()
    if limits is not None:
        refusal = limits.refusal(rule, {"client": client, "user": user})
        if refusal is not None:
            raise refusal


async def failed(conn: DBConnection, rule: RuleName, *, client: str | None, user: str | None) -> None:
    """Count a failed password check; audit each limit it trips (`auth.throttled`). Outside a rolled-back
    transaction, like the failure itself."""
    limits = current()
    if limits is None:
        return
    for trip in limits.failed(rule, {"client": client, "user": user}):
        r = limits.rules[(trip.rule, trip.kind)]
        async with conn.transaction():
            await audit.record(
                conn, actor=SYSTEM, action="auth.throttled", entity_type="auth_limit",
                entity_id=f"{trip.rule}:{trip.kind}:{trip.value}", old=None,
                new={"rule": trip.rule, "key": trip.kind, "value": trip.value, "failures": trip.failures,
                     "free": r.free, "window_s": r.window_s, "retry_after_s": math.ceil(trip.retry_after_s)},
                reason=f"{trip.failures} failed attempts within {r.window_s:g} s: further attempts are slowed",
                client=client)


def succeeded(rule: RuleName, user: str) -> None:
    limits = current()
    if limits is not None:
        limits.succeeded(rule, user)


def counted_lockout() -> None:
    limits = current()
    if limits is not None:
        limits.lockouts += 1
