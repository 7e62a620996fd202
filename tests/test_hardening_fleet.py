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

    from workbench.deploy._serve import store_for_record

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    hostname_sha = hashlib.sha256(Path("/etc/hostname").read_bytes()).hexdigest() if Path("/etc/hostname").is_file() \
        else "f" * 64
    record = fleet_factory(devices=1)
    origin = store_for_record(record)
    assert origin is not None
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        device = fleet.wait_for(1, timeout=30)[0]
        errors = []
        for base_url in ("file:///etc/hostname", f"http://127.0.0.1:{closed_port}", origin.base_url):
            candidates = {"manifest_sha256": hostname_sha, "manifest_size": 100, "signature_sha256": "0" * 64,
                          "signature_size": 100, "base_url": base_url}
            args = {"candidates": candidates,
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


def test_device_keeps_serving_its_signed_package_when_a_command_names_an_unsigned_model_file(
    fleet_factory: FleetFactory, tmp_path: Path
) -> None:
    """Row 7: a model file on the device (a benchmark download, anything) is never activated by naming its path."""
    from conftest import deploy_model

    from workbench.deploy import sha256_file
    from workbench.deploy._examples import tiny_model
    from workbench.errors import ConfigError

    record = fleet_factory(devices=1)
    signed = tiny_model(tmp_path / "signed.onnx", seed=1)
    unsigned = tiny_model(tmp_path / "unsigned.onnx", seed=2)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        deploy_model(fleet, signed, ["sim-01"], tmp_path / "pkg")
        model_sha = sha256_file(signed)
        with pytest.raises(ConfigError, match="deploy the model first"):
            fleet.telemetry.configure("sim-01", source="digits", model=str(unsigned))
        attacker = _attacker(record["broker"]["url"])
        try:  # what the workbench side refuses to send, an attacker publishes itself
            with pytest.raises(workbench.RemoteCommandError, match="serves only signed packages"):
                fleet.call("sim-01", "telemetry.configure", {"source": "digits", "model": str(unsigned)}, timeout=15)
            attacker.publish(topics.desired_topic("sim-01", "telemetry"),
                             schema.encode({"source": "digits", "model": str(unsigned)}), qos=1,
                             retain=True).wait_for_publish(5)
            time.sleep(1.0)
            attacker.publish(topics.desired_topic("sim-01", "telemetry"), b"", qos=1, retain=True).wait_for_publish(5)
        finally:
            close_client(attacker)
        status = fleet.call("sim-01", "deploy_status", timeout=15)
        assert status["active"]["sha256"] == model_sha, status["active"]  # the signed model still serves
        assert status["active"]["package_id"] == status["state"]["package"]["package_id"]


def test_device_stays_on_the_newer_package_when_an_older_signed_desired_state_is_replayed(
    fleet_factory: FleetFactory, tmp_path: Path
) -> None:
    """Row 6 on a real fleet: the attacker replays, retained, the desired state that installed an older package."""
    from conftest import deploy_model

    from workbench.deploy._examples import tiny_model

    record = fleet_factory(devices=1)
    captured: list[bytes] = []
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        deploy_model(fleet, tiny_model(tmp_path / "old.onnx", seed=1), ["sim-01"], tmp_path / "old")
        attacker = _attacker(record["broker"]["url"])
        try:
            attacker.on_message = lambda _c, _u, message: captured.append(bytes(message.payload))
            attacker.subscribe(topics.desired_topic("sim-01", "model"), qos=1)
            assert _eventually(lambda: bool(captured), 10)
            old_desired = captured[-1]
            attacker.unsubscribe(topics.desired_topic("sim-01", "model"))
            deploy_model(fleet, tiny_model(tmp_path / "new.onnx", seed=2), ["sim-01"], tmp_path / "new")
            newer = fleet.call("sim-01", "deploy_status", timeout=15)["active"]
            attacker.publish(topics.desired_topic("sim-01", "model"), old_desired, qos=1,
                             retain=True).wait_for_publish(5)
            replayed = schema.decode(old_desired)["deployment_id"]
            assert _eventually(lambda: fleet.call("sim-01", "deploy_status", timeout=15)["state"].get(
                "deployment_id") == replayed and fleet.call("sim-01", "deploy_status", timeout=15)["state"].get(
                "state") in ("rejected", "active", "failed"), 30)
        finally:
            close_client(attacker)
        status = fleet.call("sim-01", "deploy_status", timeout=15)
        assert status["state"]["state"] == "rejected" and "older than" in status["state"]["reason"], status["state"]
        assert status["active"]["package_id"] == newer["package_id"] and status["active"]["sha256"] == newer["sha256"]


def test_benchmark_sends_no_request_when_its_url_is_not_the_fleets_artifact_origin(
    fleet_factory: FleetFactory, tmp_path: Path
) -> None:
    """Row 8: the device does not even connect to a host outside its artifact origin (no port or file oracle)."""
    from workbench.deploy import ArtifactServer, load_signing_key
    from workbench.deploy._examples import tiny_model
    from workbench.protocol.candidates import stage_candidates

    record = fleet_factory(devices=1)
    model = tiny_model(tmp_path / "m.onnx", seed=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet, ArtifactServer(tmp_path / "elsewhere") as other:
        device = fleet.wait_for(1, timeout=30)[0]
        args = {"candidates": stage_candidates({"m": model}, other, load_signing_key(create=True)), "iterations": 1,
                "inputs": {"x": {"dtype": "float32", "shape": [1, 16], "data": [0.0] * 16}}}
        with pytest.raises(workbench.RemoteCommandError, match="could not fetch"):
            device.call("benchmark", args, timeout=30)
        assert other.requests == 0


def test_data_producing_commands_and_shadow_runs_are_refused_with_clear_errors_when_over_the_devices_caps(
    fleet_factory: FleetFactory,
) -> None:
    """Item 6: sync.produce's byte rate, bytes per call and concurrent runs, synthetic telemetry and shadow length."""
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match="at most 3600"):
        workbench.Shadow(duration=10**9)
    record = fleet_factory(devices=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        with pytest.raises(workbench.RemoteCommandError, match="MiB/s, over the device's cap"):
            fleet.call("sim-01", "sync.produce", {"count": 100, "rate_hz": 1_000_000, "size": 1_000_000}, timeout=15)
        with pytest.raises(workbench.RemoteCommandError, match="MiB for one call"):
            fleet.call("sim-01", "sync.produce", {"count": 10_000_000, "rate_hz": 100, "size": 1000}, timeout=15)
        for _ in range(4):  # slow runs that are still going when the fifth one asks
            fleet.call("sim-01", "sync.produce", {"count": 1000, "rate_hz": 0.5, "size": 16}, timeout=15)
        with pytest.raises(workbench.RemoteCommandError, match="still going"):
            fleet.call("sim-01", "sync.produce", {"count": 1, "size": 16}, timeout=15)
        with pytest.raises(workbench.RemoteCommandError, match="synthetic_points_per_s must be a number from 0 to"):
            fleet.call("sim-01", "telemetry.configure", {"synthetic_points_per_s": 10_000_000}, timeout=15)
        attacker = _attacker(record["broker"]["url"])
        try:  # what workbench.Shadow refuses to send, an attacker publishes itself
            attacker.publish(topics.desired_topic("sim-01", "model"),
                             schema.encode({"action": "shadow", "duration": 10**9, "deployment_id": "endless",
                                            "package_id": "0" * 64, "base_url": "http://127.0.0.1:1"}),
                             qos=1).wait_for_publish(5)
        finally:
            close_client(attacker)
        assert _eventually(lambda: fleet.call("sim-01", "deploy_status", timeout=15)["state"].get(
            "deployment_id") == "endless" and fleet.call("sim-01", "deploy_status", timeout=15)["state"].get(
            "state") in ("rejected", "failed"), 20)
        state = fleet.call("sim-01", "deploy_status", timeout=15)["state"]
        assert state["state"] == "rejected" and "shadow duration" in state["reason"], state


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
