"""One MQTT connection per process: the bus that the fleet, sync, deployment state and the hub share."""

from __future__ import annotations

import threading
from typing import Any

import psutil
import pytest
from conftest import FleetFactory

import workbench
from workbench.deploy._state import DeployState
from workbench.errors import ConfigError
from workbench.protocol import schema, topics
from workbench.protocol._bus import Bus, filters_overlap
from workbench.protocol._mqtt import BrokerAddress


def _broker_connections(pid: int, port: int) -> int:
    connections = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in connections if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


@pytest.mark.parametrize(("first", "second", "overlap"), [
    ("wb/v1/dev/+/status", "wb/v1/dev/+/status", True),
    ("wb/v1/dev/+/status", "wb/v1/dev/sim-01/+", True),
    ("wb/v1/dev/#", "wb/v1/dev/sim-01/outbox", True),
    ("wb/v1/dev/#", "wb/v1/dev", True),
    ("wb/v1/dev/+/status", "wb/v1/dev/+/outbox", False),
    ("wb/v1/dev/+/status", "wb/v1/dev/+/status/x", False),
    ("wb/v1/reply/+/wb-a", "wb/v1/reply/+/wb-b", False),
])
def test_filters_overlap_when_some_topic_matches_both(first: str, second: str, overlap: bool) -> None:
    assert filters_overlap(first, second) is overlap
    assert filters_overlap(second, first) is overlap


def test_one_process_keeps_one_broker_connection_when_fleet_sync_telemetry_and_deploy_state_all_run(
        fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1)
    port = record["broker"]["port"]
    before = _broker_connections(psutil.Process().pid, port)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        fleet.telemetry.configure("sim-01", synthetic_points_per_s=50, publish_interval_s=0.2)
        fleet.telemetry.wait_for("synthetic_0", devices=["sim-01"], count=3, timeout=30)
        state = DeployState(fleet.bus)
        fleet.sync_state()
        assert _broker_connections(psutil.Process().pid, port) - before == 1
        state.close()
        # Closing one part leaves the connection to the others: the fleet still answers commands.
        assert "device_time" in fleet.call("sim-01", "ping")
    assert _broker_connections(psutil.Process().pid, port) == before


def test_hub_process_keeps_one_broker_connection_when_it_receives_and_runs_its_rollouts_fleet(
        fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1, hub=True)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        assert fleet.rollouts().empty  # the hub's rollout service answers: its fleet is connected or connecting
        fleet.telemetry.configure("sim-01", synthetic_points_per_s=50, publish_interval_s=0.2)
        fleet.telemetry.wait_for("synthetic_0", devices=["sim-01"], count=3, timeout=30)
    assert _broker_connections(record["hub"]["pid"], record["broker"]["port"]) == 1


def test_bus_refuses_an_overlapping_filter_naming_both_and_shares_an_equal_one(fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1)
    bus = Bus(BrokerAddress.parse(record["broker"]["url"]))
    try:
        got: list[str] = []
        seen = threading.Event()
        stop_a = bus.subscribe(topics.device_topic("+", "status"), lambda m: got.append("a"))
        stop_b = bus.subscribe(topics.device_topic("+", "status"), lambda m: (got.append("b"), seen.set()))
        with pytest.raises(ConfigError, match=r"overlaps 'wb/v1/dev/\+/status'"):
            bus.subscribe(topics.device_topic("sim-01", "+"), lambda m: None)
        assert seen.wait(10)  # the retained status, once to each handler of the one subscription
        assert sorted(got) == ["a", "b"]
        stop_a()
        stop_b()
    finally:
        bus.close()


def test_bus_counts_a_failing_handler_and_keeps_delivering_when_one_raises(fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1)
    bus = Bus(BrokerAddress.parse(record["broker"]["url"]))
    errors: list[str] = []
    delivered: list[Any] = []
    done = threading.Event()

    def handler(message: Any) -> None:
        body = schema.decode(bytes(message.payload))
        if body["n"] == 0:
            raise RuntimeError("handler bug")
        delivered.append(body["n"])
        if body["n"] == 2:
            done.set()

    try:
        bus.subscribe("wb/v1/test/+/x", handler, on_error=lambda m, exc: errors.append(repr(exc)))
        for n in range(3):
            bus.publish("wb/v1/test/a/x", schema.encode({"n": n})).wait_for_publish(10)
        assert done.wait(10)
        assert delivered == [1, 2] and errors == ["RuntimeError('handler bug')"]
        assert bus.network_alive()
    finally:
        bus.close()
