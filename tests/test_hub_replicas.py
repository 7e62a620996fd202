"""Hub replicas: two or more hubs share one PostgreSQL store and the devices' messages, and survive losing one.

The broker shares the outbox among the replicas (an MQTT shared subscription on Mosquitto); the stores
deduplicate by (device, sequence) in the database; one replica, chosen by an advisory lock, leads. The
server comes from ``WORKBENCH_TEST_POSTGRES_DSN`` (.ci/run starts a throwaway one); every test here starts
from an empty ``workbench`` schema, since the hub keeps its tables there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import psycopg
import pytest
from conftest import FleetFactory

import workbench
from workbench.errors import BrokerUnreachableError, ConfigError, HubAlreadyRunningError, HubError
from workbench.fleet import Fleet
from workbench.fleet._connect import connect_record
from workbench.hub._nats_queue import NatsQueue, mqtt_topic, parse_nats_urls
from workbench.hub._service import Hub
from workbench.protocol import topics
from workbench.protocol._mqtt import BrokerAddress
from workbench.protocol.codec import MAX_MESSAGE_BYTES, WireItem
from workbench.protocol.wire import encode_batch
from workbench.sim import _procs
from workbench.sim._rundir import RunDir
from workbench.sync._receiver import SyncReceiver
from workbench.sync._store import PostgresSyncStore, SyncStore
from workbench.telemetry._alerts import AlertRule


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


def test_replica_is_refused_naming_shared_subscriptions_when_the_broker_is_nats(
        store: str, fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=1, broker="embedded", hub=False, keepalive=5)
    with pytest.raises(ConfigError, match=r"did not deliver a message through the MQTT shared subscription(.|\n)*"
                       r"pass --nats with its NATS client URL \(`broker.nats_url` in fleet.json\)"):
        Hub(BrokerAddress.parse(record["broker"]["url"]), store, data_dir=tmp_path / "a", group="hubs")
    single = Hub(None, store, data_dir=tmp_path / "b")  # the refused replica left the store free
    single.close()


def test_hub_is_refused_naming_group_when_given_nats_without_group(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give --group too"):
        Hub(None, f"duckdb://{tmp_path / 'fleet.duckdb'}", nats="nats://127.0.0.1:4222")
    assert not (tmp_path / "fleet.duckdb").exists()  # refused before anything opened


@pytest.mark.parametrize(("url", "why"), [
    ("nats://10.1.2.3:4222", "plain NATS beyond loopback"),
    ("nats://hub:secret@127.0.0.1:4222", "--nats-password-file"),
    ("mqtt://127.0.0.1:1883", "is not a NATS server URL"),
    ("nats://127.0.0.1", "is not a NATS server URL"),
    (" , ", "--nats needs a URL"),
])
def test_nats_url_is_refused_with_what_to_do_when_it_is_unsafe_or_malformed(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_nats_urls(url)


def test_nats_subjects_become_the_mqtt_topics_the_receiver_accepts_when_device_ids_hold_dots(tmp_path: Path) -> None:
    receiver = SyncReceiver(None, SyncStore(tmp_path / "sync.db"), send_ack=lambda _device, _payload: None)
    try:
        assert mqtt_topic("wb.v1.dev.pi//4.outbox") == topics.outbox_topic("pi.4")
        receiver.receive(mqtt_topic("wb.v1.dev.sim-01.state"), b"x")  # no outbox: never queued
        receiver.receive(mqtt_topic("wb.v1.dev.pi//4.outbox"), b"\0" * (MAX_MESSAGE_BYTES + 1))
        assert receiver.counters["bad_topic"] == 1
        assert receiver.counters["rejected_oversized"] == 1
        assert receiver.wait_idle(5) and receiver.counters["messages"] == 0
    finally:
        receiver.close()


def _nats_permission_errors(url: str, user: str, password: str) -> list[str]:
    """What the NATS server says when ``user`` publishes a command and subscribes to commands."""
    import nats

    async def attempt() -> list[str]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(url, user=user, password=password, error_cb=on_error, allow_reconnect=False)
        try:
            await nc.publish("wb.v1.cmd.sim-01.ping", b"{}")
            await nc.subscribe("wb.v1.cmd.>")
            await nc.flush(5)
            await asyncio.sleep(0.5)  # permission errors arrive asynchronously, after the flush
        finally:
            await nc.close()
        return errors

    return asyncio.run(attempt())


def test_hub_nats_user_receives_outboxes_on_loopback_and_may_do_nothing_else_when_the_fleet_is_secure(
        fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1, broker="embedded", hub=False, secure=True, keepalive=5)
    url = record["broker"]["nats_url"]
    assert urlsplit(url).hostname == "127.0.0.1"
    hub_nats = record["secure"]["hub_nats"]
    password_file = Path(hub_nats["password_file"])
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    [device] = [d for agent in record["agents"] for d in agent["devices"]]
    received: list[str] = []
    queue = NatsQueue(url, "hubs", lambda topic, _payload: received.append(topic), user=hub_nats["username"],
                      password=password)
    try:
        with connect_record(record, RunDir.resolve(record["run_dir"])) as fleet:
            fleet.wait_for(1, timeout=30)
            _stream(fleet, [device], synthetic_points_per_s=50, publish_interval_s=0.2)
            deadline = time.monotonic() + 20
            while not received and time.monotonic() < deadline:
                time.sleep(0.1)
            _stream(fleet, [device], enabled=False)
    finally:
        queue.close()
    assert received, "the hub's NATS user received no outbox message"
    assert set(received) == {topics.outbox_topic(device)}
    errors = _nats_permission_errors(url, hub_nats["username"], password)
    assert sum("permissions violation for publish" in e.lower() for e in errors) == 1, errors
    assert sum("permissions violation for subscription" in e.lower() for e in errors) == 1, errors
    with pytest.raises(BrokerUnreachableError, match="--nats-user/--nats-password-file"):
        NatsQueue(url, "hubs", lambda _t, _p: None, user=hub_nats["username"], password="wrong", timeout=3)
    controller = Path(record["secure"]["controller"]["password_file"]).read_text().strip()
    with pytest.raises(BrokerUnreachableError):  # the MQTT users may not speak NATS
        NatsQueue(url, "hubs", lambda _t, _p: None, user="workbench", password=controller, timeout=3)


def _feed(hub: Hub, device: str, seq: int, at: float, value: float) -> None:
    payload = encode_batch(device, seq, np.array([at]), ["temp"], np.zeros(1), np.array([value]), sent=time.time())
    hub.ingestor.feed(payload, topics.telemetry_topic(device), time.time())
    assert hub.wait_idle(10)


def _alerts_reach(hub: Hub, count: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while len(hub.alerts()) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(hub.alerts())


def test_leader_evaluates_alert_rules_over_every_replicas_points_and_a_new_leader_takes_over(
        store: str, tmp_path: Path) -> None:
    folder = tmp_path / "hub"  # replicas sharing a data directory share its alert rules
    a = Hub(None, store, data_dir=folder, group="hubs", replica="a")
    assert a.leadership is not None and a.leadership.wait_leader(10)
    b = Hub(None, store, data_dir=folder, group="hubs", replica="b")
    try:
        a.add_rule(AlertRule("hot", "temp", above=50, for_points=3, cooldown_s=0))
        start = time.time()
        # Three breaching points in a row, split across the replicas as the broker would: neither sees three.
        for seq, hub in ((1, a), (2, b), (3, a)):
            _feed(hub, "sim-01", seq, start + seq, 60.0)
        assert _alerts_reach(a, 1) == 1
        a.close()  # b takes over leading, and the rule with it, from the shared rules file
        assert b.leadership is not None and b.leadership.wait_leader(10)
        for seq in (4, 5, 6):
            _feed(b, "sim-01", seq, start + seq, 70.0)
        alerts = b.alerts()
        assert _alerts_reach(b, 2) == 2, alerts
        assert list(b.alerts()["value"]) == [60.0, 70.0]
    finally:
        b.close()
        a.close()


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


# -- on a live fleet: the broker shares the load, and a replica killed loses nothing --------------------------

_REPLICAS = ("hub-a", "hub-b")


def _spawn_replica(record: dict[str, Any], store: str, name: str, tmp_path: Path, *,
                   nats: bool = False) -> dict[str, Any]:
    host, port = "127.0.0.1", _procs.free_port("127.0.0.1")
    token_file = tmp_path / "hub.token"
    argv = [sys.executable, "-m", "workbench.cli", "hub", "--broker", record["broker"]["url"], "--store", store,
            "--group", "hubs", "--replica", name, "--data-dir", str(tmp_path / name), "--host", host,
            "--port", str(port), "--token-file", str(token_file)]
    if nats:  # the embedded broker: the replicas share the outboxes through a NATS queue group
        argv += ["--nats", record["broker"]["nats_url"]]
    secure = record.get("secure")
    if secure:  # the workbench's MQTT user acknowledges; the hub's NATS user receives
        argv += ["--username", secure["controller"]["username"], "--password-file",
                 secure["controller"]["password_file"], "--ca-file", secure["ca_file"]]
        if nats:
            argv += ["--nats-user", secure["hub_nats"]["username"], "--nats-password-file",
                     secure["hub_nats"]["password_file"]]
    proc = _procs.spawn_listening(argv, tmp_path / f"{name}.log", host, port, wait=30, what=f"hub replica {name}",
                                  error=HubError)
    return {**proc, "name": name, "url": f"http://{host}:{port}", "token": token_file.read_text().strip()}


def _ingest(replica: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.get(f"{replica['url']}/v1/ingest", headers={"Authorization": f"Bearer {replica['token']}"},
                       timeout=10)
    answer.raise_for_status()
    return dict(answer.json())


def _stream(fleet: Fleet, devices: list[str], **config: Any) -> None:
    for device in devices:
        fleet.call(device, "telemetry.configure", config, timeout=15)


def _produced(fleet: Fleet, device: str) -> int:
    return int(fleet.call(device, "sync.status", timeout=15)["counters"].get("produced", 0))


def _settled(fleet: Fleet, device: str, timeout: float = 180.0) -> dict[str, Any]:
    """The device's sync status once its outbox is empty and stays so: everything it produced is acknowledged."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            status = fleet.call(device, "sync.status", timeout=15)
            if status["outbox_bytes"] == 0:
                time.sleep(1.0)
                again = fleet.call(device, "sync.status", timeout=15)
                if again["outbox_bytes"] == 0 and again["counters"]["produced"] == status["counters"]["produced"]:
                    return again
        except workbench.WorkbenchError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the outbox of {device} did not drain: {status}")


def _assert_each_acknowledged_item_stored_once(store: str, statuses: dict[str, dict[str, Any]]) -> None:
    """Per device: the stored batches and sync items are exactly 1..produced, each once, every point with it."""
    with psycopg.connect(store) as con:
        for device, status in statuses.items():
            counters = status["counters"]
            produced = int(counters["produced"])
            assert int(counters.get("acked", -1)) == produced, counters  # the device says: all acknowledged
            assert not any(int(v) for k, v in counters.items() if k.startswith("dropped_")), counters
            batches = con.execute("SELECT b.seq, b.n FROM workbench.batches b JOIN workbench.device_names d "
                                  "ON d.id = b.device WHERE d.name = %s", (device,)).fetchall()
            points: dict[int, int] = dict(con.execute(
                "SELECT p.seq, count(*) FROM workbench.points p JOIN workbench.device_names d ON d.id = p.device "
                "WHERE d.name = %s GROUP BY p.seq", (device,)).fetchall())
            items = [int(seq) for (seq,) in con.execute("SELECT seq FROM workbench.sync_items WHERE device = %s",
                                                        (device,)).fetchall()]
            seqs = sorted([int(seq) & 0xFFFFFFFF for seq, _ in batches] + items)
            assert seqs == list(range(1, produced + 1)), f"{device}: stored {len(seqs)} of {produced} items"
            assert {int(seq): int(n) for seq, n in batches} == {int(s): int(c) for s, c in points.items()}, device
            assert len(batches) > 20, f"{device} streamed too little for the test to mean anything"


def _assert_load_splits(store: str, fleet_factory: FleetFactory, tmp_path: Path, broker: str, *,
                        secure: bool = False) -> None:
    record = fleet_factory(devices=4, broker=broker, hub=False, keepalive=5, secure=secure)
    replicas: list[dict[str, Any]] = []
    try:
        replicas = [_spawn_replica(record, store, name, tmp_path, nats=broker == "embedded") for name in _REPLICAS]
        devices = [d for agent in record["agents"] for d in agent["devices"]]
        # The fleet client only sends commands: it never receives outboxes, so only the replicas acknowledge.
        with connect_record(record, RunDir.resolve(record["run_dir"])) as fleet:
            fleet.wait_for(len(devices), timeout=30)
            _stream(fleet, devices, synthetic_points_per_s=200, publish_interval_s=0.1)
            time.sleep(8.0)
            _stream(fleet, devices, enabled=False)
            statuses = {device: _settled(fleet, device) for device in devices}
        counts = {replica["name"]: int(_ingest(replica)["batches"]) for replica in replicas}
        healths = [httpx.get(f"{replica['url']}/healthz", timeout=5).json() for replica in replicas]
    finally:
        _procs.stop(replicas)
    for health in healths:
        if broker == "embedded":  # received through the queue group, not through the MQTT listener
            assert health["shared_by"] == "nats-queue" and health["nats"]["connected"], health
            assert health["nats"]["messages"] > 0 and not health["nats"].get("dropped_slow_consumer"), health
        else:
            assert health["shared_by"] == "mqtt-share" and "nats" not in health, health
    total = sum(counts.values())
    with psycopg.connect(store) as con:
        row = con.execute("SELECT count(*) FROM workbench.batches").fetchone()
    stored = int(row[0]) if row else 0
    assert stored >= 4 * 50, counts
    # Each batch went to one replica: were it delivered to both, each would count (nearly) every batch.
    assert stored <= total <= stored * 1.05, f"replicas handled {counts} for {stored} stored batches"
    print(f"split {counts} of {stored} stored batches")
    for name, count in counts.items():
        assert 0.4 <= count / total <= 0.6, f"{name} took {count} of {total} batches: {counts}"
    _assert_each_acknowledged_item_stored_once(store, statuses)


@pytest.mark.slow
def test_load_splits_between_two_replicas_when_devices_stream_through_mosquitto(
        store: str, fleet_factory: FleetFactory, tmp_path: Path) -> None:
    _assert_load_splits(store, fleet_factory, tmp_path, "mosquitto")


@pytest.mark.slow
def test_load_splits_between_two_replicas_through_a_nats_queue_group_when_the_broker_is_nats(
        store: str, fleet_factory: FleetFactory, tmp_path: Path) -> None:
    # Secure, as `workbench up` starts it: the replicas log in to MQTT and NATS with the fleet's credentials.
    _assert_load_splits(store, fleet_factory, tmp_path, "embedded", secure=True)


def _assert_survivor_takes_over(store: str, fleet_factory: FleetFactory, tmp_path: Path, broker: str) -> None:
    record = fleet_factory(devices=4, broker=broker, hub=False, keepalive=5)
    replicas: list[dict[str, Any]] = []
    try:
        replicas = [_spawn_replica(record, store, name, tmp_path, nats=broker == "embedded") for name in _REPLICAS]
        devices = [d for agent in record["agents"] for d in agent["devices"]]
        with connect_record(record, RunDir.resolve(record["run_dir"])) as fleet:
            fleet.wait_for(len(devices), timeout=30)
            _stream(fleet, devices, synthetic_points_per_s=500, publish_interval_s=0.1)
            time.sleep(4.0)
            before = int(_ingest(replicas[1])["batches"])
            assert before > 0, "hub-b took no share before the kill"
            os.kill(replicas[0]["pid"], signal.SIGKILL)  # mid-insert, mid-ack: it gets no say
            at_kill = {device: _produced(fleet, device) for device in devices}
            time.sleep(5.0)  # the devices keep streaming; what hub-a took and never acknowledged comes again
            _stream(fleet, devices, enabled=False)
            statuses = {device: _settled(fleet, device) for device in devices}
        after = int(_ingest(replicas[1])["batches"])
        health = httpx.get(f"{replicas[1]['url']}/healthz", timeout=5).json()
    finally:
        _procs.stop(replicas)
    assert health["leader"] is True  # it leads now, whichever led before
    assert after > before, "hub-b stored nothing after hub-a was killed"
    for device, produced in at_kill.items():  # items hub-a can no longer have stored: hub-b stored them all, below
        assert int(statuses[device]["counters"]["produced"]) > produced, f"{device} streamed nothing after the kill"
    _assert_each_acknowledged_item_stored_once(store, statuses)


@pytest.mark.slow
def test_surviving_replica_takes_the_whole_load_without_loss_or_duplicates_when_one_is_killed(
        store: str, fleet_factory: FleetFactory, tmp_path: Path) -> None:
    _assert_survivor_takes_over(store, fleet_factory, tmp_path, "mosquitto")


@pytest.mark.slow
def test_surviving_replica_takes_the_whole_nats_queue_without_loss_or_duplicates_when_one_is_killed(
        store: str, fleet_factory: FleetFactory, tmp_path: Path) -> None:
    _assert_survivor_takes_over(store, fleet_factory, tmp_path, "embedded")
