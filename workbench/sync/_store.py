"""The workbench side's store of synced items (SQLite): exactly once per (device, sequence number).

An item arriving again (a resend after a lost acknowledgement, a restarted agent
replaying its outbox) is not stored twice: the primary key refuses it and the
``duplicates`` counter of its device goes up, in the same transaction. State items
(``kind == "state"``) carry only changed keys; they are merged into ``device_state``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.protocol.codec import WireItem
from workbench.protocol.priority import PRIORITIES

if TYPE_CHECKING:
    import pandas as pd

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (device TEXT NOT NULL, seq INTEGER NOT NULL, priority INTEGER NOT NULL,
    kind TEXT NOT NULL, stored REAL NOT NULL, size INTEGER NOT NULL, payload BLOB, PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS counters (device TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (device, name));
CREATE TABLE IF NOT EXISTS device_state (device TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY (device, key));
"""


class SyncStore:
    """Synced items in SQLite (a file, or in memory when ``path`` is None).

    Example:
        >>> store = SyncStore()
        >>> item = WireItem(1, 0, "event", b"{}")
        >>> store.store("sim-01", [item]), store.store("sim-01", [item])
        (1, 0)
        >>> store.counters()["sim-01"]["duplicates"]
        1
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, keep_payloads: bool = True) -> None:
        self.path = str(path) if path is not None else ":memory:"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.keep_payloads = keep_payloads
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def store(self, device: str, items: list[WireItem]) -> int:
        """Store new items in one transaction (committed on return); return how many were new."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                sql = "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)"
                new = self._db.executemany(sql, [
                    (device, item.seq, item.priority, item.kind, now, len(item.payload),
                     item.payload if self.keep_payloads else None) for item in items if item.kind != "state"]).rowcount
                for item in items:
                    # State deltas merge only when new: a resent old delta must not undo a newer one.
                    if item.kind == "state":
                        row = (device, item.seq, item.priority, item.kind, now, len(item.payload), item.payload)
                        if self._db.execute(sql, row).rowcount:
                            new += 1
                            self._merge_state(device, item, now)
                if len(items) - new:
                    self._bump(device, "duplicates", len(items) - new)
                if new:
                    self._bump(device, "stored", new)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

    def _bump(self, device: str, name: str, by: int) -> None:
        self._db.execute("INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT(device, name) DO UPDATE SET "
                         "value = value + ?", (device, name, by, by))

    def _merge_state(self, device: str, item: WireItem, now: float) -> None:
        try:
            changes = json.loads(item.payload)
        except ValueError:
            return
        if not isinstance(changes, dict):
            return
        for key, value in changes.get("set", {}).items():
            self._db.execute("INSERT OR REPLACE INTO device_state VALUES (?, ?, ?, ?)",
                             (device, str(key), json.dumps(value), now))
        for key in changes.get("removed", []):
            self._db.execute("DELETE FROM device_state WHERE device = ? AND key = ?", (device, str(key)))

    # -- reading ------------------------------------------------------------------------------

    def seqs(self, device: str, kind: str | None = None) -> list[int]:
        """Stored sequence numbers of ``device`` (of one kind), ascending."""
        sql = "SELECT seq FROM items WHERE device = ?" + (" AND kind = ?" if kind else "") + " ORDER BY seq"
        with self._lock:
            return [int(r[0]) for r in self._db.execute(sql, (device, kind) if kind else (device,)).fetchall()]

    def rows(self, device: str) -> list[tuple[int, str, str, float]]:
        """``(seq, priority, kind, stored_at)`` of every stored item of ``device``, in storing order."""
        with self._lock:
            rows = self._db.execute("SELECT seq, priority, kind, stored FROM items WHERE device = ? "
                                    "ORDER BY rowid", (device,)).fetchall()
        return [(int(seq), PRIORITIES[int(p)], str(kind), float(at)) for seq, p, kind, at in rows]

    def payloads(self, device: str, kind: str | None = None) -> list[tuple[int, bytes]]:
        sql = "SELECT seq, payload FROM items WHERE device = ?" + (" AND kind = ?" if kind else "") + " ORDER BY seq"
        with self._lock:
            rows = self._db.execute(sql, (device, kind) if kind else (device,)).fetchall()
        return [(int(seq), bytes(payload or b"")) for seq, payload in rows]

    def state(self, device: str) -> dict[str, Any]:
        """The device's state as merged from its deltas."""
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM device_state WHERE device = ?", (device,)).fetchall()
        return {key: json.loads(value) for key, value in rows}

    def counters(self) -> dict[str, dict[str, int]]:
        """Per device: stored and duplicates."""
        with self._lock:
            rows = self._db.execute("SELECT device, name, value FROM counters").fetchall()
        result: dict[str, dict[str, int]] = {}
        for device, name, value in rows:
            result.setdefault(device, {"stored": 0, "duplicates": 0})[name] = int(value)
        return result

    def summary(self) -> pd.DataFrame:
        """Stored items and bytes per device and priority."""
        import pandas as pd

        with self._lock:
            rows = self._db.execute("SELECT device, priority, count(*), sum(size) FROM items "
                                    "GROUP BY device, priority ORDER BY device, priority").fetchall()
        return pd.DataFrame([(d, PRIORITIES[p], n, b) for d, p, n, b in rows],
                            columns=["device_id", "priority", "items", "bytes"])

    def close(self) -> None:
        with self._lock:
            self._db.close()
