"""`fleet.telemetry`: ingestion into a store, queries as DataFrames, alert rules, device configuration."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench._settings import settings
from workbench.errors import ConfigError
from workbench.protocol import schema, topics
from workbench.telemetry._alerts import AlertEngine, AlertRule
from workbench.telemetry._ingest import FeedInfo, Ingestor, PointsListener, Store
from workbench.telemetry._time import Duration, Instant, epoch, seconds

if TYPE_CHECKING:
    import pandas as pd

    from workbench.fleet._fleet import Fleet


def open_store(path: str | os.PathLike[str] | None = None, *, backend: str = "duckdb", dsn: str | None = None,
               **options: Any) -> Store:
    """A store by backend name: ``duckdb`` (file or in memory) or ``postgres`` (``dsn``).

    Example:
        >>> open_store().backend
        'duckdb'
    """
    if backend == "duckdb":
        from workbench.telemetry._store import DuckDBStore

        return DuckDBStore(path, **options)
    if backend == "postgres":
        from workbench.telemetry._postgres import PostgresStore

        if not dsn:
            raise ConfigError("the postgres backend needs dsn='postgresql://user:pw@host/db'")
        return PostgresStore(dsn, **options)
    raise ConfigError(f"unknown telemetry backend {backend!r}; choose 'duckdb' or 'postgres'")


def _stats_view() -> Any:
    from workbench._table import Column, View, epoch_seconds, seconds_to_ms

    return View(
        (Column("device_id", "device"), Column("points", "points"), Column("batches", "batches"),
         Column("missing", "batches lost"), Column("out_of_order", "late batches"),
         Column("older_than_first", "backlog batches"),
         Column(("malformed", "truncated", "oversized", "unknown_version", "spoofed"), "rejected"),
         Column("clock_offset_s", "clock offset (ms)", seconds_to_ms),
         Column("last_received", "last received (UTC)", epoch_seconds), Column("tag_source", "source")),
        note="late batches were skipped past, then arrived (not lost); backlog batches were queued before this "
             "receiver listened; batches lost never arrived.")


class TelemetryViews(ABC):
    """What ``fleet.telemetry`` offers, whoever receives: this process (:class:`Telemetry`) or the fleet's hub.

    A receiving end implements :meth:`query`, :meth:`counters`, :meth:`feeds`, :meth:`flush`,
    :meth:`subscribe`, the alert methods and :meth:`close`; the tables and waits here are built on them.
    """

    fleet: Fleet

    @abstractmethod
    def query(self, metric: str | list[str], *, devices: str | list[str] | None = "all", since: Instant = "10m",
              until: Instant = None, every: Duration | None = None, agg: str = "mean") -> pd.DataFrame:
        ...

    @abstractmethod
    def counters(self) -> dict[str, dict[str, Any]]:
        """Per-device ingestion counters (see :meth:`stats` for the table)."""
        ...

    @abstractmethod
    def feeds(self) -> dict[str, FeedInfo]:
        """Each device's stream: when it last sent, its tags, the newest value of each metric."""
        ...

    @abstractmethod
    def flush(self, timeout: float = 1.0) -> bool:
        """Wait (at most ``timeout`` s) until what was received so far can be queried; True if it can."""
        ...

    @abstractmethod
    def subscribe(self, metrics: list[str], listener: PointsListener) -> Callable[[], None]:
        """Call ``listener(device, metric, ts, values)`` with new points of ``metrics``; returns the unsubscribe."""
        ...

    @abstractmethod
    def add_rule(self, name: str, metric: str, **conditions: Any) -> AlertRule:
        ...

    @abstractmethod
    def rules(self) -> list[AlertRule]:
        ...

    @abstractmethod
    def alerts(self, since: Instant = None) -> pd.DataFrame:
        ...

    @abstractmethod
    def close(self, timeout: float = 5.0) -> None:
        ...

    # -- built on the above ---------------------------------------------------------------------------

    def _devices(self, devices: str | list[str] | None) -> list[str] | None:
        if devices in (None, "all"):
            return None
        if isinstance(devices, str):
            return [devices]
        return list(devices)

    def feed(self, device_id: str) -> FeedInfo | None:
        """One device's :class:`FeedInfo` (None before its first batch)."""
        return self.feeds().get(device_id)

    def latest(self) -> pd.DataFrame:
        """The newest value of every metric per device (one row per device, one column per metric)."""
        import pandas as pd

        rows = {device: {name: value for name, (_, value) in feed.latest.items()}
                for device, feed in self.feeds().items()}
        return pd.DataFrame.from_dict(rows, orient="index").sort_index()

    def stats(self, *, wide: bool = False) -> pd.DataFrame:
        """Per-device ingestion counters: points, batches, duplicates, gaps, rejected kinds, clock offset.

        Shown compactly (device, points, batches, lost, late, backlog, rejected, clock offset
        in ms, last received as a UTC time); every column stays readable by code, and
        ``wide=True`` (or ``.full()``) shows them all. ``out_of_order`` ("late batches") counts
        batches skipped past (a gap) that arrived later: 0 on a healthy link.
        ``older_than_first`` ("backlog batches") counts batches older than the first this
        receiver saw: queued or in flight before it listened. ``missing`` (shown as "batches
        lost") is what never arrived.

        Example:
            >>> fleet.telemetry.stats()                       # doctest: +SKIP
            >>> fleet.telemetry.stats(wide=True).columns      # doctest: +SKIP
        """
        import pandas as pd

        from workbench._table import Table

        frame = pd.DataFrame.from_dict(self.counters(), orient="index")
        frame.index.name = "device_id"
        frame = frame.reset_index()
        return frame if wide else Table.of(frame, _stats_view())

    def health(self) -> pd.DataFrame:
        """The fleet health table: online, model version, p95 latency, errors, and the sync backlog.

        ``sync_backlog`` is the device's queued outbox items (all priorities) as it last reported
        them; empty until its first report.
        """
        import pandas as pd

        feeds = self.feeds()
        sync = self.fleet.running_sync
        backlog = sync.backlog() if sync is not None else {}
        rows = []
        for device in self.fleet.devices:
            feed = feeds.get(device.device_id)
            latest = feed.latest if feed else {}
            tags = feed.tags if feed else {}
            model = device.active_model or {}
            rows.append({
                "device_id": device.device_id,
                "online": device.online,
                "profile": device.profile,
                "model": tags.get("model") or (model.get("name") if isinstance(model, dict) else None),
                "model_version": tags.get("model_version") or (model.get("version") if isinstance(model, dict)
                                                               else None),
                "latency_p95_ms": latest.get("latency_p95_ms", (None, np.nan))[1],
                "throughput": latest.get("throughput", (None, np.nan))[1],
                "errors": latest.get("errors", (None, np.nan))[1],
                "cpu_percent": latest.get("cpu_percent", (None, np.nan))[1],
                "missing_batches": feed.missing if feed else 0,
                "sync_backlog": backlog.get(device.device_id),
                "last_telemetry": feed.last_received if feed else None,
            })
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame["last_telemetry"] = pd.to_datetime(frame["last_telemetry"], unit="s", utc=True)
        return frame

    # -- devices ---------------------------------------------------------------------------------------

    def configure(self, devices: str | list[str] = "all", *, retain: bool = False, timeout: float = 10.0,
                  **settings: Any) -> dict[str, dict[str, Any]]:
        """Change devices' telemetry and inference settings (source, rate_hz, publish_interval_s, ...).

        With ``retain=True`` the settings are also published as retained desired state,
        so a device that restarts or comes online later gets them too.

        Example:
            >>> fleet.telemetry.configure("sim-01", source="sensors", rate_hz=10)   # doctest: +SKIP
        """
        if "model" in settings:
            raise ConfigError("telemetry.configure(model=...) was removed: a device serves only signed packages it "
                              "has verified, never a file named by its path; deploy the model first "
                              "(fleet.deploy(workbench.deploy.build_package(MODEL.onnx, OUT_DIR).path)), then "
                              "configure the source")
        names = [d.device_id for d in self.fleet.online()] if devices == "all" else self._devices(devices) or []
        results = {}
        for name in names:
            if retain:
                self.fleet.bus.publish_state(topics.desired_topic(name, "telemetry"), schema.encode(settings),
                                             timeout=timeout)
            results[name] = self.fleet.call(name, "telemetry.configure", settings, timeout=timeout)
        return results

    def wait_for(self, metric: str, *, devices: str | list[str] | None = "all", count: int = 1,
                 timeout: float = 30.0, since: Instant = None) -> None:
        """Block until every named device (or any, for "all") has stored ``count`` points of ``metric``.

        ``since`` counts only recent points: a device that was cut off first drains its older backlog.

        Example:
            >>> fleet.telemetry.wait_for("cpu_percent", devices=["sim-01"], since="1m")   # doctest: +SKIP
        """
        from workbench.errors import FleetTimeoutError

        wanted = self._devices(devices)
        deadline = time.monotonic() + timeout
        while True:
            self.flush(timeout=1.0)
            frame = self.query(metric, devices=wanted or "all", since=since)
            per_device = frame.groupby("device_id").size() if not frame.empty else {}
            have = {d: int(n) for d, n in dict(per_device).items()}
            if (wanted and all(have.get(d, 0) >= count for d in wanted)) or (not wanted and have and
                                                                               max(have.values()) >= count):
                return
            if time.monotonic() > deadline:
                raise FleetTimeoutError(f"{metric}: {have or 'no points'} after {timeout:g} s (wanted {count} per "
                                        "device); is telemetry enabled and the source configured?")
            time.sleep(0.1)

class Telemetry(TelemetryViews):
    """The fleet's telemetry: an ingestor storing every device's batches, and queries over them.

    Made on first use of ``fleet.telemetry`` with an in-memory DuckDB store, or by
    ``Telemetry(fleet, path=...)`` for a file (``$WORKBENCH_TELEMETRY_DB`` sets the
    default path) or ``backend="postgres", dsn=...``.

    Devices send telemetry through their sync outbox; the fleet's sync receiver (started
    here if needed, see :mod:`workbench.sync`) hands each batch to :attr:`ingestor` and
    acknowledges it once its insert has committed. The newest ``Telemetry`` made for a
    fleet is the one that receives; ``receive=False`` leaves that to the caller.

    Example:
        >>> fleet.telemetry.query("latency_p95_ms", devices="all", since="10m", every="5s")   # doctest: +SKIP
        >>> fleet.telemetry.add_rule("slow", "latency_p95_ms", above=50)                       # doctest: +SKIP
        >>> fleet.telemetry.alerts()                                                           # doctest: +SKIP
    """

    def __init__(self, fleet: Fleet, *, path: str | os.PathLike[str] | None = None, backend: str = "duckdb",
                 dsn: str | None = None, store: Store | None = None, receive: bool = True,
                 **ingest_options: Any) -> None:
        self.fleet = fleet
        if receive:
            fleet.refuse_receiving_beside_hub("telemetry")
        if store is None:
            store = open_store(path if path is not None else settings().telemetry_db,
                               backend=backend, dsn=dsn)
        self.store: Any = store
        self.engine = AlertEngine()
        self.ingestor = Ingestor(store, alerts=self.engine, **ingest_options)
        if receive:
            from workbench.sync._client import receive_telemetry

            if fleet.running_telemetry is None:
                fleet.attach_telemetry(self)  # so the sync started below finds this one, not a second
            receive_telemetry(fleet, self)

    # -- queries ---------------------------------------------------------------------------------

    def query(self, metric: str | list[str], *, devices: str | list[str] | None = "all", since: Instant = "10m",
              until: Instant = None, every: Duration | None = None, agg: str = "mean") -> pd.DataFrame:
        """History of ``metric`` as a DataFrame with columns time (UTC), device_id, metric, value.

        ``every`` buckets the points (``agg``: mean, min, max, sum, count, first, last).

        Example:
            >>> fleet.telemetry.query("latency_p95_ms", devices="all", since="10m", every="5s")  # doctest: +SKIP
        """
        now = time.time()
        bucket = seconds(every, "every") if every is not None else None
        if bucket is not None and bucket <= 0:
            raise ConfigError(f"every {every!r} must be a positive duration, e.g. '5s' or '1m'")
        return self.store.query(metric, self._devices(devices), epoch(since, now=now, what="since"),
                                epoch(until, now=now, what="until"), bucket, agg)

    def counters(self) -> dict[str, dict[str, Any]]:
        return self.ingestor.stats()

    def feeds(self) -> dict[str, FeedInfo]:
        return self.ingestor.feed_infos()

    def flush(self, timeout: float = 1.0) -> bool:
        return self.ingestor.wait_idle(timeout=timeout)

    def subscribe(self, metrics: list[str], listener: PointsListener) -> Callable[[], None]:
        return self.ingestor.subscribe(metrics, listener)

    # -- alerts ---------------------------------------------------------------------------------------

    def add_rule(self, name: str, metric: str, **conditions: Any) -> AlertRule:
        """Add (or replace) an alert rule; see :class:`AlertRule` for the conditions.

        Example:
            >>> fleet.telemetry.add_rule("anomaly", "anomaly_score", above=0.5, for_points=3)   # doctest: +SKIP
        """
        rule = AlertRule(name, metric, **conditions)
        self.engine.add(rule)
        return rule

    def rules(self) -> list[AlertRule]:
        return list(self.engine.rules.values())

    def alerts(self, since: Instant = None) -> pd.DataFrame:
        """Fired alerts as a DataFrame: time, device_id, rule, metric, value, message."""
        return self.store.alerts(epoch(since, what="since"))

    def close(self, timeout: float = 5.0) -> None:
        """Stop intake, let the writer store the backlog (up to ``timeout`` s, the rest is logged), close the store.

        Example:
            >>> fleet.telemetry.close()   # doctest: +SKIP
        """
        self.ingestor.close(timeout=timeout)  # returns only once the writer no longer touches the store
        self.store.close()
