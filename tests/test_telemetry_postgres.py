"""The PostgreSQL store against a real server: the DuckDB store's behavioural checks, and the same DataFrames.

The server comes from ``WORKBENCH_TEST_POSTGRES_DSN`` (.ci/run starts a throwaway one). Each
test gets its own schema, dropped afterwards, so runs sharing a server do not meet.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_telemetry_store import TOPIC, _raw

from workbench.errors import ConfigError
from workbench.telemetry._client import open_store
from workbench.telemetry._ingest import Ingestor
from workbench.telemetry._postgres import PostgresStore
from workbench.telemetry._store import AGGREGATES, DuckDBStore

StoreFactory = Callable[..., PostgresStore]


@pytest.fixture
def dsn() -> str:
    value = os.environ.get("WORKBENCH_TEST_POSTGRES_DSN")
    if not value:
        if os.environ.get("CI") == "true":
            pytest.fail("WORKBENCH_TEST_POSTGRES_DSN is unset under CI=true: .ci/run must start PostgreSQL and "
                        "export it")
        pytest.skip("WORKBENCH_TEST_POSTGRES_DSN is unset; set it to postgresql://user@host:port/db (.ci/run "
                    "starts a throwaway server) to test the postgres backend")
    return value


@pytest.fixture
def make_store(dsn: str) -> Iterator[StoreFactory]:
    schema = f"wb_test_{uuid.uuid4().hex[:12]}"
    opened: list[PostgresStore] = []

    def make(**options: Any) -> PostgresStore:
        store = PostgresStore(dsn, schema=schema, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        if not store._con.closed:
            store.close()
    PostgresStore(dsn, schema=schema, timescale=False).drop()


@pytest.fixture
def ingestor(make_store: StoreFactory) -> Iterator[Ingestor]:
    ingest = Ingestor(make_store(), flush_interval_s=0.01)
    yield ingest
    ingest.close()


# -- the DuckDB store's checks (tests/test_telemetry_store.py), on PostgreSQL ------------------------------


def test_ingestor_stores_each_sequence_once_when_batches_are_duplicated(ingestor: Ingestor) -> None:
    for seq in (1, 2, 2, 3, 1, 3):
        ingestor.feed(_raw("sim-01", seq), TOPIC.format("sim-01"))
    assert ingestor.wait_idle()
    assert ingestor.store.count() == 30  # type: ignore[attr-defined]
    stats = ingestor.stats()["sim-01"]
    assert (stats["batches"], stats["duplicates"], stats["gaps"]) == (3, 3, 0)


def test_ingestor_counts_gaps_and_late_arrivals_when_sequences_skip_and_reorder(ingestor: Ingestor) -> None:
    for seq in (1, 2, 5, 3, 9):
        ingestor.feed(_raw("sim-01", seq), TOPIC.format("sim-01"))
    assert ingestor.wait_idle()
    stats = ingestor.stats()["sim-01"]
    assert (stats["gaps"], stats["out_of_order"], stats["missing"]) == (5, 1, 4)
    assert ingestor.store.count() == 50  # type: ignore[attr-defined]


def test_ingestor_does_not_store_a_duplicate_when_restarted_on_the_same_database(make_store: StoreFactory) -> None:
    first = Ingestor(make_store(), flush_interval_s=0.01)
    first.feed(_raw("sim-01", 7), TOPIC.format("sim-01"))
    assert first.wait_idle()
    first.close()
    first.store.close()  # type: ignore[attr-defined]
    second = Ingestor(make_store(), flush_interval_s=0.01)
    second.feed(_raw("sim-01", 7), TOPIC.format("sim-01"))
    second.feed(_raw("sim-01", 8), TOPIC.format("sim-01"))
    assert second.wait_idle()
    assert second.store.count() == 20  # type: ignore[attr-defined]
    assert second.stats()["sim-01"]["duplicates"] == 1
    second.close()


def test_ingestor_counts_bad_batches_per_device_and_keeps_running_when_input_is_garbage(ingestor: Ingestor) -> None:
    good = _raw("sim-02", 1)
    for payload in (b"", b"not a batch at all", good[:-3], good[:3] + b"\x09" + good[4:], good + b"x"):
        ingestor.feed(payload, TOPIC.format("sim-02"))
    ingestor.feed(_raw("sim-03", 1), TOPIC.format("sim-02"))
    ingestor.feed(good, "not/a/device/topic")
    ingestor.feed(good, TOPIC.format("sim-02"))
    assert ingestor.wait_idle()
    stats = ingestor.stats()["sim-02"]
    assert (stats["truncated"], stats["malformed"], stats["unknown_version"], stats["spoofed"]) == (2, 2, 1, 1)
    assert ingestor.store.count() == 10  # type: ignore[attr-defined]


def test_ingestor_shifts_timestamps_onto_its_clock_when_device_clock_is_minutes_off(ingestor: Ingestor) -> None:
    now = time.time()
    ingestor.feed(_raw("sim-04", 1, t0=now - 300, sent=now - 300), TOPIC.format("sim-04"), received=now)
    assert ingestor.wait_idle()
    frame = ingestor.store.query("latency_p95_ms", None, None, None, None)  # type: ignore[attr-defined]
    assert abs(frame["time"].min().timestamp() - now) < 1.0
    assert ingestor.stats()["sim-04"]["clock_skew"] == 1


def test_query_buckets_points_per_device_when_every_is_given(make_store: StoreFactory) -> None:
    store = make_store()
    device = np.array(store.device_ids(["a", "a", "b", "b"]))
    metric = np.array(store.metric_ids(["m"] * 4))
    store.insert(np.array([100.0, 104.0, 101.0, 107.0]), device, metric, np.array([1.0, 3.0, 10.0, 20.0]),
                 np.zeros(4, np.uint64))
    frame = store.query("m", None, None, None, 5.0, "mean")
    got = {(row.device_id, row.time.timestamp()): row.value for row in frame.itertuples()}
    assert got == {("a", 100.0): 2.0, ("b", 100.0): 10.0, ("b", 105.0): 20.0}
    assert store.query("m", ["b"], 105.0, None, None)["value"].tolist() == [20.0]


def test_apply_retention_keeps_old_history_as_rollups_when_raw_points_expire(make_store: StoreFactory) -> None:
    store = make_store(raw_retention="1h", rollup_every="1m")
    now = 1_800_000_000.0
    old = now - 7200 + np.arange(120.0)  # two full minutes, two hours ago
    device, metric = store.device_ids(["d"])[0], store.metric_ids(["m"])[0]
    store.insert(np.r_[old, now - 10], np.full(121, device), np.full(121, metric), np.r_[np.ones(120), 5.0],
                 np.zeros(121, np.uint64))
    result = store.apply_retention(now=now)
    assert (result["rolled_up"], result["deleted"], store.count()) == (2, 120, 1)
    frame = store.query("m", None, now - 8000, None, None)
    assert len(frame) == 3 and frame["value"].tolist() == [1.0, 1.0, 5.0]


def test_query_raises_config_error_naming_choices_when_aggregate_is_unknown(make_store: StoreFactory) -> None:
    with pytest.raises(ConfigError, match="unknown aggregate 'median'"):
        make_store().query("m", None, None, None, 5.0, "median")


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


def test_open_store_returns_a_postgres_store_when_backend_is_postgres(dsn: str, make_store: StoreFactory) -> None:
    store = make_store()  # its schema is dropped after the test; open_store uses the same one
    opened = open_store(backend="postgres", dsn=dsn, schema=store.schema)
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
