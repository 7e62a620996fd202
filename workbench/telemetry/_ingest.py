"""Ingestion: decode telemetry batches and append them to the store in big inserts.

Batches reach the store one way: devices queue them in their sync outbox, and the
workbench's sync receiver hands each one to :meth:`Ingestor.feed` with a ``receipt``.
Feeding only queues; one writer thread decodes, checks and dedups, buffers columns and
inserts up to 50k rows at a time, or what arrived within ``flush_interval_s`` (10 ms) when
less comes (DuckDB pays ~1.3 ms per insert, so one insert per 500-point batch would cap
ingestion near 0.25 M points/s; 50k-row inserts reach ~1.4 M rows/s where 10k-row ones
reach ~0.8 M on this 2-core machine). Once an insert has
committed, ``on_stored`` gets the receipts of its batches (the receiver acknowledges
them then, so a device forgets a batch only once it can be queried). A batch counts
as seen, for dedup by (device, sequence number), only once its insert committed: a
batch whose insert failed is not acknowledged, comes again, and is stored then.
Duplicates and batches that can never be stored (malformed, spoofed) are settled too,
so their receipts come back without an insert. Problems are counted per device, never
raised:

* malformed, truncated, oversized, unknown_version batches, and batches whose header
  names another device than the topic (``spoofed``);
* ``duplicates`` (a (device, seq) already stored), ``gaps`` (sequence numbers skipped:
  the broker dropped them, or they are still on the way), ``out_of_order`` (a skipped
  batch that came later: it reduces ``missing``), ``older_than_first`` (older than the
  first batch this receiver saw, or from an earlier boot: queued or in flight before it
  listened; a backlog, not a reordering);
* ``clock_skew`` batches whose device clock is off by more than ``clock_tolerance_s``:
  their timestamps are shifted onto the workbench's clock, so a device minutes off
  still plots in place. The offset is the difference between the batch's ``sent`` and
  its arrival, or the ``clock_offset_s`` the caller measured (the sync receiver does:
  a batch that waited in an outbox through a partition is late, not off-clock);
* ``store_errors``: inserts that failed; their batches are not marked seen, and
  counted in ``missing`` until they come again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from workbench.errors import PayloadError
from workbench.protocol import topics
from workbench.protocol._rejects import RejectLog
from workbench.protocol.wire import MAX_BATCH_BYTES, Batch, decode_batch, problem_kind
from workbench.telemetry._alerts import AlertEngine

log = logging.getLogger("workbench.telemetry")

MAX_TRACKED_GAP = 100_000  # skipped sequence numbers remembered per gap, so late arrivals are matched exactly


class Store(Protocol):
    """What ingestion needs of a backend (DuckDB or PostgreSQL)."""

    def device_ids(self, names: list[str]) -> list[int]: ...
    def metric_ids(self, names: list[str]) -> list[int]: ...
    def insert_batches(self, ts: np.ndarray, device: np.ndarray, metric: np.ndarray, value: np.ndarray,
                       seq: np.ndarray, batch_device: list[int], batch_seq: list[int], received: list[float],
                       n: list[int]) -> None: ...
    def seen_batches(self) -> dict[str, set[int]]: ...
    def add_alert(self, alert: dict[str, Any]) -> None: ...
    def apply_retention(self, now: float | None = None) -> dict[str, int]: ...


@dataclass
class DeviceFeed:
    """What ingestion knows about one device's stream."""

    counters: Counter[str] = field(default_factory=Counter)
    seen: set[int] = field(default_factory=set)  # committed in the store
    storing: dict[int, list[Any]] = field(default_factory=dict)  # seq -> receipts waiting for its insert
    failed: set[int] = field(default_factory=set)  # inserts that failed: counted missing until they come again
    skipped: set[int] = field(default_factory=set)  # passed over by a newer batch: counted missing until they come
    newest: int = -1
    tags: dict[str, Any] = field(default_factory=dict)
    last_received: float | None = None
    clock_offset_s: float = 0.0
    latest: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (ts, value)


@dataclass(frozen=True)
class FeedInfo:
    """What the receiving end knows of one device's telemetry stream, at one moment.

    Example:
        >>> FeedInfo(last_received=None, tags={}, latest={}).latest_value("cpu_percent") is None
        True
    """

    last_received: float | None
    tags: dict[str, Any]
    latest: dict[str, tuple[float, float]]  # metric -> (ts, value)
    missing: int = 0

    @classmethod
    def of(cls, feed: DeviceFeed) -> FeedInfo:
        return cls(feed.last_received, dict(feed.tags), dict(feed.latest), int(feed.counters["missing"]))

    def latest_value(self, metric: str) -> float | None:
        entry = self.latest.get(metric)
        return entry[1] if entry is not None else None

    def to_json(self) -> dict[str, Any]:
        """For the hub's API (values that are not numbers yet are sent as null)."""
        return {"last_received": self.last_received, "tags": self.tags,
                "latest": {name: [ts, value] for name, (ts, value) in self.latest.items()}, "missing": self.missing}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> FeedInfo:
        """The inverse of :meth:`to_json` (null values come back as NaN).

        Example:
            >>> FeedInfo.from_json({"last_received": 1.0, "latest": {"cpu_percent": [1.0, None]}}).latest_value(
            ...     "cpu_percent")
            nan
        """
        latest = {name: (float(pair[0]), float("nan") if pair[1] is None else float(pair[1]))
                  for name, pair in (entry.get("latest") or {}).items()}
        return cls(entry.get("last_received"), dict(entry.get("tags") or {}), latest, int(entry.get("missing") or 0))


PointsListener = Callable[[str, str, np.ndarray, np.ndarray], None]
StoredListener = Callable[[list[Any]], None]


class Ingestor:
    """Store every valid, new point of the batches fed to it; hand back receipts once committed.

    Example:
        >>> ingestor = Ingestor(DuckDBStore())                                   # doctest: +SKIP
        >>> ingestor.on_stored = lambda receipts: print(receipts)                # doctest: +SKIP
        >>> ingestor.feed(raw, "wb/v1/dev/sim-01/telemetry", receipt=("sim-01", 7))   # doctest: +SKIP
        [('sim-01', 7)]
    """

    def __init__(
        self,
        store: Store,
        *,
        alerts: AlertEngine | None = None,
        flush_rows: int = 50_000,
        flush_interval_s: float = 0.01,
        clock_tolerance_s: float = 5.0,
        retention_every_s: float = 60.0,
        max_bytes: int = MAX_BATCH_BYTES,
        on_stored: StoredListener | None = None,
    ) -> None:
        self.store = store
        self.alerts = alerts or AlertEngine()
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.clock_tolerance_s = clock_tolerance_s
        self.retention_every_s = retention_every_s
        self.max_bytes = max_bytes
        self.feeds: dict[str, DeviceFeed] = {}
        self.totals: Counter[str] = Counter()
        self.reject_log = RejectLog(log, what="telemetry batch")
        self.latencies_ms: deque[float] = deque(maxlen=100_000)  # batch sent -> queryable, same-host clocks
        self.listeners: list[PointsListener] = []
        self.watched: set[str] = set()
        # Called on the writer thread with the receipts of batches now settled: keep it short.
        self.on_stored: StoredListener | None = on_stored
        self._inbox: deque[tuple[bytes, str, float, Any, float | None]] = deque()
        self._settled: list[Any] = []
        self._buffered = 0  # messages taken from the inbox but not yet stored (the writer's)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._abandon = threading.Event()  # close() gave up waiting: stop without touching the store again
        self._closed = False
        self._flushed = threading.Condition()
        self._lock = threading.Lock()
        for device, seqs in store.seen_batches().items():
            feed = self._feed(device)
            feed.seen, feed.newest = seqs, max(seqs, default=-1)
        self._writer = threading.Thread(target=self._write_loop, name="wb-telemetry-writer", daemon=True)
        self._writer.start()

    # -- input ------------------------------------------------------------------------------------

    def feed(self, payload: bytes, topic: str, received: float | None = None, *, receipt: Any = None,
             clock_offset_s: float | None = None) -> None:
        """Queue one raw batch from the device its ``topic`` names (``wb/v1/dev/{device}/telemetry``).

        ``receipt`` comes back through ``on_stored`` once the batch is settled: committed,
        a duplicate of a committed one, or rejected for good. ``clock_offset_s`` is the
        workbench clock minus the device clock, where the caller measured it.

        Example:
            >>> ingestor.feed(raw, "wb/v1/dev/sim-01/telemetry", receipt=("sim-01", 7))   # doctest: +SKIP
        """
        if self._closed:  # the store is going away: acknowledged never, so the device sends it again
            self.totals["fed_after_close"] += 1
            return
        self._inbox.append((payload, topic, time.time() if received is None else received, receipt, clock_offset_s))
        self._wake.set()

    @property
    def backlog(self) -> int:
        """Batches received but not yet decoded."""
        return len(self._inbox)

    # -- writer thread --------------------------------------------------------------------------------

    def _feed(self, device: str) -> DeviceFeed:
        feed = self.feeds.get(device)
        if feed is None:
            with self._lock:
                feed = self.feeds.setdefault(device, DeviceFeed())
        return feed

    def _settle(self, receipt: Any) -> None:
        if receipt is not None:
            self._settled.append(receipt)

    def _accept(self, payload: bytes, topic: str, received: float, receipt: Any,
                clock_offset_s: float | None) -> Batch | None:
        try:
            device, _kind, _ = topics.parse_device_topic(topic)
        except ValueError:
            self.totals["bad_topic"] += 1
            self._settle(receipt)
            return None
        feed = self._feed(device)
        feed.counters["messages"] += 1
        feed.last_received = received
        try:
            batch = decode_batch(payload, max_bytes=self.max_bytes)
        except PayloadError as exc:
            feed.counters[problem_kind(exc)] += 1
            self.totals["rejected"] += 1
            log.debug("rejected telemetry from %s: %s", device, exc)
            self._settle(receipt)  # it would be as bad the next time: do not have it sent again
            return None
        if batch.device != device:
            feed.counters["spoofed"] += 1
            self._settle(receipt)
            return None
        if batch.seq in feed.seen:
            feed.counters["duplicates"] += 1
            self._settle(receipt)
            return None
        if batch.seq in feed.storing:  # the same batch is in the insert being prepared: settle with it
            feed.counters["duplicates"] += 1
            if receipt is not None:
                feed.storing[batch.seq].append(receipt)
            return None
        if batch.seq in feed.failed:  # its earlier insert failed: this is the retry
            feed.failed.discard(batch.seq)
            feed.counters["missing"] -= 1
        elif batch.seq < feed.newest:
            # Only a batch skipped earlier was counted missing (and is late): one older than the first batch seen, or
            # from an earlier boot (its sequence restarts), never was. Those were queued or in flight before this
            # receiver listened and come again after the ack timeout, behind newer ones: on a healthy link they
            # made "out_of_order" look like reordering (126 of 196 batches across notebook kernels).
            if batch.seq in feed.skipped:
                feed.skipped.discard(batch.seq)
                feed.counters["missing"] -= 1
                feed.counters["out_of_order"] += 1
            else:
                feed.counters["older_than_first"] += 1
        elif feed.newest >= 0 and batch.seq >> 32 == feed.newest >> 32 and batch.seq > feed.newest + 1:
            skipped = batch.seq - feed.newest - 1
            feed.counters["gaps"] += skipped
            # Remembered one by one up to a bound, so a wild jump cannot exhaust memory; beyond it, not counted.
            tracked = range(batch.seq - min(skipped, MAX_TRACKED_GAP), batch.seq)
            feed.skipped.update(tracked)
            feed.counters["missing"] += len(tracked)
        feed.storing[batch.seq] = [] if receipt is None else [receipt]
        feed.newest = max(feed.newest, batch.seq)
        offset = received - batch.sent if clock_offset_s is None else clock_offset_s
        if abs(offset) > self.clock_tolerance_s:
            feed.counters["clock_skew"] += 1
            batch.ts = batch.ts + offset
        feed.clock_offset_s = offset
        feed.tags = batch.tags
        return batch

    def _write_loop(self) -> None:
        pending: list[tuple[Batch, float]] = []
        rows = 0
        first_at = 0.0
        next_retention = time.monotonic() + self.retention_every_s
        while not self._stop.is_set() or self._inbox:
            if self._abandon.is_set():
                break
            if not self._inbox:
                self._wake.wait(self.flush_interval_s if pending else 0.5)
                self._wake.clear()
            while self._inbox and rows < self.flush_rows and not self._abandon.is_set():
                self._buffered += 1
                payload, topic, received, receipt, offset = self._inbox.popleft()
                try:
                    batch = self._accept(payload, topic, received, receipt, offset)
                except Exception as exc:  # one hostile batch must not end ingestion for every device
                    self.totals["rejected_internal"] += 1
                    self.reject_log.count(topic[:200], "internal", f"batch dropped: {exc!r}")
                    self._settle(receipt)
                    continue
                if batch is None:
                    continue
                if not batch.n:  # nothing to insert: settled as it is
                    self._committed([(batch, received)])
                    continue
                if not pending:
                    first_at = time.monotonic()
                pending.append((batch, received))
                rows += batch.n
            # Flush once the interval is up and nothing more is waiting (what queued meanwhile joins this insert,
            # so inserts grow with the load), at flush_rows, or at five intervals whatever is waiting.
            waited = time.monotonic() - first_at
            if self._abandon.is_set():
                break
            if pending and (rows >= self.flush_rows or self._stop.is_set() or waited >= 5 * self.flush_interval_s
                            or (waited >= self.flush_interval_s and not self._inbox)):
                try:
                    self._flush(pending)
                except Exception:  # a store failure must not end ingestion; the batches stay unseen
                    log.exception("telemetry store insert failed; %d points not stored", rows)
                    self._failed(pending, rows)
                else:
                    self._committed(pending)
                    try:
                        self._after_flush(pending)
                    except Exception:  # an alert rule or a listener failing must not end ingestion
                        log.exception("telemetry alerts or listeners failed")
                pending, rows = [], 0
            self._hand_back()
            if not pending:
                self._buffered = 0
                with self._flushed:
                    self._flushed.notify_all()
            if time.monotonic() > next_retention:
                next_retention = time.monotonic() + self.retention_every_s
                try:
                    self.store.apply_retention()
                except Exception:
                    log.exception("telemetry retention failed")
        if self._abandon.is_set():
            self.totals["batches_dropped_at_close"] += len(pending) + len(self._inbox)
            self.totals["points_dropped_at_close"] += rows
            self._inbox.clear()

    def _committed(self, batches: list[tuple[Batch, float]]) -> None:
        for batch, _ in batches:
            feed = self.feeds[batch.device]
            feed.seen.add(batch.seq)
            self._settled.extend(feed.storing.pop(batch.seq, []))
            feed.counters["batches"] += 1
            feed.counters["points"] += batch.n

    def _failed(self, batches: list[tuple[Batch, float]], rows: int) -> None:
        # Not seen and not settled: a batch with a receipt is sent again and stored then.
        self.totals["store_errors"] += 1
        self.totals["points_not_stored"] += rows
        for batch, _ in batches:
            feed = self.feeds[batch.device]
            if not feed.storing.pop(batch.seq, None):
                self.totals["points_lost"] += batch.n  # nobody will send it again
            feed.failed.add(batch.seq)
            feed.counters["store_errors"] += 1
            feed.counters["missing"] += 1

    def _hand_back(self) -> None:
        if not self._settled:
            return
        settled, self._settled = self._settled, []
        listener = self.on_stored
        if listener is not None:
            try:
                listener(settled)
            except Exception:  # the receiver not acknowledging only means the device sends them again
                log.exception("telemetry on_stored callback failed")

    def _flush(self, pending: list[tuple[Batch, float]]) -> None:
        devices = self.store.device_ids([b.device for b, _ in pending])
        ts = np.concatenate([b.ts for b, _ in pending])
        value = np.concatenate([b.value for b, _ in pending])
        counts = np.fromiter((b.n for b, _ in pending), dtype=np.int64, count=len(pending))
        device = np.repeat(np.asarray(devices, dtype=np.int32), counts)
        seq = np.repeat(np.fromiter((b.seq for b, _ in pending), dtype=np.uint64, count=len(pending)), counts)
        metric_parts = []
        known: dict[tuple[str, ...], np.ndarray] = {}  # batches of one source repeat the same names
        for batch, _ in pending:
            key = tuple(batch.names)
            ids = known.get(key)
            if ids is None:
                ids = known[key] = np.asarray(self.store.metric_ids(batch.names), dtype=np.int32)
            metric_parts.append(ids[batch.metric])
        metric = np.concatenate(metric_parts)
        batches = (devices, [b.seq for b, _ in pending], [r for _, r in pending], counts.tolist())
        self.store.insert_batches(ts, device, metric, value, seq, *batches)  # points and dedup records at once
        done = time.time()
        self.latencies_ms.extend((done - b.sent) * 1000.0 for b, _ in pending)
        self.totals["points"] += int(counts.sum())
        self.totals["batches"] += len(pending)

    def _after_flush(self, pending: list[tuple[Batch, float]]) -> None:
        interesting = self.alerts.metrics() | self.watched
        for batch, _ in pending:
            feed = self.feeds[batch.device]
            # Latest value of every metric, for health tables: the last index of each name in one np.unique over
            # the reversed column (one flatnonzero per name per batch cost ~30% of the writer thread, profiled).
            present, first_from_end = np.unique(batch.metric[::-1], return_index=True)
            last_at = batch.n - 1 - first_from_end
            names = [batch.names[index] for index in present.tolist()]
            last = dict(zip(names, zip(batch.ts[last_at].tolist(), batch.value[last_at].tolist(), strict=True),
                            strict=True))
            for index, name in zip(present.tolist(), names, strict=True):
                if name in interesting:
                    where = np.flatnonzero(batch.metric == index)
                    ts, values = batch.ts[where], batch.value[where]
                    for alert in self.alerts.evaluate(name, batch.device, ts, values):
                        self.store.add_alert(alert)
                    for listener in list(self.listeners):
                        listener(batch.device, name, ts, values)
            feed.latest.update(last)

    # -- control -------------------------------------------------------------------------------------

    def feed_infos(self) -> dict[str, FeedInfo]:
        """A snapshot of every device's stream (see :class:`FeedInfo`)."""
        return {device: FeedInfo.of(feed) for device, feed in list(self.feeds.items())}

    def subscribe(self, metrics: Iterable[str], listener: PointsListener) -> Callable[[], None]:
        """Call ``listener(device, metric, ts, values)`` from the writer thread with committed points of ``metrics``.

        Returns the function that unsubscribes it.

        Example:
            >>> unsubscribe = ingestor.subscribe(["cpu_percent"], print); unsubscribe()   # doctest: +SKIP
        """
        self.watched.update(metrics)
        self.listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self.listeners.remove(listener)

        return unsubscribe

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until everything received so far is stored (or ``timeout``); True if it is."""
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._inbox or self._buffered:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._flushed.wait(min(remaining, 0.05))
        return True

    def network_alive(self) -> bool:
        """True while the writer thread that decodes and stores every device's batches runs.

        Example:
            >>> ingestor.network_alive()   # doctest: +SKIP
            True
        """
        return self._writer.is_alive()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-device counters, newest sequence number, clock offset and tags."""
        with self._lock:
            feeds = dict(self.feeds)
        return {device: {**{k: 0 for k in ("batches", "points", "duplicates", "out_of_order", "older_than_first",
                                           "gaps", "missing", "clock_skew", "malformed", "truncated", "oversized",
                                           "unknown_version", "spoofed", "store_errors")},
                         **feed.counters, "newest_seq": feed.newest, "clock_offset_s": feed.clock_offset_s,
                         "last_received": feed.last_received, **{f"tag_{k}": v for k, v in feed.tags.items()}}
                for device, feed in sorted(feeds.items())}

    def close(self, timeout: float = 5.0) -> int:
        """Stop taking batches, store what was fed so far within ``timeout`` s, then stop the writer thread.

        What is not stored by then is dropped (and never acknowledged, so devices send it again to the
        next receiver) and logged; returns how many batches that was. The store is not touched after
        this returns, so the caller may close it.

        Example:
            >>> ingestor.close(timeout=5.0)   # doctest: +SKIP
            0
        """
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._writer.join(timeout=timeout)
        if self._writer.is_alive():
            self._abandon.set()
            self._writer.join(timeout=timeout)  # the insert under way finishes; nothing starts after it
            if self._writer.is_alive():
                log.error("telemetry writer still inside an insert %.0f s after close; closing the store may "
                          "fail it", 2 * timeout)
            log.warning("telemetry closed after %.1f s with a backlog: %d batches (%d decoded points) not stored; "
                        "devices send unacknowledged batches again", timeout,
                        self.totals["batches_dropped_at_close"], self.totals["points_dropped_at_close"])
        return int(self.totals["batches_dropped_at_close"])
