"""workbench.connect(hub_url, token=...): a client anywhere reaches the fleet through its hub."""

from __future__ import annotations

import time

import pytest
from conftest import FleetFactory
from test_hub import api, local_hub  # noqa: F401  (fixtures)

import workbench
from workbench.errors import ConfigError, HubAuthError
from workbench.hub import read_token


def test_connect_by_hub_url_reads_the_hubs_history_and_reaches_devices_through_the_broker_it_names(
        fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=2, hub=True)
    with workbench.connect(run_dir=record["run_dir"]) as local:
        local.wait_for(2, timeout=30)
        since = time.time() - 60
        local.telemetry.configure("all", synthetic_points_per_s=50, publish_interval_s=0.2)
        local.telemetry.wait_for("synthetic_0", devices=["sim-01", "sim-02"], count=10, timeout=30)
        until = time.time()
        time.sleep(1.5)  # what was sampled before `until` has been published and committed
        local.telemetry.flush()
        expected = local.telemetry.query("synthetic_0", since=since, until=until)
    token = read_token(record["hub"]["token_file"])
    with workbench.connect(record["hub"]["url"], token=token) as remote:
        assert remote.has_hub and remote.bus.address.url == record["broker"]["url"]
        assert [d.device_id for d in remote.wait_for(2, timeout=30)] == ["sim-01", "sim-02"]
        got = remote.telemetry.query("synthetic_0", since=since, until=until)
        assert len(expected) > 0 and got.equals(expected)
        assert "device_time" in remote.call("sim-02", "ping")


def test_connect_by_hub_url_names_what_is_missing_when_the_token_is_wrong_or_the_hub_has_no_broker(
        api: str) -> None:  # noqa: F811
    with pytest.raises(HubAuthError, match="wrong token"):
        workbench.connect(api, token="nope")
    with pytest.raises(ConfigError, match=r"has no broker .* pass broker='mqtt://host:1883'"):
        workbench.connect(api, token="t")
