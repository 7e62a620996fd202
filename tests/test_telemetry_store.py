"""Ingestion into the telemetry stores without a broker: dedup, gaps, clock skew, bad input, retention, queries.

Each check runs on DuckDB and on PostgreSQL (the latter where ``WORKBENCH_TEST_POSTGRES_DSN`` names a
server; .ci/run starts one), since both backends promise the same behaviour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from workbench.errors import ConfigError
from workbench.protocol.wire import encode_batch
from workbench.telemetry._client import Telemetry
from workbench.telemetry._ingest import Ingestor
from workbench.telemetry._store import DuckDBStore

TOPIC = "wb/v1/dev/{}/telemetry"
StoreFactory = Callable[..., Any]


def _raw(device: str, seq: int, *, n: int = 10, t0: float | None = None, sent: float | None = None,
         metric: str = "latency_p95_ms") -> bytes:
    t0 = time.time() if t0 is None else t0
    return encode_batch(device, seq, t0 + np.arange(n) * 0.01, [metric], np.zeros(n), np.arange(n, dtype=float),
                        sent=t0 if sent is None else sent)


@pytest.fixture(params=["duckdb", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Open stores of one backend on one database: a second one opened is the first restarted."""
    if request.param == "postgres":
        return cast(StoreFactory, request.getfixturevalue("postgres_stores"))
    return lambda **options: DuckDBStore(tmp_path / "telemetry.duckdb", **options)


@pytest.fixture
def ingestor(make_store: StoreFactory) -> Iterator[Ingestor]:
    ingest = Ingestor(make_store(), flush_interval_s=0.01)
    yield ingest
    ingest.close()


def test_ingestor_stores_each_sequence_once_when_batches_are_duplicated(ingestor: Ingestor) -> None:
    for seq in (1, 2, 2, 3, 1, 3):
        ingestor.feed(_raw("sim-01", seq), TOPIC.format("sim-01"))
    assert ingestor.wait_idle()
    assert ingestor.store.count() == 30
    stats = ingestor.stats()["sim-01"]
    assert (stats["batches"], stats["duplicates"], stats["gaps"]) == (3, 3, 0)


def test_ingestor_counts_gaps_and_late_arrivals_when_sequences_skip_and_reorder(ingestor: Ingestor) -> None:
    for seq in (1, 2, 5, 3, 9):
        ingestor.feed(_raw("sim-01", seq), TOPIC.format("sim-01"))
    assert ingestor.wait_idle()
    stats = ingestor.stats()["sim-01"]
    # 3, 4 skipped at 5 (then 3 arrived late), 6-8 skipped at 9.
    assert (stats["gaps"], stats["out_of_order"], stats["missing"]) == (5, 1, 4)
    assert ingestor.store.count() == 50


def test_ingestor_missing_never_goes_negative_when_older_batches_arrive_after_the_first_seen(
    ingestor: Ingestor,
) -> None:
    # A device's outbox may deliver its newest batch first; the older ones were never counted missing.
    for seq in (5, 0, 1, 2, 3, 4, 8, 6):
        ingestor.feed(_raw("sim-01", seq), TOPIC.format("sim-01"))
    assert ingestor.wait_idle()
    stats = ingestor.stats()["sim-01"]
    # Only 6 and 7 were skipped (at 8), and 6 came late; 0-4 were queued before 5, the first seen: a backlog.
    assert (stats["gaps"], stats["out_of_order"], stats["missing"], stats["older_than_first"]) == (2, 1, 1, 5)


def test_ingestor_missing_never_goes_negative_when_a_restarted_device_sends_an_older_boot(
    ingestor: Ingestor,
) -> None:
    boot = 1 << 32
    for seq in (boot + 3, 2, 3):  # batches of the earlier boot (sequence restarted) delivered after the new one
        ingestor.feed(_raw("sim-01", seq), TOPIC.format("sim-01"))
    assert ingestor.wait_idle()
    assert ingestor.stats()["sim-01"]["missing"] == 0


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
    assert second.store.count() == 20
    assert second.stats()["sim-01"]["duplicates"] == 1
    second.close()


def test_ingestor_counts_bad_batches_per_device_and_keeps_running_when_input_is_garbage(ingestor: Ingestor) -> None:
    good = _raw("sim-02", 1)
    for payload in (b"", b"not a batch at all", good[:-3], good[:3] + b"\x09" + good[4:], good + b"x"):
        ingestor.feed(payload, TOPIC.format("sim-02"))
    ingestor.feed(_raw("sim-03", 1), TOPIC.format("sim-02"))  # header names another device
    ingestor.feed(good, "not/a/device/topic")
    ingestor.feed(good, TOPIC.format("sim-02"))
    assert ingestor.wait_idle()
    stats = ingestor.stats()["sim-02"]
    assert (stats["truncated"], stats["malformed"], stats["unknown_version"], stats["spoofed"]) == (2, 2, 1, 1)
    assert ingestor.totals["bad_topic"] == 1
    assert ingestor.store.count() == 10


def test_ingestor_shifts_timestamps_onto_its_clock_when_device_clock_is_minutes_off(ingestor: Ingestor) -> None:
    now = time.time()
    ingestor.feed(_raw("sim-04", 1, t0=now - 300, sent=now - 300), TOPIC.format("sim-04"), received=now)
    assert ingestor.wait_idle()
    frame = ingestor.store.query("latency_p95_ms", None, None, None, None)
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


class _SlowStore(DuckDBStore):
    """A real DuckDB store whose inserts take ``delay_s``: a backlog that outlasts close()'s wait."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def insert_batches(self, *args: Any) -> None:
        time.sleep(self.delay_s)
        super().insert_batches(*args)


def test_telemetry_close_stores_the_backlog_before_closing_the_store_when_it_drains_in_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _SlowStore(delay_s=0.02)
    telemetry = Telemetry(cast(Any, None), store=store, receive=False, flush_rows=10)
    for seq in range(20):
        telemetry.ingestor.feed(_raw("sim-01", seq), TOPIC.format("sim-01"))
    with caplog.at_level(logging.WARNING, logger="workbench.telemetry"):
        telemetry.close(timeout=10.0)
    assert not telemetry.ingestor._writer.is_alive()
    assert telemetry.ingestor.stats()["sim-01"]["points"] == 200
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_telemetry_close_drops_and_logs_the_rest_without_store_errors_when_the_backlog_outlasts_the_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingestor = Ingestor(_SlowStore(delay_s=0.2), flush_rows=10)
    for seq in range(30):
        ingestor.feed(_raw("sim-01", seq), TOPIC.format("sim-01"))
    with caplog.at_level(logging.WARNING, logger="workbench.telemetry"):
        dropped = ingestor.close(timeout=0.5)
        ingestor.feed(_raw("sim-01", 99), TOPIC.format("sim-01"))  # after close: not taken
    assert not ingestor._writer.is_alive() and ingestor.backlog == 0
    stored = ingestor.store.count()  # type: ignore[attr-defined]
    assert dropped > 0 and stored + dropped * 10 == 300
    ingestor.store.close()  # type: ignore[attr-defined]
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{dropped} batches" in m and "not stored" in m for m in messages), messages
    assert not any("insert failed" in m for m in messages)
