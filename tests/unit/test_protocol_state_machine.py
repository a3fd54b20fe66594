"""A hypothesis state machine over the pure protocol functions: random steps posted at random clock times.

The model is one culture run in memory (status, T0, recorded steps, deviations, QC results, the engine's persisted
statuses). Posting a step mirrors `steps._check_step` / `steps.post_step` in order: the run state first (planned:
only the T0 step and its preparation steps; running and held: any step, since a hold is QA's disposition of the
product and the culture goes on; completed, aborted: refused), then `planner.check_step_post` (an override is a
supervisor's, or QA's for the release step); an accepted release also needs `release.release_refusals` empty (the
run not held, the product not expired, every before-release QC result reported and passing) and no open deviation
(checked before its own override deviation opens); an accepted infusion needs the run not held and
`release.infusion_refusals` empty (the bedside check, the expiry, the HSCT day). An `accept_with_deviation`
decision opens a deviation, the T0 step starts the run, the infusion (the final step) completes it. A recorded step
opens the QC results it samples (pending); a result is reported at random, and a failing one opens a deviation
(after the infusion: `post_infusion_positive`, the one change a completed run still takes). The engine tick is
`engine.decide` applied to the model: missed-step deviations and the hold of a running run. No database, no clock,
no I/O.

Invariants, checked after every rule against windows computed here from the recipe (not taken from the planner):
- a recorded step's predecessors were recorded before it (or were optional and past their deadline: skipped);
- a step recorded outside its soft window [earliest, latest] has a deviation opened by that post;
- the release was recorded on a run not held, before the product's expiry, with every before-release QC result
  reported and passing; the infusion before the expiry, on an allowed HSCT day;
- a completed or aborted run never changes (posts, aborts, holds and engine ticks leave it as it was), but for the
  deviations of QC results reported after the infusion;
- `planner.plan` agrees with the model: done exactly for the recorded steps, missed/skipped exactly past the
  deadline, blocked_by exactly the predecessors neither done nor skipped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from app.protocol import planner, release
from app.protocol.engine import MISSED_RULE, decide
from app.protocol.recipe import Recipe, default_recipe
from app.protocol.runs import CLOSED
from app.protocol.steps import final_step, release_step

R: Recipe = default_recipe()
assert R.release is not None
TESTS = {t.key: t for t in R.release.tests}
PLANNED_T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
# the transplant, so that the planned T0 puts the infusion on the planned HSCT day
HSCT = (PLANNED_T0 + timedelta(hours=R.planning.infusion_after_t0_hours)
        - timedelta(days=R.planning.planned_infusion_day))
START = PLANNED_T0 - timedelta(hours=30)  # before the first window opens (coat_vessels, T0 - 24 h)
RELEASE = release_step(R).key
FINAL = final_step(R).key
PATIENT, PRODUCT = "P-0007", "RUN-1"
INFUSION = timedelta(minutes=30)  # an infusion ends when it is posted, after half an hour
PRODUCT_ML, QC_ML, WEIGHT_KG = 100.0, 5.0, 70.0  # the formulated product the endotoxin figure is computed with
WINDOW_RULES = frozenset({"before_earliest", "after_latest", "after_hard_latest"})


def _pre_t0_steps(recipe: Recipe) -> frozenset[str]:
    """The T0 step and everything it depends on (what a planned run may record)."""
    out: set[str] = set()
    todo = [recipe.t0_step]
    while todo:
        key = todo.pop()
        if key not in out:
            out.add(key)
            todo.extend(recipe.step(key).predecessors)
    return frozenset(out)


PRE_T0 = _pre_t0_steps(R)


@dataclass(frozen=True)
class Win:
    """A step's absolute soft window and deadline, computed independently of the planner."""

    earliest: datetime
    latest: datetime
    deadline: datetime


def window(key: str, t0: datetime, records: dict[str, Rec]) -> Win:
    w = R.step(key).window
    if w.anchor == "t0":
        anchor = t0
    else:
        a = records.get(w.anchor)
        anchor = a.done_at if a is not None else t0 + timedelta(hours=R.step(w.anchor).window.target)
    hard = w.latest if w.hard_latest is None else w.hard_latest
    return Win(anchor + timedelta(hours=w.earliest), anchor + timedelta(hours=w.latest),
               anchor + timedelta(hours=hard))


@dataclass
class Rec:
    """A recorded step, with what the model knew when it was posted."""

    done_at: datetime
    overridden: bool
    seq: int
    t0_at_post: datetime
    deviation_ids: list[int]
    status_at_post: str = "running"
    qc_at_post: dict[str, release.QcState] = field(default_factory=dict)


@dataclass
class Dev:
    id: int
    step_key: str
    rule: str
    opened_at: datetime
    open: bool = True


@dataclass
class Run:
    status: str = "planned"
    t0: datetime | None = None
    records: dict[str, Rec] = field(default_factory=dict)
    deviations: list[Dev] = field(default_factory=list)
    qc: dict[str, release.QcState] = field(default_factory=dict)  # the QC results sampled so far


class ProtocolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.run = Run()
        self.persisted: dict[str, str] = {}  # the engine's step_status
        self.seq = 0
        self.closed_snapshot: Run | None = None
        self.posts = {"accept": 0, "accept_with_deviation": 0, "refuse": 0}
        self.earliest_day: float | None = None  # the transplant type's earliest infusion day

    @initialize(transplant=st.sampled_from(sorted(R.transplant_types)))
    def transplant_type(self, transplant: str) -> None:
        self.earliest_day = R.transplant_types[transplant].earliest_infusion_day  # type: ignore[index]

    # ---- helpers -------------------------------------------------------------------------------------

    events = True  # hypothesis events (statistics); off when a plain test drives the machine

    def event(self, text: str) -> None:
        if self.events:
            event(text)

    @property
    def t0(self) -> datetime:
        return self.run.t0 or PLANNED_T0

    def records(self) -> dict[str, planner.StepRecord]:
        return {k: planner.StepRecord(r.done_at, r.overridden) for k, r in self.run.records.items()}

    def plan(self) -> list[planner.StepPlan]:
        return planner.plan(R, self.t0, self.now, self.records())

    def satisfied(self, key: str, at: datetime, t0: datetime) -> bool:
        """Done, or optional and past its deadline (skipped), at `at` with T0 `t0`."""
        if key in self.run.records:
            return True
        return R.step(key).optional and at > window(key, t0, self.run.records).deadline

    def open_deviation(self, key: str, rule_name: str) -> int:
        dev = Dev(len(self.run.deviations) + 1, key, rule_name, self.now)
        self.run.deviations.append(dev)
        return dev.id

    def next_step(self) -> str | None:
        for s in R.steps:
            if s.key not in self.run.records and all(self.satisfied(p, self.now, self.t0) for p in s.predecessors):
                return s.key
        return None

    def run_state_allows(self, key: str) -> bool:
        status = self.run.status
        return status in ("running", "held") or (status == "planned" and key in PRE_T0)

    def expiry(self) -> datetime | None:
        formulate = self.run.records.get("formulate")
        return None if formulate is None else release.product_expiry(R, formulate.done_at)

    def product_rules(self, key: str, scan: str) -> list[release.Refusal]:
        """What stops a release or an infusion the planner accepted (empty for the other steps)."""
        if key == RELEASE:
            return release.release_refusals(R, self.run.qc, held=self.run.status == "held", hold_reason="missed step",
                                            expiry=self.expiry(), now=self.now)
        if key == FINAL:
            if self.run.status == "held":
                return [release.Refusal("run_held", "the run is held for QA disposition", {})]
            return release.infusion_refusals(
                R, patient_id=PATIENT, product_id=PRODUCT,
                scanned_patient=PATIENT if scan in ("ok", "product") else "P-0008",
                scanned_product=PRODUCT if scan in ("ok", "patient") else "RUN-2",
                start=self.now - INFUSION, end=self.now, expiry=self.expiry(), hsct=HSCT,
                earliest_day=self.earliest_day)
        return []

    # ---- rules ---------------------------------------------------------------------------------------

    @rule(minutes=st.one_of(st.integers(0, 6 * 60), st.integers(6 * 60, 40 * 60)))
    def advance(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @rule(offset=st.integers(-90, 30))
    def advance_to_next_window(self, offset: int) -> None:
        """Jump near the next step's window (offset in 10-minute units from its earliest), never back in time."""
        key = self.next_step()
        if key is not None:
            self.now = max(self.now, window(key, self.t0, self.run.records).earliest + timedelta(minutes=10 * offset))

    @rule(offset=st.integers(0, 36))
    def post_next_in_time(self, offset: int) -> None:
        """Post the next step soon after its window opens (offset in 10-minute units), as a run on schedule does."""
        key = self.next_step()
        if key is not None:
            self.now = max(self.now, window(key, self.t0, self.run.records).earliest + timedelta(minutes=10 * offset))
            self.post(key, False)

    @rule(override=st.booleans())
    def post_next(self, override: bool) -> None:
        """Post the first step whose predecessors are satisfied (so that runs get to their end)."""
        key = self.next_step()
        if key is not None:
            self.post(key, override)

    @rule(key=st.sampled_from(R.step_keys), override=st.booleans())
    def post_any(self, key: str, override: bool) -> None:
        self.post(key, override)

    @rule(scan=st.sampled_from(["ok", "patient", "product", "both"]))
    def post_infusion(self, scan: str) -> None:
        """The bedside check: the scanned patient and product ids, right or wrong."""
        self.post(FINAL, False, scan)

    def post(self, key: str, override: bool, scan: str = "ok") -> None:
        if not self.run_state_allows(key):  # 409 run_not_running, before the planner
            self.posts["refuse"] += 1
            return
        decision = planner.check_step_post(R, self.plan(), key, self.now, override)

        # the planner's decision against the rules computed here
        w = window(key, self.t0, self.run.records)
        blocked = [p for p in R.step(key).predecessors if not self.satisfied(p, self.now, self.t0)]
        if key in self.run.records:
            expected = "refuse"
            assert decision.rule == "already_done"
        elif blocked:
            expected = "refuse"
            assert decision.rule == "out_of_order" and list(decision.blocked_by) == blocked, decision
        elif w.earliest <= self.now <= w.latest:
            expected = "accept"
        else:
            expected = "accept_with_deviation" if override else "refuse"
            assert decision.rule in WINDOW_RULES and decision.overridable, decision
        assert decision.outcome == expected, (decision, expected)

        refusals = self.product_rules(key, scan) if decision.accepted else []
        if key == FINAL and decision.accepted and scan != "ok" and self.run.status != "held":
            (mismatch,) = [r for r in refusals if r.rule == "bedside_mismatch"]
            assert mismatch.facts["mismatch"] == {"patient": ["patient"], "product": ["product"],
                                                  "both": ["patient", "product"]}[scan]
        if refusals:
            self.event(f"{key} refused: {refusals[0].rule}")
            decision_outcome = "refuse"  # 409 with the first rule
        elif decision.accepted and key == RELEASE and any(d.open for d in self.run.deviations):
            decision_outcome = "refuse"  # 409 open_deviations
        else:
            decision_outcome = decision.outcome
        self.posts[decision_outcome] += 1
        if decision_outcome == "refuse":
            return
        dev_ids = [self.open_deviation(key, str(decision.rule))] if decision_outcome == "accept_with_deviation" else []
        self.seq += 1
        self.run.records[key] = Rec(self.now, override, self.seq, self.t0, dev_ids, self.run.status, dict(self.run.qc))
        for test in TESTS.values():  # the QC samples this step takes
            if test.sampled_at == key:
                self.run.qc.setdefault(test.key, release.QcState(test.key, "pending"))
        if key == R.t0_step:
            self.run.status, self.run.t0 = "running", self.now
        elif key == FINAL:
            self.run.status = "completed"

    @rule(key=st.sampled_from(sorted(TESTS)), dice=st.integers(0, 9))
    def report_qc(self, key: str, dice: int) -> None:
        """The lab reports a result, failing one time in ten; once, for a sampled test, unless the run is aborted."""
        state = self.run.qc.get(key)
        if state is None or state.status == "reported" or self.run.status == "aborted":
            return  # 409 qc_not_sampled / qc_already_reported / run_not_running
        test = TESTS[key]
        result: dict[str, object] = ({"eu_per_ml": 5.0 if dice == 0 else 0.1} if test.kind == "endotoxin"
                                     else {"result": "positive" if dice == 0 else "negative"})
        outcome = release.qc_outcome(R, test, result, volume_ml=PRODUCT_ML - QC_ML, weight_kg=WEIGHT_KG)
        assert outcome.passed == (dice != 0), outcome
        self.run.qc[key] = release.QcState(key, "reported", outcome.passed)
        if not outcome.passed:
            self.open_deviation(test.sampled_at, "post_infusion_positive" if FINAL in self.run.records
                                else "qc_result_failed")

    @rule()
    def engine_tick(self) -> None:
        acts = decide(R, self.run.status, self.plan(), self.persisted,
                      {d.step_key for d in self.run.deviations if d.rule == MISSED_RULE}, self.now)
        if self.run.status in CLOSED:
            assert not acts.deviations and acts.hold_reason is None and not acts.setpoints, acts
            assert all(t.new == "done" and t.step_key in self.run.records for t in acts.transitions), acts
        for t in acts.transitions:
            self.persisted[t.step_key] = t.new
        for d in acts.deviations:
            assert d.step_key not in self.run.records
            self.open_deviation(d.step_key, MISSED_RULE)
        if acts.hold_reason is not None:
            assert self.run.status == "running"
            self.run.status = "held"

    @rule(dice=st.integers(0, 19))
    def abort(self, dice: int) -> None:
        """Abort, one time in twenty (else runs seldom get to their end)."""
        if dice == 0 and self.run.status in ("planned", "running", "held"):
            self.run.status = "aborted"

    @precondition(lambda self: self.run.status == "held")
    @rule()
    def resume(self) -> None:  # QA, signed
        self.run.status = "running"

    @precondition(lambda self: self.run.status not in CLOSED and any(d.open for d in self.run.deviations))
    @rule()
    def close_deviations(self) -> None:  # QA reviews and closes, which unblocks release
        for d in self.run.deviations:
            d.open = False

    @precondition(lambda self: self.run.status == "running")
    @rule()
    def qa_closes_deviations_and_releases(self) -> None:
        """QA's end of a run: the lab reports the pending before-release results (passing), QA closes every open
        deviation and posts the release step (often its shortest path)."""
        for key, state in list(self.run.qc.items()):
            if TESTS[key].before_release and state.status == "pending":
                self.report_qc(key, 1)
        self.close_deviations()
        self.post(RELEASE, False)

    @precondition(lambda self: RELEASE in self.run.records and FINAL not in self.run.records)
    @rule(minutes=st.integers(30, 4 * 60))
    def infuse_after_release(self, minutes: int) -> None:
        """The released product goes to the bedside: infused some time after the release."""
        self.now = max(self.now, self.run.records[RELEASE].done_at + timedelta(minutes=minutes))
        self.post(FINAL, False)

    def teardown(self) -> None:
        event(f"final status {self.run.status}")
        event(f"steps recorded: {len(self.run.records)}")
        event(f"override deviations: {any(d.rule in WINDOW_RULES for d in self.run.deviations)}")
        event(f"missed-step deviations: {any(d.rule == MISSED_RULE for d in self.run.deviations)}")

    # ---- invariants ----------------------------------------------------------------------------------

    @invariant()
    def predecessors_recorded_first(self) -> None:
        for key, rec in self.run.records.items():
            for p in R.step(key).predecessors:
                before = p in self.run.records and self.run.records[p].seq < rec.seq
                skipped = (R.step(p).optional and (p not in self.run.records or self.run.records[p].seq > rec.seq)
                           and rec.done_at > window(p, rec.t0_at_post, self.run.records).deadline)
                assert before or skipped, f"{key} recorded at {rec.done_at} before its predecessor {p}"

    @invariant()
    def out_of_window_steps_have_a_deviation(self) -> None:
        for key, rec in self.run.records.items():
            w = window(key, rec.t0_at_post, self.run.records)
            if w.earliest <= rec.done_at <= w.latest:
                continue
            devs = [d for d in self.run.deviations if d.id in rec.deviation_ids]
            assert any(d.step_key == key and d.rule in WINDOW_RULES and d.opened_at == rec.done_at for d in devs), (
                f"{key} recorded at {rec.done_at} outside [{w.earliest}, {w.latest}] without a deviation")
            assert rec.overridden

    @invariant()
    def release_and_infusion_follow_their_rules(self) -> None:
        rel, inf = self.run.records.get(RELEASE), self.run.records.get(FINAL)
        expiry = self.expiry()
        if rel is not None:
            assert rel.status_at_post == "running" and expiry is not None and rel.done_at <= expiry
            for test in TESTS.values():
                if test.before_release:
                    assert rel.qc_at_post[test.key] == release.QcState(test.key, "reported", True), test.key
        if inf is not None:
            assert rel is not None and rel.seq < inf.seq and inf.status_at_post == "running"
            assert expiry is not None and inf.done_at - INFUSION <= expiry
            lo, hi = R.planning.infusion_window_days
            day = (inf.done_at - INFUSION - HSCT) / timedelta(days=1)
            assert max(lo, self.earliest_day or lo) <= day <= hi, day

    @invariant()
    def closed_runs_never_change(self) -> None:
        if self.run.status in CLOSED:
            if self.closed_snapshot is None:
                self.closed_snapshot = copy.deepcopy(self.run)
            snap = self.closed_snapshot
            assert (self.run.status, self.run.t0, self.run.records) == (snap.status, snap.t0, snap.records), (
                "a closed run changed")
            # after the infusion, only a late QC result (sterility) still comes in, with its deviation
            new = self.run.deviations[len(snap.deviations):]
            assert self.run.deviations[:len(snap.deviations)] == snap.deviations
            assert self.run.status == "completed" or not new
            assert all(d.rule == "post_infusion_positive" for d in new), new

    @invariant()
    def run_status_matches_records(self) -> None:
        seeded = R.t0_step in self.run.records
        assert (self.run.t0 is not None) == seeded
        if self.run.status == "planned":
            assert not seeded and set(self.run.records) <= PRE_T0
        if self.run.status in ("running", "held", "completed"):
            assert seeded
        assert (self.run.status == "completed") == (FINAL in self.run.records)
        if self.run.status == "held":
            assert any(d.rule == MISSED_RULE for d in self.run.deviations)

    @invariant()
    def plan_agrees_with_model(self) -> None:
        for p in self.plan():
            rec = self.run.records.get(p.key)
            assert (p.status == "done") == (rec is not None), p
            if rec is not None:
                assert p.done_at == rec.done_at and p.overridden == rec.overridden
                continue
            past = self.now > window(p.key, self.t0, self.run.records).deadline
            assert (p.status in ("missed", "skipped")) == past, p
            blocked = tuple(q for q in R.step(p.key).predecessors if not self.satisfied(q, self.now, self.t0))
            assert p.blocked_by == blocked, p


ProtocolMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=100, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestProtocolStateMachine = ProtocolMachine.TestCase


def _on_schedule(m: ProtocolMachine, until: str) -> None:
    """Post every step at its window's earliest time, up to and with `until` (QA's path for the release)."""
    while (key := m.next_step()) is not None:
        m.now = max(m.now, window(key, m.t0, m.run.records).earliest)
        if key == RELEASE:
            m.qa_closes_deviations_and_releases()
        else:
            m.post(key, False)
        assert key in m.run.records, key
        if key == until:
            return


def test_a_run_on_schedule_completes_with_its_infusion() -> None:
    m = ProtocolMachine()
    m.events = False
    m.transplant_type("ptcy_hla_mismatched")
    _on_schedule(m, RELEASE)
    assert m.run.status == "running"  # released, not yet infused
    assert {k: s.status for k, s in m.run.qc.items()} == {
        "mycoplasma": "reported", "gram_stain": "reported", "endotoxin": "reported", "sterility": "pending"}
    m.now = window(FINAL, m.t0, m.run.records).earliest + INFUSION
    m.post_infusion("patient")  # the wrong wristband: refused, nothing recorded
    assert FINAL not in m.run.records and m.run.status == "running"
    m.post_infusion("ok")
    assert m.run.status == "completed" and FINAL in m.run.records
    m.release_and_infusion_follow_their_rules()
    m.closed_runs_never_change()
    m.report_qc("sterility", 0)  # positive after the infusion: the deviation that notifies it
    assert [d.rule for d in m.run.deviations] == ["post_infusion_positive"]
    m.closed_runs_never_change()
    m.run_status_matches_records()


def test_a_held_run_records_its_culture_steps_but_not_its_release() -> None:
    m = ProtocolMachine()
    m.events = False
    m.transplant_type("t_cell_depleted")
    _on_schedule(m, "feed_day5")
    m.run.status = "held"  # QA holds the product's disposition; the culture goes on
    _on_schedule(m, "formulate")
    assert {"mycoplasma_sample", "harvest", "formulate"} <= set(m.run.records) and m.run.status == "held"
    for key, state in list(m.run.qc.items()):
        if state.status == "pending" and TESTS[key].before_release:
            m.report_qc(key, 1)
    m.now = max(m.now, window(RELEASE, m.t0, m.run.records).earliest)
    assert [r.rule for r in m.product_rules(RELEASE, "ok")] == ["run_held"]
    m.post(RELEASE, False)
    assert RELEASE not in m.run.records and m.run.status == "held"  # 409 run_held
    m.resume()
    m.post(RELEASE, False)
    assert RELEASE in m.run.records
    m.release_and_infusion_follow_their_rules()
