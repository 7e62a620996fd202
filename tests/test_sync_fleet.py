"""Sync through the public API on a real fleet: sync_state, set_link, set_budget, partition, SyncView, twin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import FleetFactory, deploy_model

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
        # The 40 high items drained (telemetry batches share the outbox, so "acked" counts them too).
        fleet.sync.wait_until("sim-01", lambda s: s["backlog"]["high"]["items"] == 0, timeout=20)
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


def test_health_and_fleet_panel_show_backlog_and_p95_when_telemetry_runs_and_link_is_cut(
        fleet_factory: FleetFactory, tmp_path: Path) -> None:
    from widgets import FleetHealthTable, FleetPanel
    from workbench.telemetry import build_digits_model

    record = fleet_factory(devices=1, keepalive=2)
    model = build_digits_model(tmp_path / "digits.onnx")
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        deploy_model(fleet, model, ["sim-01"], tmp_path / "digits-pkg")
        fleet.telemetry.configure("sim-01", source="digits", rate_hz=40, publish_interval_s=0.2)
        fleet.telemetry.wait_for("latency_p95_ms", devices="sim-01", count=2, timeout=30)
        with fleet.partition("sim-01", seconds=30):
            fleet["sim-01"].call("sync.produce", {"count": 40, "priority": "high", "rate_hz": 1000})
            fleet.sync.wait_until("sim-01", lambda s: s["backlog"]["high"]["items"] == 40, timeout=15)
            panel = FleetPanel(fleet)  # no running loop here: refresh() reads telemetry and sync state
            row = {r["device_id"]: r for r in panel.shown_rows}["sim-01"]
            health = fleet.telemetry.health().set_index("device_id")
            table = FleetHealthTable(fleet)
        panel.close()
    assert row["sync_backlog"] >= 40 and row["p95_ms"] > 0  # telemetry queues behind the cut link too
    assert health.loc["sim-01", "sync_backlog"] >= 40 and health.loc["sim-01", "latency_p95_ms"] > 0
    shown = re.search(r"<td>(\d+)</td></tr>", table.value)  # the last column: sync backlog
    assert shown is not None and int(shown.group(1)) >= 40
