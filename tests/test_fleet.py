"""The fleet API against real brokers and real agent processes."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from conftest import BROKERS, FleetFactory

import workbench
from workbench.protocol import schema, topics
from workbench.protocol._mqtt import BrokerAddress, connect_blocking, make_client, new_client_id


@pytest.mark.parametrize("broker", BROKERS)
def test_connect_lists_every_device_with_its_profile_when_fleet_is_up(fleet_factory: FleetFactory,
                                                                       broker: str) -> None:
    record = fleet_factory(devices=3, broker=broker, profiles=["raspberry-pi-5", "intel-nuc"])
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        online = fleet.wait_for(3, timeout=30)
        assert [d.device_id for d in online] == ["sim-01", "sim-02", "sim-03"]
        inventory = fleet.inventory().set_index("device_id")
        assert list(inventory["profile"]) == ["raspberry-pi-5", "intel-nuc", "raspberry-pi-5"]
        assert inventory["online"].all()
        assert inventory.loc["sim-01", "threads_limit"] <= 4
        assert inventory.loc["sim-02", "memory_limit_mb"] <= 16_384
        assert set(inventory["simulated"]) == {True}
        assert [d.device_id for d in fleet.where(profile="intel-nuc")] == ["sim-02"]


@pytest.mark.parametrize("broker", BROKERS)
def test_ping_returns_round_trip_ms_when_device_is_online(fleet_factory: FleetFactory, broker: str) -> None:
    record = fleet_factory(devices=1, broker=broker)
    with workbench.connect(record["broker"]["url"]) as fleet:
        fleet.wait_for(1, timeout=30)
        rtts = [fleet["sim-01"].ping() for _ in range(5)]
        assert all(0 < rtt < 5000 for rtt in rtts)
        assert fleet["sim-01"].stats()["counters"]["commands_ok"] >= 5


def test_inventory_reports_real_host_hardware_for_simulated_device(shared_fleet: dict[str, Any]) -> None:
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        fleet.wait_for(3, timeout=30)
        inventory = fleet["sim-01"].call("inventory")
        hardware = workbench.profiles.detect_hardware()
        assert inventory["hardware"]["cpu_model"] == hardware["cpu_model"]
        assert inventory["hardware"]["isa_features"] == hardware["isa_features"]
        assert inventory["profile_spec"]["name"] == inventory["profile"]
        assert inventory["commands"] == sorted(inventory["commands"]) and "ping" in inventory["commands"]


def test_unknown_command_raises_remote_error_naming_known_commands(shared_fleet: dict[str, Any]) -> None:
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        fleet.wait_for(3, timeout=30)
        with pytest.raises(workbench.RemoteCommandError, match=r"unknown command 'reboot'.*ping") as info:
            fleet["sim-02"].call("reboot")
        assert info.value.code == "unknown_command"


def test_unknown_device_raises_naming_the_known_ones(shared_fleet: dict[str, Any]) -> None:
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        fleet.wait_for(3, timeout=30)
        with pytest.raises(workbench.UnknownDeviceError, match=r"sim-99.*sim-01"):
            fleet["sim-99"]


def test_wait_for_raises_fleet_timeout_naming_counts_when_too_few_devices(shared_fleet: dict[str, Any]) -> None:
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet, pytest.raises(
        workbench.FleetTimeoutError, match="only 3 of 5 devices online"
    ):
        fleet.wait_for(5, timeout=1.0)


def test_listeners_get_online_and_offline_events_when_an_agent_stops(fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=2)
    events: list[tuple[str, str]] = []
    seen_offline = threading.Event()

    def listener(event: str, device: workbench.Device) -> None:
        events.append((event, device.device_id))
        if event == "offline":
            seen_offline.set()

    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        remove = fleet.on(listener)
        workbench.sim.down(record["run_dir"])  # clean shutdown: each agent says why it left
        assert seen_offline.wait(15)
        fleet.wait_until(lambda f: not f.online(), timeout=15)
        remove()
        assert {("offline", "sim-01"), ("offline", "sim-02")} <= set(events)
        assert fleet["sim-01"].offline_reason == "shutdown"
        with pytest.raises(workbench.DeviceOfflineError, match=r"sim-01.*offline"):
            fleet["sim-01"].ping()


def _raw_client(url: str) -> Any:
    address = BrokerAddress.parse(url)
    client = make_client(address, new_client_id("test-raw"))
    connect_blocking(client, address, keepalive=10, timeout=10)
    return client


@pytest.mark.parametrize("broker", BROKERS)
def test_bad_payloads_are_counted_and_agent_and_fleet_keep_running(fleet_factory: FleetFactory,
                                                                   broker: str) -> None:
    record = fleet_factory(devices=1, broker=broker)
    bad = [b"{broken", json.dumps({"v": 7, "id": "x"}).encode(), b"[" + b"1," * 200_000 + b"1]"]
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        raw = _raw_client(record["broker"]["url"])
        try:
            for payload in bad:
                raw.publish(topics.command_topic("sim-01", "ping"), payload, qos=1).wait_for_publish(5)
                raw.publish(topics.inventory_topic("sim-01") + "-not", payload, qos=1).wait_for_publish(5)
                raw.publish(topics.device_topic("sim-01", "reply", fleet.client_id), payload,
                            qos=1).wait_for_publish(5)
            # A command without a usable reply_to is malformed too.
            raw.publish(topics.command_topic("sim-01", "ping"), schema.encode({"id": "1", "reply_to": "a/b"}),
                        qos=1).wait_for_publish(5)
        finally:
            raw.disconnect()
        assert fleet["sim-01"].ping() > 0  # the agent is still serving
        rejected = fleet["sim-01"].stats()["rejected_payloads"]
        assert rejected == {"malformed": 2, "unknown_version": 1, "oversized": 1}
        assert fleet.rejected == {"malformed": 1, "unknown_version": 1, "oversized": 1}
        assert fleet["sim-01"].online


def test_bad_desired_telemetry_and_sync_states_are_counted_by_kind_and_change_nothing(
    fleet_factory: FleetFactory,
) -> None:
    # Retained desired state is a control payload like any other: versioned, size-checked, counted when bad.
    record = fleet_factory(devices=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        before = {"telemetry": fleet.call("sim-01", "telemetry.status")["config"],
                  "sync": fleet.call("sim-01", "sync.status")["desired"]}
        raw = _raw_client(record["broker"]["url"])
        try:
            for name in ("telemetry", "sync"):
                for payload in (b"{broken", json.dumps({"publish_interval_s": 9}).encode(),  # no version
                                schema.encode({"publish_interval_s": 2 ** 30})):  # out of range
                    raw.publish(topics.desired_topic("sim-01", name), payload, qos=1).wait_for_publish(5)
        finally:
            raw.disconnect()
        deadline = time.monotonic() + 10
        while sum(fleet["sim-01"].stats()["rejected_payloads"].values()) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fleet["sim-01"].stats()["rejected_payloads"] == {"malformed": 4, "unknown_version": 2}
        assert fleet.call("sim-01", "telemetry.status")["config"] == before["telemetry"]
        assert fleet.call("sim-01", "sync.status")["desired"] == before["sync"]
        # The workbench's own retained settings are versioned and apply.
        fleet.telemetry.configure("sim-01", retain=True, publish_interval_s=0.5)
        assert fleet.call("sim-01", "telemetry.status")["config"]["publish_interval_s"] == 0.5
