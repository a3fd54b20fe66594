"""Prometheus metrics read from the runtime's counters at scrape time (no global registry)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from drivers.base import DeviceState

if TYPE_CHECKING:
    from app.runtime import Runtime


def _num(stats: Mapping[str, object] | None, key: str) -> float:
    value = (stats or {}).get(key)
    return float(value) if isinstance(value, int | float) else 0.0


class RuntimeCollector(Collector):
    """Exports the ingest, buffer, live and device counters of one runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

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


def render_metrics(runtime: Runtime) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    return generate_latest(registry)
