"""The People pages' pure views: a user's state in words, a password's age, a policy's rules and rotas in words."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from app.notify import rules
from app.web import people

NOW = datetime(2025, 6, 4, 12, 0, tzinfo=UTC)


def test_user_state_is_a_word_never_a_colour_alone() -> None:
    assert people.user_state({"disabled": False, "locked": False}) == "active"
    assert people.user_state({"disabled": True, "locked": False}) == "disabled"
    assert people.user_state({"disabled": False, "locked": True}) == "locked"
    assert people.user_state({"disabled": True, "locked": True}) == "disabled, locked"


def test_password_age_says_when_it_is_past_the_limit() -> None:
    assert people.password_age(NOW - timedelta(minutes=5), NOW, 0) == {"text": "5 min", "expired": False}
    assert people.password_age(NOW - timedelta(hours=30), NOW, 90)["text"] == "30 h"
    old = people.password_age(NOW - timedelta(days=120), NOW, 90)
    assert old == {"text": "120 days (expired: the limit is 90 days)", "expired": True}
    assert people.password_age(NOW - timedelta(days=120), NOW, 0)["expired"] is False  # 0: no limit


def test_rules_and_rotas_in_words() -> None:
    assert people.match_text(rules.Match()) == "any alarm"
    assert people.match_text(rules.Match(priorities=("high",), devices=("incubator-*",), run="bound")) == \
        "priority high; device incubator-*; serving a run"
    first = rules.Tier(notify=rules.Recipients(rotas=("day",), channels=("sms",)))
    assert people.tier_text(1, first) == "Tier 1: on call in day (by sms only)"
    second = rules.Tier(notify=rules.Recipients(users=("ann",), roles=("supervisor",)), after_min=15, repeats=2,
                        repeat_every_min=5)
    assert people.tier_text(2, second) == ("Tier 2: users ann; every supervisor, after 15 min without "
                                           "acknowledgement, repeated 2 times, every 5 min")
    night = rules.Shift(days=("fri",), start=time(18), end=time(8), users=("bob",))
    assert people.shift_text(night) == "fri 18:00 to 08:00 (next day): bob"
    assert people.shift_text(rules.Shift(days=("sat", "sun"), start=time(0), end=time(0), users=("cy",))) == \
        "sat, sun all day: cy"


def test_policy_view_keeps_the_rules_order() -> None:
    doc = {"rules": [{"name": "b", "tiers": [{"notify": {"users": ["ann"]}}], "notify_acknowledged": True},
                     {"name": "a", "tiers": [{"notify": {"users": ["ann"]}}]}],
           "rotas": [{"name": "day", "shifts": [{"days": ["mon"], "start": "08:00", "end": "16:00",
                                                 "users": ["ann"]}]}]}
    view = people.policy_view(doc)
    assert view is not None
    assert [r["name"] for r in view["rules"]] == ["b", "a"] and view["rules"][0]["tells"] == ["acknowledged"]
    assert view["rotas"][0]["shifts"] == ["mon 08:00 to 16:00: ann"]
    assert people.policy_view(None) is None
