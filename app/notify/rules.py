"""Notification rules and on-call rotas as data (one versioned policy document), and the pure decisions on them.

A rule matches alarms (priority, kind, device, role, alarm id, whether they serve a run) and says whom to notify,
after what delay, repeated how often, and the tiers of a call tree: tier 2 is notified when nobody acknowledged
within `after_min` of tier 1's first notice, and so on. The first rule that matches an alarm is the one that
applies. An episode is one activation of an alarm: it starts when the alarm becomes active and unacknowledged,
and ends with its acknowledgement, its return to normal, or its shelving, suppression or removal from service;
then the notices still planned are cancelled and, if the rule asks, the people already notified hear that it was
acknowledged or returned.

Rotas say who is on call by weekday and time of day in the site's time zone; an override (a holiday, a swap) names
who is on call instead between two instants.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.alarms.model import AlarmStatus, Priority

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
Username = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,62}$")]
Minutes = Annotated[float, Field(ge=0, le=7 * 24 * 60, allow_inf_nan=False)]
Pattern = Annotated[str, Field(min_length=1, max_length=200)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ContactKind = Literal["email", "sms", "voice", "webhook"]
RoleName = Literal["operator", "supervisor", "qa", "automation", "admin"]
# What an alarm is about: a process limit, a rate, stale or bad data, a lost device link, a device that does not
# match its profile, a calibration due, a positive QC result after infusion, or the service itself (historian,
# a notification channel failing).
AlarmKind = Literal["limit", "rate", "stale", "bad_quality", "comm_loss", "configuration", "calibration", "qc",
                    "service"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_KINDS: tuple[AlarmKind, ...] = ("limit", "rate", "stale", "bad_quality", "comm_loss", "configuration",
                                    "calibration", "qc", "service")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Recipients(_Model):
    """Whom a tier notifies: users by name, whoever is on call in a rota, every user of a role."""

    users: tuple[Username, ...] = ()
    rotas: tuple[Name, ...] = ()
    roles: tuple[RoleName, ...] = ()
    channels: tuple[ContactKind, ...] = Field(default=(), description="only these kinds of contact points; "
                                                                      "empty: every enabled one")

    @model_validator(mode="after")
    def _someone(self) -> Recipients:
        if not (self.users or self.rotas or self.roles):
            raise ValueError("a tier must notify someone: give users, rotas or roles")
        return self


class Tier(_Model):
    """One tier of the call tree."""

    notify: Recipients
    after_min: Minutes = Field(default=0.0, description="tier 2 and later: minutes after the previous tier's first "
                                                        "notice without acknowledgement")
    repeat_every_min: Annotated[float, Field(gt=0, le=24 * 60, allow_inf_nan=False)] | None = None
    repeats: Annotated[int, Field(ge=0, le=20)] = 0

    @model_validator(mode="after")
    def _repeat(self) -> Tier:
        if self.repeats and self.repeat_every_min is None:
            raise ValueError("repeats need repeat_every_min")
        return self


class Match(_Model):
    """Which alarms a rule is for; an empty list matches anything. Devices and alarm ids take shell patterns."""

    priorities: tuple[Priority, ...] = ()
    kinds: tuple[AlarmKind, ...] = ()
    devices: tuple[Pattern, ...] = ()
    roles: tuple[Pattern, ...] = Field(default=(), description='"<device class>.<role>", e.g. incubator.co2')
    alarms: tuple[Pattern, ...] = ()
    run: Literal["any", "bound", "unbound"] = Field(default="any", description="bound: only alarms of a device "
                                                                                "that serves a run")


class Rule(_Model):
    """A notification rule."""

    name: Name
    description: str = Field(default="", max_length=500)
    match: Match = Match()
    delay_min: Minutes = Field(default=0.0, description="minutes from activation to tier 1's first notice")
    tiers: tuple[Tier, ...] = Field(min_length=1, max_length=6)
    notify_acknowledged: bool = Field(default=False, description="tell those notified when it is acknowledged")
    notify_returned: bool = Field(default=False, description="tell those notified when it returns to normal")

    @model_validator(mode="after")
    def _escalation(self) -> Rule:
        for n, tier in enumerate(self.tiers[1:], start=2):
            if tier.after_min <= 0:
                raise ValueError(f"rule {self.name}: tier {n} needs after_min > 0 (minutes without acknowledgement "
                                 f"before it is notified)")
        return self


class Shift(_Model):
    """Who is on call on some weekdays between two times of day (local); an end at or before the start runs past
    midnight into the next day; start == end is a whole day."""

    days: tuple[Weekday, ...] = Field(min_length=1)
    start: time
    end: time
    users: tuple[Username, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _local(self) -> Shift:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("shift times are local times of the site's time zone (CULTURECTL_SITE_TIMEZONE): give "
                             "them without an offset, e.g. 18:00")
        return self


class Rota(_Model):
    """An on-call rota."""

    name: Name
    description: str = Field(default="", max_length=500)
    shifts: tuple[Shift, ...] = Field(min_length=1)


class Policy(_Model):
    """The notification policy: rules (first match applies) and rotas."""

    rules: tuple[Rule, ...] = ()
    rotas: tuple[Rota, ...] = ()

    @model_validator(mode="after")
    def _names(self) -> Policy:
        for what, names in (("rule", [r.name for r in self.rules]), ("rota", [r.name for r in self.rotas])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} names must be unique: {', '.join(dup)}")
        known = {r.name for r in self.rotas}
        for rule in self.rules:
            for n, tier in enumerate(rule.tiers, start=1):
                missing = [r for r in tier.notify.rotas if r not in known]
                if missing:
                    raise ValueError(f"rule {rule.name}, tier {n}: unknown rota {', '.join(missing)}; "
                                     f"rotas: {', '.join(sorted(known)) or 'none'}")
        return self

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def rota(self, name: str) -> Rota | None:
        return next((r for r in self.rotas if r.name == name), None)


# -- which rule ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AlarmFacts:
    """What a rule can match on."""

    alarm_id: str
    device: str
    kind: AlarmKind
    priority: str
    role: str | None = None  # "<device class>.<role>" of the alarm's point
    run_id: int | None = None


def alarm_kind(defn_kind: str, name: str, service: bool) -> AlarmKind:
    """The kind a rule matches, from the alarm definition's kind and name and whether it is the service's own."""
    if service:
        return "service"
    named: dict[str, AlarmKind] = {"configuration": "configuration", "calibration": "calibration",
                                   "qc_positive": "qc"}
    if name in named:
        return named[name]
    return next((k for k in ALL_KINDS if k == defn_kind), "comm_loss")


def _any(patterns: Sequence[str], value: str | None) -> bool:
    return not patterns or (value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns))


def matches(match: Match, a: AlarmFacts) -> bool:
    """Whether a rule's match takes the alarm."""
    if match.priorities and a.priority not in match.priorities:
        return False
    if match.kinds and a.kind not in match.kinds:
        return False
    if (match.run == "bound" and a.run_id is None) or (match.run == "unbound" and a.run_id is not None):
        return False
    return _any(match.devices, a.device) and _any(match.roles, a.role) and _any(match.alarms, a.alarm_id)


def rule_for(policy: Policy, a: AlarmFacts) -> Rule | None:
    """The first rule that matches the alarm, or None (it notifies nobody)."""
    return next((r for r in policy.rules if matches(r.match, a)), None)


# -- what a transition does to notifications -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Planned:
    """One alert of an episode: tier (1-based), repeat (0 = the first notice of the tier), when it is due."""

    tier: int
    repeat: int
    due_at: datetime


def plan(rule: Rule, activated_at: datetime) -> list[Planned]:
    """Every alert of an episode, in order of due time: each tier's first notice and its repeats."""
    out: list[Planned] = []
    start = activated_at + timedelta(minutes=rule.delay_min)
    for n, tier in enumerate(rule.tiers, start=1):
        if n > 1:
            start += timedelta(minutes=tier.after_min)
        every = timedelta(minutes=tier.repeat_every_min or 0.0)
        out += [Planned(n, k, start + k * every) for k in range(tier.repeats + 1)]
    return sorted(out, key=lambda p: (p.due_at, p.tier, p.repeat))


EpisodeEnd = Literal["acknowledged", "returned", "mode"]
_MODES = (AlarmStatus.SHELVED, AlarmStatus.SUPPRESSED_BY_DESIGN, AlarmStatus.OUT_OF_SERVICE)
_ACK_REASONS = ("acknowledge", "acknowledged")


@dataclass(frozen=True, slots=True)
class Effect:
    """What one alarm transition does: start an episode (cancelling an open one first), or end the open one."""

    start: bool = False
    end: EpisodeEnd | None = None


def effect(from_state: AlarmStatus, to_state: AlarmStatus, reason: str) -> Effect:
    """The effect of an alarm transition on its notifications.

    - into active_unack from another state (activated, unshelved, back in service), or escalated while unacked:
      an episode starts (an escalation restarts it only if the priority rose: the caller checks);
    - acknowledged: the episode ends (`acknowledged`);
    - back to normal or returned unacknowledged: it ends (`returned`): the condition is gone, nobody more is woken;
    - shelved, suppressed by design, out of service, or its definition removed by a recipe phase: it ends
      (`mode`): such alarms do not notify.
    """
    if to_state is AlarmStatus.ACTIVE_UNACK and (from_state is not AlarmStatus.ACTIVE_UNACK or reason == "escalated"):
        return Effect(start=True)
    if reason in _ACK_REASONS:
        return Effect(end="acknowledged")
    if to_state in _MODES or reason.startswith("definition removed"):
        return Effect(end="mode")  # a recipe phase that drops the alarm is no return to normal
    if to_state in (AlarmStatus.NORMAL, AlarmStatus.RETURNED_UNACK) and from_state is not to_state:
        return Effect(end="returned")
    return Effect()


def notice_wanted(rule: Rule | None, end: EpisodeEnd | None) -> bool:
    """Whether the end of an episode is told to those notified."""
    if rule is None or end is None:
        return False
    return (end == "acknowledged" and rule.notify_acknowledged) or (end == "returned" and rule.notify_returned)


# -- who is on call ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Override:
    """Who is on call for a rota between two instants, instead of its shifts."""

    rota: str
    starts_at: datetime
    ends_at: datetime
    users: tuple[str, ...]


def _in_shift(shift: Shift, local: datetime) -> bool:
    """Whether a local time falls in the shift (a shift past midnight belongs to the weekday it starts on)."""
    t = local.time().replace(tzinfo=None)
    today = WEEKDAYS[local.weekday()]
    yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
    if shift.start == shift.end:
        return today in shift.days
    if shift.start < shift.end:
        return today in shift.days and shift.start <= t < shift.end
    return (today in shift.days and t >= shift.start) or (yesterday in shift.days and t < shift.end)


def on_call(rota: Rota, overrides: Iterable[Override], at: datetime, zone: tzinfo) -> tuple[str, ...]:
    """Who is on call for the rota at an instant: the newest override covering it, else the shifts in force."""
    covering = [o for o in overrides if o.rota == rota.name and o.starts_at <= at < o.ends_at]
    if covering:
        return covering[-1].users
    local = at.astimezone(zone)
    out: list[str] = []
    for shift in rota.shifts:
        if _in_shift(shift, local):
            out += [u for u in shift.users if u not in out]
    return tuple(out)


def recipients(tier: Tier, policy: Policy, overrides: Iterable[Override], at: datetime, zone: tzinfo,
               role_users: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The users a tier notifies at an instant, in order, each once (`role_users`: active users by role)."""
    out: list[str] = list(dict.fromkeys(tier.notify.users))
    listed = list(overrides)
    for name in tier.notify.rotas:
        rota = policy.rota(name)
        if rota is not None:
            out += [u for u in on_call(rota, listed, at, zone) if u not in out]
    for role in tier.notify.roles:
        out += [u for u in role_users.get(role, ()) if u not in out]
    return tuple(out)


# -- a test notification -------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Audience:
    """Who a test notification of a rule or a rota reaches now, and on which kinds of contact points (empty: all)."""

    users: tuple[str, ...]
    channels: tuple[str, ...] = ()


def audience_now(policy: Policy, *, rule: str | None = None, rota: str | None = None,
                  overrides: Iterable[Override] = (), at: datetime, zone: tzinfo,
                  role_users: dict[str, tuple[str, ...]]) -> Audience | None:
    """Whom a test of `rota` (its on-call people now) or of `rule` (its first tier now, on the tier's channels)
    reaches; None when the policy has no such rule or rota."""
    if rota is not None:
        found_rota = policy.rota(rota)
        return None if found_rota is None else Audience(on_call(found_rota, overrides, at, zone))
    found = policy.rule(rule) if rule is not None else None
    if found is None:
        return None
    first = found.tiers[0]
    return Audience(recipients(first, policy, overrides, at, zone, role_users), tuple(first.notify.channels))
