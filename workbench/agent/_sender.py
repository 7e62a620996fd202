"""The sender: takes batches from the outbox in priority order, compresses them, and paces them to the link.

Batch size and the amount in flight adapt to what the link is measured to carry: the
throughput of acknowledged bytes over the last few seconds and the round-trip time
from send to acknowledgement. A batch holds about a quarter second of the measured
throughput (16 KiB to 768 KiB before compression); up to two round trips' worth of
bytes (at least four batches, at least 256 KiB) may be unacknowledged, so a
long-latency link stays full. Unacknowledged items come back after a timeout (a few
round trips) and are sent again: the workbench
deduplicates them by sequence number.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from workbench.agent._outbox import Outbox
from workbench.agent._shaper import LinkShaper
from workbench.agent._tasks import Task
from workbench.protocol.budget import Budget
from workbench.protocol.codec import Codec, WireItem

log = logging.getLogger("workbench.sync")

MIN_BATCH = 16 * 1024
MAX_BATCH = 768 * 1024
_WINDOW_S = 5.0


class Sender:
    """Drains an :class:`Outbox` through a :class:`LinkShaper` with ``publish(message) -> bool``.

    Example:
        >>> sender = Sender(outbox, Codec(), LinkShaper(), publish=lambda raw: True)   # doctest: +SKIP
        >>> sender.start()                                                              # doctest: +SKIP
    """

    def __init__(self, outbox: Outbox, codec: Codec, shaper: LinkShaper, publish: Callable[[bytes], bool], *,
                 budget: Budget | None = None, online: Callable[[], bool] = lambda: True,
                 overhead_bytes: int = 0) -> None:
        self.outbox = outbox
        self.codec = codec
        self.shaper = shaper
        self.publish = publish
        self.budget = budget or Budget()
        self.online = online
        self.overhead_bytes = overhead_bytes  # the MQTT topic and header, counted as wire bytes
        self.batch_bytes = 64 * 1024
        self.srtt: float | None = None
        self.wire_bytes = 0
        self.raw_bytes = 0
        self.messages = 0
        self.last_sync: float | None = None
        self._acked: deque[tuple[float, int, int]] = deque()  # (time, wire bytes, items)
        self._inflight: dict[int, tuple[set[int], float, int]] = {}  # batch -> (seqs, sent at, wire bytes)
        self._batch_of: dict[int, int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()  # ends a wait for the link inside a round
        self._was_up = True
        # Rounds run as a task on the process's shared workers: a put or an ack wakes it, the round
        # itself says when it is due again (an unacknowledged batch's timeout, a link coming back).
        self._task = Task("sync sender", self._round)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._stop.set()
        self._task.stop(timeout=5)

    def wake(self) -> None:
        """Something new is in the outbox."""
        self._task.wake()

    # -- measurements -------------------------------------------------------------------------

    def throughput(self, now: float | None = None) -> tuple[float, float]:
        """Acknowledged (wire bytes/s, items/s) over the last few seconds."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._acked and self._acked[0][0] < now - _WINDOW_S:
                self._acked.popleft()
            if not self._acked:
                return 0.0, 0.0
            span = max(now - self._acked[0][0], 1.0)
            return sum(b for _, b, _ in self._acked) / span, sum(n for _, _, n in self._acked) / span

    @property
    def compression_ratio(self) -> float | None:
        """Wire bytes per raw byte so far (0.1 means a tenth)."""
        return self.wire_bytes / self.raw_bytes if self.raw_bytes else None

    def _inflight_bytes(self) -> int:
        with self._lock:
            return sum(b for _, _, b in self._inflight.values())

    def _window(self) -> int:
        rate, _ = self.throughput()
        rtt = self.srtt or 0.5
        # Room for a few batches beyond the bandwidth-delay product: the link never idles waiting for acks. The
        # link's own bandwidth counts too: a slow acknowledger (a busy store) must not shrink the window it measures.
        rate = max(rate, self.shaper.link.bytes_per_s)
        return int(max(4 * self.batch_bytes * (self.compression_ratio or 1.0), 2 * rate * rtt, 256 * 1024))

    def _idle_wait(self) -> float:
        """How long the sender may sleep with nothing to send: a put or an ack wakes it sooner.

        Otherwise only an unacknowledged batch falling due needs it, so it sleeps until the oldest one
        does (at most a second): polling every 50 ms made an idle device's sender wake twenty times a
        second, most of the wake-ups of a thousand-device fleet.
        """
        with self._lock:
            oldest = min((sent_at for _, sent_at, _ in self._inflight.values()), default=None)
        if oldest is None:
            return 1.0
        return min(1.0, max(0.05, oldest + self._ack_timeout() - time.monotonic()))

    def _ack_timeout(self) -> float:
        rate, _ = self.throughput()
        # The acknowledged rate is low when little is produced (a trickle of telemetry), not only when the link is
        # slow: half the link's bandwidth bounds the wait, or a few unacknowledged batches would wait minutes.
        capacity = max(rate, 0.5 * self.shaper.link.bytes_per_s)
        queued = self._inflight_bytes() / capacity if capacity else 0.0
        return 3.0 + 4 * (self.srtt or 1.0) + queued

    def _adapt(self) -> None:
        rate, _ = self.throughput()
        if rate <= 0:
            return
        ratio = self.compression_ratio or 1.0
        self.batch_bytes = int(min(max(rate * 0.25 / ratio, MIN_BATCH), MAX_BATCH))

    # -- acknowledgements ---------------------------------------------------------------------

    def on_ack(self, seqs: list[int]) -> None:
        """The workbench stored these items: remove them from the outbox and measure the link."""
        self.outbox.ack(seqs)
        now = time.monotonic()
        wire = 0
        with self._lock:
            for seq in seqs:
                batch = self._batch_of.pop(seq, None)
                if batch is None or batch not in self._inflight:
                    continue
                pending, sent_at, nbytes = self._inflight[batch]
                pending.discard(seq)
                if not pending:
                    del self._inflight[batch]
                    wire += nbytes
                    sample = now - sent_at
                    self.srtt = sample if self.srtt is None else 0.8 * self.srtt + 0.2 * sample
            self._acked.append((now, wire, len(seqs)))
        self.last_sync = time.time()
        self._adapt()
        self._task.wake()

    def _forget_inflight(self) -> None:
        with self._lock:
            seqs = list(self._batch_of)
            self._inflight.clear()
            self._batch_of.clear()
        self.outbox.release(seqs)

    def _expire(self) -> None:
        # Batches whose acknowledgement never came free their window share; the outbox resends their items.
        deadline = time.monotonic() - self._ack_timeout()
        with self._lock:
            for batch, (seqs, sent_at, _) in list(self._inflight.items()):
                if sent_at < deadline:
                    del self._inflight[batch]
                    for seq in seqs:
                        self._batch_of.pop(seq, None)

    # -- the loop -----------------------------------------------------------------------------

    def _round(self) -> float:
        """Send what the window allows; return the seconds until the next round unless woken sooner."""
        up = self.online() and self.shaper.up()
        if not up:
            if self._was_up:
                self._forget_inflight()  # resend in priority order when the link returns
            self._was_up = False
            return 0.05
        self._was_up = True
        self._expire()
        # A busy device yields its shared worker now and then: the other devices' rounds wait meanwhile.
        until = time.monotonic() + 0.25
        while not self._stop.is_set() and self._inflight_bytes() < self._window():
            if not self._send_one():
                break
            if time.monotonic() > until:
                return 0.0
        return self._idle_wait()

    def _send_one(self) -> bool:
        """Send one batch; False when there was nothing to send or the link went down."""
        items = self.outbox.take(max_bytes=self.batch_bytes, max_rank=self.budget.max_rank(),
                                 ack_timeout=self._ack_timeout())
        if not items:
            return False
        message = self.codec.encode([WireItem(i.seq, i.priority, i.kind, i.payload) for i in items])
        wire = len(message) + self.overhead_bytes
        seqs = [item.seq for item in items]
        sent_at = time.monotonic()
        batch = next(self._ids)
        with self._lock:
            self._inflight[batch] = (set(seqs), sent_at, wire)
            for seq in seqs:
                self._batch_of[seq] = batch

        def deliver() -> None:
            if not self.publish(message):
                self.outbox.release(seqs)

        if not self.shaper.transmit(wire, deliver, self._stop):
            self._forget_inflight()
            return False
        self.wire_bytes += wire
        self.raw_bytes += sum(len(item.payload) for item in items)
        self.messages += 1
        self.budget.spend(wire)
        return True

    def stats(self) -> dict[str, Any]:
        rate, items = self.throughput()
        return {"throughput_bps": rate * 8, "items_per_s": items, "batch_bytes": self.batch_bytes,
                "rtt_ms": self.srtt * 1000 if self.srtt is not None else None, "wire_bytes": self.wire_bytes,
                "raw_bytes": self.raw_bytes, "messages": self.messages, "compression_ratio": self.compression_ratio,
                "last_sync": self.last_sync, "inflight_bytes": self._inflight_bytes()}
