"""The durable outbox: every item waits here (SQLite, WAL) until the workbench acknowledges storing it.

Each item gets the device's next sequence number (its idempotency key) in the same
transaction that stores it, so "produced" is exactly the highest sequence number and
survives ``kill -9``. An item leaves only through :meth:`Outbox.ack`; a batch that
was sent but not acknowledged in time becomes sendable again (at-least-once on the
wire; the workbench's store deduplicates by sequence number).

The disk bound counts payload bytes. A new item that does not fit evicts the oldest
bulk items, then the oldest normal ones; critical and high items are never evicted,
and are admitted over the bound rather than lost (``over_bound`` counts that), up to a
hard cap of :data:`HARD_CAP_FACTOR` times the bound: beyond it, :meth:`Outbox.put_many` raises
:class:`~workbench.errors.ResourceLimitError` and queues none of its items (``refused_<priority>``
counts them); nothing already queued is lost. A bulk or normal item that cannot make room is
itself dropped. Every drop is counted per priority, in the database, in the same transaction as the drop.

The bound is a setting a command may raise, so there is also an absolute cap that none can: an
item is never written if it would leave less than ``min_free_bytes`` (:data:`MIN_FREE_BYTES`) free
on the outbox's disk. Past it, critical and high items are refused as above, bulk and normal ones
dropped (``disk_reserve`` counts both).

``synchronous=NORMAL`` in WAL mode keeps committed items through a process crash
(``kill -9``); a power cut may lose the last few commits.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, ResourceLimitError
from workbench.protocol.priority import EVICTABLE, PRIORITIES, priority_rank

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (seq INTEGER PRIMARY KEY, priority INTEGER NOT NULL, kind TEXT NOT NULL,
    created REAL NOT NULL, size INTEGER NOT NULL, payload BLOB NOT NULL, due REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS items_order ON items (priority, seq);
CREATE TABLE IF NOT EXISTS sends (seq INTEGER PRIMARY KEY, attempts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


# Critical and high items may take the disk up to this multiple of the bound, never more.
HARD_CAP_FACTOR = 2
# Free disk the outbox never writes into, whatever its bound says: the device's OS and agent need it too.
MIN_FREE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Item:
    """One queued item: ``seq`` is its idempotency key within the device."""

    seq: int
    priority: int
    kind: str
    created: float
    payload: bytes
    attempts: int = 0

    @property
    def priority_name(self) -> str:
        return PRIORITIES[self.priority]


class Outbox:
    """A device's durable, bounded, prioritised queue of items to sync.

    Example:
        >>> box = Outbox(":memory:", max_bytes=1_000_000)
        >>> box.put(b"hello", priority="critical", kind="event")
        1
        >>> [item.seq for item in box.take(max_bytes=64_000)]
        [1]
        >>> box.ack([1])
        1
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 256 * 2**20,
                 min_free_bytes: int = MIN_FREE_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1024:
            raise ConfigError(f"outbox max_bytes must be an integer of at least 1024, got {max_bytes!r}")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # When each in-flight item becomes sendable again, in memory only: a restart forgets what was in flight,
        # so everything unacknowledged is sendable again. (Updating a column of the item's row rewrote its whole
        # payload: ~70 us per 9 KiB batch, most of what taking a batch cost.) Attempts live in the small ``sends``
        # table for the same reason; ``items.due`` and ``items.attempts`` are left from older versions.
        self._due: dict[int, float] = {}
        # Per priority, the sequence number before which every item is in flight, valid until the earliest of their
        # due times (``_next_due``); anything released makes the next take scan from the head again.
        self._resume: dict[int, int] = {}
        self._next_due = float("inf")
        row = self._db.execute("SELECT coalesce(sum(size), 0) FROM items").fetchone()
        self._bytes = int(row[0])

    # -- counters ----------------------------------------------------------------------------

    def _bump(self, name: str, by: int = 1) -> None:
        self._db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                         (name, by, by))

    def counters(self) -> dict[str, int]:
        """Persistent counters: produced, acked, dropped_<priority>, refused_<priority>, over_bound, disk_reserve,
        resent, ack_not_sent."""
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM counters").fetchall()
        return {name: int(value) for name, value in rows}

    def get_meta(self, name: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else default

    def set_meta(self, name: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    # -- writing ------------------------------------------------------------------------------

    def put(self, payload: bytes, *, priority: str | int = "normal", kind: str = "event",
            created: float | None = None) -> int | None:
        """Queue ``payload``; return its sequence number, or None if it was dropped (counted) for want of room."""
        return self.put_many([payload], priority=priority, kind=kind, created=created)[0]

    def put_many(self, payloads: list[bytes], *, priority: str | int = "normal", kind: str = "event",
                 created: float | None = None) -> list[int | None]:
        """Queue several payloads in one transaction (one commit, not one each); their sequence numbers in order.

        Each gets its own sequence number, and each is admitted, evicts or is dropped exactly as
        :meth:`put` would, in order. All are on disk when this returns, or none is (an error rolls back).

        Example:
            >>> Outbox(":memory:").put_many([b"a", b"b"], kind="telemetry")
            [1, 2]
        """
        rank = priority_rank(priority)
        if not payloads:
            return []
        datas: list[bytes] = []
        for payload in payloads:
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise ConfigError(f"outbox payload must be bytes, got {type(payload).__name__}; encode it first")
            datas.append(bytes(payload))
        stamp = time.time() if created is None else created
        seqs: list[int | None] = []
        with self._lock:
            start_bytes = self._bytes
            room, reserve_hit = self._disk_room(), False
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM counters WHERE name = 'produced'").fetchone()
                seq = int(row[0]) if row else 0
                for data in datas:
                    seq += 1
                    size = len(data)
                    if size > room:
                        reserve_hit = True
                        if PRIORITIES[rank] not in EVICTABLE:
                            raise ResourceLimitError(
                                f"the device's disk is nearly full: a {PRIORITIES[rank]} item of {size} bytes "
                                f"would leave less than the {self.min_free_bytes} bytes the outbox keeps free; "
                                f"none of the {len(datas)} items was queued. Free disk space on the device or let "
                                "the backlog drain")
                        self._bump("disk_reserve")
                        self._bump(f"dropped_{PRIORITIES[rank]}")
                        seqs.append(None)
                        continue
                    room -= size
                    if self._bytes + size > self.max_bytes and not self._make_room(size, rank):
                        self._bump(f"dropped_{PRIORITIES[rank]}")
                        seqs.append(None)
                        continue
                    if self._bytes + size > self.max_bytes:
                        if self._bytes + size > self.hard_max_bytes:
                            raise ResourceLimitError(
                                f"the outbox is full: {self._bytes} bytes queued, and a {PRIORITIES[rank]} item of "
                                f"{size} bytes would pass its hard cap of {self.hard_max_bytes} bytes "
                                f"({HARD_CAP_FACTOR} x max_bytes {self.max_bytes}); none of the {len(datas)} items "
                                "was queued. Let the backlog drain, send smaller items, or raise the bound "
                                "(sync max_mb)")
                        self._bump("over_bound")
                    # Inserted one by one: a later item's eviction must see (and may evict) the earlier ones.
                    self._db.execute("INSERT INTO items (seq, priority, kind, created, size, payload) VALUES "
                                     "(?, ?, ?, ?, ?, ?)", (seq, rank, kind, stamp, size, data))
                    self._bytes += size
                    seqs.append(seq)
                self._bump("produced", len(datas))
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._db.execute("ROLLBACK")
                self._bytes = start_bytes
                if isinstance(exc, ResourceLimitError):
                    self._bump(f"refused_{PRIORITIES[rank]}", len(datas))
                    if reserve_hit:
                        self._bump("disk_reserve")
                raise
            return seqs

    def _disk_room(self) -> int:
        """Bytes that may still be written before the disk's free space reaches ``min_free_bytes``."""
        if self.path == ":memory:":
            return 2**62
        try:
            return shutil.disk_usage(Path(self.path).parent).free - self.min_free_bytes
        except OSError:
            return 2**62  # the write itself reports a real disk problem

    @property
    def hard_max_bytes(self) -> int:
        """The absolute bound: critical and high items are refused beyond it."""
        return HARD_CAP_FACTOR * self.max_bytes

    def _make_room(self, size: int, rank: int) -> bool:
        # Inside put's transaction: evict the oldest bulk, then normal, never outranking the new item's needs.
        for name in EVICTABLE:
            victim_rank = PRIORITIES.index(name)
            if rank > victim_rank:
                break  # a bulk item does not push out normal ones
            while self._bytes + size > self.max_bytes:
                victims = self._db.execute("SELECT seq, size FROM items WHERE priority = ? ORDER BY seq LIMIT 256",
                                           (victim_rank,)).fetchall()
                if not victims:
                    break
                freed = 0
                chosen = []
                for seq, victim_size in victims:
                    chosen.append(seq)
                    freed += victim_size
                    if self._bytes - freed + size <= self.max_bytes:
                        break
                self._db.executemany("DELETE FROM items WHERE seq = ?", [(s,) for s in chosen])
                self._db.executemany("DELETE FROM sends WHERE seq = ?", [(s,) for s in chosen])
                for seq in chosen:
                    self._due.pop(seq, None)
                self._bump(f"dropped_{name}", len(chosen))
                self._bytes -= freed
            if self._bytes + size <= self.max_bytes:
                return True
        # Critical and high are kept over the bound; bulk and normal that found no room are dropped.
        return rank <= PRIORITIES.index("high")

    # -- sending ------------------------------------------------------------------------------

    def take(self, *, max_bytes: int, max_rank: int = len(PRIORITIES) - 1, ack_timeout: float = 5.0,
             now: float | None = None) -> list[Item]:
        """Items to send next, highest priority and oldest first, up to ``max_bytes`` (at least one item).

        They are marked in flight for ``ack_timeout`` seconds; unacknowledged, they come back.
        ``max_rank`` leaves out lower priorities (3 is bulk).
        """
        now = time.time() if now is None else now
        with self._lock:
            # Sizes first, payloads only for the chosen items: reading the payloads of a long backlog to send a
            # few of them cost ~2 ms per 9 KiB item (profiled), more than everything else on the device.
            if now >= self._next_due:  # something in flight may be due again: scan from the head
                self._resume.clear()
                self._next_due = float("inf")
            chosen: list[int] = []
            total = 0
            due = self._due
            for rank in range(max_rank + 1):
                # Start past the items known to be in flight (they sit at the head of the queue): stepping over
                # them on every take cost a quarter of the device's CPU with a long backlog (profiled).
                begin = self._resume.get(rank, 0)
                rows = self._db.execute("SELECT seq, size FROM items WHERE priority = ? AND seq >= ? ORDER BY seq",
                                        (rank, begin))
                stopped_at: int | None = None
                last = begin - 1
                for seq, size in rows:  # the cursor is lazy: rows past the batch are never read
                    item_due = due.get(seq, 0.0)
                    if item_due <= now:
                        if chosen and total + size > max_bytes:
                            stopped_at = int(seq)
                            break
                        chosen.append(int(seq))
                        total += size
                        item_due = now + ack_timeout
                    self._next_due = min(self._next_due, item_due)
                    last = int(seq)
                self._resume[rank] = stopped_at if stopped_at is not None else last + 1
                if stopped_at is not None:
                    break
            if not chosen:
                return []
            items: list[Item] = []
            for start in range(0, len(chosen), 500):
                chunk = chosen[start:start + 500]
                marks = ",".join("?" * len(chunk))
                items += [Item(int(seq), int(rank), str(kind), float(created), bytes(payload), int(attempts))
                          for seq, rank, kind, created, payload, attempts in self._db.execute(
                              "SELECT i.seq, i.priority, i.kind, i.created, i.payload, "
                              "coalesce(s.attempts, i.attempts) FROM items i LEFT JOIN sends s ON s.seq = i.seq "
                              f"WHERE i.seq IN ({marks})", chunk)]
            items.sort(key=lambda item: (item.priority, item.seq))
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO sends VALUES (?, ?)",
                                 [(item.seq, item.attempts + 1) for item in items])
            resent = sum(1 for item in items if item.attempts)
            if resent:
                self._bump("resent", resent)
            self._db.execute("COMMIT")
            for item in items:
                due[item.seq] = now + ack_timeout
            return items

    def release(self, seqs: list[int]) -> None:
        """Make in-flight items sendable now (the link went down, or the batch was lost before sending)."""
        with self._lock:
            for seq in seqs:
                self._due.pop(seq, None)
            self._resume.clear()

    def release_all(self) -> None:
        with self._lock:
            self._due.clear()
            self._resume.clear()

    def ack(self, seqs: list[int]) -> int:
        """Remove items the workbench has stored; return how many were still here (repeats are harmless).

        Only items handed out by :meth:`take` and not acknowledged or released since count: an
        acknowledgement of an item never sent (forged, or for an earlier run of the device) removes
        nothing, and is counted as ``ack_not_sent``; the item is sent, and acknowledged, as usual.
        """
        if not seqs:
            return 0
        with self._lock:
            sent = [int(s) for s in seqs if int(s) in self._due]
            if len(sent) < len(seqs):
                self._bump("ack_not_sent", len(seqs) - len(sent))
            seqs = sent
            if not seqs:
                return 0
            self._db.execute("BEGIN")
            freed = 0
            removed = 0
            for start in range(0, len(seqs), 500):
                chunk = [int(s) for s in seqs[start:start + 500]]
                marks = ",".join("?" * len(chunk))
                row = self._db.execute(f"SELECT count(*), coalesce(sum(size), 0) FROM items WHERE seq IN ({marks})",
                                       chunk).fetchone()
                removed += int(row[0])
                freed += int(row[1])
                self._db.execute(f"DELETE FROM items WHERE seq IN ({marks})", chunk)
                self._db.execute(f"DELETE FROM sends WHERE seq IN ({marks})", chunk)
            self._bump("acked", removed)
            self._db.execute("COMMIT")
            self._bytes -= freed
            for seq in seqs:
                self._due.pop(int(seq), None)
            return removed

    # -- state --------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        return self._bytes

    def backlog(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per priority: queued items, bytes and the oldest item's age in seconds (None when empty)."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute("SELECT priority, count(*), sum(size), min(created) FROM items "
                                    "GROUP BY priority").fetchall()
        found = {int(r[0]): r for r in rows}
        result = {}
        for rank, name in enumerate(PRIORITIES):
            row = found.get(rank)
            result[name] = {"items": int(row[1]) if row else 0, "bytes": int(row[2]) if row else 0,
                            "oldest_age_s": max(now - float(row[3]), 0.0) if row else None}
        return result

    def pending(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM items").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
