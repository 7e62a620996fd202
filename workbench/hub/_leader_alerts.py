"""Alert evaluation for a hub replica group: once, on the leader, over every replica's committed points.

The broker gives each device's batches to whichever replica is free, so no replica sees a device's whole
stream, and rules with state (``for_points``, ``zscore`` windows, cooldowns) need all of it in order. So in
a group the replicas' ingestors evaluate nothing; the leader polls the shared ``batches`` table for batches
committed since its last look (by any replica), reads their points of the metrics that rules watch, and
runs them through its :class:`AlertEngine` in time order per device.

A batch is found by its arrival time on the replica that stored it, which is set before that replica's
transaction commits: a look-back of ``lag_s`` and a memory of the (device, seq) pairs already evaluated
catch batches whose commit came late, without evaluating any twice. A new leader starts from the time it
was elected: batches that arrived before that were the previous leader's to evaluate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from workbench.telemetry._alerts import AlertEngine, AlertRule

log = logging.getLogger("workbench.hub")

_NEW_BATCHES = "SELECT b.device, b.seq, b.received FROM batches b WHERE b.received > %s"
_POINTS = """
SELECT d.name, m.name, extract(epoch FROM p.ts)::float8, p.value FROM points p
JOIN unnest(%s::int[], %s::bigint[]) AS n(device, seq) ON p.device = n.device AND p.seq = n.seq
JOIN device_names d ON d.id = p.device JOIN metric_names m ON m.id = p.metric
WHERE m.name = ANY(%s) ORDER BY p.device, m.name, p.ts
"""


class LeaderAlerts:
    """Evaluate ``engine``'s rules over committed points while :meth:`lead` is on; alerts go to ``add_alert``.

    ``rules_file`` (the replicas' shared ``alert_rules.json``) is read again when it changes, so a rule
    added through any replica that shares the data directory reaches the leader.

    Example:
        >>> alerts = LeaderAlerts(dsn, engine, store.add_alert, rules_file=Path("alert_rules.json"))  # doctest: +SKIP
        >>> alerts.lead(True)                                                                        # doctest: +SKIP
    """

    def __init__(self, dsn: str, engine: AlertEngine, add_alert: Callable[[dict[str, Any]], None], *,
                 rules_file: Path | None = None, schema: str = "workbench", poll_s: float = 1.0,
                 lag_s: float = 30.0) -> None:
        self.dsn = dsn
        self.engine = engine
        self.add_alert = add_alert
        self.rules_file = rules_file
        self.schema = schema
        self.poll_s = poll_s
        self.lag_s = lag_s
        self.counters: dict[str, int] = defaultdict(int)  # batches and points evaluated, alerts, errors
        self._since = 0.0
        self._floor = 0.0  # when this replica began leading: what arrived before was the previous leader's
        self._done: dict[tuple[int, int], float] = {}  # (device id, seq) evaluated -> its arrival time
        self._rules_mtime: float | None = None
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._con: Any = None
        self._thread = threading.Thread(target=self._run, name="wb-hub-leader-alerts", daemon=True)
        self._thread.start()

    def lead(self, leading: bool) -> None:
        """Start (from now) or stop evaluating, as this replica becomes or stops being the leader."""
        if leading and not self._leading.is_set():
            self._since = self._floor = time.time()
            self._done.clear()
            self._leading.set()
        elif not leading:
            self._leading.clear()

    def poll(self) -> int:
        """Evaluate what was committed since the last poll; returns how many batches that was."""
        import psycopg

        if self._con is None or self._con.closed:
            self._con = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            self._con.execute(f"SET search_path TO {self.schema}, public")
        self._reload_rules()
        rows = self._con.execute(_NEW_BATCHES, (self._since - self.lag_s,)).fetchall()
        new = [(int(d), int(s), float(r)) for d, s, r in rows
               if float(r) >= self._floor and (int(d), int(s)) not in self._done]
        for device, seq, received in new:
            self._done[(device, seq)] = received
        horizon = max((r for _, _, r in new), default=self._since)
        self._since = max(self._since, horizon)
        for key in [k for k, r in self._done.items() if r < self._since - 2 * self.lag_s]:
            del self._done[key]
        metrics = sorted(self.engine.metrics())
        if not new or not metrics:
            return len(new)
        points = self._con.execute(_POINTS, ([d for d, _, _ in new], [s for _, s, _ in new], metrics)).fetchall()
        series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for device_name, metric, ts, value in points:
            series[(str(device_name), str(metric))].append((float(ts), float(value)))
        for (device_name, metric), values in series.items():
            column = np.asarray(values, dtype=np.float64)
            for alert in self.engine.evaluate(metric, device_name, column[:, 0], column[:, 1]):
                self.add_alert(alert)
                self.counters["alerts"] += 1
        self.counters["batches"] += len(new)
        self.counters["points"] += len(points)
        return len(new)

    def _reload_rules(self) -> None:
        if self.rules_file is None:
            return
        try:
            mtime = os.stat(self.rules_file).st_mtime
        except OSError:
            return
        if mtime == self._rules_mtime:
            return
        import json

        try:
            entries = json.loads(self.rules_file.read_text())
            rules = [AlertRule(**entry) for entry in entries]
        except (ValueError, TypeError) as exc:
            log.error("alert rules in %s are unreadable (%s); keeping the previous ones", self.rules_file, exc)
            self._rules_mtime = mtime
            return
        self._rules_mtime = mtime
        known = set(self.engine.rules)
        for rule in rules:
            if rule.name not in known or self.engine.rules[rule.name] != rule:
                self.engine.add(rule)
        for name in known - {rule.name for rule in rules}:
            self.engine.remove(name)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._leading.wait(self.poll_s) and not self._stop.is_set():
                try:
                    self.poll()
                except Exception as exc:  # the database away for a moment: try again next poll
                    self.counters["errors"] += 1
                    log.warning("leader alert evaluation failed (%s); trying again", " ".join(str(exc).split()))
                    if self._con is not None:
                        self._con.close()
                        self._con = None
                self._stop.wait(self.poll_s)

    def close(self) -> None:
        """Stop evaluating and close the connection."""
        self._stop.set()
        self._leading.set()  # wakes the thread
        self._thread.join(timeout=10)
        if self._con is not None:
            self._con.close()
            self._con = None
