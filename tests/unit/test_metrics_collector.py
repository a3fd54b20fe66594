"""The /metrics collector over a runtime's parts: alarms by priority and state, device reconnects and time offline,
the writer's and the engine's histograms, and per-replica ownership and leadership."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client.parser import text_string_to_metric_families

from app.alarms.model import AlarmStatus
from app.api.metrics import render_metrics
from app.core.histogram import Histogram
from app.core.live import LiveHub
from drivers.base import DeviceState
from drivers.supervisor import SupervisorStats


def _samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@dataclass
class FakeAlarm:
    prio: str
    status: AlarmStatus

    @property
    def state(self) -> Any:
        return SimpleNamespace(status=self.status)

    def priority(self) -> str:
        return self.prio


@dataclass
class FakeAlarms:
    alarms: list[FakeAlarm]
    stats: dict[str, int] = field(default_factory=lambda: {"transitions": 7})

    def active(self) -> list[FakeAlarm]:
        return [a for a in self.alarms if a.status is not AlarmStatus.NORMAL]


class FakeHub:
    def __init__(self, stats: dict[str, SupervisorStats | None]) -> None:
        self.status = {name: SimpleNamespace(state=DeviceState.ONLINE if s else DeviceState.STOPPED)
                       for name, s in stats.items()}
        self._stats = stats

    def stats(self, name: str) -> dict[str, Any]:
        s = self._stats.get(name)
        return asdict(s) if s is not None else {}


class FakeCluster:
    replica_id = "service-2"
    stats = {"takeovers": 3, "handovers": 1, "renew_failures": 2, "lost": 1}

    def owned_devices(self) -> set[str]:
        return {"incubator-1"}

    def is_leader(self) -> bool:
        return True


def _runtime(**parts: Any) -> Any:
    base: dict[str, Any] = {"buffer": None, "writer": None, "live": LiveHub(), "alarms": None, "sender": None,
                            "hub": None, "engine": None, "devices": []}
    base.update(parts)
    return SimpleNamespace(**base)


def test_alarms_are_counted_by_priority_and_state_with_zeros_for_the_rest() -> None:
    alarms = FakeAlarms([FakeAlarm("high", AlarmStatus.ACTIVE_UNACK), FakeAlarm("high", AlarmStatus.ACTIVE_UNACK),
                         FakeAlarm("low", AlarmStatus.SHELVED), FakeAlarm("medium", AlarmStatus.NORMAL)])
    got = _samples(render_metrics(cast(Any, _runtime(alarms=alarms))).decode())
    active = got["culturectl_alarms_active"]
    assert active[(("priority", "high"), ("state", "active_unack"))] == 2
    assert active[(("priority", "low"), ("state", "shelved"))] == 1
    assert active[(("priority", "medium"), ("state", "active_ack"))] == 0
    assert not any(dict(k)["state"] == "normal" for k in active)
    assert len(active) == 4 * 6 and sum(active.values()) == 3
    assert got["culturectl_alarm_transitions_total"][()] == 7


def test_reconnects_and_offline_seconds_per_supervised_device_the_outage_in_progress_included() -> None:
    up = SupervisorStats(reconnects=2, offline_seconds=12.5)
    down = SupervisorStats(reconnects=1, offline_seconds=3.0, offline_since_monotonic=0.0)  # offline since boot
    hub = FakeHub({"incubator-1": up, "culture-system-1": down, "not-mine": None})
    got = _samples(render_metrics(cast(Any, _runtime(hub=hub))).decode())
    assert got["culturectl_device_reconnects_total"] == {(("device", "incubator-1"),): 2,
                                                         (("device", "culture-system-1"),): 1}
    offline = got["culturectl_device_offline_seconds_total"]
    assert offline[(("device", "incubator-1"),)] == 12.5
    assert offline[(("device", "culture-system-1"),)] > 3.0  # plus the running outage
    assert (("device", "not-mine"),) not in offline  # another replica supervises it


def test_writer_and_engine_histograms_come_from_their_counters() -> None:
    seconds, rows, passes = Histogram((0.01, 0.1)), Histogram((10, 100)), Histogram((0.5, 1.0))
    for v in (0.005, 0.05):
        seconds.observe(v)
    rows.observe(50)
    passes.observe(0.7)
    writer = SimpleNamespace(stats=lambda: {"db_up": True, "batch_seconds": seconds.snapshot(),
                                            "batch_rows": rows.snapshot(), "spool_age_seconds": 4.0})
    engine = SimpleNamespace(pass_seconds=passes)
    got = _samples(render_metrics(cast(Any, _runtime(writer=writer, engine=engine))).decode())
    assert got["culturectl_writer_batch_seconds_bucket"] == {(("le", "0.01"),): 1, (("le", "0.1"),): 2,
                                                             (("le", "+Inf"),): 2}
    assert got["culturectl_writer_batch_seconds_count"][()] == 2
    assert got["culturectl_writer_batch_rows_sum"][()] == 50
    assert got["culturectl_engine_pass_seconds_bucket"][(("le", "1.0"),)] == 1
    assert got["culturectl_spool_age_seconds"][()] == 4.0 and got["culturectl_database_up"][()] == 1


def test_ownership_leadership_and_leases_per_replica() -> None:
    devices = [SimpleNamespace(name="incubator-1"), SimpleNamespace(name="culture-system-1")]
    got = _samples(render_metrics(cast(Any, _runtime(devices=devices, cluster=FakeCluster()))).decode())
    assert got["culturectl_device_owned"] == {
        (("device", "incubator-1"), ("replica", "service-2")): 1,
        (("device", "culture-system-1"), ("replica", "service-2")): 0,
    }
    assert got["culturectl_leader"] == {(("replica", "service-2"),): 1}
    assert got["culturectl_lease_takeovers_total"] == {(("replica", "service-2"),): 3}
    assert got["culturectl_lease_lost_total"] == {(("replica", "service-2"),): 1}
    assert got["culturectl_lease_renew_failures_total"] == {(("replica", "service-2"),): 2}


def test_without_a_cluster_the_families_are_declared_but_empty() -> None:
    text = render_metrics(cast(Any, _runtime(devices=[SimpleNamespace(name="incubator-1")]))).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("culturectl_device_owned", "culturectl_leader", "culturectl_lease_takeovers"):
        assert families[name].samples == []
