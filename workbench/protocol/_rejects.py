"""Counting rejected network input per device and kind, with logging that a hostile device cannot flood.

Every handler of network input (agent, fleet, sync receiver, telemetry ingestor) counts
what it rejects here and goes on. The first reject of a (device, kind) pair in an
interval is logged at once; the rest of that interval only count, and the next line
for the pair says how many were not logged in between.

Example:
    >>> import logging
    >>> rejects = RejectLog(logging.getLogger("demo"), interval_s=60.0)
    >>> for _ in range(1000):
    ...     rejects.count("sim-01", "too_deep", "nesting deeper than 64")
    >>> rejects.by_device()["sim-01"]["too_deep"]
    1000
    >>> rejects.lines_logged
    1
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

# Bounds the table a device spraying made-up device ids in topics could otherwise grow.
MAX_TRACKED_PAIRS = 10_000


class RejectLog:
    """Counts of rejected messages by (device, kind), logged at most once per pair per ``interval_s``."""

    def __init__(self, logger: logging.Logger, *, interval_s: float = 60.0, what: str = "message") -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.what = what
        self.counts: Counter[tuple[str, str]] = Counter()
        self.lines_logged = 0
        self._last_logged: dict[tuple[str, str], float] = {}
        self._unlogged: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def count(self, device: str, kind: str, detail: str = "") -> None:
        """Count one reject; log it unless this (device, kind) was logged less than ``interval_s`` ago."""
        key = (device[:128], kind[:64])
        now = time.monotonic()
        with self._lock:
            if key not in self.counts and len(self.counts) >= MAX_TRACKED_PAIRS:
                key = ("(other)", key[1])
            self.counts[key] += 1
            last = self._last_logged.get(key)
            if last is not None and now - last < self.interval_s:
                self._unlogged[key] += 1
                return
            self._last_logged[key] = now
            skipped = self._unlogged.pop(key, 0)
            self.lines_logged += 1
        more = f" ({skipped} more since the last line)" if skipped else ""
        self.logger.warning("rejected %s %s from %s%s: %s", kind, self.what, device, more, detail[:300])

    def by_device(self) -> dict[str, dict[str, int]]:
        """Per device, how many messages of each kind were rejected."""
        with self._lock:
            items = list(self.counts.items())
        result: dict[str, dict[str, int]] = {}
        for (device, kind), n in items:
            result.setdefault(device, {})[kind] = n
        return result

    def by_kind(self) -> dict[str, int]:
        """How many messages of each kind were rejected, all devices together."""
        totals: Counter[str] = Counter()
        with self._lock:
            for (_device, kind), n in self.counts.items():
                totals[kind] += n
        return dict(totals)
