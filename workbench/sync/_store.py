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


def _state_delta(item: WireItem) -> tuple[list[tuple[str, str]], list[str]]:
    """A state item's changes as ``([(key, JSON value), ...], [removed key, ...])``; nothing for an unreadable one.

    Both stores merge the same delta, each in its own SQL.

    Example:
        >>> _state_delta(WireItem(1, 0, "state", b'{"set": {"fw": "1.2"}, "removed": ["tmp"]}'))
        ([('fw', '"1.2"')], ['tmp'])
    """
    try:
        changes = json.loads(item.payload)
    except ValueError:
        return [], []
    if not isinstance(changes, dict):
        return [], []
    set_rows = [(str(key), json.dumps(value)) for key, value in changes.get("set", {}).items()]
    return set_rows, [str(key) for key in changes.get("removed", [])]


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
        set_rows, removed = _state_delta(item)
        for key, value in set_rows:
            self._db.execute("INSERT OR REPLACE INTO device_state VALUES (?, ?, ?, ?)", (device, key, value, now))
        for key in removed:
            self._db.execute("DELETE FROM device_state WHERE device = ? AND key = ?", (device, key))

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


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS sync_items (id BIGINT GENERATED ALWAYS AS IDENTITY, device TEXT NOT NULL,
    seq BIGINT NOT NULL, priority INTEGER NOT NULL, kind TEXT NOT NULL, stored DOUBLE PRECISION NOT NULL,
    size INTEGER NOT NULL, payload BYTEA, PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS sync_counters (device TEXT NOT NULL, name TEXT NOT NULL, value BIGINT NOT NULL,
    PRIMARY KEY (device, name));
CREATE TABLE IF NOT EXISTS sync_device_state (device TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (device, key));
"""


class PostgresSyncStore(SyncStore):
    """Synced items in PostgreSQL, for hub replicas: every replica stores into one database.

    Exactly once per (device, sequence number) holds across replicas because the primary key
    decides (``INSERT ... ON CONFLICT DO NOTHING``) inside each message's transaction: of two
    replicas storing the same resent item, one inserts it and the other counts a duplicate, and
    each may acknowledge it since it is committed either way.

    Example:
        >>> store = PostgresSyncStore("postgresql://postgres@127.0.0.1/workbench")   # doctest: +SKIP
        >>> store.store("sim-01", [WireItem(1, 0, "event", b"{}")])                    # doctest: +SKIP
        1
    """

    def __init__(self, dsn: str, *, schema: str = "workbench", keep_payloads: bool = True,
                 connect_timeout: float = 10.0) -> None:
        import psycopg

        from workbench.errors import ConfigError

        if not schema.isidentifier():
            raise ConfigError(f"schema {schema!r} is not a plain SQL name; use letters, digits and underscores")
        self.path = dsn
        self.schema = schema
        self.keep_payloads = keep_payloads
        self._lock = threading.Lock()
        try:
            self._pg: Any = psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(connect_timeout)))
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(f"cannot connect to the PostgreSQL sync store: {reason}; check the dsn "
                              "(postgresql://user:password@host:port/database) and that the server is up") from None
        try:
            with self._pg.transaction():
                # Replicas starting together race on CREATE ... IF NOT EXISTS: one lock makes it one at a time.
                self._pg.execute("SELECT pg_advisory_xact_lock(hashtext('workbench sync schema'))")
                self._pg.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                self._pg.execute(f"SET search_path TO {schema}, public")
                self._pg.execute(_PG_SCHEMA)
        except BaseException:
            self._pg.close()
            raise

    def store(self, device: str, items: list[WireItem]) -> int:
        """Store new items in one transaction (committed on return); return how many were new."""
        now = time.time()
        sql = ("INSERT INTO sync_items (device, seq, priority, kind, stored, size, payload) "
               "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device, seq) DO NOTHING RETURNING seq")
        new = 0
        with self._lock, self._pg.transaction():
            for item in items:
                row = (device, item.seq, item.priority, item.kind, now, len(item.payload),
                       item.payload if self.keep_payloads or item.kind == "state" else None)
                if self._pg.execute(sql, row).fetchone() is None:
                    continue
                new += 1
                if item.kind == "state":  # merged only when new: a resent old delta must not undo a newer one
                    self._merge_pg_state(device, item, now)
            for name, by in (("duplicates", len(items) - new), ("stored", new)):
                if by:
                    self._pg.execute("INSERT INTO sync_counters VALUES (%s, %s, %s) ON CONFLICT (device, name) "
                                     "DO UPDATE SET value = sync_counters.value + EXCLUDED.value", (device, name, by))
        return new

    def _merge_pg_state(self, device: str, item: WireItem, now: float) -> None:
        set_rows, removed = _state_delta(item)
        for key, value in set_rows:
            self._pg.execute("INSERT INTO sync_device_state VALUES (%s, %s, %s, %s) ON CONFLICT (device, key) "
                             "DO UPDATE SET value = EXCLUDED.value, updated = EXCLUDED.updated",
                             (device, key, value, now))
        for key in removed:
            self._pg.execute("DELETE FROM sync_device_state WHERE device = %s AND key = %s", (device, key))

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._pg.execute(sql, params).fetchall())

    def seqs(self, device: str, kind: str | None = None) -> list[int]:
        """Stored sequence numbers of ``device`` (of one kind), ascending."""
        sql = "SELECT seq FROM sync_items WHERE device = %s" + (" AND kind = %s" if kind else "") + " ORDER BY seq"
        return [int(r[0]) for r in self._rows(sql, (device, kind) if kind else (device,))]

    def rows(self, device: str) -> list[tuple[int, str, str, float]]:
        """``(seq, priority, kind, stored_at)`` of every stored item of ``device``, in storing order."""
        rows = self._rows("SELECT seq, priority, kind, stored FROM sync_items WHERE device = %s ORDER BY id",
                          (device,))
        return [(int(seq), PRIORITIES[int(p)], str(kind), float(at)) for seq, p, kind, at in rows]

    def payloads(self, device: str, kind: str | None = None) -> list[tuple[int, bytes]]:
        sql = ("SELECT seq, payload FROM sync_items WHERE device = %s" + (" AND kind = %s" if kind else "")
               + " ORDER BY seq")
        return [(int(seq), bytes(payload or b"")) for seq, payload in
                self._rows(sql, (device, kind) if kind else (device,))]

    def state(self, device: str) -> dict[str, Any]:
        """The device's state as merged from its deltas."""
        rows = self._rows("SELECT key, value FROM sync_device_state WHERE device = %s", (device,))
        return {key: json.loads(value) for key, value in rows}

    def counters(self) -> dict[str, dict[str, int]]:
        """Per device: stored and duplicates (every replica's)."""
        result: dict[str, dict[str, int]] = {}
        for device, name, value in self._rows("SELECT device, name, value FROM sync_counters", ()):
            result.setdefault(device, {"stored": 0, "duplicates": 0})[name] = int(value)
        return result

    def summary(self) -> pd.DataFrame:
        """Stored items and bytes per device and priority."""
        import pandas as pd

        rows = self._rows("SELECT device, priority, count(*), sum(size) FROM sync_items "
                          "GROUP BY device, priority ORDER BY device, priority", ())
        return pd.DataFrame([(d, PRIORITIES[p], int(n), int(b)) for d, p, n, b in rows],
                            columns=["device_id", "priority", "items", "bytes"])

    def close(self) -> None:
        with self._lock:
            self._pg.close()
