"""The workbench side of sync: store what devices send, then acknowledge it.

paho's network thread only queues ``(device, message)``; one writer thread decodes
each message and sends its items where the user will read them:

* telemetry batches (``kind == "telemetry"``), when a telemetry ingestor is attached,
  go to it and only to it (:class:`workbench.telemetry.Ingestor`, the DuckDB store
  that ``fleet.telemetry.query`` reads); they are acknowledged when the ingestor hands
  their receipts back, that is once its batched insert has committed. Its dedup by
  (device, batch sequence number) makes a resent batch a duplicate, acknowledged again;
* everything else (events, results, state deltas, zstd dictionaries), and telemetry
  when no ingestor is attached, is stored in the :class:`SyncStore` in one committed
  transaction per message, then acknowledged.

So an item leaves a device's outbox only once it is committed where it is queried. An
item that cannot be stored is not acknowledged: the device sends it again. Duplicates
are acknowledged too (they are stored already), and counted.

Acknowledgements carry sequence numbers as ranges: ``{"v": 1, "ranges": [[1, 500]]}``, at most
:data:`MAX_ACK_SEQS` sequence numbers in one (more are split over several acknowledgements). A
device rejects an acknowledgement with more ranges or numbers than that, so a forged one cannot
make it expand millions of numbers; and its outbox only lets an acknowledgement remove items it
has sent and not yet seen acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workbench.errors import PayloadError
from workbench.protocol import topics
from workbench.protocol._bus import Bus
from workbench.protocol._rejects import RejectLog
from workbench.protocol.acks import MAX_ACK_SEQS, encode_ack
from workbench.protocol.codec import MAX_MESSAGE_BYTES, Codec, WireItem
from workbench.sync._store import SyncStore

if TYPE_CHECKING:
    from workbench.telemetry._ingest import Ingestor

log = logging.getLogger("workbench.sync")

ItemsListener = Callable[[str, list[WireItem]], None]
class SyncReceiver:
    """Subscribe to every device's outbox, store the items exactly once, acknowledge them.

    It receives on the process's MQTT connection, ``bus``. With ``bus=None`` nothing is
    subscribed: call :meth:`feed` and pass ``send_ack``
    (the benchmark wires a sender to a receiver in one process this way). ``telemetry``
    (or setting :attr:`telemetry` later) routes telemetry items into that ingestor.

    With ``group``, the subscription is the MQTT shared subscription ``$share/<group>/...``: the broker
    gives each outbox message to one of the group's receivers (hub replicas), which stores and
    acknowledges it. A resend after a lost acknowledgement may reach another member; the stores'
    dedup by (device, sequence) in the shared database makes it a duplicate, acknowledged again.
    ``subscribe=False`` subscribes nothing but still acknowledges over ``bus``: messages come through
    :meth:`receive` (hub replicas on a NATS broker receive them from a NATS queue group).

    Example:
        >>> receiver = SyncReceiver(fleet.bus, SyncStore("sync.db"))        # doctest: +SKIP
        >>> receiver.stats()["sim-01"]["stored"]                             # doctest: +SKIP
        1200
    """

    def __init__(self, bus: Bus | None, store: SyncStore | None = None, *,
                 telemetry: Ingestor | None = None, send_ack: Callable[[str, bytes], None] | None = None,
                 group: str | None = None, subscribe: bool = True) -> None:
        self.store = store or SyncStore()
        self.codec = Codec()
        self.listeners: list[ItemsListener] = []
        self.counters: Counter[str] = Counter()
        self.wire_bytes: Counter[str] = Counter()
        self.reject_log = RejectLog(log, what="sync message")
        self._inbox: deque[tuple[str, bytes]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._send_ack = send_ack
        self._bus = bus
        self._telemetry: Ingestor | None = None
        self.telemetry = telemetry
        self._writer = threading.Thread(target=self._write_loop, name="wb-sync-receiver", daemon=True)
        self._writer.start()
        topic_filter = topics.outbox_topic("+")
        if group is not None:
            topic_filter = topics.shared_filter(group, topic_filter)
        self._unsubscribe = (bus.subscribe(topic_filter, self._on_message, on_error=self._on_message_failed)
                             if bus is not None and subscribe else None)

    def _on_message(self, message: Any) -> None:
        self.receive(message.topic, message.payload)

    def receive(self, topic: str, payload: bytes) -> None:
        """Check and queue one outbox message that arrived on MQTT ``topic``, from any transport.

        What the MQTT subscription does with each message; a receiver made with ``subscribe=False`` is fed
        this way from elsewhere (hub replicas on NATS: :mod:`workbench.hub._nats_queue`). A topic that is
        no device's outbox, or a payload over :data:`MAX_MESSAGE_BYTES`, is counted and dropped.

        Example:
            >>> receiver.receive("wb/v1/dev/sim-01/outbox", message)   # doctest: +SKIP
        """
        try:
            device, kind, _ = topics.parse_device_topic(topic)
            topics.check_device_id(device)
            if kind != "outbox":
                raise ValueError(kind)
        except ValueError:
            self.counters["bad_topic"] += 1
            self.reject_log.count("(unknown)", "bad_topic", topic[:200])
            return
        if len(payload) > MAX_MESSAGE_BYTES:  # never queued: a flood of these would fill memory
            self.counters["rejected_oversized"] += 1
            self.reject_log.count(device, "oversized", f"{len(payload)} bytes")
            return
        self.feed(device, bytes(payload))

    def _on_message_failed(self, _message: Any, exc: Exception) -> None:
        self.counters["rejected_internal"] += 1
        self.reject_log.count("(unknown)", "internal", repr(exc))

    def network_alive(self) -> bool:
        """True while both the MQTT network thread (if subscribed) and the writer thread run.

        Example:
            >>> receiver.network_alive()   # doctest: +SKIP
            True
        """
        return self._writer.is_alive() and (self._bus is None or self._bus.network_alive())

    @property
    def telemetry(self) -> Ingestor | None:
        """The ingestor telemetry items go to (None: they are stored in :attr:`store` like any item)."""
        return self._telemetry

    @telemetry.setter
    def telemetry(self, ingestor: Ingestor | None) -> None:
        previous, self._telemetry = self._telemetry, ingestor
        if previous is not None and previous is not ingestor:
            previous.on_stored = None
        if ingestor is not None:
            ingestor.on_stored = self._telemetry_stored

    def _telemetry_stored(self, receipts: list[Any]) -> None:
        # On the ingestor's writer thread, after its insert committed: one acknowledgement per device.
        by_device: dict[str, list[int]] = defaultdict(list)
        for device, seq in receipts:
            by_device[device].append(seq)
        for device, seqs in by_device.items():
            self._ack(device, seqs)
        self.counters["telemetry_acked"] += len(receipts)

    def feed(self, device: str, message: bytes) -> None:
        """Queue one outbox message from ``device`` (the subscriber's path)."""
        self._idle.clear()
        self._inbox.append((device, message))
        self._wake.set()

    def _ack(self, device: str, seqs: list[int]) -> None:
        ordered = sorted(set(seqs))
        for start in range(0, len(ordered), MAX_ACK_SEQS):  # devices refuse bigger acknowledgements
            payload = encode_ack(ordered[start:start + MAX_ACK_SEQS])
            if self._send_ack is not None:
                self._send_ack(device, payload)
            elif self._bus is not None:
                self._bus.publish(topics.sync_ack_topic(device), payload, qos=1)

    def _write_loop(self) -> None:
        while not self._stop.is_set() or self._inbox:
            if not self._inbox:
                self._idle.set()
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            device, message = self._inbox.popleft()
            try:
                self._write_one(device, message)
            except Exception as exc:  # one device's message must not end storing for every device
                self.counters["rejected_internal"] += 1
                self.reject_log.count(device, "internal", repr(exc))

    def _write_one(self, device: str, message: bytes) -> None:
        arrived = time.time()
        try:
            items = self.codec.decode(message)
        except PayloadError as exc:
            self.counters[f"rejected_{exc.kind}"] += 1
            self.reject_log.count(device, exc.kind, str(exc))
            return
        for item in items:
            if item.kind == "zstd-dict":
                try:
                    self.codec.add_dictionary(item.payload)
                except Exception as exc:  # zstandard.ZstdError for bytes that are no dictionary
                    self.counters["rejected_malformed"] += 1
                    self.reject_log.count(device, "malformed", f"a zstd-dict item is no dictionary: {exc}")
        self.wire_bytes[device] += len(message)
        self.counters["messages"] += 1
        telemetry = self._telemetry
        batches = [item for item in items if item.kind == "telemetry"] if telemetry is not None else []
        others = [item for item in items if item.kind != "telemetry"] if telemetry is not None else items
        if telemetry is not None and batches:
            sent = Codec.sent_at(message)
            # Measured on the message, not the batch: a batch's own "sent" also counts its time in the outbox.
            offset = arrived - sent if sent is not None else None
            topic = topics.telemetry_topic(device)
            for item in batches:
                telemetry.feed(item.payload, topic, arrived, receipt=(device, item.seq), clock_offset_s=offset)
            self.counters["telemetry_items"] += len(batches)
        if others:
            try:
                self.store.store(device, others)
            except Exception:  # not acknowledged, so the device sends it again
                log.exception("sync store failed for %s; the device will resend", device)
                self.counters["store_errors"] += 1
                return
            self._ack(device, [item.seq for item in others])
        for listener in list(self.listeners):
            try:
                listener(device, items)
            except Exception:
                log.exception("sync listener failed")

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until everything received so far is stored and acknowledged."""
        deadline = time.monotonic() + timeout
        if not (self._idle.wait(timeout) and not self._inbox):
            return False
        telemetry = self._telemetry
        return telemetry is None or telemetry.wait_idle(max(deadline - time.monotonic(), 0.0))

    def stats(self) -> dict[str, dict[str, int]]:
        """Per device: items stored and duplicates, telemetry batches included (dedup survives restarts,
        the telemetry counts are since the ingestor started)."""
        result = self.store.counters()
        telemetry = self._telemetry
        if telemetry is not None:
            for device, feed in telemetry.stats().items():
                row = result.setdefault(device, {"stored": 0, "duplicates": 0})
                row["stored"] += int(feed["batches"])
                row["duplicates"] += int(feed["duplicates"])
        return result

    def close(self, *, close_store: bool = True) -> None:
        """Stop receiving (the process's connection stays up for its other users) and writing."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._stop.set()
        self._wake.set()
        self._writer.join(timeout=10)
        self.telemetry = None  # what the ingestor still commits is acknowledged by the next receiver
        if close_store:
            self.store.close()
