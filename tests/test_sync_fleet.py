"""Sync through the public API on a real fleet: sync_state, set_link, set_budget, partition, SyncView, twin."""

from __future__ import annotations

import pytest
from conftest import FleetFactory

import workbench
from workbench.errors import ConfigError, RemoteCommandError


def test_sync_state_shows_backlog_during_partition_and_twin_reports_link_when_set(
        fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=2, keepalive=2)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        applied = fleet["sim-02"].set_link("lte")
        assert applied["reported"]["link"] == "lte" and applied["link"]["latency_ms"] == 60.0
        assert fleet["sim-02"].set_budget(mb_per_day=50)["budget"]["mb_per_day"] == 50.0
        with fleet.partition("sim-01", seconds=30):
            fleet["sim-01"].call("sync.produce", {"count": 40, "priority": "high", "rate_hz": 1000})
            state = fleet.sync.wait_until("sim-01", lambda s: s["backlog"]["high"]["items"] == 40, timeout=15)
            assert state["link_up"] is False
        fleet.sync.wait_until("sim-01", lambda s: s["counters"].get("acked") == 40, timeout=20)
        fleet.sync.wait_until("sim-02", lambda s: s["desired"].get("budget_mb_per_day") == 50, timeout=10)
        frame = fleet.sync_state()
        assert set(frame["device_id"]) == {"sim-01", "sim-02"}
        assert len(frame) == 8
        assert frame.set_index(["device_id", "priority"]).loc[("sim-02", "bulk"), "link"] == "lte"
        assert fleet.sync.store is not None and len(fleet.sync.store.seqs("sim-01")) == 40

        from widgets import SyncView

        view = SyncView(fleet)
        view.refresh()
        assert "sim-01" in view.table.value and set(view.history) == {"sim-01", "sim-02"}
        view.close()

        with pytest.raises(ConfigError, match="unknown link profile"):
            fleet["sim-01"].set_link("dialup")
        with pytest.raises(RemoteCommandError, match="partition seconds"):
            fleet.call("sim-01", "sync.partition", {"seconds": -1})
