"""`fleet.sync`: the workbench's receiver, every device's reported sync state, and the sync controls.

A fleet has one receiving end: the receiver of ``fleet.sync`` stores events, results
and state in its SQLite store and hands telemetry batches to the ingestor of
``fleet.telemetry`` (DuckDB). Using either starts both, so a notebook that only
queries telemetry still receives it, and telemetry is never stored twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from workbench._settings import settings
from workbench.errors import ConfigError, PayloadError
from workbench.protocol import schema, topics
from workbench.protocol._rejects import RejectLog
from workbench.protocol.budget import check_budget
from workbench.protocol.links import LinkProfile, link_profile
from workbench.protocol.priority import PRIORITIES
from workbench.sync._receiver import SyncReceiver
from workbench.sync._store import SyncStore

if TYPE_CHECKING:
    import pandas as pd

    from workbench.fleet._fleet import Fleet
    from workbench.hub._client import HubClient
    from workbench.hub._telemetry import HubSyncStore
    from workbench.telemetry._client import Telemetry

STATE_COLUMNS = ["device_id", "priority", "queued_items", "queued_bytes", "oldest_unsent_age_s", "last_sync",
                 "throughput_bps", "compression_ratio", "dropped", "deduplicated", "link", "link_up"]


log = logging.getLogger("workbench.sync")


def _number(value: Any, *, low: float = -math.inf, high: float = math.inf, optional: bool = True) -> bool:
    if value is None:
        return optional
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _valid_state(body: dict[str, Any]) -> bool:
    """True when a device's sync state has the types :meth:`Sync.state` reads (numbers where numbers go)."""
    backlog, sender, counters, link = (body.get(k) or {} for k in ("backlog", "sender", "counters", "link"))
    if not all(isinstance(part, dict) for part in (backlog, sender, counters, link)):
        return False
    if not all(isinstance(entry, dict) and all(_number(entry.get(k)) for k in ("items", "bytes", "oldest_age_s"))
               for entry in backlog.values()):
        return False
    # last_sync becomes a timestamp: pandas refuses anything past the year 2262.
    return (_number(sender.get("last_sync"), low=0, high=9e9) and _number(sender.get("throughput_bps"))
            and _number(sender.get("compression_ratio")) and all(_number(v) for v in counters.values()))


class Sync:
    """The fleet's sync: stores what devices send (``store``), and shows their reported state.

    Made on first use of ``fleet.sync`` (or of ``fleet.telemetry``) with an in-memory store,
    or ``Sync(fleet, path="sync.db")`` for a file (``$WORKBENCH_SYNC_DB`` sets the default).
    Its receiver's telemetry goes to ``telemetry`` (by default the fleet's, started here
    if it is not yet).

    Example:
        >>> fleet.sync_state()                          # doctest: +SKIP
        >>> fleet["sim-02"].set_link("satellite")      # doctest: +SKIP
    """

    def __init__(self, fleet: Fleet, *, path: str | os.PathLike[str] | None = None, receive: bool = True,
                 telemetry: Telemetry | None = None, hub: HubClient | None = None) -> None:
        self.fleet = fleet
        self.hub = hub  # the fleet's hub stores what devices send; this process only shows it
        if receive:
            fleet.refuse_receiving_beside_hub("sync items")
        path = path if path is not None else settings().sync_db
        if receive and telemetry is None:
            telemetry = _fleet_telemetry(fleet)
        self.receiver = SyncReceiver(fleet.bus, SyncStore(path), telemetry=telemetry.ingestor if telemetry
                                     else None) if receive else None
        self.states: dict[str, dict[str, Any]] = {}
        self.revision = 0
        self._desired_docs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.reject_log = RejectLog(log, what="sync state")
        self._unsubscribe = fleet.bus.subscribe(
            topics.sync_state_topic("+"), self._on_message,
            on_error=lambda message, exc: self.reject_log.count("(unknown)", "internal", repr(exc)))

    def _on_message(self, message: Any) -> None:
        try:
            device, _kind, _ = topics.parse_device_topic(message.topic)
            topics.check_device_id(device)
        except ValueError:
            self.reject_log.count("(unknown)", "bad_topic", message.topic[:200])
            return
        try:
            body = schema.decode(bytes(message.payload))
        except PayloadError as exc:
            self.reject_log.count(device, exc.kind, str(exc))
            return
        if not _valid_state(body):  # state() and backlog() build tables from it: a wrong type would break them
            self.reject_log.count(device, "malformed", "sync state with fields of the wrong type")
            return
        with self._lock:
            self.states[device] = body
            self.revision += 1

    @property
    def store(self) -> SyncStore | HubSyncStore | None:
        """Where the items devices sent are stored: this process's receiver's store, or the hub's."""
        if self.hub is not None:
            from workbench.hub._telemetry import HubSyncStore

            return HubSyncStore(self.hub)
        return self.receiver.store if self.receiver is not None else None

    # -- the table --------------------------------------------------------------------------

    def state(self) -> pd.DataFrame:
        """One row per device and priority: queued items and bytes, oldest unsent age, last sync,
        throughput, compression ratio, dropped and deduplicated counts.

        Example:
            >>> fleet.sync.state().query("priority == 'critical'")   # doctest: +SKIP
        """
        import pandas as pd

        with self._lock:
            states = dict(self.states)
        dedup = self.hub.sync_stats() if self.hub is not None else self.receiver.stats() if self.receiver else {}
        rows = []
        for device, body in sorted(states.items()):
            sender = body.get("sender") or {}
            counters = body.get("counters") or {}
            for priority in PRIORITIES:
                backlog = (body.get("backlog") or {}).get(priority) or {}
                rows.append({
                    "device_id": device, "priority": priority, "queued_items": backlog.get("items", 0),
                    "queued_bytes": backlog.get("bytes", 0), "oldest_unsent_age_s": backlog.get("oldest_age_s"),
                    "last_sync": sender.get("last_sync"), "throughput_bps": sender.get("throughput_bps"),
                    "compression_ratio": sender.get("compression_ratio"),
                    "dropped": counters.get(f"dropped_{priority}", 0),
                    "deduplicated": (dedup.get(device) or {}).get("duplicates", 0),
                    "link": (body.get("link") or {}).get("name"), "link_up": body.get("link_up"),
                })
        frame = pd.DataFrame(rows, columns=STATE_COLUMNS)
        frame["last_sync"] = pd.to_datetime(frame["last_sync"], unit="s", utc=True)
        return frame

    def backlog(self) -> dict[str, int]:
        """Queued items per device (all priorities), for the health table."""
        with self._lock:
            return {device: sum(int(b.get("items", 0)) for b in (body.get("backlog") or {}).values())
                    for device, body in self.states.items()}

    def wait_until(self, device: str, predicate: Any, *, timeout: float = 30.0) -> dict[str, Any]:
        """Block until ``predicate(state)`` holds for the device's reported sync state; return that state."""
        from workbench.errors import FleetTimeoutError

        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                body = self.states.get(device)
            if body is not None and predicate(body):
                return body
            if time.monotonic() > deadline:
                raise FleetTimeoutError(f"{device}: sync state did not reach the condition within {timeout:g} s "
                                        f"(last: {json.dumps(body)[:300] if body else 'none reported'})")
            time.sleep(0.1)

    # -- controls ---------------------------------------------------------------------------

    def configure(self, device: str, *, timeout: float = 10.0, **changes: Any) -> dict[str, Any]:
        """Set desired sync config (retained, so a restarted device gets it) and apply it now."""
        known = dict(self._desired(device))
        known.update(changes)
        self.fleet.bus.publish_state(topics.desired_topic(device, "sync"), schema.encode(known), timeout=timeout)
        with self._lock:
            self._desired_docs[device] = known
        return self.fleet.call(device, "sync.configure", changes, timeout=timeout)

    def _desired(self, device: str) -> dict[str, Any]:
        with self._lock:
            reported = (self.states.get(device) or {}).get("desired") or {}
            return self._desired_docs.get(device, reported)

    def set_link(self, device: str, link: str | LinkProfile | dict[str, Any] | None = None, *,
                 timeout: float = 10.0, **numbers: Any) -> dict[str, Any]:
        """Put the device on a link profile (lan, wifi-flaky, lte, satellite, offline) or custom numbers."""
        profile = link_profile(link, **numbers)
        value: Any = link if isinstance(link, str) and not numbers else profile.to_dict()
        return self.configure(device, link=value, timeout=timeout)

    def set_budget(self, device: str, mb_per_day: float | None, *, timeout: float = 10.0) -> dict[str, Any]:
        """Set the device's daily sync budget in MB (None removes it)."""
        return self.configure(device, budget_mb_per_day=check_budget(mb_per_day), timeout=timeout)

    @contextmanager
    def partition(self, device: str, seconds: float = 30.0, *, timeout: float = 10.0) -> Iterator[None]:
        """Cut the device's sync link for ``seconds`` (healed early when the block ends first)."""
        self.fleet.call(device, "sync.partition", {"seconds": seconds}, timeout=timeout)
        try:
            yield
        finally:
            self.fleet.call(device, "sync.partition", {"seconds": 0}, timeout=timeout)

    def close(self) -> None:
        self._unsubscribe()
        if self.receiver is not None:
            self.receiver.close()


def _fleet_telemetry(fleet: Fleet) -> Telemetry:
    # The fleet's telemetry without a receiver of its own: this Sync's receiver feeds it.
    from workbench.telemetry._client import Telemetry

    telemetry = fleet.running_telemetry
    if telemetry is None:
        telemetry = Telemetry(fleet, receive=False)
        fleet.attach_telemetry(telemetry)  # what the fleet.telemetry property returns from now on
    if not isinstance(telemetry, Telemetry):  # a hub's views: the hub receives, never this process
        raise ConfigError("this fleet's telemetry is the hub's; its sync items go to the hub, not to this process")
    return telemetry


def receive_telemetry(fleet: Fleet, telemetry: Telemetry) -> Sync:
    """Route the fleet's synced telemetry into ``telemetry``, starting the fleet's sync if it is not running.

    Example:
        >>> receive_telemetry(fleet, Telemetry(fleet, path="t.duckdb", receive=False))   # doctest: +SKIP
    """
    sync = fleet.running_sync
    if sync is None:
        sync = Sync(fleet, telemetry=telemetry)
        fleet.attach_sync(sync)  # what the fleet.sync property returns from now on
    elif sync.receiver is not None:
        sync.receiver.telemetry = telemetry.ingestor
    else:
        sync.receiver = SyncReceiver(fleet.bus, SyncStore(settings().sync_db), telemetry=telemetry.ingestor)
    return sync
