"""Telemetry through the sync outbox: acked only once committed in DuckDB, exactly once by (device, sequence)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from conftest import FleetFactory, deploy_model

import workbench
from workbench.fleet import Fleet
from workbench.protocol.acks import decode_ack
from workbench.protocol.wire import encode_batch
from workbench.sim import _procs
from workbench.sync import Codec, WireItem
from workbench.sync._receiver import SyncReceiver
from workbench.sync._store import SyncStore
from workbench.telemetry import build_digits_model
from workbench.telemetry._ingest import Ingestor
from workbench.telemetry._store import DuckDBStore

DEVICE = "sim-01"
TOPIC = f"wb/v1/dev/{DEVICE}/telemetry"


def _batch(seq: int, *, n: int = 10, sent: float | None = None) -> bytes:
    t0 = time.time() if sent is None else sent
    return encode_batch(DEVICE, seq, t0 + np.arange(n) * 0.01, ["latency_p95_ms"], np.zeros(n),
                        np.arange(n, dtype=float), sent=t0)


class FlakyStore(DuckDBStore):
    """A DuckDB store whose next ``fail`` inserts raise, and whose inserts can be held at a gate."""

    def __init__(self, *args: Any, fail: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def insert_batches(self, *args: Any) -> None:
        self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise OSError("disk full (injected)")
        super().insert_batches(*args)


def _collect(ingestor: Ingestor) -> list[Any]:
    receipts: list[Any] = []
    ingestor.on_stored = receipts.extend
    return receipts


def test_ingestor_stores_a_batch_once_when_its_first_insert_failed_and_it_is_resent() -> None:
    store = FlakyStore(fail=1)
    ingestor = Ingestor(store, flush_interval_s=0.01)
    receipts = _collect(ingestor)
    try:
        raw = _batch(5)
        ingestor.feed(raw, TOPIC, receipt="first")
        assert ingestor.wait_idle()
        assert receipts == [] and store.count() == 0  # not acknowledged, so the device keeps it
        assert ingestor.stats()[DEVICE]["store_errors"] == 1 and ingestor.stats()[DEVICE]["missing"] == 1
        ingestor.feed(raw, TOPIC, receipt="resent")
        assert ingestor.wait_idle()
        assert receipts == ["resent"] and store.count() == 10
        stats = ingestor.stats()[DEVICE]
        assert (stats["batches"], stats["duplicates"], stats["missing"]) == (1, 0, 0)
    finally:
        ingestor.close()


def test_ingestor_hands_back_every_receipt_but_stores_once_when_a_batch_comes_twice() -> None:
    store = FlakyStore()
    ingestor = Ingestor(store, flush_interval_s=0.01)
    receipts = _collect(ingestor)
    try:
        store.gate.clear()  # both copies arrive while the first insert is being prepared
        ingestor.feed(_batch(1), TOPIC, receipt="a")
        ingestor.feed(_batch(1), TOPIC, receipt="b")
        time.sleep(0.2)
        assert receipts == []
        store.gate.set()
        assert ingestor.wait_idle()
        ingestor.feed(_batch(1), TOPIC, receipt="c")  # after the commit: a plain duplicate
        assert ingestor.wait_idle()
        assert receipts == ["a", "b", "c"] and store.count() == 10
        assert ingestor.stats()[DEVICE]["duplicates"] == 2
    finally:
        ingestor.close()


def test_receiver_acks_telemetry_only_after_its_insert_commits_and_keeps_it_out_of_the_sync_store() -> None:
    store = FlakyStore()
    acks: list[list[int]] = []
    ingestor = Ingestor(store, flush_interval_s=0.01)
    receiver = SyncReceiver(None, SyncStore(), telemetry=ingestor,
                            send_ack=lambda device, payload: acks.append(decode_ack(payload)))
    try:
        store.gate.clear()
        waited = time.time() - 120  # queued two minutes ago, behind a partition
        message = Codec().encode([WireItem(1, 2, "telemetry", _batch(1, sent=waited)),
                                  WireItem(2, 0, "event", b'{"door": "open"}')])
        receiver.feed(DEVICE, message)
        deadline = time.monotonic() + 5
        while not acks and time.monotonic() < deadline:
            time.sleep(0.02)
        assert acks == [[2]]  # the event is committed in the sync store; the batch is not in DuckDB yet
        store.gate.set()
        assert receiver.wait_idle()
        assert acks == [[2], [1]]
        assert receiver.store.seqs(DEVICE) == [2]  # telemetry is stored once, in DuckDB only
        frame = store.query("latency_p95_ms", [DEVICE], None, None, None)
        assert len(frame) == 10
        # Late, not off-clock: the message's send time says the device clock is right.
        assert frame["time"].min().timestamp() == pytest.approx(waited, abs=1e-3)
        assert ingestor.stats()[DEVICE]["clock_skew"] == 0
        receiver.feed(DEVICE, message)  # the acks were lost: resent, acknowledged again, not stored again
        assert receiver.wait_idle()
        assert sorted(acks[2:]) == [[1], [2]] and store.count() == 10
        assert receiver.stats()[DEVICE]["duplicates"] == 2
    finally:
        receiver.close()
        ingestor.close()


# -- against a real fleet: the inference loop's telemetry through broker restart, kill -9, ingestion restart ----


class Ingestion:
    """The workbench's receiving end on files: sync receiver -> telemetry ingestor -> DuckDB."""

    def __init__(self, fleet: Fleet, folder: Path) -> None:
        self.store = DuckDBStore(folder / "telemetry.duckdb")
        self.ingestor = Ingestor(self.store, flush_interval_s=0.05)
        self.receiver = SyncReceiver(fleet.bus, SyncStore(folder / "sync.db"), telemetry=self.ingestor)

    def close(self) -> None:
        self.receiver.close()  # first: what the ingestor commits after this is never acknowledged
        self.ingestor.close()
        self.store.close()


def _status(fleet: Fleet) -> dict[str, Any] | None:
    try:
        return fleet.call(DEVICE, "sync.status", timeout=15)
    except workbench.WorkbenchError:
        return None


def _settle(fleet: Fleet, ingestion: Ingestion, timeout: float = 40.0) -> dict[str, Any]:
    """Wait until the device's outbox is empty (every produced batch committed and acknowledged)."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = _status(fleet)
        if status is not None and status["outbox_bytes"] == 0 and ingestion.receiver.wait_idle(2):
            again = _status(fleet)
            if again is not None and again["outbox_bytes"] == 0 and \
                    again["counters"]["produced"] == status["counters"]["produced"]:
                return again
        time.sleep(0.3)
    raise AssertionError(f"telemetry did not drain: {status and status['counters']}, receiver "
                         f"{dict(ingestion.receiver.counters)}, ingestor {ingestion.ingestor.stats()}")


def test_inference_telemetry_is_in_duckdb_exactly_once_when_agent_is_killed_broker_restarts_and_ingestion_restarts(
        fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=1, keepalive=2)
    model = build_digits_model(tmp_path / "digits.onnx")
    agent = record["agents"][0]
    spawned: list[dict[str, Any]] = []
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        ingestion = Ingestion(fleet, tmp_path)
        try:
            deploy_model(fleet, model, [DEVICE], tmp_path / "digits-pkg")
            fleet.call(DEVICE, "telemetry.configure", {"source": "digits", "rate_hz": 50, "publish_interval_s": 0.1,
                                                       "batch_size": 40})
            time.sleep(1.0)
            # 1. kill -9 mid-production, mid-send, acknowledgements in flight.
            os.kill(agent["pid"], signal.SIGKILL)
            fleet.wait_until(lambda f: not f[DEVICE].online, timeout=10)
            spawned.append(_procs.spawn(agent["argv"], Path(agent["log"])))
            fleet.wait_until(lambda f: f[DEVICE].online, timeout=30)  # it serves its deployed package again
            time.sleep(1.0)
            # 2. The broker goes away for a while; the agent keeps producing into its outbox.
            _procs.stop([record["broker"]])
            time.sleep(1.5)
            spawned.append(_procs.spawn(record["broker"]["argv"], Path(record["broker"]["log"])))
            assert _procs.wait_port("127.0.0.1", record["broker"]["port"], timeout=20)
            fleet.wait_until(lambda f: f[DEVICE].online, timeout=30)
            time.sleep(1.0)
            # 3. The workbench's ingestion restarts; what it committed last is never acknowledged.
            ingestion.close()
            time.sleep(1.5)
            ingestion = Ingestion(fleet, tmp_path)
            time.sleep(1.0)
            fleet.call(DEVICE, "telemetry.configure", {"enabled": False}, timeout=15)
            status = _settle(fleet, ingestion)
            telemetry = fleet.call(DEVICE, "telemetry.status", timeout=15)
        finally:
            ingestion.close()
            _procs.stop(spawned)
    produced = status["counters"]["produced"]
    assert status["counters"].get("dropped_normal", 0) == 0
    assert telemetry["batches_sent"] > 0  # the restarted agent produced too
    with duckdb.connect(str(tmp_path / "telemetry.duckdb"), read_only=True) as con:
        batches = con.execute("SELECT seq, n FROM batches").fetchall()
        per_seq = dict(con.execute("SELECT seq, count(*) FROM points GROUP BY seq").fetchall())
        predictions = con.execute("SELECT count(*) FROM points p JOIN metric_names m ON m.id = p.metric "
                                  "WHERE m.name = 'prediction'").fetchone()
    seqs = [int(seq) for seq, _ in batches]
    assert len(seqs) == len(set(seqs)) == produced  # every batch the outbox took, once
    assert {int(seq): int(n) for seq, n in batches} == {int(s): int(c) for s, c in per_seq.items()}
    boots: dict[int, list[int]] = {}
    for seq in seqs:
        boots.setdefault(seq >> 32, []).append(seq & 0xFFFFFFFF)
    assert len(boots) == 2  # before and after the kill
    for numbers in boots.values():  # no batch missing inside a boot (the killed one may end early)
        assert sorted(numbers) == list(range(1, max(numbers) + 1))
    assert predictions is not None and predictions[0] > 0  # the inference loop's own points, not only device metrics
