"""Prometheus metrics read from the runtime's counters at scrape time (no global registry)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from app.alarms.model import AlarmStatus, Priority
from app.api.http_metrics import HttpMetrics
from app.auth.throttle import KINDS, RULES, Limits
from app.core.histogram import Histogram
from drivers.base import DeviceState
from drivers.supervisor import offline_total

if TYPE_CHECKING:
    from app.runtime import Runtime


def _num(stats: Mapping[str, object] | None, key: str) -> float:
    value = (stats or {}).get(key)
    return float(value) if isinstance(value, int | float) else 0.0


def _buckets(snapshot: Mapping[str, Any] | Histogram | None) -> tuple[list[tuple[str, float]], float] | None:
    """(cumulative buckets, sum) of a Histogram or of its snapshot(); None when there is none."""
    if isinstance(snapshot, Histogram):
        return snapshot.cumulative(), snapshot.sum
    if not isinstance(snapshot, Mapping) or not snapshot.get("buckets"):
        return None
    return [(str(le), float(n)) for le, n in snapshot["buckets"]], float(snapshot.get("sum") or 0.0)


def _histogram(name: str, doc: str, snapshot: Mapping[str, Any] | Histogram | None) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc)
    data = _buckets(snapshot)
    if data is not None:
        h.add_metric([], data[0], data[1])
    return h


# Every priority and every state but normal: a series for each, 0 included, so graphs and alerts have no holes.
_ALARM_STATES = [s for s in AlarmStatus if s is not AlarmStatus.NORMAL]


class RuntimeCollector(Collector):
    """Exports the ingest, buffer, live, device, alarm, engine, HTTP and cluster counters of one runtime."""

    def __init__(self, runtime: Runtime, http: HttpMetrics | None = None) -> None:
        self.runtime = runtime
        self.http = http

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        buf = rt.buffer.stats() if rt.buffer is not None else {}
        wr = rt.writer.stats() if rt.writer is not None else {}
        for name, key, doc in (
            ("culturectl_buffer_accepted", "accepted", "readings accepted by the ingest buffer"),
            ("culturectl_buffer_dropped", "dropped", "readings dropped by the buffer's overflow policy"),
            ("culturectl_ingest_rows_written", "rows_written", "telemetry rows committed"),
            ("culturectl_ingest_quarantined", "quarantined", "rows quarantined after repeated rejection"),
            ("culturectl_ingest_duplicates_skipped", "duplicates_skipped", "replayed rows already stored"),
            ("culturectl_ingest_spooled_rows", "spooled_rows", "rows spooled to disk while the database was down"),
            ("culturectl_ingest_replayed_rows", "replayed_rows", "spooled rows replayed into the database"),
            ("culturectl_ingest_gap_rows", "gap_rows", "readings lost to a full spool (each covered by a gap record)"),
        ):
            src = buf if name.startswith("culturectl_buffer") else wr
            c = CounterMetricFamily(name, doc)
            c.add_metric([], _num(src, key))
            yield c
        for name, src, key, doc in (
            ("culturectl_buffer_depth", buf, "depth", "readings waiting in the ingest buffer"),
            ("culturectl_spool_rows", wr, "spool_rows", "rows waiting in the disk spool"),
            ("culturectl_spool_capacity_rows", wr, "spool_capacity_rows", "rows the disk spool holds at most"),
            ("culturectl_spool_age_seconds", wr, "spool_age_seconds", "age of the oldest batch in the spool"),
            ("culturectl_spool_records", wr, "spool_records",
             "records of the service (alarm journal, deviations) waiting in the spool for the database"),
            ("culturectl_live_subscribers", rt.live.stats(), "subscribers", "open SSE streams"),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], _num(src, key))
            yield g
        db_up = GaugeMetricFamily("culturectl_database_up", "1 while the telemetry writer reaches the database")
        db_up.add_metric([], 1.0 if wr.get("db_up") else 0.0)
        yield db_up
        if rt.alarms is not None:
            for name, key, doc in (
                ("culturectl_alarm_records_spooled", "spooled", "alarm records moved to the spool (database down)"),
                ("culturectl_alarm_records_replayed", "replayed", "spooled alarm records written to the database"),
            ):
                c = CounterMetricFamily(name, doc)
                c.add_metric([], _num(rt.alarms.stats, key))
                yield c
        if rt.sender is not None:
            for name, key, doc in (
                ("culturectl_notifications_expanded", "expanded", "due notices expanded into deliveries"),
                ("culturectl_notifications_sent", "sent", "notification deliveries sent"),
                ("culturectl_notifications_retried", "retried", "failed attempts to be retried"),
                ("culturectl_notifications_failed", "failed", "notification deliveries that failed for good"),
            ):
                c = CounterMetricFamily(name, doc)
                c.add_metric([], _num(rt.sender.stats, key))
                yield c
            failing = GaugeMetricFamily("culturectl_notification_channel_failures",
                                        "consecutive failed attempts of a notification channel", labels=["channel"])
            for channel, n in sorted(rt.sender.failures().items()):
                failing.add_metric([channel], float(n))
            yield failing
        up = GaugeMetricFamily("culturectl_device_online", "1 when the device is online", labels=["device"])
        if rt.hub is not None:
            for dev, status in rt.hub.status.items():
                up.add_metric([dev], 1.0 if status.state is DeviceState.ONLINE else 0.0)
        yield up
        yield from self._devices()
        yield from self._alarms()
        yield _histogram("culturectl_writer_batch_seconds",
                         "wall seconds of one committed telemetry batch (COPY, rollup and COMMIT)",
                         wr.get("batch_seconds"))
        yield _histogram("culturectl_writer_batch_rows", "rows in one committed telemetry batch", wr.get("batch_rows"))
        yield _histogram("culturectl_engine_pass_seconds", "wall seconds of one completed pass of the schedule engine",
                         rt.engine.pass_seconds if rt.engine is not None else None)
        yield from self._http()
        yield from self._cluster()
        yield from self._limits()

    def _devices(self) -> Iterator[Metric]:
        hub = self.runtime.hub
        reconnects = CounterMetricFamily("culturectl_device_reconnects",
                                         "outages of a device that ended with it back online", labels=["device"])
        offline = CounterMetricFamily("culturectl_device_offline_seconds",
                                      "wall seconds the device was offline (the outage in progress included)",
                                      labels=["device"])
        if hub is not None:
            for dev in sorted(hub.status):
                stats = hub.stats(dev)
                if not stats:
                    continue  # not supervised by this process
                reconnects.add_metric([dev], _num(stats, "reconnects"))
                since = stats.get("offline_since_monotonic")
                offline.add_metric([dev], offline_total(_num(stats, "offline_seconds"),
                                                        float(since) if isinstance(since, int | float) else None))
        yield reconnects
        yield offline

    def _alarms(self) -> Iterator[Metric]:
        alarms = self.runtime.alarms
        active = GaugeMetricFamily("culturectl_alarms_active", "alarms not in state normal, by priority and state",
                                   labels=["priority", "state"])
        transitions = CounterMetricFamily("culturectl_alarm_transitions", "alarm state transitions annunciated")
        activations = CounterMetricFamily("culturectl_alarm_activations",
                                          "alarms that became active, evaluated by this replica")
        if alarms is not None:
            counts: dict[tuple[str, str], int] = {}
            for a in alarms.active():
                key = (a.priority(), a.state.status.value)
                counts[key] = counts.get(key, 0) + 1
            for prio in Priority:
                for state in _ALARM_STATES:
                    active.add_metric([prio.value, state.value], float(counts.pop((prio.value, state.value), 0)))
            for (prio_name, state_name), n in sorted(counts.items()):  # anything the enums do not name
                active.add_metric([prio_name, state_name], float(n))
            transitions.add_metric([], _num(alarms.stats, "transitions"))
            activations.add_metric([], _num(alarms.stats, "activations"))
        yield active
        yield transitions
        yield activations

    def _http(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("culturectl_http_requests",
                                       "HTTP requests by route template, method and status (counted when the "
                                       "response starts)", labels=["route", "method", "status"])
        duration = HistogramMetricFamily("culturectl_http_request_duration_seconds",
                                         "wall seconds from a request's arrival to the end of its response (SSE "
                                         "streams are not included)", labels=["route", "method"])
        if self.http is not None:
            for (route, method, status), n in sorted(self.http.requests.items()):
                requests.add_metric([route, method, status], float(n))
            for (route, method), hist in sorted(self.http.durations.items()):
                duration.add_metric([route, method], hist.cumulative(), hist.sum)
        yield requests
        yield duration

    def _cluster(self) -> Iterator[Metric]:
        rt = self.runtime
        cluster = getattr(rt, "cluster", None)
        owned = GaugeMetricFamily("culturectl_device_owned", "1 when this replica owns the device (holds its lease)",
                                  labels=["device", "replica"])
        leader = GaugeMetricFamily("culturectl_leader", "1 while this replica is the leader", labels=["replica"])
        counters = {
            key: CounterMetricFamily(f"culturectl_lease_{name}", doc, labels=["replica"])
            for key, name, doc in (
                ("takeovers", "takeovers", "device leases this replica took over from another (or from none)"),
                ("handovers", "handovers", "device leases this replica handed over"),
                ("renew_failures", "renew_failures", "failed renewals of this replica's leases"),
                ("lost", "lost", "device leases this replica lost (expired or taken while it held them)"),
            )
        }
        if cluster is not None:
            replica = str(cluster.replica_id)
            mine = set(cluster.owned_devices())
            for d in rt.devices:
                owned.add_metric([d.name, replica], 1.0 if d.name in mine else 0.0)
            leader.add_metric([replica], 1.0 if cluster.is_leader() else 0.0)
            for key, family in counters.items():
                family.add_metric([replica], _num(cluster.stats, key))
        yield owned
        yield leader
        yield from counters.values()


    def _limits(self) -> Iterator[Metric]:
        """The abuse limits (app/auth/throttle.py, app/api/limits.py): every series, 0 included."""
        lim: Limits = getattr(self.runtime, "limits", None) or Limits()  # a runtime without them: zeros
        throttled = CounterMetricFamily("culturectl_auth_throttled", "password checks refused (429) by an abuse "
                                        "limit, by rule and key kind", labels=["limit", "key"])
        trips = CounterMetricFamily("culturectl_auth_throttle_trips", "abuse limits that tripped (audited as "
                                    "auth.throttled), by rule and key kind", labels=["limit", "key"])
        for rule in RULES:
            for kind in KINDS:
                throttled.add_metric([rule, kind], float(lim.throttled.get((rule, kind), 0)))
                trips.add_metric([rule, kind], float(lim.trips.get((rule, kind), 0)))
        yield throttled
        yield trips
        for name, value, doc in (
            ("culturectl_auth_lockouts", lim.lockouts, "users locked by consecutive failed password checks"),
            ("culturectl_auth_auto_unlocks", lim.auto_unlocks, "locked users unlocked by the automatic unlock time"),
            ("culturectl_http_body_too_large", lim.body_too_large, "requests refused (413) for their body size"),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(value))
            yield c
        sse = CounterMetricFamily("culturectl_sse_refused", "live streams refused (503) by a cap", labels=["cap"])
        for cap in ("sse_streams_per_principal", "sse_streams_total"):
            sse.add_metric([cap], float(lim.sse_refused.get(cap, 0)))
        yield sse


def render_metrics(runtime: Runtime, http: HttpMetrics | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime, http))
    return generate_latest(registry)
