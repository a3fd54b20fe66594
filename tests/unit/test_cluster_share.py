"""Which leases a replica claims and hands over (app/cluster/share.py): spread, no churn, the leader once."""

from __future__ import annotations

from app.cluster.share import LEADER, LeaseView, Plan, device_lease, fair_share, plan

DEVICES = [device_lease(f"dev-{i}") for i in range(6)]


def _table(holders: dict[str, str | None], expired: frozenset[str] = frozenset()) -> dict[str, LeaseView]:
    table = {n: LeaseView(holders.get(n), n in expired) for n in DEVICES}
    table[LEADER] = LeaseView(holders.get(LEADER), LEADER in expired)
    return table


def _run(replicas: list[str], holders: dict[str, str | None], passes: int = 20) -> dict[str, str | None]:
    """Every replica plans in turn on the table the previous one left, like replicas passing one after another."""
    holders = dict(holders)
    for _ in range(passes):
        for me in replicas:
            p = plan(me, _table(holders), replicas)
            for name in p.release:
                holders[name] = None
            for name in p.claim:
                if holders.get(name) is None:
                    holders[name] = me
    return holders


def test_fair_share_rounds_up() -> None:
    assert [fair_share(6, n) for n in (1, 2, 3, 4, 7)] == [6, 3, 2, 2, 1]
    assert fair_share(3, 0) == 3


def test_a_replica_alone_claims_every_device_and_the_leader() -> None:
    p = plan("a", _table({}), ["a"])
    assert set(p.claim) == set(DEVICES) | {LEADER} and p.release == ()


def test_three_replicas_spread_the_devices_two_each_and_one_leads() -> None:
    holders = _run(["a", "b", "c"], {})
    counts = {r: sum(1 for n in DEVICES if holders[n] == r) for r in "abc"}
    assert counts == {"a": 2, "b": 2, "c": 2}
    assert holders[LEADER] in {"a", "b", "c"}


def test_a_joining_replica_gets_its_share_one_handover_at_a_time() -> None:
    holders: dict[str, str | None] = {n: "a" for n in DEVICES} | {LEADER: "a"}
    first = plan("a", _table(holders), ["a", "b"])
    assert len(first.release) == 1 and first.claim == ()  # one device per pass, never the leader
    holders = _run(["a", "b"], holders)
    assert sum(1 for n in DEVICES if holders[n] == "b") == 3
    assert holders[LEADER] == "a"  # leadership does not move while its holder lives


def test_a_balanced_cluster_never_churns() -> None:
    holders = {n: ("a" if i % 2 else "b") for i, n in enumerate(DEVICES)} | {LEADER: "a"}
    for me in ("a", "b"):
        assert plan(me, _table(holders), ["a", "b"]) == Plan()


def test_expired_leases_of_a_dead_replica_are_taken_over_by_the_survivors() -> None:
    holders = {n: ["a", "b", "c"][i % 3] for i, n in enumerate(DEVICES)} | {LEADER: "c"}
    dead = frozenset(n for n, h in holders.items() if h == "c")
    p = plan("a", _table(holders, dead), ["a", "b"])  # c is no longer live: share 3, a holds 2
    assert LEADER in p.claim
    assert len([n for n in p.claim if n != LEADER]) == 1
    assert all(n in dead for n in p.claim)


def test_a_stopping_replica_claims_nothing_and_releases_all() -> None:
    holders = {DEVICES[0]: "a", DEVICES[1]: "b", LEADER: "a"}
    p = plan("a", _table(holders), ["b"], stopping=True)
    assert p.claim == () and set(p.release) == {DEVICES[0], LEADER}


def test_an_over_share_replica_keeps_its_devices_when_nobody_is_below_share() -> None:
    # 7 devices over 2 replicas: share 4; a holds 4 and b 3 -> nothing moves
    devices = {device_lease(f"d{i}"): LeaseView("a" if i < 4 else "b", False) for i in range(7)}
    assert plan("a", devices, ["a", "b"]) == Plan()


def test_an_expired_lease_of_a_live_replica_is_left_to_it_to_renew() -> None:
    # the database was down for everyone: every lease expired, both replicas are back and live
    holders: dict[str, str | None] = {DEVICES[0]: "a", DEVICES[1]: "b", LEADER: "a"}
    claims = plan("b", _table(holders, frozenset(holders)), ["a", "b"]).claim
    assert DEVICES[0] not in claims and LEADER not in claims  # a's, expired, a renews them
    assert DEVICES[1] not in claims  # b's own: renewed, not claimed
    assert set(claims) <= {n for n in DEVICES if n not in holders}  # only the never-held ones
