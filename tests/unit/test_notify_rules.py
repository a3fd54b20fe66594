"""The notification policy's pure rules: which rule an alarm meets, the alerts an episode plans, what each alarm
transition does to them, and who is on call (weekday shifts in the site's time zone, past midnight, DST, overrides).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from app.alarms.model import AlarmStatus as S
from app.notify import rules
from app.notify.rules import AlarmFacts, Override, Policy

PARIS = ZoneInfo("Europe/Paris")

POLICY = Policy.model_validate({
    "rotas": [
        {"name": "incubators", "shifts": [
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "18:00", "users": ["carol"]},
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "18:00", "end": "08:00", "users": ["alice"]},
            {"days": ["sat", "sun"], "start": "00:00", "end": "00:00", "users": ["dave"]},
        ]},
    ],
    "rules": [
        {"name": "co2-high", "match": {"priorities": ["high"], "roles": ["incubator.co2"]}, "delay_min": 2,
         "tiers": [{"notify": {"rotas": ["incubators"], "channels": ["email", "sms"]}, "repeat_every_min": 10,
                    "repeats": 2},
                   {"notify": {"users": ["bob"]}, "after_min": 15},
                   {"notify": {"roles": ["admin"]}, "after_min": 30}],
         "notify_acknowledged": True, "notify_returned": True},
        {"name": "service", "match": {"kinds": ["service", "comm_loss"]}, "tiers": [{"notify": {"users": ["bob"]}}]},
        {"name": "run-alarms", "match": {"run": "bound", "devices": ["incubator-*"]},
         "tiers": [{"notify": {"rotas": ["incubators"]}}]},
    ],
})


def facts(**kw: object) -> AlarmFacts:
    base: dict[str, object] = {"alarm_id": "incubator-1.co2:limit", "device": "incubator-1", "kind": "limit",
                               "priority": "high", "role": "incubator.co2", "run_id": None}
    base.update(kw)
    return AlarmFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "rule"), [
    ({}, "co2-high"),
    ({"priority": "medium"}, None),  # CO2 L (medium), no run: no rule
    ({"priority": "medium", "run_id": 7}, "run-alarms"),  # but a run's incubator notifies its rota
    ({"role": "incubator.temperature", "alarm_id": "incubator-1.temperature:limit"}, None),
    ({"kind": "comm_loss", "role": None, "alarm_id": "incubator-1:comm_loss"}, "service"),
    ({"kind": "service", "device": "culturectl", "role": None, "alarm_id": "culturectl:historian"}, "service"),
    ({"device": "freezer-2", "role": None, "priority": "low", "run_id": 3}, None),  # not an incubator-* device
])
def test_the_first_matching_rule_applies(kw: dict[str, object], rule: str | None) -> None:
    found = rules.rule_for(POLICY, facts(**kw))
    assert (found.name if found else None) == rule


def test_alarm_ids_match_shell_patterns() -> None:
    m = rules.Match(alarms=("*:comm_loss", "culture-system-?.ph:*"))
    assert rules.matches(m, facts(alarm_id="incubator-1:comm_loss"))
    assert rules.matches(m, facts(alarm_id="culture-system-1.ph:stale"))
    assert not rules.matches(m, facts(alarm_id="culture-system-12.ph:stale"))


@pytest.mark.parametrize(("defn_kind", "name", "service", "kind"), [
    ("limit", "limit", False, "limit"), ("stale", "stale", False, "stale"), ("comm_loss", "comm_loss", False,
                                                                              "comm_loss"),
    ("comm_loss", "configuration", False, "configuration"), ("limit", "calibration", False, "calibration"),
    ("comm_loss", "qc_positive", False, "qc"), ("comm_loss", "historian", True, "service"),
    ("comm_loss", "notify_email", True, "service"),
])
def test_alarm_kinds(defn_kind: str, name: str, service: bool, kind: str) -> None:
    assert rules.alarm_kind(defn_kind, name, service) == kind


def test_an_episode_plans_every_tier_and_repeat_in_order() -> None:
    rule = POLICY.rule("co2-high")
    assert rule is not None
    t0 = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)
    got = [(p.tier, p.repeat, (p.due_at - t0).total_seconds() / 60) for p in rules.plan(rule, t0)]
    # tier 1 after the 2-min delay and its repeats every 10 min; tier 2 15 min after tier 1; tier 3 30 min later
    assert got == [(1, 0, 2), (1, 1, 12), (2, 0, 17), (1, 2, 22), (3, 0, 47)]


@pytest.mark.parametrize(("frm", "to", "reason", "start", "end"), [
    (S.NORMAL, S.ACTIVE_UNACK, "activated", True, None),
    (S.ACTIVE_ACK, S.ACTIVE_UNACK, "escalated", True, None),  # H acknowledged, then HH: a new episode
    (S.ACTIVE_UNACK, S.ACTIVE_UNACK, "escalated", True, None),  # the caller keeps it unless the priority rose
    (S.ACTIVE_UNACK, S.ACTIVE_UNACK, "de-escalated", False, None),
    (S.SHELVED, S.ACTIVE_UNACK, "unshelved", True, None),  # still active when the shelf ends: notify now
    (S.ACTIVE_UNACK, S.ACTIVE_ACK, "acknowledge", False, "acknowledged"),
    (S.RETURNED_UNACK, S.NORMAL, "acknowledge", False, "acknowledged"),
    (S.ACTIVE_UNACK, S.RETURNED_UNACK, "returned", False, "returned"),
    (S.ACTIVE_ACK, S.NORMAL, "returned", False, "returned"),
    (S.ACTIVE_UNACK, S.SHELVED, "shelve", False, "mode"),
    (S.ACTIVE_UNACK, S.SUPPRESSED_BY_DESIGN, "planned door opening", False, "mode"),
    (S.ACTIVE_UNACK, S.OUT_OF_SERVICE, "out of service", False, "mode"),
    (S.ACTIVE_UNACK, S.NORMAL, "definition removed by the recipe phase", False, "mode"),  # no "returned" notice
])
def test_what_a_transition_does(frm: S, to: S, reason: str, start: bool, end: str | None) -> None:
    e = rules.effect(frm, to, reason)
    assert (e.start, e.end) == (start, end)


def test_notices_follow_the_rule() -> None:
    co2, service = POLICY.rule("co2-high"), POLICY.rule("service")
    assert rules.notice_wanted(co2, "acknowledged") and rules.notice_wanted(co2, "returned")
    assert not rules.notice_wanted(co2, "mode")
    assert not rules.notice_wanted(service, "acknowledged") and not rules.notice_wanted(None, "returned")


def paris(y: int, m: int, d: int, hh: int, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=PARIS).astimezone(UTC)


@pytest.mark.parametrize(("at", "who"), [
    (paris(2026, 12, 2, 10), ("carol",)),  # Wednesday day shift
    (paris(2026, 12, 2, 18), ("alice",)),  # the night shift starts at 18:00 sharp
    (paris(2026, 12, 3, 3), ("alice",)),  # Thursday 03:00: Wednesday's night shift, past midnight
    (paris(2026, 12, 5, 3), ("alice", "dave")),  # Saturday 03:00: Friday's night shift and Saturday's whole day
    (paris(2026, 12, 5, 12), ("dave",)),
    (paris(2026, 12, 7, 3), ()),  # Monday 03:00: a gap in this rota (Sunday's day ended at 00:00): nobody
    (paris(2026, 12, 7, 8), ("carol",)),
    (paris(2026, 3, 31, 7), ("alice",)),  # after the spring change of clocks: 07:00 local is still the night
    (paris(2026, 10, 27, 7, 30), ("alice",)),  # after the autumn change
])
def test_who_is_on_call_in_the_sites_time_zone(at: datetime, who: tuple[str, ...]) -> None:
    rota = POLICY.rota("incubators")
    assert rota is not None
    assert rules.on_call(rota, [], at, PARIS) == who


def test_the_newest_override_covering_an_instant_wins() -> None:
    rota = POLICY.rota("incubators")
    assert rota is not None
    night = paris(2026, 12, 24, 23)
    holiday = Override("incubators", paris(2026, 12, 24, 18), paris(2026, 12, 26, 8), ("erin",))
    swap = Override("incubators", paris(2026, 12, 24, 22), paris(2026, 12, 25, 2), ("frank",))
    other = Override("freezers", paris(2026, 12, 24, 0), paris(2026, 12, 27, 0), ("gina",))
    assert rules.on_call(rota, [holiday], night, PARIS) == ("erin",)
    assert rules.on_call(rota, [holiday, swap, other], night, PARIS) == ("frank",)
    assert rules.on_call(rota, [holiday, swap], paris(2026, 12, 25, 2), PARIS) == ("erin",)  # the swap ended
    assert rules.on_call(rota, [holiday], paris(2026, 12, 26, 8), PARIS) == ("dave",)  # end is exclusive


def test_recipients_of_a_tier_in_order_each_once() -> None:
    rule = POLICY.rule("co2-high")
    assert rule is not None
    tier = rules.Tier(notify=rules.Recipients(users=("bob", "alice"), rotas=("incubators",), roles=("admin",)))
    got = rules.recipients(tier, POLICY, [], paris(2026, 12, 3, 3), PARIS, {"admin": ("root", "bob")})
    assert got == ("bob", "alice", "root")
    assert rules.recipients(rule.tiers[2], POLICY, [], paris(2026, 12, 3, 3), PARIS, {}) == ()


@pytest.mark.parametrize(("doc", "message"), [
    ({"rules": [{"name": "x", "tiers": []}]}, "at least 1"),
    ({"rules": [{"name": "x", "tiers": [{"notify": {}}]}]}, "must notify someone"),
    ({"rules": [{"name": "x", "tiers": [{"notify": {"users": ["bob"]}}, {"notify": {"users": ["ann"]}}]}]},
     "tier 2 needs after_min > 0"),
    ({"rules": [{"name": "x", "tiers": [{"notify": {"rotas": ["nights"]}}]}]}, "unknown rota nights"),
    ({"rules": [{"name": "x", "tiers": [{"notify": {"users": ["bob"]}, "repeats": 2}]}]}, "repeats need"),
    ({"rules": [{"name": "x", "tiers": [{"notify": {"users": ["bob"]}}]},
                {"name": "x", "tiers": [{"notify": {"users": ["bob"]}}]}]}, "rule names must be unique: x"),
    ({"rules": [{"name": "x", "delay": 5, "tiers": [{"notify": {"users": ["bob"]}}]}]}, "Extra inputs"),
    ({"rotas": [{"name": "r", "shifts": [{"days": ["monday"], "start": "08:00", "end": "18:00",
                                          "users": ["a1"]}]}]}, "days"),
    ({"rotas": [{"name": "r", "shifts": [{"days": ["mon"], "start": "25:00", "end": "18:00", "users": ["a1"]}]}]},
     "start"),
    ({"rotas": [{"name": "r", "shifts": [{"days": ["mon"], "start": "18:00Z", "end": "08:00", "users": ["a1"]}]}]},
     "without an offset"),
    ({"rules": [{"name": "x", "match": {"priorities": ["urgent"]}, "tiers": [{"notify": {"users": ["bob"]}}]}]},
     "priorities"),
    ({"rules": [{"name": "x", "delay_min": float("nan"), "tiers": [{"notify": {"users": ["bob"]}}]}]},
     "delay_min"),
])
def test_a_bad_policy_is_refused_with_the_reason(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Policy.model_validate(doc)
    assert message in str(exc.value)


def test_a_policy_survives_its_own_json() -> None:
    again = Policy.model_validate(POLICY.model_dump(mode="json"))
    assert again == POLICY
    assert rules.plan(again.rules[0], datetime(2026, 1, 1, tzinfo=UTC))[0].due_at == datetime(
        2026, 1, 1, tzinfo=UTC) + timedelta(minutes=2)
