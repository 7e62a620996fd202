"""The embedded time-series store: DuckDB, columnar, with retention, downsampling and dedup records.

Points live in ``points(ts, device, metric, value, seq)`` with device and metric as
small integer ids (names in their own tables), so one insert of 10k rows is a
zero-copy scan of numpy columns. Each accepted batch leaves a row in ``batches``:
that is what dedup by (device, sequence) checks after a restart. Points older than
``raw_retention`` are rolled up into per-``rollup_every`` avg/min/max/count rows
and deleted; rollups older than ``rollup_retention`` are deleted.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import ConfigError
from workbench.telemetry._time import Duration, seconds

if TYPE_CHECKING:
    import pandas as pd

AGGREGATES = {"mean": "avg", "avg": "avg", "min": "min", "max": "max", "sum": "sum", "count": "count",
              "last": "arg_max", "first": "arg_min"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_names (id INTEGER PRIMARY KEY, name VARCHAR UNIQUE);
CREATE TABLE IF NOT EXISTS metric_names (id INTEGER PRIMARY KEY, name VARCHAR UNIQUE);
CREATE TABLE IF NOT EXISTS points (ts DOUBLE, device INTEGER, metric INTEGER, value DOUBLE, seq UBIGINT);
CREATE TABLE IF NOT EXISTS rollup (bucket DOUBLE, device INTEGER, metric INTEGER,
    avg DOUBLE, min DOUBLE, max DOUBLE, count BIGINT);
CREATE TABLE IF NOT EXISTS batches (device INTEGER, seq UBIGINT, received DOUBLE, n INTEGER);
CREATE TABLE IF NOT EXISTS alerts (ts DOUBLE, device VARCHAR, rule VARCHAR, metric VARCHAR, value DOUBLE,
    message VARCHAR);
"""


def _points(ts: np.ndarray, device: np.ndarray, metric: np.ndarray, value: np.ndarray,
            seq: np.ndarray) -> dict[str, np.ndarray]:
    # Columns in the table's order (INSERT ... SELECT * matches by position), with the table's types.
    return {"ts": np.ascontiguousarray(ts, np.float64), "device": np.ascontiguousarray(device, np.int32),
            "metric": np.ascontiguousarray(metric, np.int32), "value": np.ascontiguousarray(value, np.float64),
            "seq": np.ascontiguousarray(seq, np.uint64)}


def _batches(device: list[int], seq: list[int], received: list[float], n: list[int]) -> dict[str, np.ndarray]:
    return {"device": np.asarray(device, np.int32), "seq": np.asarray(seq, np.uint64),
            "received": np.asarray(received, np.float64), "n": np.asarray(n, np.int32)}


class _StoreBase:
    """What both stores share: names as small integer ids (cached), retention settings, aggregate names.

    Each backend assigns the ids of new names in ``_assign`` and runs its own SQL.
    """

    _devices: dict[str, int]
    _metrics: dict[str, int]
    _lock: threading.Lock
    raw_retention: float
    rollup_every: float
    rollup_retention: float

    def _init_retention(self, raw_retention: Duration, rollup_every: Duration, rollup_retention: Duration) -> None:
        self.raw_retention = seconds(raw_retention, "raw_retention")
        self.rollup_every = seconds(rollup_every, "rollup_every")
        self.rollup_retention = seconds(rollup_retention, "rollup_retention")
        if self.rollup_every <= 0:
            raise ConfigError("rollup_every must be positive, e.g. '1m'")

    def _retention_cutoff(self, now: float) -> float:
        # Whole buckets only, so a bucket is never rolled up twice with half its points.
        return float(np.floor((now - self.raw_retention) / self.rollup_every) * self.rollup_every)

    @staticmethod
    def _check_aggregate(agg: str) -> None:
        if agg not in AGGREGATES:
            raise ConfigError(f"unknown aggregate {agg!r}; choose one of {', '.join(AGGREGATES)}")

    def _assign(self, missing: list[str], table: str, cache: dict[str, int]) -> None:
        raise NotImplementedError

    def _ids(self, names: list[str], table: str, cache: dict[str, int]) -> list[int]:
        missing = [n for n in dict.fromkeys(names) if n not in cache]
        if missing:
            with self._lock:
                self._assign(missing, table, cache)
        return [cache[n] for n in names]

    def device_ids(self, names: list[str]) -> list[int]:
        return self._ids(names, "device_names", self._devices)

    def metric_ids(self, names: list[str]) -> list[int]:
        return self._ids(names, "metric_names", self._metrics)

    def metric_id(self, name: str) -> int | None:
        return self._metrics.get(name)


class DuckDBStore(_StoreBase):
    """Telemetry points in DuckDB (a file, or in memory when ``path`` is None).

    Thread-safe: one lock serialises writes; queries run on a second connection to the same
    database under their own lock, so a long query never holds up an insert (DuckDB's MVCC gives
    each query a consistent snapshot, and it releases the GIL while it works).

    Example:
        >>> store = DuckDBStore()
        >>> ids = store.device_ids(["sim-01"]), store.metric_ids(["cpu_percent"])
        >>> store.insert(np.array([1.0]), np.array([ids[0][0]]), np.array([ids[1][0]]), np.array([42.0]),
        ...              np.array([1], dtype=np.uint64))
        >>> store.count()
        1
    """

    backend = "duckdb"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        raw_retention: Duration = "1d",
        rollup_every: Duration = "1m",
        rollup_retention: Duration = "30d",
    ) -> None:
        import duckdb

        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_retention(raw_retention, rollup_every, rollup_retention)
        try:
            self._con = duckdb.connect(str(self.path) if self.path else ":memory:")
        except duckdb.IOException as exc:
            raise ConfigError(f"cannot open the telemetry store {self.path}: {exc}; another process may hold it "
                              "(DuckDB allows one writer): close it or use another path") from None
        self._lock = threading.Lock()
        self._con.execute(_SCHEMA).fetchall()
        self._reader = self._con.cursor()
        self._read_lock = threading.Lock()
        self._devices: dict[str, int] = dict(self._con.execute("SELECT name, id FROM device_names").fetchall())
        self._metrics: dict[str, int] = dict(self._con.execute("SELECT name, id FROM metric_names").fetchall())

    # -- names ------------------------------------------------------------------------------

    def _assign(self, missing: list[str], table: str, cache: dict[str, int]) -> None:
        for name in missing:
            cache[name] = len(cache)
            self._con.execute(f"INSERT INTO {table} VALUES (?, ?)", [cache[name], name]).fetchall()

    # -- writing ------------------------------------------------------------------------------

    def insert(self, ts: np.ndarray, device: np.ndarray, metric: np.ndarray, value: np.ndarray,
               seq: np.ndarray) -> None:
        """Append columns of points (one insert: call with ~10k rows or more, not per batch)."""
        with self._lock:
            self._insert_columns("points", _points(ts, device, metric, value, seq))

    def record_batches(self, device: list[int], seq: list[int], received: list[float], n: list[int]) -> None:
        with self._lock:
            self._insert_columns("batches", _batches(device, seq, received, n))

    def insert_batches(self, ts: np.ndarray, device: np.ndarray, metric: np.ndarray, value: np.ndarray,
                       seq: np.ndarray, batch_device: list[int], batch_seq: list[int], received: list[float],
                       n: list[int]) -> None:
        """:meth:`insert` and :meth:`record_batches` in one transaction: both commit, or neither does.

        A batch acknowledged to its device must never be half in the store (points without the
        dedup record would be stored again when resent).
        """
        points = _points(ts, device, metric, value, seq)
        batches = _batches(batch_device, batch_seq, received, n)
        with self._lock:
            self._con.execute("BEGIN TRANSACTION").fetchall()
            try:
                self._insert_columns("points", points)
                self._insert_columns("batches", batches)
                self._con.execute("COMMIT").fetchall()
            except BaseException:
                self._con.execute("ROLLBACK").fetchall()
                raise

    def _insert_columns(self, table: str, columns: dict[str, np.ndarray]) -> None:
        # DuckDB scans a dict of numpy arrays directly: ~25-40% faster than the same columns as a pandas
        # DataFrame (measured: 10k rows 12.5 vs 15.9 ms, 50k rows 35 vs 50 ms), and no pandas on the hot path.
        view = f"_wb_{table}"
        self._con.register(view, columns)
        try:
            self._con.execute(f"INSERT INTO {table} SELECT * FROM {view}").fetchall()
        finally:
            self._con.unregister(view)

    def seen_batches(self) -> dict[str, set[int]]:
        """Sequence numbers already stored, per device name (dedup survives a restart)."""
        names = {i: n for n, i in self._devices.items()}
        seen: dict[str, set[int]] = {}
        with self._lock:
            rows = self._con.execute("SELECT device, seq FROM batches").fetchall()
        for device, seq in rows:
            seen.setdefault(names[device], set()).add(int(seq))
        return seen

    def add_alert(self, alert: dict[str, Any]) -> None:
        with self._lock:
            self._con.execute("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?)",
                              [alert["ts"], alert["device_id"], alert["rule"], alert["metric"], alert["value"],
                               alert["message"]]).fetchall()

    def apply_retention(self, now: float | None = None) -> dict[str, int]:
        """Roll up and delete raw points older than the raw retention; drop expired rollups."""
        now = time.time() if now is None else now
        cutoff, every = self._retention_cutoff(now), self.rollup_every
        with self._lock:
            rolled = self._con.execute(
                "INSERT INTO rollup SELECT floor(ts / ?) * ?, device, metric, avg(value), min(value), max(value), "
                "count(*) FROM points WHERE ts < ? GROUP BY ALL", [every, every, cutoff]).fetchall()[0]
            deleted = self._con.execute("DELETE FROM points WHERE ts < ?", [cutoff]).fetchall()[0]
            expired = self._con.execute("DELETE FROM rollup WHERE bucket < ?",
                                        [now - self.rollup_retention]).fetchall()[0]
            self._con.execute("DELETE FROM batches WHERE received < ?", [now - self.rollup_retention]).fetchall()
        return {"rolled_up": int(rolled[0]) if rolled else 0, "deleted": int(deleted[0]) if deleted else 0,
                "expired_rollups": int(expired[0]) if expired else 0}

    # -- reading ---------------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            # fetchall, not fetchone: DuckDB 2 refuses register() while a result is left unfinished.
            row = self._con.execute("SELECT count(*) FROM points").fetchall()[0]
        return int(row[0])

    def query(self, metric: str | list[str], devices: list[str] | None, since: float | None, until: float | None,
              every: float | None, agg: str = "mean") -> pd.DataFrame:
        """Points (or ``every``-second aggregates) as a DataFrame: time, device_id, metric, value."""
        import pandas as pd

        sql, params = self._query_sql(metric, devices, since, until, every, agg)
        with self._read_lock:
            frame: pd.DataFrame = self._reader.execute(sql, params).df()
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return frame.reset_index(drop=True)

    def query_arrow(self, metric: str | list[str], devices: list[str] | None, since: float | None,
                    until: float | None, every: float | None, agg: str = "mean") -> Any:
        """:meth:`query` as an Arrow table straight from DuckDB (time in epoch seconds): no pandas on the way.

        Example:
            >>> DuckDBStore().query_arrow("cpu_percent", None, None, None, None).column_names
            ['time', 'device_id', 'metric', 'value']
        """
        sql, params = self._query_sql(metric, devices, since, until, every, agg)
        with self._read_lock:
            return self._reader.execute(sql, params).to_arrow_table()

    def _query_sql(self, metric: str | list[str], devices: list[str] | None, since: float | None, until: float | None,
                   every: float | None, agg: str) -> tuple[str, list[Any]]:
        self._check_aggregate(agg)
        metrics = [metric] if isinstance(metric, str) else list(metric)
        where: list[str] = ["m.name IN (SELECT unnest(?))"]
        params: list[Any] = [metrics]
        if devices is not None:
            where.append("d.name IN (SELECT unnest(?))")
            params.append(devices)
        if since is not None:
            where.append("t >= ?")
            params.append(since)
        if until is not None:
            where.append("t < ?")
            params.append(until)
        # Raw points, plus rollups for the time before the oldest raw point (downsampled history).
        source = ("(SELECT ts AS t, device, metric, value FROM points UNION ALL "
                  "SELECT bucket AS t, device, metric, avg AS value FROM rollup "
                  "WHERE bucket < coalesce((SELECT min(ts) FROM points), 'inf'::DOUBLE))")
        join = (f"FROM {source} p JOIN device_names d ON d.id = p.device JOIN metric_names m ON m.id = p.metric "
                f"WHERE {' AND '.join(where)}")
        if every:
            fn = AGGREGATES[agg]
            value = f"{fn}(value, t)" if fn in ("arg_max", "arg_min") else f"{fn}(value)"
            sql = (f"SELECT floor(t / {float(every)!r}) * {float(every)!r} AS time, d.name AS device_id, "
                   f"m.name AS metric, {value} AS value {join} GROUP BY ALL ORDER BY time, device_id, metric")
        else:
            sql = f"SELECT t AS time, d.name AS device_id, m.name AS metric, value {join} ORDER BY time, device_id"
        return sql, params

    def alerts(self, since: float | None = None) -> pd.DataFrame:
        import pandas as pd

        with self._read_lock:
            frame: pd.DataFrame = self._reader.execute(
                "SELECT ts AS time, device AS device_id, rule, metric, value, message FROM alerts "
                "WHERE ts >= ? ORDER BY ts", [since if since is not None else float("-inf")]).df()
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return frame

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._con.close()
