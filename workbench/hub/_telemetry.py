"""``fleet.telemetry`` and the sync store of a fleet whose hub receives: every view reads the hub.

Nothing is received or acknowledged in this process: queries, counters and alerts come from the
hub's store over HTTP, and live points from its stream, so every kernel, dashboard and command
sees the same history, from before it opened too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workbench.hub._client import HubClient, HubStream
from workbench.telemetry._alerts import AlertRule
from workbench.telemetry._client import TelemetryViews
from workbench.telemetry._ingest import FeedInfo
from workbench.telemetry._time import Duration, Instant

if TYPE_CHECKING:
    import pandas as pd

    from workbench.fleet._fleet import Fleet
    from workbench.telemetry._ingest import PointsListener


class HubTelemetry(TelemetryViews):
    """The telemetry views of :class:`~workbench.telemetry.TelemetryViews`, answered by the fleet's hub.

    Example:
        >>> fleet.telemetry.query("latency_p95_ms", since="24h", every="1m")   # doctest: +SKIP
    """

    def __init__(self, fleet: Fleet, hub: HubClient) -> None:
        self.fleet = fleet
        self.hub = hub
        self._streams: list[HubStream] = []

    def query(self, metric: str | list[str], *, devices: str | list[str] | None = "all", since: Instant = "10m",
              until: Instant = None, every: Duration | None = None, agg: str = "mean") -> pd.DataFrame:
        return self.hub.query(metric, devices=devices, since=since, until=until, every=every, agg=agg)

    def counters(self) -> dict[str, dict[str, Any]]:
        return self.hub.counters()

    def feeds(self) -> dict[str, FeedInfo]:
        return {device: FeedInfo.from_json(entry) for device, entry in self.hub.feeds().items()}

    def flush(self, timeout: float = 1.0) -> bool:
        return self.hub.flush(timeout)

    def subscribe(self, metrics: list[str], listener: PointsListener) -> Callable[[], None]:
        stream = self.hub.stream(metrics, listener)
        self._streams.append(stream)

        def unsubscribe() -> None:
            stream.close()
            if stream in self._streams:
                self._streams.remove(stream)

        return unsubscribe

    def add_rule(self, name: str, metric: str, **conditions: Any) -> AlertRule:
        rule = AlertRule(name, metric, **conditions)  # checked here first: the error names the rule at once
        self.hub.add_rule(name, metric, **conditions)
        return rule

    def rules(self) -> list[AlertRule]:
        return [AlertRule(**entry) for entry in self.hub.rules()]

    def alerts(self, since: Instant = None) -> pd.DataFrame:
        return self.hub.alerts(since)

    def close(self, timeout: float = 5.0) -> None:
        for stream in list(self._streams):
            stream.close()
        self._streams.clear()


class HubSyncStore:
    """The read side of the hub's sync store, for ``fleet.sync.store`` of a fleet with a hub.

    Example:
        >>> fleet.sync.store.seqs("sim-01")   # doctest: +SKIP
        [1, 2, 3]
    """

    def __init__(self, hub: HubClient) -> None:
        self.hub = hub

    def rows(self, device: str) -> list[tuple[int, str, str, float]]:
        return self.hub.sync_rows(device)

    def seqs(self, device: str, kind: str | None = None) -> list[int]:
        return self.hub.sync_seqs(device, kind)
