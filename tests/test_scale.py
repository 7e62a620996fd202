"""The local fleet at the size the issue asks for: 200 simulated devices on this machine."""

from __future__ import annotations

import psutil
from conftest import FleetFactory

import workbench


def test_two_hundred_devices_come_online_and_answer_when_sharing_processes(fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=200, timeout=180)
    assert len(record["devices"]) == 200
    # Several simulated devices share a process, each with its own connection and identity.
    assert len(record["agents"]) < 200
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        devices = fleet.wait_for(200, timeout=60)
        instances = {device.instance for device in devices}
        assert len(instances) == 200
        for device in (devices[0], devices[99], devices[-1]):
            assert device.ping(timeout=20) > 0
        inventory = fleet.inventory()
        assert inventory["online"].all() and inventory["device_id"].is_unique
    memory = sum(psutil.Process(agent["pid"]).memory_info().rss for agent in record["agents"])
    # Sharing processes keeps a simulated device to a few MiB (one process alone is ~60 MiB).
    assert memory / 200 < 16 * 2**20
