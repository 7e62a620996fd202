"""The PostgreSQL store against a real server: the same DataFrames as DuckDB, and what only a server has.

The behavioural checks both stores share run on both in tests/test_telemetry_store.py. The server
comes from ``WORKBENCH_TEST_POSTGRES_DSN`` (.ci/run starts a throwaway one). Each test gets its own
schema, dropped afterwards, so runs sharing a server do not meet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from workbench.errors import ConfigError
from workbench.telemetry._client import open_store
from workbench.telemetry._postgres import PostgresStore
from workbench.telemetry._store import AGGREGATES, DuckDBStore

StoreFactory = Callable[..., PostgresStore]


@pytest.fixture
def make_store(postgres_stores: StoreFactory) -> StoreFactory:
    return postgres_stores


# -- the same DataFrames as DuckDB ---------------------------------------------------------------------


def _fill(store: DuckDBStore | PostgresStore, rng: np.random.Generator) -> None:
    names = ["sim-01", "sim-02", "sim-03"]
    n = 600
    device = np.array(store.device_ids([names[i] for i in rng.integers(0, 3, n)]))
    metric = np.array(store.metric_ids([["cpu", "lat"][i] for i in rng.integers(0, 2, n)]))
    ts = 1_700_000_000.0 + np.round(rng.uniform(0, 120, n), 3)  # ms: both backends hold them exactly
    store.insert(ts, device, metric, rng.normal(50, 10, n), np.zeros(n, np.uint64))


@pytest.mark.parametrize("agg", [*sorted(AGGREGATES), None])
def test_query_returns_the_same_frame_as_duckdb_when_both_hold_the_same_points(make_store: StoreFactory,
                                                                               agg: str | None) -> None:
    postgres, duckdb = make_store(), DuckDBStore()
    for store in (postgres, duckdb):
        _fill(store, np.random.default_rng(7))
    args: tuple[Any, ...] = (["cpu", "lat"], ["sim-01", "sim-03"], 1_700_000_010.0, 1_700_000_100.0)
    got, want = ((store.query(*args, 7.0, agg) if agg else store.query(*args, None)) for store in (postgres, duckdb))
    if agg is None:  # raw points at one instant may come in either order
        got, want = (f.sort_values(["time", "device_id", "metric", "value"], ignore_index=True) for f in (got, want))
    assert len(want) > 0
    pd.testing.assert_frame_equal(got, want, check_dtype=agg is not None, rtol=1e-9)


def test_alerts_returns_the_same_frame_as_duckdb_when_both_recorded_the_same_alerts(make_store: StoreFactory) -> None:
    postgres, duckdb = make_store(), DuckDBStore()
    for store in (postgres, duckdb):
        for i in range(3):
            store.add_alert({"ts": 1_700_000_000.0 + i, "device_id": f"sim-0{i}", "rule": "slow", "metric": "lat",
                             "value": 10.0 * i, "message": f"lat above 5 ({i})"})
    pd.testing.assert_frame_equal(postgres.alerts(1_700_000_001.0), duckdb.alerts(1_700_000_001.0))


# -- what only a shared server has: several writers, transactions --------------------------------------------


def test_insert_batches_skips_a_batch_when_another_writer_stored_it_first(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    device, metric = one.device_ids(["sim-01"])[0], one.metric_ids(["m"])[0]
    assert two.device_ids(["sim-01"]) == [device]  # the second writer finds the first one's id
    ts, values = 1_700_000_000.0 + np.arange(4.0), np.arange(4.0)
    seq = np.array([1, 1, 2, 2], np.uint64)
    one.insert_batches(ts[:2], np.full(2, device), np.full(2, metric), values[:2], seq[:2], [device], [1], [1.0], [2])
    two.insert_batches(ts, np.full(4, device), np.full(4, metric), values, seq, [device, device], [1, 2], [1.0, 1.0],
                       [2, 2])
    assert two.count() == 4
    assert one.seen_batches() == {"sim-01": {1, 2}}


def test_insert_batches_stores_neither_points_nor_dedup_record_when_the_insert_fails(make_store: StoreFactory) -> None:
    store = make_store()
    device, metric = store.device_ids(["sim-01"])[0], store.metric_ids(["m"])[0]
    with pytest.raises(ValueError):  # the points' columns disagree in length: fails after the dedup record
        store.insert_batches(np.arange(3.0), np.full(2, device), np.full(3, metric), np.arange(3.0),
                             np.ones(3, np.uint64), [device], [1], [1.0], [3])
    assert (store.count(), store.seen_batches()) == (0, {})


def test_seen_batches_returns_sequence_numbers_unchanged_when_they_use_all_64_bits(make_store: StoreFactory) -> None:
    store = make_store()
    device = store.device_ids(["sim-01"])[0]
    big = (1 << 64) - 2
    store.record_batches([device, device], [big, 3], [1.0, 1.0], [0, 0])
    assert make_store().seen_batches() == {"sim-01": {big, 3}}


def test_open_store_returns_a_postgres_store_when_backend_is_postgres(postgres_dsn: str,
                                                                     make_store: StoreFactory) -> None:
    store = make_store()  # its schema is dropped after the test; open_store uses the same one
    opened = open_store(backend="postgres", dsn=postgres_dsn, schema=store.schema)
    try:
        assert isinstance(opened, PostgresStore) and opened.backend == "postgres"
    finally:
        opened.close()  # type: ignore[attr-defined]


def test_postgres_store_raises_config_error_when_timescale_is_required_but_missing(make_store: StoreFactory) -> None:
    probe = make_store()
    if probe.timescale:
        pytest.skip("this server has TimescaleDB, so requiring it succeeds")
    with pytest.raises(ConfigError, match="timescaledb"):
        make_store(timescale=True)


# -- without a server -------------------------------------------------------------------------------------


def test_postgres_store_raises_config_error_naming_the_dsn_when_no_server_answers() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=r"cannot connect to the PostgreSQL telemetry store.*check the dsn"):
        PostgresStore(f"postgresql://nobody@127.0.0.1:{port}/none", connect_timeout=2)


def test_postgres_store_raises_config_error_when_schema_is_not_a_plain_name() -> None:
    with pytest.raises(ConfigError, match="not a plain SQL name"):
        PostgresStore("postgresql://nobody@127.0.0.1:1/none", schema="x; DROP TABLE points")
