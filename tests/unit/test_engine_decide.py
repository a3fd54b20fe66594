"""The engine's pure decisions: from the plan and the persisted statuses to transitions, deviations, hold and
setpoints (no database, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.protocol import planner
from app.protocol.engine import decide
from app.protocol.recipe import default_recipe

R = default_recipe()
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
PRE = {k: planner.StepRecord(T0 - timedelta(hours=h)) for k, h in
       (("coat_vessels", 18), ("receive_cells", 3), ("incubator_ready", 2))}
SEEDED = {**PRE, "seed": planner.StepRecord(T0)}


def _plan(hours: float, records: dict[str, planner.StepRecord]) -> list[planner.StepPlan]:
    return planner.plan(R, T0, T0 + timedelta(hours=hours), records)


def _persisted(hours: float, records: dict[str, planner.StepRecord]) -> dict[str, str]:
    return {p.key: p.status for p in _plan(hours, records)}


@pytest.mark.parametrize(("run_status", "before", "after", "records", "transitions", "deviations", "hold",
                          "setpoints"), [
    # nothing persisted yet: every step is a transition from None; incubator_ready is open: its on_open setpoints
    ("planned", None, -3, {}, len(R.steps), [], False, [("incubator_ready", "temperature_setpoint"),
                                                        ("incubator_ready", "co2_setpoint")]),
    # the same on a held run: a hold is QA's disposition of the product, the culture goes on as the recipe says
    ("held", None, -3, {}, len(R.steps), [], False, [("incubator_ready", "temperature_setpoint"),
                                                     ("incubator_ready", "co2_setpoint")]),
    # nothing changed since the last pass: nothing to do
    ("running", 10, 11, SEEDED, 0, [], False, []),
    # feed_day3 opens (66 h)
    ("running", 60, 67, SEEDED, 1, [], False, []),
    # feed_day3 passes its hard latest (84 h) while the service is down: one deviation, the run is held
    ("running", 70, 85, SEEDED, 1, ["feed_day3"], True, []),
    # the same on a held run: the deviation, no second hold
    ("held", 70, 85, SEEDED, 1, ["feed_day3"], False, []),
    # feed_day3 already missed and persisted: nothing again
    ("held", 85, 86, SEEDED, 0, [], False, []),
    # seed recorded: seed -> done, its on_done setpoints
    ("running", -0.5, 0.5, SEEDED, 1, [], False, [("seed", "temperature_setpoint"), ("seed", "co2_setpoint")]),
    # and on a held run too (the recipe's setpoints are not held)
    ("held", -0.5, 0.5, SEEDED, 1, [], False, [("seed", "temperature_setpoint"), ("seed", "co2_setpoint")]),
    # the mycoplasma sample passes its hard latest (156 h): one deviation, the run is held
    ("running", 150, 157, {**SEEDED, "feed_day3": planner.StepRecord(T0 + timedelta(hours=72))}, 1,
     ["mycoplasma_sample"], True, []),
])
def test_decide_table(run_status: str, before: float | None, after: float, records: dict[str, planner.StepRecord],
                      transitions: int, deviations: list[str], hold: bool, setpoints: list[tuple[str, str]]) -> None:
    persisted = {} if before is None else _persisted(before, PRE if before < 0 else records)
    acts = decide(R, run_status, _plan(after, records), persisted)
    assert len(acts.transitions) == transitions, acts.transitions
    assert [d.step_key for d in acts.deviations] == deviations
    assert (acts.hold_reason is not None) == hold
    assert [(s.step_key, s.point) for s in acts.setpoints] == setpoints


def test_a_step_with_a_missed_deviation_gets_no_second_one() -> None:
    acts = decide(R, "running", _plan(85, SEEDED), _persisted(70, SEEDED), missed_deviations={"feed_day3"})
    assert [t.new for t in acts.transitions] == ["missed"] and not acts.deviations and acts.hold_reason is None


def test_a_closed_run_only_records_done_steps() -> None:
    records = {**SEEDED, "feed_day3": planner.StepRecord(T0 + timedelta(hours=72))}
    acts = decide(R, "completed", _plan(200, records), _persisted(70, SEEDED))
    assert [(t.step_key, t.old, t.new) for t in acts.transitions] == [("feed_day3", "open", "done")]
    assert not acts.deviations and acts.hold_reason is None and not acts.setpoints
    assert decide(R, "aborted", _plan(200, records), _persisted(200, records)).empty


def test_on_open_setpoints_apply_once_also_on_a_held_run() -> None:
    first = decide(R, "planned", _plan(-3.5, {}), _persisted(-5, {}))
    assert {s.step_key for s in first.setpoints} == {"incubator_ready"}
    again = decide(R, "planned", _plan(-1.5, {}), _persisted(-3.5, {}))
    assert not again.setpoints  # open -> due is not an opening
    held = decide(R, "held", _plan(-3.5, {}), _persisted(-5, {}))
    assert held.setpoints == first.setpoints  # a hold does not stop the culture
    assert not decide(R, "held", _plan(-1.5, {}), _persisted(-3.5, {})).setpoints
    for closed in ("completed", "aborted"):
        assert not decide(R, closed, _plan(-3.5, {}), _persisted(-5, {})).setpoints
