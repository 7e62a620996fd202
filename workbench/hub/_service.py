"""The hub's core: the fleet's one receiver and acknowledger, and the stores it owns.

Devices' outboxes hold every item until it is acknowledged, and only the hub acknowledges,
after its store has committed: a hub killed at any point loses nothing, and a restarted one
stores nothing twice (telemetry batches and sync items are deduplicated by (device, sequence)
in the stores themselves). One hub owns a store: a second one is refused, naming the first, unless
both are replicas of one group on a PostgreSQL store (see :mod:`workbench.hub._replicas`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench._files import write_private
from workbench.errors import ConfigError, HubAlreadyRunningError
from workbench.hub._leader_alerts import LeaderAlerts
from workbench.hub._nats_queue import NatsQueue, check_group_name, parse_nats_urls
from workbench.hub._replicas import Leadership, check_shared_delivery
from workbench.hub._store_url import StoreURL
from workbench.protocol._bus import Bus
from workbench.protocol._mqtt import BrokerAddress
from workbench.sync._receiver import SyncReceiver
from workbench.sync._store import PostgresSyncStore, SyncStore
from workbench.telemetry._alerts import AlertEngine, AlertRule
from workbench.telemetry._client import open_store
from workbench.telemetry._ingest import Ingestor, PointsListener

if TYPE_CHECKING:
    import pandas as pd

    from workbench.fleet._fleet import Fleet
    from workbench.hub._rollouts import HubRollouts

log = logging.getLogger("workbench.hub")


class _Exclusive:
    """Proof that this process owns the store: a held flock (DuckDB), or an advisory lock (PostgreSQL) held
    alone by a single hub or shared by the members of one replica group (see :mod:`workbench.hub._replicas`)."""

    def __init__(self, store: StoreURL, data_dir: Path, group: str | None = None) -> None:
        self._handle: Any = None
        self._pg: Any = None
        if store.backend == "postgres":
            from workbench.hub._replicas import acquire_store

            self._pg = acquire_store(store, group)
            return
        if group is not None:
            raise ConfigError(f"hub replicas (--group {group}) share one PostgreSQL database; {store} is a DuckDB "
                              "file, which one process owns: give --store postgresql://user@host/db")
        lock = data_dir / "hub.lock"
        handle = open(lock, "a+")  # noqa: SIM115 - held open for the hub's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise HubAlreadyRunningError(
                f"another hub (pid {holder}) already owns the store {store} (lock {lock}); one hub receives and "
                "acknowledges a fleet's data: stop that one (`workbench down` for a local fleet), or give this hub "
                "another --store") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        if self._pg is not None:
            self._pg.close()
            self._pg = None


class Hub:
    """The fleet's receiving end: sync receiver -> telemetry ingestor -> store, with alerts, in one owner.

    ``store`` is a ``--store`` URL (see :class:`StoreURL`); ``data_dir`` holds the sync store
    (SQLite), the alert rules and the lock (default: beside the DuckDB file).

    ``group`` makes this hub one replica of that group (PostgreSQL stores only): the broker shares the
    devices' outbox messages among the group's members (MQTT ``$share/<group>/...``), the sync store is
    in the same database, and only the group's leader runs rollouts and evaluates alert rules, over every
    replica's points (see :mod:`workbench.hub._replicas` and :mod:`workbench.hub._leader_alerts`).
    ``replica`` names this member in logs and ``/healthz`` (default: ``<host>-<pid>``). On a NATS broker,
    whose MQTT listener delivers nothing to shared subscriptions, ``nats`` (its NATS client URL, with
    ``nats_user``/``nats_password`` on a secure fleet) makes the members share the outboxes through a NATS
    queue group named ``group`` instead (:mod:`workbench.hub._nats_queue`); acknowledgements still go over MQTT.

    Example:
        >>> hub = Hub(BrokerAddress.parse("mqtt://127.0.0.1:1883"), "duckdb:///tmp/hub/fleet.duckdb")  # doctest: +SKIP
        >>> hub.query("latency_p95_ms", since=time.time() - 600)                                  # doctest: +SKIP
    """

    def __init__(self, broker: BrokerAddress | None, store: str, *, data_dir: str | os.PathLike[str] | None = None,
                 flush_interval_s: float = 0.05, timeout: float = 10.0,
                 connect: Callable[[Bus | None], Fleet] | None = None, group: str | None = None,
                 replica: str | None = None, nats: str | None = None, nats_user: str | None = None,
                 nats_password: str | None = None) -> None:
        self.store_url = StoreURL.parse(store)
        if group is not None:
            check_group_name(group)  # a clear error for a name a broker would misread, before anything opens
        if nats is not None:
            if group is None:
                raise ConfigError("--nats is where hub replicas share the devices' outboxes (a NATS queue group): "
                                  "give --group too, or drop --nats for a single hub")
            parse_nats_urls(nats)
        self.group = group
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}"
        folder = Path(data_dir).expanduser() if data_dir is not None else self.store_url.data_dir
        if folder is None:
            raise ConfigError(f"a hub on {self.store_url} needs --data-dir for its sync store and alert rules")
        folder.mkdir(parents=True, exist_ok=True)
        self.data_dir = folder
        self.started = time.time()
        self.stream_drops = 0  # live points a slow stream client did not get (it can query them)
        self._exclusive = _Exclusive(self.store_url, folder, group)
        self._closed = threading.Event()
        self.bus: Bus | None = None
        self.leadership: Leadership | None = None
        self.nats_queue: NatsQueue | None = None
        self._connect = connect
        self._rollouts_lock = threading.Lock()
        try:
            if self.store_url.backend == "postgres":
                self.store: Any = open_store(backend="postgres", dsn=self.store_url.dsn)
            else:
                self.store = open_store(self.store_url.path)
            self.engine = AlertEngine()
            for rule in self._load_rules():
                self.engine.add(rule)
            # In a group no replica sees a device's whole stream: the leader evaluates the rules over the database.
            self.ingestor = Ingestor(self.store, alerts=self.engine if group is None else AlertEngine(),
                                     flush_interval_s=flush_interval_s)
            self.leader_alerts: LeaderAlerts | None = None
            self.sync_store: SyncStore = (PostgresSyncStore(str(self.store_url.dsn)) if group is not None
                                          else SyncStore(folder / "sync.db"))
            # The hub's one MQTT connection: its receiver and the fleet its rollouts drive share it.
            self.bus = Bus(broker, client_prefix="wb-hub", timeout=timeout) if broker is not None else None
            if self.bus is not None and group is not None and nats is None:
                check_shared_delivery(self.bus, group)
            # On NATS the queue group feeds the receiver; its acknowledgements still go out over the MQTT bus.
            self.receiver = SyncReceiver(self.bus, self.sync_store, telemetry=self.ingestor, group=group,
                                         subscribe=nats is None)
            if nats is not None and group is not None:
                self.nats_queue = NatsQueue(nats, group, self.receiver.receive, user=nats_user,
                                            password=nats_password, timeout=timeout)
            self.rollouts: HubRollouts | None = None
            if group is None:
                self._start_rollouts(recover=False)  # a single hub leads itself; its CLI recovers once listening
            else:
                self.leader_alerts = LeaderAlerts(str(self.store_url.dsn), self.engine, self.store.add_alert,
                                                  rules_file=self._rules_file())
                self.leadership = Leadership(str(self.store_url.dsn), name=self.replica,
                                             on_elected=self._elected, on_deposed=self._deposed)
        except BaseException:
            if self.nats_queue is not None:
                self.nats_queue.close()
            receiver = self.__dict__.get("receiver")
            if receiver is not None:
                receiver.close(close_store=False)
            if self.leadership is not None:
                self.leadership.close()
            leader_alerts = self.__dict__.get("leader_alerts")
            if leader_alerts is not None:
                leader_alerts.close()
            if self.bus is not None:
                self.bus.close()
            for part in ("ingestor", "sync_store", "store"):  # nothing half-open when a hub cannot start
                opened = self.__dict__.get(part)
                if opened is not None:
                    opened.close()
            self._exclusive.release()
            raise

    # -- the work that runs once: on a single hub, or on its group's leader ---------------------------

    @property
    def is_leader(self) -> bool:
        """True when this hub runs the once-only work (rollouts): a single hub always, a replica while it leads."""
        return self.leadership is None or self.leadership.is_leader

    def _start_rollouts(self, *, recover: bool) -> None:
        if self._connect is None or self._closed.is_set():
            return
        from workbench.hub._rollouts import HubRollouts

        with self._rollouts_lock:
            if self.rollouts is None:
                self.rollouts = HubRollouts(self, connect=self._connect)
            rollouts = self.rollouts
        if recover:
            interrupted = rollouts.recover()
            if interrupted:
                log.warning("replica %s finishes %d rollout(s) the previous leader left running: %s", self.replica,
                            len(interrupted), ", ".join(interrupted))

    def _elected(self) -> None:
        if self.leader_alerts is not None:
            self.leader_alerts.lead(True)
        self._start_rollouts(recover=True)

    def _deposed(self) -> None:
        if self.leader_alerts is not None:
            self.leader_alerts.lead(False)
        # Another replica may lead by now: this one must not go on publishing desired state beside it.
        with self._rollouts_lock:
            rollouts, self.rollouts = self.rollouts, None
        if rollouts is not None:
            rollouts.close()

    # -- queries ------------------------------------------------------------------------------

    def query(self, metric: str | list[str], *, devices: list[str] | None = None, since: float | None = None,
              until: float | None = None, every: float | None = None, agg: str = "mean") -> pd.DataFrame:
        """Stored points (or ``every``-second aggregates): time, device_id, metric, value."""
        return self.store.query(metric, devices, since, until, every, agg)

    def query_table(self, metric: str | list[str], *, devices: list[str] | None = None, since: float | None = None,
                    until: float | None = None, every: float | None = None, agg: str = "mean") -> Any:
        """:meth:`query` as an Arrow table with ``time`` in epoch seconds, for the API (no pandas where avoidable)."""
        arrow = getattr(self.store, "query_arrow", None)
        if arrow is not None:
            return arrow(metric, devices, since, until, every, agg)
        import pyarrow as pa

        frame = self.store.query(metric, devices, since, until, every, agg)
        frame["time"] = frame["time"].astype("int64") / 1e9
        return pa.Table.from_pandas(frame, preserve_index=False)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-device ingestion counters (points, batches, duplicates, rejects)."""
        return self.ingestor.stats()

    def feeds(self) -> dict[str, dict[str, Any]]:
        """Each device's stream: last batch received, tags, newest value of each metric, missing batches."""
        return {device: info.to_json() for device, info in self.ingestor.feed_infos().items()}

    def subscribe(self, metrics: list[str], listener: PointsListener) -> Callable[[], None]:
        """Call ``listener`` (in the writer thread) with every committed point of ``metrics``; returns the remover."""
        return self.ingestor.subscribe(metrics, listener)

    def sync_rows(self, device: str) -> list[tuple[int, str, str, float]]:
        """``(seq, priority, kind, stored_at)`` of every sync item stored for ``device``, in storing order."""
        return self.sync_store.rows(device)

    def sync_seqs(self, device: str, kind: str | None = None) -> list[int]:
        return self.sync_store.seqs(device, kind)

    def sync_stats(self) -> dict[str, dict[str, int]]:
        """Per-device sync receiver counters (stored, duplicates, rejects)."""
        return self.receiver.stats()

    def ingest(self, after: int | None = None) -> dict[str, Any]:
        """Points and batches committed so far, and publish-to-commit latency of the batches after the ``after``-th.

        The latency runs from a batch's ``sent`` time on the device to its commit here (same-host clocks
        for a local fleet); at most the last 100,000 batches are kept.

        Example:
            >>> hub.ingest(after=1200)["latency_ms"]["p99"]   # doctest: +SKIP
            41.7
        """
        totals = self.ingestor.totals
        batches, points = int(totals.get("batches", 0)), int(totals.get("points", 0))
        recent = list(self.ingestor.latencies_ms)
        if after is not None:
            take = max(0, min(len(recent), batches - int(after)))
            recent = recent[len(recent) - take:] if take else []
        recent.sort()
        summary: dict[str, float | int | None] = {"count": len(recent), "p50": None, "p99": None}
        if recent:
            summary["p50"] = recent[len(recent) // 2]
            summary["p99"] = recent[min(len(recent) - 1, int(len(recent) * 0.99))]
        return {"points": points, "batches": batches, "latency_ms": summary}

    def alerts(self, since: float | None = None) -> pd.DataFrame:
        return self.store.alerts(since)

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` says: up, since when, the store, devices heard from, ingestion backlog."""
        return {"status": "ok", "started": self.started, "uptime_s": round(time.time() - self.started, 3),
                "store": str(self.store_url), "devices": len(self.ingestor.feeds), "backlog": self.ingestor.backlog,
                "stream_drops": self.stream_drops, "group": self.group, "replica": self.replica,
                "leader": self.is_leader, "shared_by": ("nats-queue" if self.nats_queue is not None
                                                        else "mqtt-share" if self.group is not None else None),
                **({"nats": {"connected": self.nats_queue.connected, **self.nats_queue.counters}}
                   if self.nats_queue is not None else {})}

    def fleet_info(self) -> dict[str, Any]:
        """Where this hub's fleet is: its broker's URL (never its credentials), for clients that connect by hub URL."""
        return {"broker": self.bus.address.url if self.bus is not None else None, "store": str(self.store_url)}

    # -- alert rules --------------------------------------------------------------------------

    def add_rule(self, rule: AlertRule) -> None:
        """Add (or replace) an alert rule; rules persist across hub restarts."""
        self.engine.add(rule)
        self._save_rules()

    def rules(self) -> list[AlertRule]:
        return list(self.engine.rules.values())

    def _rules_file(self) -> Path:
        return self.data_dir / "alert_rules.json"

    def _load_rules(self) -> list[AlertRule]:
        path = self._rules_file()
        if not path.exists():
            return []
        try:
            entries = json.loads(path.read_text())
            return [AlertRule(**entry) for entry in entries]
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"the hub's alert rules in {path} are unreadable ({exc}); fix or remove the "
                              "file") from None

    def _save_rules(self) -> None:
        from dataclasses import asdict

        write_private(self._rules_file(), json.dumps([asdict(rule) for rule in self.rules()], indent=1))

    # -- lifecycle ----------------------------------------------------------------------------

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until everything received so far is committed and queryable; True if it is within ``timeout``."""
        return self.receiver.wait_idle(timeout) and self.ingestor.wait_idle(timeout)

    def close(self) -> None:
        """Stop receiving first, so nothing committed after this is acknowledged; then close the stores."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            if self.leadership is not None:
                self.leadership.close()
            if self.leader_alerts is not None:
                self.leader_alerts.close()
            if self.rollouts is not None:
                self.rollouts.close()
            if self.nats_queue is not None:
                self.nats_queue.close()
            self.receiver.close()
            if self.bus is not None:
                self.bus.close()
            self.ingestor.close()
            self.store.close()
        finally:
            self._exclusive.release()
