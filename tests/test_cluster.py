"""A three-node NATS cluster: devices spread over the nodes, every client fails over, no acknowledged point lost."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import FleetFactory, require_broker, run_cli

import workbench
from workbench.errors import BrokerUnreachableError, ConfigError
from workbench.fleet import Fleet
from workbench.protocol._bus import Bus
from workbench.protocol._mqtt import BrokerAddress, close_client, connect_blocking, make_client
from workbench.sim import _brokers, _procs, up
from workbench.sim._rundir import RunDir

# -- broker address lists ---------------------------------------------------------------------------------------


def test_broker_address_lists_every_node_in_order_when_given_a_cluster_url() -> None:
    address = BrokerAddress.parse("mqtts://dev:pw@10.0.0.1:8883,10.0.0.2:8884,mqtts://10.0.0.3", ca_file="/ca.pem")
    assert [(n.host, n.port) for n in address.nodes] == [("10.0.0.1", 8883), ("10.0.0.2", 8884), ("10.0.0.3", 8883)]
    assert {(n.tls, n.username, n.password, n.ca_file) for n in address.nodes} == {(True, "dev", "pw", "/ca.pem")}
    assert address.url == "mqtts://10.0.0.1:8883,10.0.0.2:8884,10.0.0.3:8883"  # no password


def test_broker_address_starts_device_i_on_node_i_mod_n_and_fails_over_in_turn() -> None:
    address = BrokerAddress.parse("mqtt://a:1,b:2,c:3")
    assert [address.preferring(i).port for i in range(5)] == [1, 2, 3, 1, 2]
    assert [p for _, p in address.preferring(2).others] == [1, 2]
    assert [address.after(h, p).port for h, p in [("a", 1), ("b", 2), ("c", 3), ("elsewhere", 9)]] == [2, 3, 1, 1]


@pytest.mark.parametrize(("url", "words"), [
    ("mqtt://a:1,,b:2", "empty item"),
    ("mqtt://a:1,mqtts://b:2", "differs from the first node in TLS"),
    ("mqtt://u:secret@a:1,u:other@b:2", "give them once, on the first"),
    ("mqtt://a:1,a:1", "names a node twice"),
    ("mqtt://a:1,b:port", "invalid port"),
])
def test_broker_address_names_the_problem_when_a_node_list_is_malformed(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        BrokerAddress.parse(url)
    assert "secret" not in str(caught.value)


# -- failover of the one connection (Bus), on real brokers --------------------------------------------------------


def _mosquitto(tmp_path: Path, name: str) -> dict[str, Any]:
    return _brokers.start_broker(_brokers.MOSQUITTO, RunDir(tmp_path / name))


def test_bus_connects_to_the_next_node_when_the_first_is_down(tmp_path: Path) -> None:
    require_broker("mosquitto")
    alive = _mosquitto(tmp_path, "b")
    dead_port = _procs.free_port()
    try:
        bus = Bus(BrokerAddress.parse(f"mqtt://127.0.0.1:{dead_port},127.0.0.1:{alive['port']}"), timeout=10)
        try:
            assert bus.is_connected()
        finally:
            bus.close()
    finally:
        _procs.stop([alive])


def test_bus_resubscribes_on_a_surviving_node_when_its_node_is_killed(tmp_path: Path) -> None:
    require_broker("mosquitto")
    first, second = _mosquitto(tmp_path, "a"), _mosquitto(tmp_path, "b")
    try:
        bus = Bus(BrokerAddress.parse(f"mqtt://127.0.0.1:{first['port']},127.0.0.1:{second['port']}"), keepalive=2)
        received: list[bytes] = []
        try:
            bus.subscribe("wb/v1/test/#", lambda message: received.append(bytes(message.payload)))
            os.kill(first["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 30
            # Published to the surviving node by a client of its own: it reaches the bus only if it moved there.
            probe = Bus(BrokerAddress.parse(f"mqtt://127.0.0.1:{second['port']}"))
            try:
                while not received:
                    assert time.monotonic() < deadline, "the bus never resubscribed on the surviving node"
                    probe.publish("wb/v1/test/ping", b"after-failover", qos=1).wait_for_publish(5)
                    time.sleep(0.5)
            finally:
                probe.close()
            assert received[0] == b"after-failover"
        finally:
            bus.close()
    finally:
        _procs.stop([first, second])


def test_bus_publish_state_waits_out_a_failover_and_lands_retained_on_the_surviving_node(tmp_path: Path) -> None:
    require_broker("mosquitto")
    first, second = _mosquitto(tmp_path, "a"), _mosquitto(tmp_path, "b")
    try:
        bus = Bus(BrokerAddress.parse(f"mqtt://127.0.0.1:{first['port']},127.0.0.1:{second['port']}"), keepalive=2)
        try:
            os.kill(first["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while bus.is_connected() and time.monotonic() < deadline:  # paho notices the dead socket
                time.sleep(0.02)
            assert not bus.is_connected(), "the bus never noticed its node was killed"
            # paho alone raises "not currently connected" here; publish_state waits for the next node.
            bus.publish_state("wb/v1/test/state", b"desired-after-failover", timeout=30)
        finally:
            bus.close()
        got: list[bytes] = []
        reader = Bus(BrokerAddress.parse(f"mqtt://127.0.0.1:{second['port']}"))
        try:
            reader.subscribe("wb/v1/test/#", lambda message: got.append(bytes(message.payload)))
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            reader.close()
        assert got == [b"desired-after-failover"]
    finally:
        _procs.stop([first, second])


def test_bus_publish_state_names_the_broker_when_it_never_comes_back(tmp_path: Path) -> None:
    require_broker("mosquitto")
    only = _mosquitto(tmp_path, "a")
    try:
        bus = Bus(BrokerAddress.parse(f"mqtt://127.0.0.1:{only['port']}"), keepalive=2)
        try:
            os.kill(only["pid"], signal.SIGKILL)
            with pytest.raises(BrokerUnreachableError, match=rf"127.0.0.1:{only['port']} did not take wb/v1/test/x"):
                bus.publish_state("wb/v1/test/x", b"{}", timeout=3)
        finally:
            bus.close()
    finally:
        _procs.stop([only])


def test_bus_subscribes_again_when_the_broker_refused_a_filter_and_room_appears(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a JetStream election after a node loss looks like to a client: SUBACK 0x80 on a live connection.
    monkeypatch.setattr(_brokers, "MAX_CONSUMERS", 1)
    record = _brokers.start_broker(_brokers.EMBEDDED, RunDir(tmp_path))
    address = BrokerAddress.parse(record["url"])
    holder = Bus(address)
    bus: Bus | None = None
    received: list[bytes] = []
    try:
        holder.subscribe("wb/v1/test/held/+", lambda message: None, qos=1)  # the one consumer the limit allows
        time.sleep(1.0)
        bus = Bus(address)
        bus.subscribe("wb/v1/test/wanted/+", lambda message: received.append(bytes(message.payload)), qos=1)
        deadline = time.monotonic() + 10
        while bus.subscriptions_refused == 0:
            assert time.monotonic() < deadline, "the broker never refused the second QoS 1 filter"
            time.sleep(0.1)
        holder.close()  # its clean session ends, and its consumer with it
        deadline = time.monotonic() + 40
        while not received:
            assert time.monotonic() < deadline, "the bus never subscribed again after the refusal"
            bus.publish("wb/v1/test/wanted/x", b"granted at last", qos=0)
            time.sleep(0.5)
        assert received[0] == b"granted at last"
    finally:
        holder.close()
        if bus is not None:
            bus.close()
        _procs.stop([record])


# -- the cluster that `up` starts ---------------------------------------------------------------------------------


def test_up_refuses_a_cluster_of_another_broker_naming_both_flags(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--cluster 3 .* --broker mosquitto"):
        up(devices=1, broker="mosquitto", cluster=3, run_dir=tmp_path / "fleet")
    assert not (tmp_path / "fleet" / "fleet.json").exists()


def test_nats_cluster_node_config_routes_to_every_node_and_replicates_the_mqtt_streams(tmp_path: Path) -> None:
    node = _brokers.ClusterNode("wb-node-2", 6002, (6001, 6002, 6003), "route-secret")
    conf = _brokers.nats_config(RunDir(tmp_path), 1884, node=node)
    assert 'server_name: "wb-node-2"' in conf and "jetstream-wb-node-2" in conf
    assert conf.count("nats-route://wb-route:route-secret@127.0.0.1:") == 3
    assert "stream_replicas: 3" in conf and "consumer_memory_storage: true" in conf


def _mqtt_clients(node: dict[str, Any]) -> list[str]:
    """The MQTT client ids connected to one node, as its monitoring endpoint reports them."""
    with urllib.request.urlopen(f"{node['monitor_url']}/connz?limit=10000", timeout=5) as response:
        connz = json.loads(response.read(16 * 2**20))
    return [c.get("mqtt_client", "") for c in connz.get("connections") or []]


def _devices_on(node: dict[str, Any]) -> set[str]:
    # An agent's client id is wb-dev-<device>-<10 hex>.
    return {c[len("wb-dev-"):].rsplit("-", 1)[0] for c in _mqtt_clients(node) if c.startswith("wb-dev-")}


def test_insecure_cluster_spreads_devices_over_the_nodes_and_down_stops_every_node(tmp_path: Path) -> None:
    run_dir = tmp_path / "fleet"
    result = run_cli("up", "--cluster", "3", "--devices", "6", "--insecure", "--no-hub", "--run-dir", str(run_dir),
                     "--json", timeout=240, check=True)
    record = RunDir(run_dir).read()
    assert record is not None
    try:
        nodes = record["broker"]["nodes"]
        assert json.loads(result.stdout)["broker"].count(",") == 2 and len(nodes) == 3
        assert [sorted(_devices_on(node)) for node in nodes] == [["sim-01", "sim-04"], ["sim-02", "sim-05"],
                                                                ["sim-03", "sim-06"]]
        # Each device's QoS 1 command subscription is a JetStream consumer, found from any node; a stranger holds none.
        devices = [d["device_id"] for d in record["devices"]]
        assert _brokers.devices_without_command_consumer(record["broker"], [*devices, "sim-99"]) == ["sim-99"]
    finally:
        run_cli("down", "--run-dir", str(run_dir), check=True)
    assert not any(_procs.is_alive(node) for node in nodes)


# -- kill -9 one node while 50 devices stream telemetry through the hub ----------------------------------------------

DEVICES = 50


def _stop_telemetry(fleet: Fleet, devices: list[str], *, timeout: float) -> None:
    # Retained, so a device that reconnects later applies "disabled" again, not the earlier streaming settings.
    deadline = time.monotonic() + timeout
    for device in devices:
        while True:
            try:
                fleet.telemetry.configure(device, retain=True, enabled=False, timeout=10)
                break
            # Still failing over: a command sent meanwhile is not queued, and the retained publish before it
            # fails with paho's RuntimeError ("not currently connected") while this client reconnects.
            except (workbench.WorkbenchError, RuntimeError):
                assert time.monotonic() < deadline, f"{device} never answered after the node was killed"


def _drained(fleet: Fleet, devices: list[str], *, timeout: float) -> dict[str, dict[str, Any]]:
    """Each device's sync status once its outbox is empty and stays so: every batch it produced is acknowledged."""
    deadline = time.monotonic() + timeout
    statuses: dict[str, dict[str, Any]] = {}
    while True:
        for device in devices:
            try:
                statuses[device] = fleet.call(device, "sync.status", timeout=10)
            except workbench.WorkbenchError:
                statuses.pop(device, None)
        if len(statuses) == len(devices) and all(s["outbox_bytes"] == 0 for s in statuses.values()):
            time.sleep(1.0)
            again = {d: fleet.call(d, "sync.status", timeout=10) for d in devices}
            if all(a["outbox_bytes"] == 0 and a["counters"]["produced"] == statuses[d]["counters"]["produced"]
                   for d, a in again.items()):
                return again
        waiting = [d for d in devices if statuses.get(d, {}).get("outbox_bytes", 1)]
        assert time.monotonic() < deadline, f"outboxes did not drain: {waiting[:5]} ({len(waiting)} devices)"
        time.sleep(0.5)


def _stored(record: dict[str, Any]) -> dict[str, tuple[list[int], dict[int, int], dict[int, int]]]:
    """Per device: the batch sequence numbers in the hub's store, each batch's point count, and points per batch."""
    with duckdb.connect(str(Path(record["run_dir"]) / "hub" / "fleet.duckdb"), read_only=True) as con:
        names = dict(con.execute("SELECT id, name FROM device_names").fetchall())
        batches = con.execute("SELECT device, seq, n FROM batches").fetchall()
        points = con.execute("SELECT device, seq, count(*) FROM points GROUP BY device, seq").fetchall()
    stored: dict[str, tuple[list[int], dict[int, int], dict[int, int]]] = {}
    for device, seq, n in batches:
        entry = stored.setdefault(names[device], ([], {}, {}))
        entry[0].append(int(seq))
        entry[1][int(seq)] = int(n)
    for device, seq, count in points:
        stored.setdefault(names[device], ([], {}, {}))[2][int(seq)] = int(count)
    return stored


def test_no_acknowledged_point_is_lost_or_duplicated_when_a_broker_node_is_killed_under_50_streaming_devices(
        fleet_factory: FleetFactory) -> None:
    # The default keepalive: a killed node's connections end at once (the kernel resets them), and a shorter one
    # only makes devices on the loaded survivors time out and flap.
    record = fleet_factory(devices=DEVICES, hub=True, secure=True, cluster=3, timeout=180)
    nodes = record["broker"]["nodes"]
    devices = [d["device_id"] for d in record["devices"]]
    victim = nodes[0]  # the hub's node too: the hub's connection and a third of the devices' are lost
    with workbench.connect(run_dir=record["run_dir"], timeout=20) as fleet:
        fleet.wait_for(DEVICES, timeout=60)
        fleet.telemetry.configure(devices, retain=True, synthetic_points_per_s=100, publish_interval_s=0.5, timeout=15)
        time.sleep(3.0)
        on_victim = _devices_on(victim)
        assert len(on_victim) >= DEVICES // 3 - 2  # device i starts on node i mod 3 (a few may have moved already)
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        survivors = nodes[1:]
        while True:  # every device holds a connection to a surviving node, as the nodes themselves report
            reconnected = set().union(*(_devices_on(node) for node in survivors))
            if reconnected >= set(devices):
                print(f"all {DEVICES} devices on a surviving node {time.monotonic() - killed_at:.1f} s after the kill")
                break
            missing = sorted(set(devices) - reconnected)
            assert time.monotonic() - killed_at < 90, f"{len(missing)} not back on a surviving node: {missing[:5]}"
            time.sleep(0.5)
        time.sleep(2.0)  # the failed-over devices stream on their new node for a while
        _stop_telemetry(fleet, devices, timeout=120)
        statuses = _drained(fleet, devices, timeout=120)  # drains only through the hub, itself failed over
    # The JetStream elections after the kill refuse some QoS 1 subscriptions (SUBACK 0x80; the broker logs them):
    # each was subscribed again, or the commands above would not have reached every device. Every device holds one.
    assert (_brokers.subscription_report(record["broker"])["consumers"] or 0) >= DEVICES
    _procs.stop([record["hub"]])  # the store is read below, by this process alone
    stored = _stored(record)
    for device in devices:
        produced = statuses[device]["counters"]["produced"]
        assert statuses[device]["counters"].get("dropped_normal", 0) == 0, device
        seqs, batch_points, counted_points = stored[device]
        assert len(seqs) == len(set(seqs)) == produced, device  # every batch the outbox took, stored once
        assert sorted(seq & 0xFFFFFFFF for seq in seqs) == list(range(1, produced + 1)), device  # none missing
        assert batch_points == counted_points, device  # each stored batch has all its points, none twice
    synthetic = sum(sum(points.values()) for _, _, points in stored.values())
    assert synthetic > DEVICES * 100 * 3  # the stream ran across the kill


def test_tls_connect_leaves_no_socket_open_when_a_node_never_completes_the_handshake() -> None:
    # A node stuck in an election, or one overloaded, accepts TCP and never answers TLS: failover tries the next,
    # and the half-made TLS socket must be closed, not left to the garbage collector (a leaked fd per attempt).
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = BrokerAddress.parse(f"mqtts://127.0.0.1:{silent.getsockname()[1]}")
        client = make_client(address, "wb-test-silent")
        try:
            with pytest.raises(BrokerUnreachableError, match="cannot reach"):
                connect_blocking(client, address, keepalive=5, timeout=1.0)
            gc.collect()  # an unclosed SSLSocket would warn here, an error under this suite's settings
        finally:
            close_client(client)
