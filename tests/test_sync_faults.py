"""Sync through faults, against a real fleet: produced = stored exactly once + counted drops, by sequence number."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FleetFactory

import workbench
from workbench.fleet import Fleet
from workbench.sim import _procs
from workbench.sync import PRIORITIES
from workbench.sync._receiver import SyncReceiver
from workbench.sync._store import SyncStore

DEVICE = "sim-01"


@pytest.fixture
def synced(fleet_factory: FleetFactory, tmp_path: Path) -> Iterator[tuple[dict[str, Any], Fleet, Path, int]]:
    """A one-device fleet with its telemetry stopped, and how many items its outbox had produced by then.

    Telemetry batches share the outbox (sequence numbers 1..base here): these tests count only their own items.
    """
    record = fleet_factory(devices=1, keepalive=2)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        fleet.call(DEVICE, "telemetry.configure", {"enabled": False}, timeout=15)
        time.sleep(0.3)  # a batch being queued as it was switched off
        yield record, fleet, tmp_path / "sync.db", _status(fleet)["counters"].get("produced", 0)


def _status(fleet: Fleet) -> dict[str, Any]:
    return fleet.call(DEVICE, "sync.status", timeout=15)


def _settle(fleet: Fleet, store: SyncStore, *, produced: int | None = None, timeout: float = 40.0) -> dict[str, Any]:
    """Wait until the outbox is empty and every produced, undropped item is stored; return the final status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = _status(fleet)
        except workbench.WorkbenchError:
            status = None
        if status is not None:
            counters = status["counters"]
            dropped = sum(counters.get(f"dropped_{p}", 0) for p in PRIORITIES)
            made = counters.get("produced", 0)
            done = produced is None or made == produced
            if done and status["outbox_bytes"] == 0 and len(store.seqs(DEVICE)) == made - dropped:
                return status
        if time.monotonic() > deadline:
            raise AssertionError(f"sync did not settle: {status and status['counters']}, "
                                 f"{len(store.seqs(DEVICE))} stored")
        time.sleep(0.2)


def _assert_exact(store: SyncStore, status: dict[str, Any], dropped: set[int] | None = None) -> None:
    produced = status["counters"]["produced"]
    stored = store.seqs(DEVICE)
    assert len(stored) == len(set(stored))
    assert set(stored) | (dropped or set()) == set(range(1, produced + 1))
    assert not set(stored) & (dropped or set())


def _produce(fleet: Fleet, count: int, priority: str = "normal", rate_hz: float = 200.0) -> None:
    fleet.call(DEVICE, "sync.produce", {"count": count, "priority": priority, "rate_hz": rate_hz, "size": 200})


def test_sync_stores_every_item_once_when_broker_restarts(synced: tuple[dict[str, Any], Fleet, Path, int]) -> None:
    record, fleet, db, base = synced
    receiver = SyncReceiver(fleet.bus, SyncStore(db))
    try:
        _produce(fleet, 1500, rate_hz=300)
        time.sleep(1.0)
        _procs.stop([record["broker"]])
        time.sleep(1.5)  # the agent keeps producing into its outbox while the broker is gone
        restarted = _procs.spawn(record["broker"]["argv"], Path(record["broker"]["log"]))
        try:
            assert _procs.wait_port("127.0.0.1", record["broker"]["port"], timeout=20)
            fleet.wait_until(lambda f: f[DEVICE].online, timeout=30)
            status = _settle(fleet, receiver.store, produced=base + 1500)
            _assert_exact(receiver.store, status)
        finally:
            _procs.stop([restarted])
    finally:
        receiver.close()


def test_sync_stores_every_item_once_when_agent_killed_repeatedly(
        synced: tuple[dict[str, Any], Fleet, Path, int]) -> None:
    record, fleet, db, base = synced
    receiver = SyncReceiver(fleet.bus, SyncStore(db))
    agent = record["agents"][0]
    spawned: list[Any] = []
    try:
        pid = agent["pid"]
        for _ in range(3):
            fleet.wait_until(lambda f: f[DEVICE].online, timeout=30)
            _produce(fleet, 2000, rate_hz=500)
            time.sleep(1.2)
            os.kill(pid, signal.SIGKILL)  # mid-production, mid-send, acks in flight
            fleet.wait_until(lambda f: not f[DEVICE].online, timeout=10)
            process = _procs.spawn(agent["argv"], Path(agent["log"]))
            spawned.append(process)
            pid = process["pid"]
        fleet.wait_until(lambda f: f[DEVICE].online, timeout=30)
        status = _settle(fleet, receiver.store)
        assert status["counters"]["produced"] - base > 1000  # every kill interrupted real work
        _assert_exact(receiver.store, status)
    finally:
        _procs.stop(spawned)
        receiver.close()


def test_sync_drains_critical_first_and_exactly_once_after_partition(
        synced: tuple[dict[str, Any], Fleet, Path, int]) -> None:
    _, fleet, db, base = synced
    receiver = SyncReceiver(fleet.bus, SyncStore(db))
    try:
        fleet.call(DEVICE, "sync.partition", {"seconds": 30})
        _produce(fleet, 300, priority="bulk", rate_hz=1000)
        _produce(fleet, 300, priority="critical", rate_hz=1000)
        time.sleep(2.0)
        during = _status(fleet)
        assert not during["link_up"]
        assert during["backlog"]["critical"]["items"] == 300 and during["backlog"]["bulk"]["items"] == 300
        assert [seq for seq in receiver.store.seqs(DEVICE) if seq > base] == []
        fleet.call(DEVICE, "sync.partition", {"seconds": 0})
        status = _settle(fleet, receiver.store, produced=base + 600)
        _assert_exact(receiver.store, status)
        rows = receiver.store.rows(DEVICE)
        last_critical = max(i for i, row in enumerate(rows) if row[1] == "critical")
        first_bulk = min(i for i, row in enumerate(rows) if row[1] == "bulk")
        assert last_critical < first_bulk
    finally:
        receiver.close()


def test_sync_stores_every_item_once_when_ingestion_restarts(
        synced: tuple[dict[str, Any], Fleet, Path, int]) -> None:
    _, fleet, db, base = synced
    receiver = SyncReceiver(fleet.bus, SyncStore(db))
    try:
        _produce(fleet, 1500, rate_hz=300)
        time.sleep(1.5)
        receiver.close()  # what was published meanwhile reaches no one and is never acknowledged
        time.sleep(2.0)
        receiver = SyncReceiver(fleet.bus, SyncStore(db))
        status = _settle(fleet, receiver.store, produced=base + 1500)
        _assert_exact(receiver.store, status)
    finally:
        receiver.close()


def test_sync_drops_only_counted_bulk_when_outbox_disk_bound_reached(
        synced: tuple[dict[str, Any], Fleet, Path, int]) -> None:
    _, fleet, db, base = synced
    receiver = SyncReceiver(fleet.bus, SyncStore(db))
    try:
        _settle(fleet, receiver.store, produced=base)  # the telemetry batches leave first: an empty outbox
        fleet.call(DEVICE, "sync.configure", {"max_mb": 0.05})  # 50 kB: 250 items of 200 bytes
        fleet.call(DEVICE, "sync.partition", {"seconds": 30})
        _produce(fleet, 400, priority="bulk", rate_hz=2000)  # seqs base + 1-400
        time.sleep(1.0)  # 400 items at 2000/s: all queued before the critical ones
        _produce(fleet, 100, priority="critical", rate_hz=2000)  # seqs base + 401-500
        time.sleep(1.0)
        fleet.call(DEVICE, "sync.partition", {"seconds": 0})
        status = _settle(fleet, receiver.store, produced=base + 500)
        counters = status["counters"]
        assert counters["dropped_bulk"] == 250  # 400 + 100 items, room for 250: the 250 oldest bulk go
        assert counters.get("dropped_critical", 0) == 0
        stored = receiver.store.seqs(DEVICE)
        dropped = set(range(1, base + 501)) - set(stored)
        assert len(dropped) == counters["dropped_bulk"]
        assert dropped <= set(range(base + 1, base + 401))  # only bulk
        assert set(range(base + 401, base + 501)) <= set(stored)
        _assert_exact(receiver.store, status, dropped)
    finally:
        receiver.close()
