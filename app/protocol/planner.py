"""The schedule planner, pure: from a recipe, T0, the time now and the recorded steps, where each step stands.

No I/O and no clock reads: `now` is always an argument, so the engine, the API and the tests share one rule
book. Statuses of a step that is not done, for its absolute window (earliest, target, latest, hard_latest):

    pending  now < earliest, or a predecessor is neither done nor skipped (`blocked_by` names them)
    open     earliest <= now < target
    due      target <= now <= latest
    late     latest < now <= hard_latest
    missed   now > hard_latest (now > latest when there is no hard_latest), even when blocked
    skipped  an optional step past that same deadline (it satisfies its successors' order)
    done     a record with done_at exists (whatever `now` is)

A window anchored to "t0" is measured from `t0` (the seed time once seeded, the planned T0 before); one
anchored to a step from that step's done_at, or its planned target while it is not done.

Posting a step (`check_step_post`), rule by rule:
    already_done       refused, no override
    out_of_order       refused while a predecessor is neither done nor skipped, no override
    before_earliest    refused; a supervisor override accepts it with a deviation
    after_latest       refused when late; a supervisor override accepts it with a deviation
    after_hard_latest  refused when missed or skipped; a supervisor override accepts it with a deviation.
        Decision: a step past hard_latest opens a missed-step deviation and holds the run for QA disposition,
        but a held run keeps taking its execution steps, so a supervisor records the missed step late with this
        override (and its deviation); refusing it for good would leave the run unable to record, e.g., its
        harvest and ever complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from app.protocol.recipe import Recipe, Step

StepStatus = Literal["pending", "open", "due", "late", "missed", "skipped", "done"]
Outcome = Literal["accept", "refuse", "accept_with_deviation"]
Rule = Literal["already_done", "out_of_order", "before_earliest", "after_latest", "after_hard_latest"]
SATISFIED: frozenset[str] = frozenset({"done", "skipped"})
ACTIONABLE: frozenset[str] = frozenset({"open", "due", "late"})
OVERRIDE_HINT = ("a supervisor can override with a reason (post again with override: true); the step is then "
                 "recorded and a deviation opens")


class StepRecordLike(Protocol):
    """What the planner needs of a recorded step."""

    @property
    def done_at(self) -> datetime | None: ...

    @property
    def overridden(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class StepRecord:
    """A recorded step as the planner sees it."""

    done_at: datetime | None
    overridden: bool = False


@dataclass(frozen=True, slots=True)
class AbsWindow:
    """A step's window in absolute time."""

    earliest: datetime
    target: datetime
    latest: datetime
    hard_latest: datetime | None

    @property
    def deadline(self) -> datetime:
        """Past this instant the step is missed (or skipped when optional)."""
        return self.latest if self.hard_latest is None else self.hard_latest

    def as_dict(self) -> dict[str, str | None]:
        """ISO 8601 strings, for problem bodies and events."""
        return {"earliest": self.earliest.isoformat(), "target": self.target.isoformat(),
                "latest": self.latest.isoformat(),
                "hard_latest": None if self.hard_latest is None else self.hard_latest.isoformat()}


@dataclass(frozen=True, slots=True)
class StepPlan:
    """Where one step stands at `now`."""

    key: str
    status: StepStatus
    window: AbsWindow
    optional: bool
    predecessors: tuple[str, ...]
    blocked_by: tuple[str, ...]  # predecessors neither done nor skipped
    done_at: datetime | None
    overridden: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a post of a step is accepted, refused (naming the rule) or accepted with a deviation."""

    outcome: Outcome
    step_key: str
    rule: Rule | None
    message: str
    status: StepStatus
    window: AbsWindow
    now: datetime
    overridable: bool
    blocked_by: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        """True when the step may be recorded."""
        return self.outcome != "refuse"

    def as_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data (the body of a 409 problem, or a deviation's facts)."""
        return {"outcome": self.outcome, "step": self.step_key, "rule": self.rule, "detail": self.message,
                "status": self.status, "window": self.window.as_dict(), "now": self.now.isoformat(),
                "overridable": self.overridable, "how_to_override": OVERRIDE_HINT if self.overridable else None,
                "blocked_by": list(self.blocked_by)}


@dataclass(frozen=True, slots=True)
class T0Proposal:
    """A T0 planned backwards from the transplant so that infusion falls on the recipe's planned day."""

    t0: datetime
    hsct: datetime
    infusion_at: datetime
    infusion_day: float  # days after the HSCT
    first_step_at: datetime  # earliest start of the first step (coating)


@dataclass(frozen=True, slots=True)
class InfusionWarning:
    """Infusion would fall outside the recipe's HSCT window."""

    infusion_at: datetime
    infusion_day: float
    window_days: tuple[float, float]
    message: str


def _aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")


def _order(recipe: Recipe) -> list[Step]:
    """Steps so that every predecessor and anchor comes before the steps that depend on it (recipe order kept)."""
    placed: dict[str, Step] = {}
    pending = list(recipe.steps)
    while pending:  # the recipe validator guarantees no cycle, so each pass places at least one step
        rest = []
        for s in pending:
            deps = s.predecessors + (() if s.window.anchor == "t0" else (s.window.anchor,))
            if all(d in placed for d in deps):
                placed[s.key] = s
            else:
                rest.append(s)
        pending = rest
    return list(placed.values())


def _hours(h: float) -> timedelta:
    return timedelta(hours=h)


def plan(recipe: Recipe, t0: datetime, now: datetime, records: Mapping[str, StepRecordLike]) -> list[StepPlan]:
    """Each step's absolute window and status at `now`, in recipe order."""
    _aware("t0", t0)
    _aware("now", now)
    unknown = set(records) - set(recipe.step_keys)
    if unknown:
        raise KeyError(f"records of unknown steps {sorted(unknown)}")
    out: dict[str, StepPlan] = {}
    for step in _order(recipe):
        w = step.window
        rec = records.get(step.key)
        done_at = rec.done_at if rec is not None else None
        if w.anchor == "t0":
            anchor = t0
        else:
            a = out[w.anchor]
            anchor = a.done_at if a.done_at is not None else a.window.target
        window = AbsWindow(anchor + _hours(w.earliest), anchor + _hours(w.target), anchor + _hours(w.latest),
                           None if w.hard_latest is None else anchor + _hours(w.hard_latest))
        blocked = tuple(p for p in step.predecessors if out[p].status not in SATISFIED)
        status: StepStatus
        if done_at is not None:
            status = "done"
        elif now > window.deadline:
            status = "skipped" if step.optional else "missed"
        elif now < window.earliest or blocked:
            status = "pending"
        elif now < window.target:
            status = "open"
        elif now <= window.latest:
            status = "due"
        else:
            status = "late"
        out[step.key] = StepPlan(step.key, status, window, step.optional, step.predecessors, blocked, done_at,
                                 bool(rec is not None and rec.overridden))
    return [out[k] for k in recipe.step_keys]


def _fmt(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def check_step_post(recipe: Recipe, plan: Iterable[StepPlan], step_key: str, now: datetime,
                    override: bool) -> Decision:
    """Whether posting `step_key` at `now` is accepted, refused or accepted with a deviation (override)."""
    recipe.step(step_key)  # KeyError for an unknown step
    sp = next((p for p in plan if p.key == step_key), None)
    if sp is None:
        raise KeyError(f"the plan has no step {step_key!r}")
    w = sp.window
    when = (f"window earliest {_fmt(w.earliest)}, target {_fmt(w.target)}, latest {_fmt(w.latest)}, hard latest "
            f"{_fmt(w.hard_latest) if w.hard_latest else 'none'}; now {_fmt(now)}")

    def decide(rule: Rule | None, text: str, overridable: bool) -> Decision:
        if rule is None:
            return Decision("accept", step_key, None, f"{step_key}: accepted ({when})", sp.status, w, now, False)
        if overridable and override:
            return Decision("accept_with_deviation", step_key, rule,
                            f"{step_key}: {text} ({when}); accepted by supervisor override, a deviation opens",
                            sp.status, w, now, True, sp.blocked_by)
        how = f"; {OVERRIDE_HINT}" if overridable else ""
        return Decision("refuse", step_key, rule, f"{step_key}: {text} ({when}){how}", sp.status, w, now,
                        overridable, sp.blocked_by)

    if sp.status == "done":
        done = _fmt(sp.done_at) if sp.done_at else "?"
        return decide("already_done", f"already done at {done}", False)
    if sp.blocked_by:
        return decide("out_of_order", f"out of order: predecessors not done: {', '.join(sp.blocked_by)}", False)
    if sp.status in ("missed", "skipped"):
        return decide("after_hard_latest", "past its hard latest time (the run is held for QA)", True)
    if sp.status == "late":
        return decide("after_latest", "past its latest time", True)
    if now < w.earliest:
        return decide("before_earliest", "before its earliest time", True)
    return decide(None, "", False)


def next_due(plan: Iterable[StepPlan]) -> StepPlan | None:
    """The step to do next: the open, due or late step with the earliest target, else the next pending one."""
    steps = list(plan)
    for wanted in (ACTIONABLE, frozenset({"pending"})):
        cands = [p for p in steps if p.status in wanted]
        if cands:
            return min(cands, key=lambda p: p.window.target)
    return None


def infusion_at(recipe: Recipe, t0: datetime) -> datetime:
    """When infusion is planned for a run with this T0."""
    return t0 + _hours(recipe.planning.infusion_after_t0_hours)


def propose_t0(recipe: Recipe, hsct: datetime) -> T0Proposal:
    """The T0 that puts infusion on the recipe's planned day after the HSCT."""
    _aware("hsct", hsct)
    p = recipe.planning
    t0 = hsct + timedelta(days=p.planned_infusion_day) - _hours(p.infusion_after_t0_hours)
    first = min(s.window.earliest for s in plan(recipe, t0, t0, {}))
    return T0Proposal(t0, hsct, infusion_at(recipe, t0), p.planned_infusion_day, first)


def infusion_check(recipe: Recipe, t0: datetime, hsct: datetime) -> InfusionWarning | None:
    """A warning when infusion after this T0 falls outside HSCT day +low..+high, else None."""
    _aware("t0", t0)
    _aware("hsct", hsct)
    at = infusion_at(recipe, t0)
    day = (at - hsct) / timedelta(days=1)
    lo, hi = recipe.planning.infusion_window_days
    if lo <= day <= hi:
        return None
    return InfusionWarning(at, day, (lo, hi),
                           f"infusion at {_fmt(at)} is HSCT day {day:+.2f}, outside the allowed day {lo:+g} .. "
                           f"{hi:+g} (HSCT {_fmt(hsct)}, T0 {_fmt(t0)})")
