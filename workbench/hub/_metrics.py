"""``/metrics``: the hub's counters in Prometheus' text format (prometheus_client), read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from workbench.hub._service import Hub


class _HubCollector:
    """Reads the hub's live counters on each scrape (no second set of counters to keep in step)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        health = self.hub.health()
        yield GaugeMetricFamily("workbench_hub_uptime_seconds", "Seconds since the hub started",
                                value=health["uptime_s"])
        yield GaugeMetricFamily("workbench_hub_ingest_backlog", "Telemetry batches received, not yet committed",
                                value=health["backlog"])
        yield CounterMetricFamily("workbench_hub_stream_drops", "Live points a slow stream client did not get (it "
                                  "can query them)", value=health["stream_drops"])
        points = CounterMetricFamily("workbench_hub_points", "Telemetry points committed", labels=["device"])
        batches = CounterMetricFamily("workbench_hub_batches", "Telemetry batches committed", labels=["device"])
        duplicates = CounterMetricFamily("workbench_hub_duplicate_batches", "Telemetry batches received again "
                                         "(resent after a lost ack) and not stored twice", labels=["device"])
        for device, stats in sorted(self.hub.stats().items()):
            points.add_metric([device], float(stats.get("points", 0)))
            batches.add_metric([device], float(stats.get("batches", 0)))
            duplicates.add_metric([device], float(stats.get("duplicates", 0)))
        yield from (points, batches, duplicates)
        sync = CounterMetricFamily("workbench_hub_sync", "Sync receiver counters by kind", labels=["device", "kind"])
        for device, counters in sorted(self.hub.sync_stats().items()):
            for kind, value in sorted(counters.items()):
                sync.add_metric([device, kind], float(value))
        yield sync
        rejects = CounterMetricFamily("workbench_hub_rejected_messages", "Messages the hub's receivers rejected and "
                                      "went on, by receiver, device and kind", labels=["receiver", "device", "kind"])
        for receiver, log in (("sync", self.hub.receiver.reject_log), ("telemetry", self.hub.ingestor.reject_log)):
            for device, kinds in sorted(log.by_device().items()):
                for kind, value in sorted(kinds.items()):
                    rejects.add_metric([receiver, device, kind], float(value))
        yield rejects


def exposition(hub: Hub) -> tuple[bytes, str]:
    """The scrape body and its content type.

    Example:
        >>> body, kind = exposition(hub)   # doctest: +SKIP
        >>> b"workbench_hub_points_total" in body
        True
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HubCollector(hub))
    return generate_latest(registry), CONTENT_TYPE_LATEST
