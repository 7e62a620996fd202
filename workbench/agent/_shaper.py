"""The link shaper in the agent's transport: bandwidth, latency, loss, outages and partitions, applied for real.

Every sync message the agent sends passes :meth:`LinkShaper.transmit`, which holds
the sender until the link has finished the previous message (a busy link queues;
each message takes its size over the bandwidth), loses it with the link's loss
probability, and hands it to the broker once serialized plus one latency. Acknowledgements coming back pass
:meth:`LinkShaper.receive` (latency and loss again). While the link is offline, in an
outage or partitioned, nothing passes either way. This needs no root and no network
namespaces, so it always works; it shapes the sync traffic, not the agent's control
connection (commands still reach a partitioned device, so a partition can be ended).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from workbench.agent._netloop import NetLoop, Timer
from workbench.protocol.links import LINKS, LinkProfile

log = logging.getLogger("workbench.sync")


class LinkShaper:
    """Emulates one device's uplink on the traffic that passes through it.

    Example:
        >>> shaper = LinkShaper(LINKS["lte"])
        >>> shaper.up()
        True
        >>> shaper.partition(5.0); shaper.up()
        False
    """

    def __init__(self, link: LinkProfile | None = None, *, seed: int | None = None) -> None:
        self.link = link or LINKS["lan"]
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._free_at = 0.0  # when the link has finished sending what it was given
        self._partitioned_until = 0.0
        self._epoch = time.monotonic()
        # Deliveries due later are timers on the process's network loop (not a thread per link).
        self._pending: set[Timer] = set()
        self._stopped = False
        self.sent_bytes = 0
        self.lost = 0

    # -- configuration ------------------------------------------------------------------------

    def set_link(self, link: LinkProfile) -> None:
        with self._lock:
            self.link = link
            self._free_at = 0.0
            self._epoch = time.monotonic()

    def partition(self, seconds: float) -> None:
        """Cut the link for ``seconds`` (0 heals it now)."""
        with self._lock:
            self._partitioned_until = time.monotonic() + max(float(seconds), 0.0)

    @property
    def partitioned_for(self) -> float:
        return max(self._partitioned_until - time.monotonic(), 0.0)

    def up(self, now: float | None = None) -> bool:
        """Whether anything can pass right now."""
        now = time.monotonic() if now is None else now
        link = self.link
        if link.offline or now < self._partitioned_until:
            return False
        if link.outage_every_s and link.outage_s:
            phase = (now - self._epoch) % link.outage_every_s
            return phase < link.outage_every_s - link.outage_s
        return True

    # -- traffic ------------------------------------------------------------------------------

    def transmit(self, nbytes: int, deliver: Callable[[], None], stop: threading.Event | None = None) -> bool:
        """Send ``nbytes`` upstream: block for their serialization time, then deliver one latency later.

        Returns False when the link was down (nothing sent); a message lost on the way still
        returns True, since the sender cannot tell (its acknowledgement never comes).
        """
        with self._lock:
            link = self.link
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + (nbytes / link.bytes_per_s if link.bytes_per_s > 0 else 0.0)
            done_at = self._free_at
        # Like a NIC's send queue: wait until the link is free to start this message, not until it is out,
        # so the sender prepares the next message while this one serializes.
        delay = start - time.monotonic()
        if delay > 0:
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
        if not self.up():
            return False
        self.sent_bytes += nbytes
        if link.loss and self._random.random() < link.loss:
            self.lost += 1
            return True
        self._schedule(done_at - time.monotonic() + link.latency_ms / 1000.0, deliver)
        return True

    def receive(self, deliver: Callable[[], None]) -> None:
        """A message coming down the link (an acknowledgement): latency and loss, or nothing while down."""
        link = self.link
        if not self.up() or (link.loss and self._random.random() < link.loss):
            self.lost += 1
            return
        self._schedule(link.latency_ms / 1000.0, deliver)

    def _schedule(self, delay: float, deliver: Callable[[], None]) -> None:
        if delay <= 0:
            deliver()
            return

        def due() -> None:
            with self._lock:
                self._pending.discard(timer)
                if self._stopped:
                    return
            try:
                deliver()
            except Exception:  # one failed delivery must not stop the link
                log.exception("link delivery failed")

        with self._lock:
            if self._stopped:
                return
            timer = NetLoop.get().call_later(delay, due)
            self._pending.add(timer)

    def close(self) -> None:
        """Drop what is still on the way (as a link going away would)."""
        with self._lock:
            self._stopped = True
            pending, self._pending = self._pending, set()
        for timer in pending:
            timer.cancel()
