"""Hostile payloads against a real fleet (broker + agent processes): agents and clients keep hearing.

The rows refer to the security review's table in issue 12; the attacker is an independent paho client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import FleetFactory

import workbench
from workbench.agent._device import AgentConfig, DeviceAgent
from workbench.protocol import schema, topics
from workbench.protocol._mqtt import BrokerAddress, close_client, connect_blocking, make_client, new_client_id

BRACKETS = b"[" * 20_000  # row 1: 20 KB of '['


def _eventually(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _attacker(url: str) -> mqtt.Client:
    address = BrokerAddress.parse(url)
    client = make_client(address, new_client_id("attacker"))
    connect_blocking(client, address, keepalive=10, timeout=10)
    return client


def test_agent_still_answers_ping_when_a_command_nests_20000_levels(fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        attacker = _attacker(record["broker"]["url"])
        try:
            for _ in range(3):
                attacker.publish(topics.command_topic("sim-01", "ping"), BRACKETS, qos=1).wait_for_publish(5)
        finally:
            close_client(attacker)
        assert fleet["sim-01"].ping() > 0  # the old agent's network thread died here: every command timed out
        stats = fleet["sim-01"].stats()
        assert stats["rejected_payloads"] == {"too_deep": 3}
        assert stats["network_alive"] is True
        assert fleet["sim-01"].online


def test_new_client_sees_every_device_when_a_retained_inventory_nests_20000_levels(
    fleet_factory: FleetFactory,
) -> None:
    record = fleet_factory(devices=2)
    attacker = _attacker(record["broker"]["url"])
    try:
        for topic in (topics.inventory_topic("evil-01"), topics.status_topic("evil-01")):
            attacker.publish(topic, BRACKETS, qos=1, retain=True).wait_for_publish(5)
        with workbench.connect(run_dir=record["run_dir"]) as fleet:
            fleet.wait_for(2, timeout=20)  # the old client's network thread died on the retained inventory
            assert fleet.network_alive()
            assert {d.device_id for d in fleet.online()} == {"sim-01", "sim-02"}
            assert _eventually(lambda: fleet.rejects() == {"evil-01": {"too_deep": 2}}, 5), fleet.rejects()
            assert fleet["sim-02"].ping() > 0
    finally:
        for topic in (topics.inventory_topic("evil-01"), topics.status_topic("evil-01")):
            attacker.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        close_client(attacker)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_agent_restarts_its_network_thread_and_answers_again_when_the_thread_died(
    fleet_factory: FleetFactory, tmp_path: Path
) -> None:
    record = fleet_factory(devices=1)
    broker = BrokerAddress.parse(record["broker"]["url"])
    died = threading.Event()

    def fatal(_client: mqtt.Client, _userdata: Any, _message: mqtt.MQTTMessage) -> None:
        died.set()
        raise RuntimeError("a bug that escapes every guard")

    with ThreadPoolExecutor(max_workers=2) as executor, workbench.connect(run_dir=record["run_dir"]) as fleet:
        agent = DeviceAgent(AgentConfig("solo-01", broker, tmp_path / "solo-01", claim_timeout=0.5), executor)
        agent.start()
        try:
            agent.wait_claimed(timeout=20)
            fleet.wait_until(lambda f: "solo-01" in f and f["solo-01"].online, timeout=20)
            # Simulate a network loop that dies: let the next callback's exception escape paho's loop.
            guarded = agent._client.on_message
            agent._client.suppress_exceptions = False
            agent._client.on_message = fatal
            attacker = _attacker(record["broker"]["url"])
            try:
                attacker.publish(topics.command_topic("solo-01", "ping"), b"{}", qos=1).wait_for_publish(5)
                assert died.wait(5)
            finally:
                close_client(attacker)
            agent._client.on_message = guarded  # the thread is dead or dying: the restarted one uses these
            agent._client.suppress_exceptions = True
            assert _eventually(lambda: agent.counters["network_restarts"] >= 1 and agent.network_alive(), 10)
            fleet.wait_until(lambda f: f["solo-01"].online, timeout=20)
            assert fleet["solo-01"].ping(timeout=10) > 0
        finally:
            agent.stop()


def test_benchmark_errors_are_identical_when_url_is_a_local_file_a_closed_port_or_a_missing_artifact(
    fleet_factory: FleetFactory, tmp_path: Path
) -> None:
    import hashlib
    import socket

    from workbench.deploy import ArtifactServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    hostname_sha = hashlib.sha256(Path("/etc/hostname").read_bytes()).hexdigest() if Path("/etc/hostname").is_file() \
        else "f" * 64
    record = fleet_factory(devices=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet, ArtifactServer(tmp_path / "store") as server:
        device = fleet.wait_for(1, timeout=30)[0]
        errors = []
        for url in ("file:///etc/hostname", f"http://127.0.0.1:{closed_port}/artifacts/{'0' * 64}",
                    f"{server.base_url}/artifacts/{'0' * 64}"):
            args = {"url": url, "sha256": "0" * 64, "size": 100,
                    "inputs": {"x": {"dtype": "float32", "shape": [1, 4], "data": [0.0] * 4}}}
            with pytest.raises(workbench.RemoteCommandError) as caught:
                device.call("benchmark", args, timeout=30)
            errors.append(str(caught.value))
    assert errors[0] == errors[1] == errors[2], errors  # nothing tells a file, a closed port and a 404 apart
    assert hostname_sha[:12] not in errors[0]


def test_sync_state_table_still_builds_when_a_device_reports_a_state_of_wrong_types(
    fleet_factory: FleetFactory,
) -> None:
    record = fleet_factory(devices=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        sync = fleet.sync
        assert _eventually(lambda: "sim-01" in sync.states, 15)
        attacker = _attacker(record["broker"]["url"])
        try:
            for body in ({"backlog": "x"}, {"backlog": {"critical": {"items": "many"}}},
                         {"sender": {"last_sync": 1e300}}, {"counters": [1]}):
                attacker.publish(topics.sync_state_topic("evil-01"), schema.encode(body), qos=1).wait_for_publish(5)
            # A well-formed state last: once it is here, the hostile ones (same client, in order) were handled.
            attacker.publish(topics.sync_state_topic("late-01"), schema.encode({}), qos=1).wait_for_publish(5)
        finally:
            close_client(attacker)
        assert _eventually(lambda: "late-01" in sync.states, 10)
        table = sync.state()  # the old client raised here, on the first wrong type
        assert set(table["device_id"]) == {"sim-01", "late-01"}
        assert sync.backlog().keys() == {"sim-01", "late-01"}
        assert sync.reject_log.by_device() == {"evil-01": {"malformed": 4}}


def test_inventory_table_builds_and_counts_the_report_when_a_device_sends_inventory_of_wrong_types(
    fleet_factory: FleetFactory,
) -> None:
    record = fleet_factory(devices=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        attacker = _attacker(record["broker"]["url"])
        try:
            for body in ({"hardware": "x"}, {"active_model": 3}, {"limits": {"threads": "all"}},
                         {"hardware": {"execution_providers": [1]}}):
                attacker.publish(topics.inventory_topic("evil-01"), schema.encode(body), qos=1).wait_for_publish(5)
            attacker.publish(topics.inventory_topic("late-01"), schema.encode({"profile": "intel-nuc"}),
                             qos=1).wait_for_publish(5)
        finally:
            close_client(attacker)
        assert _eventually(lambda: "late-01" in fleet, 10)
        table = fleet.inventory(wide=True).set_index("device_id")  # the old client raised on "x".get
        assert table.loc["sim-01", "profile"] == "raspberry-pi-4" and table.loc["late-01", "profile"] == "intel-nuc"
        assert "evil-01" not in table.index or table.loc["evil-01", "profile"] is None
        assert fleet.rejects() == {"evil-01": {"malformed": 4}}
