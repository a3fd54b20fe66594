"""The schedule planner: every status at every window boundary of the default recipe, order and override rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.protocol.planner import (
    StepRecord,
    check_step_post,
    infusion_check,
    next_due,
    plan,
    propose_t0,
)
from app.protocol.recipe import Recipe, default_recipe

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
S = 1 / 3600  # one second, in hours
R = default_recipe()


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def ancestors(recipe: Recipe, key: str) -> set[str]:
    out: set[str] = set()
    todo = list(recipe.step(key).predecessors)
    while todo:
        k = todo.pop()
        if k not in out:
            out.add(k)
            todo.extend(recipe.step(k).predecessors)
    return out


# The harvest is recorded before its target, so the steps anchored to it (formulate, release, infuse) show that
# their windows follow its actual time, not its planned one.
HARVEST_AT = 165.0


def done_before(key: str) -> dict[str, StepRecord]:
    """Every predecessor (transitively) recorded as done, so only the clock decides."""
    return {k: StepRecord(done_at=at(HARVEST_AT if k == "harvest" else -30)) for k in ancestors(R, key)}


def edges(key: str, anchor_h: float = 0.0) -> list[tuple[str, float, str]]:
    """The table rows of a step anchored `anchor_h` hours after T0: each window edge, just before and after it."""
    w = R.step(key).window
    e, t, la = anchor_h + w.earliest, anchor_h + w.target, anchor_h + w.latest
    rows = [(key, e - S, "pending"), (key, e, "open"), (key, t - S, "open"), (key, t, "due"), (key, la, "due")]
    past = "skipped" if R.step(key).optional else "missed"
    if w.hard_latest is None:
        return [*rows, (key, la + S, past)]
    hard = anchor_h + w.hard_latest
    return [*rows, (key, la + S, "late"), (key, hard, "late"), (key, hard + S, past)]


# (step, hours after T0, status): each window edge, just before it and just after it.
TABLE: list[tuple[str, float, str]] = [
    ("coat_vessels", -24 - S, "pending"), ("coat_vessels", -24, "open"), ("coat_vessels", -18 - S, "open"),
    ("coat_vessels", -18, "due"), ("coat_vessels", -2, "due"), ("coat_vessels", -2 + S, "missed"),
    ("incubator_ready", -4 - S, "pending"), ("incubator_ready", -4, "open"), ("incubator_ready", -2 - S, "open"),
    ("incubator_ready", -2, "due"), ("incubator_ready", 0, "due"), ("incubator_ready", S, "missed"),
    ("receive_cells", -6 - S, "pending"), ("receive_cells", -6, "open"), ("receive_cells", -3 - S, "open"),
    ("receive_cells", -3, "due"), ("receive_cells", 0, "due"), ("receive_cells", S, "missed"),
    ("seed", -1 - S, "pending"), ("seed", -1, "open"), ("seed", -S, "open"), ("seed", 0, "due"),
    ("seed", 2, "due"), ("seed", 2 + S, "late"), ("seed", 6, "late"), ("seed", 6 + S, "missed"),
    ("feed_day3", 66 - S, "pending"), ("feed_day3", 66, "open"), ("feed_day3", 72 - S, "open"),
    ("feed_day3", 72, "due"), ("feed_day3", 78, "due"), ("feed_day3", 78 + S, "late"), ("feed_day3", 84, "late"),
    ("feed_day3", 84 + S, "missed"),
    ("feed_day5", 114 - S, "pending"), ("feed_day5", 114, "open"), ("feed_day5", 120 - S, "open"),
    ("feed_day5", 120, "due"), ("feed_day5", 126, "due"), ("feed_day5", 126 + S, "skipped"),
    ("mycoplasma_sample", 114 - S, "pending"), ("mycoplasma_sample", 114, "open"),
    ("mycoplasma_sample", 132 - S, "open"), ("mycoplasma_sample", 132, "due"), ("mycoplasma_sample", 150, "due"),
    ("mycoplasma_sample", 150 + S, "late"), ("mycoplasma_sample", 156, "late"),
    ("mycoplasma_sample", 156 + S, "missed"),
    ("harvest", 162 - S, "pending"), ("harvest", 162, "open"), ("harvest", 168 - S, "open"),
    ("harvest", 168, "due"), ("harvest", 174, "due"), ("harvest", 174 + S, "late"), ("harvest", 180, "late"),
    ("harvest", 180 + S, "missed"),
    # anchored to the harvest's actual time (165 h): formulate +0/+2/+6, release +1/+6/+10, infuse +2/+10/+14
    *edges("formulate", HARVEST_AT), *edges("release", HARVEST_AT), *edges("infuse", HARVEST_AT),
]


def test_harvest_anchored_rows_are_the_recipe_windows() -> None:
    """The rows built by `edges` for the harvest-anchored steps are the v2 windows, spelled out once here."""
    def offsets(key: str) -> list[float]:
        return [h - HARVEST_AT for k, h, _ in TABLE if k == key]

    assert offsets("formulate") == pytest.approx([-S, 0, 2 - S, 2, 6, 6 + S], abs=1e-9)
    assert offsets("release") == pytest.approx([1 - S, 1, 6 - S, 6, 10, 10 + S], abs=1e-9)
    assert offsets("infuse") == pytest.approx([2 - S, 2, 10 - S, 10, 14, 14 + S], abs=1e-9)
    assert {R.step(k).window.anchor for k in ("formulate", "release", "infuse")} == {"harvest"}


def test_table_covers_every_step_and_status() -> None:
    assert {k for k, _, _ in TABLE} == set(R.step_keys)
    assert {s for _, _, s in TABLE} == {"pending", "open", "due", "late", "missed", "skipped"}


@pytest.mark.parametrize(("key", "hours", "status"), TABLE, ids=[f"{k}@{h:+.4f}h" for k, h, _ in TABLE])
def test_status_at_each_boundary(key: str, hours: float, status: str) -> None:
    p = {sp.key: sp for sp in plan(R, T0, at(hours), done_before(key))}
    assert p[key].status == status
    assert p[key].blocked_by == ()


def planned_anchor(key: str) -> float:
    """Hours after T0 of a step's anchor when nothing is recorded: T0, or the anchor step's planned target."""
    w = R.step(key).window
    return 0.0 if w.anchor == "t0" else planned_anchor(w.anchor) + R.step(w.anchor).window.target


@pytest.mark.parametrize("key", R.step_keys)
def test_absolute_window_follows_the_recipe(key: str) -> None:
    w = R.step(key).window
    a = planned_anchor(key)
    sp = next(s for s in plan(R, T0, T0, {}) if s.key == key)
    assert (sp.window.earliest, sp.window.target, sp.window.latest) == (at(a + w.earliest), at(a + w.target),
                                                                        at(a + w.latest))
    assert sp.window.hard_latest == (None if w.hard_latest is None else at(a + w.hard_latest))


def test_done_whatever_the_time_and_keeps_override_flag() -> None:
    rec = {"coat_vessels": StepRecord(at(-1), overridden=True)}
    sp = plan(R, T0, at(500), rec)[0]
    assert (sp.status, sp.done_at, sp.overridden) == ("done", at(-1), True)


def test_blocked_step_is_pending_inside_its_window_and_missed_after_it() -> None:
    p = {sp.key: sp for sp in plan(R, T0, at(72), {})}
    assert p["feed_day3"].status == "pending" and p["feed_day3"].blocked_by == ("seed",)
    p = {sp.key: sp for sp in plan(R, T0, at(85), {})}
    assert p["feed_day3"].status == "missed"


def test_skipped_optional_step_satisfies_its_successors() -> None:
    r = R.model_copy(update={"steps": tuple(
        s.model_copy(update={"predecessors": ("feed_day5",)}) if s.key == "harvest" else s for s in R.steps)})
    done = {k: StepRecord(at(-30)) for k in ("coat_vessels", "incubator_ready", "receive_cells", "seed", "feed_day3")}
    p = {sp.key: sp for sp in plan(r, T0, at(168), done)}
    assert p["feed_day5"].status == "skipped"
    assert p["harvest"].status == "due" and p["harvest"].blocked_by == ()
    p = {sp.key: sp for sp in plan(r, T0, at(120), done)}
    assert p["harvest"].status == "pending" and p["harvest"].blocked_by == ("feed_day5",)


@pytest.mark.parametrize("key", ["formulate", "release", "infuse"])
def test_window_anchored_to_the_harvest_follows_its_done_time(key: str) -> None:
    w = R.step(key).window
    assert w.anchor == "harvest"
    planned = R.step("harvest").window.target
    p = {sp.key: sp for sp in plan(R, T0, at(100), {})}
    assert p[key].window.target == at(planned + w.target)  # harvest not done: its planned target
    for actual in (163.0, 171.5):  # harvested early, or late
        p = {sp.key: sp for sp in plan(R, T0, at(100), {"harvest": StepRecord(at(actual))})}
        assert (p[key].window.earliest, p[key].window.target, p[key].window.latest) == (
            at(actual + w.earliest), at(actual + w.target), at(actual + w.latest))


def test_naive_times_and_unknown_records_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan(R, T0.replace(tzinfo=None), T0, {})
    with pytest.raises(KeyError, match="unknown steps"):
        plan(R, T0, T0, {"nope": StepRecord(T0)})


# check_step_post: (step, hours, records: done steps, override, outcome, rule)
ALL_BEFORE_HARVEST = ("coat_vessels", "incubator_ready", "receive_cells", "seed", "feed_day3", "mycoplasma_sample")
POSTS: list[tuple[str, float, tuple[str, ...], bool, str, str | None]] = [
    ("feed_day3", 72, ALL_BEFORE_HARVEST[:4], False, "accept", None),
    ("feed_day3", 66, ALL_BEFORE_HARVEST[:4], False, "accept", None),
    ("feed_day3", 72, ALL_BEFORE_HARVEST[:4], True, "accept", None),  # an override inside the window is moot
    ("feed_day3", 66 - S, ALL_BEFORE_HARVEST[:4], False, "refuse", "before_earliest"),
    ("feed_day3", 66 - S, ALL_BEFORE_HARVEST[:4], True, "accept_with_deviation", "before_earliest"),
    ("feed_day3", 78 + S, ALL_BEFORE_HARVEST[:4], False, "refuse", "after_latest"),
    ("feed_day3", 78 + S, ALL_BEFORE_HARVEST[:4], True, "accept_with_deviation", "after_latest"),
    ("feed_day3", 84 + S, ALL_BEFORE_HARVEST[:4], False, "refuse", "after_hard_latest"),
    ("feed_day3", 84 + S, ALL_BEFORE_HARVEST[:4], True, "accept_with_deviation", "after_hard_latest"),
    ("feed_day3", 72, ALL_BEFORE_HARVEST[:3], False, "refuse", "out_of_order"),
    ("feed_day3", 72, ALL_BEFORE_HARVEST[:3], True, "refuse", "out_of_order"),
    ("feed_day3", 72, ALL_BEFORE_HARVEST, False, "refuse", "already_done"),
    ("feed_day3", 72, ALL_BEFORE_HARVEST, True, "refuse", "already_done"),
    ("feed_day5", 127, ALL_BEFORE_HARVEST, False, "refuse", "after_hard_latest"),
    ("feed_day5", 127, ALL_BEFORE_HARVEST, True, "accept_with_deviation", "after_hard_latest"),
    ("harvest", 1, ALL_BEFORE_HARVEST[:4], True, "refuse", "out_of_order"),
    ("harvest", 168, ALL_BEFORE_HARVEST[:5], False, "refuse", "out_of_order"),  # the mycoplasma sample comes first
    ("harvest", 168, ALL_BEFORE_HARVEST, False, "accept", None),
    ("infuse", 178, (*ALL_BEFORE_HARVEST, "harvest", "formulate"), True, "refuse", "out_of_order"),  # release first
    ("seed", 0, ("coat_vessels", "incubator_ready"), False, "refuse", "out_of_order"),
    ("seed", 0, ("coat_vessels", "incubator_ready", "receive_cells"), False, "accept", None),
]


@pytest.mark.parametrize(("key", "hours", "done", "override", "outcome", "rule"), POSTS)
def test_post_decision(key: str, hours: float, done: tuple[str, ...], override: bool, outcome: str,
                       rule: str | None) -> None:
    now = at(hours)
    records = {k: StepRecord(at(-30)) for k in done}
    d = check_step_post(R, plan(R, T0, now, records), key, now, override)
    assert (d.outcome, d.rule) == (outcome, rule)
    assert d.accepted == (outcome != "refuse")
    if outcome == "refuse":
        assert rule is not None and key in d.message and now.isoformat(timespec="seconds") in d.message
        assert d.window.latest.isoformat(timespec="seconds") in d.message
        assert ("supervisor can override" in d.message) == d.overridable
        body = d.as_dict()
        assert body["rule"] == rule and body["now"] == now.isoformat() and body["window"]["earliest"]


def test_post_unknown_step() -> None:
    with pytest.raises(KeyError, match="unknown step"):
        check_step_post(R, plan(R, T0, T0, {}), "nope", T0, False)


def test_next_due() -> None:
    assert next_due(plan(R, T0, at(-30), {})).key == "coat_vessels"  # type: ignore[union-attr]
    done = {k: StepRecord(at(-30)) for k in ALL_BEFORE_HARVEST[:4]}
    assert next_due(plan(R, T0, at(73), done)).key == "feed_day3"  # type: ignore[union-attr]
    assert next_due(plan(R, T0, at(10), done)).key == "feed_day3"  # type: ignore[union-attr]
    assert next_due(plan(R, T0, at(1000), {k: StepRecord(at(1)) for k in R.step_keys})) is None


def test_propose_t0_puts_infusion_on_the_planned_day() -> None:
    hsct = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    p = propose_t0(R, hsct)
    assert p.infusion_at == hsct + timedelta(days=7)
    assert p.t0 == hsct + timedelta(days=7) - timedelta(hours=178)
    assert p.first_step_at == p.t0 - timedelta(hours=24)
    assert infusion_check(R, p.t0, hsct) is None


@pytest.mark.parametrize(("slip_days", "warns"), [(-3, False), (-3.01, True), (3, False), (3.01, True)])
def test_infusion_check_at_the_edges_of_hsct_day_4_to_10(slip_days: float, warns: bool) -> None:
    hsct = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    t0 = propose_t0(R, hsct).t0 + timedelta(days=slip_days)
    w = infusion_check(R, t0, hsct)
    assert (w is not None) == warns
    if w is not None:
        assert "outside the allowed day +4 .. +10" in w.message


RANK = {"pending": 0, "open": 1, "due": 2, "late": 3, "missed": 4, "skipped": 4}


@settings(max_examples=300, deadline=None)
@given(done=st.dictionaries(st.sampled_from(R.step_keys), st.integers(-40 * 60, 200 * 60)),
       t1=st.integers(-40 * 60, 200 * 60), dt=st.integers(0, 240 * 60), override=st.booleans())
def test_properties(done: dict[str, int], t1: int, dt: int, override: bool) -> None:
    records = {k: StepRecord(T0 + timedelta(minutes=m)) for k, m in done.items()}
    now1, now2 = T0 + timedelta(minutes=t1), T0 + timedelta(minutes=t1 + dt)
    p1, p2 = plan(R, T0, now1, records), plan(R, T0, now2, records)
    status1 = {sp.key: sp.status for sp in p1}
    for a, b in zip(p1, p2, strict=True):
        preds_ok = all(status1[k] in ("done", "skipped") for k in R.step(a.key).predecessors)
        if a.status in ("open", "due", "late"):
            assert preds_ok
        if a.status != "done":
            assert RANK[a.status] <= RANK[b.status], (a.key, a.status, b.status)
        d = check_step_post(R, p1, a.key, now1, override)
        if d.accepted:
            assert preds_ok and a.status != "done"
            assert (d.outcome == "accept") == (a.status in ("open", "due"))
