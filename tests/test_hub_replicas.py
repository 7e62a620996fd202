"""Hub replicas: two or more hubs share one PostgreSQL store and the devices' messages, and survive losing one.

The broker shares the outbox among the replicas (an MQTT shared subscription on Mosquitto); the stores
deduplicate by (device, sequence) in the database; one replica, chosen by an advisory lock, leads. The
server comes from ``WORKBENCH_TEST_POSTGRES_DSN`` (.ci/run starts a throwaway one); every test here starts
from an empty ``workbench`` schema, since the hub keeps its tables there.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import FleetFactory

import workbench
from workbench.errors import ConfigError, HubAlreadyRunningError
from workbench.fleet import Fleet
from workbench.fleet._connect import connect_record
from workbench.hub import Hub
from workbench.protocol.codec import WireItem
from workbench.sim import _procs
from workbench.sim._rundir import RunDir
from workbench.sync._store import PostgresSyncStore


@pytest.fixture
def store(postgres_dsn: str) -> Iterator[str]:
    """The test server's DSN with the hub's schema emptied before and after."""
    def drop() -> None:
        with psycopg.connect(postgres_dsn, autocommit=True) as con:
            con.execute("DROP SCHEMA IF EXISTS workbench CASCADE")

    drop()
    yield postgres_dsn
    drop()


# -- who may share a store ----------------------------------------------------------------------------------


def test_replicas_of_one_group_share_a_store_and_exactly_one_leads(store: str, tmp_path: Path) -> None:
    a = Hub(None, store, data_dir=tmp_path / "a", group="hubs", replica="a")
    b = Hub(None, store, data_dir=tmp_path / "b", group="hubs", replica="b")
    try:
        deadline = time.monotonic() + 10
        while not (a.is_leader or b.is_leader):
            assert time.monotonic() < deadline, "no replica became leader within 10 s"
            time.sleep(0.05)
        time.sleep(1.5)  # both have tried the lock at least once more by now
        assert [a.is_leader, b.is_leader].count(True) == 1
        assert {a.health()["replica"], b.health()["replica"]} == {"a", "b"}
    finally:
        b.close()
        a.close()


def test_another_replica_takes_over_leading_when_the_leader_closes(store: str, tmp_path: Path) -> None:
    a = Hub(None, store, data_dir=tmp_path / "a", group="hubs", replica="a")
    assert a.leadership is not None and a.leadership.wait_leader(10)
    b = Hub(None, store, data_dir=tmp_path / "b", group="hubs", replica="b")
    try:
        time.sleep(1.5)
        assert not b.is_leader
        a.close()
        assert b.leadership is not None and b.leadership.wait_leader(5), "b did not take over within 5 s"
    finally:
        b.close()
        a.close()


def test_single_hub_is_refused_naming_the_group_when_replicas_own_the_store(store: str, tmp_path: Path) -> None:
    a = Hub(None, store, data_dir=tmp_path / "a", group="hubs")
    try:
        with pytest.raises(HubAlreadyRunningError, match="the hub replica group 'hubs' already owns the store"):
            Hub(None, store, data_dir=tmp_path / "b")
        with pytest.raises(HubAlreadyRunningError, match="cannot join it as a replica of group 'other'"):
            Hub(None, store, data_dir=tmp_path / "c", group="other")
    finally:
        a.close()


def test_replica_is_refused_when_a_single_hub_owns_the_store(store: str, tmp_path: Path) -> None:
    single = Hub(None, store, data_dir=tmp_path / "a")
    try:
        with pytest.raises(HubAlreadyRunningError, match="another hub already owns the store"):
            Hub(None, store, data_dir=tmp_path / "b", group="hubs")
    finally:
        single.close()


def test_replica_group_is_refused_naming_postgres_when_the_store_is_a_duckdb_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="share one PostgreSQL database"):
        Hub(None, f"duckdb://{tmp_path / 'fleet.duckdb'}", group="hubs")
    with pytest.raises(ConfigError, match="invalid replica group"):
        Hub(None, f"duckdb://{tmp_path / 'fleet.duckdb'}", group="a/b")


def test_postgres_sync_store_stores_an_item_once_when_two_replicas_receive_it(store: str) -> None:
    one, two = PostgresSyncStore(store), PostgresSyncStore(store)
    try:
        items = [WireItem(1, 0, "event", b"{}"), WireItem(2, 0, "state", b'{"set": {"mode": "eco"}}')]
        assert one.store("sim-01", items) == 2
        assert two.store("sim-01", items) == 0  # the resend reached the other replica: duplicates
        assert two.store("sim-01", [WireItem(3, 0, "state", b'{"set": {"mode": "max"}}')]) == 1
        assert one.seqs("sim-01") == [1, 2, 3]
        assert one.counters()["sim-01"] == {"stored": 3, "duplicates": 2}
        assert one.state("sim-01") == {"mode": "max"}
        assert [row[0] for row in two.rows("sim-01")] == [1, 2, 3]
    finally:
        one.close()
        two.close()
