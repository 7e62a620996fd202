"""FleetPanel against a real local fleet: rows match the fleet, a stopped agent shows offline via the asyncio task."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import workbench
from widgets import FleetPanel
from workbench.deploy import build_package, init_keys, load_signing_key
from workbench.deploy._examples import tiny_model
from workbench.errors import ConfigError


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["device_id"]: row for row in rows}


async def _until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


def test_fleet_panel_rows_match_fleet_when_refreshed_outside_a_loop(shared_fleet: dict[str, Any]) -> None:
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        fleet.wait_for(len(shared_fleet["devices"]), timeout=30)
        fleet.wait_until(lambda f: all(d.profile for d in f.devices), timeout=30)
        panel = FleetPanel(fleet)
        try:
            assert not panel.live
            shown = _by_id(panel.shown_rows)
            expected = {d["device_id"]: d["profile"] for d in shared_fleet["devices"]}
            assert {k: v["profile"] for k, v in shown.items()} == expected
            assert all(row["online"] for row in shown.values())
            for device_id in expected:
                assert f'data-device="{device_id}" data-online="true"' in panel.children[0].value
            assert f"{len(expected)} of {len(expected)} devices online" in panel.children[0].value
        finally:
            panel.close()


def test_fleet_panel_shows_device_offline_when_its_agent_stops(fleet_factory: Any) -> None:
    record = fleet_factory(devices=2)
    victim = record["agents"][1]
    victim_id = victim["devices"][0]

    async def scenario() -> None:
        with workbench.connect(run_dir=record["run_dir"]) as fleet:
            fleet.wait_for(2, timeout=30)
            panel = FleetPanel(fleet, max_rate=10)
            try:
                assert panel.live
                await _until(lambda: len(panel.shown_rows) == 2 and all(r["online"] for r in panel.shown_rows))
                os.kill(victim["pid"], signal.SIGTERM)
                await _until(lambda: not _by_id(panel.shown_rows)[victim_id]["online"])
                rows = _by_id(panel.shown_rows)
                assert rows[victim_id]["offline_reason"]
                survivor = next(d for d in rows if d != victim_id)
                assert rows[survivor]["online"]
                markup = panel.children[0].value
                assert f'data-device="{victim_id}" data-online="false"' in markup
                assert "1 of 2 devices online" in markup
            finally:
                panel.close()
            await _until(lambda: not panel.live, timeout=5)
            assert panel._task is not None and panel._task.cancelled()

    asyncio.run(scenario())


def test_fleet_panel_close_removes_listener_when_closed(shared_fleet: dict[str, Any]) -> None:
    async def scenario() -> None:
        with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
            before = len(fleet._listeners)
            panel = FleetPanel(fleet)
            assert len(fleet._listeners) == before + 1
            panel.close()
            assert len(fleet._listeners) == before
            await _until(lambda: not panel.live, timeout=5)
            renders = panel.renders
            fleet.wait_for(1, timeout=30)
            panel._on_event("change", fleet.devices[0])  # a late event after close is ignored
            await asyncio.sleep(0.05)
            assert panel.renders == renders

    asyncio.run(scenario())


def test_fleet_panel_set_metric_fills_placeholder_when_given(shared_fleet: dict[str, Any]) -> None:
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        device_id = fleet.wait_for(1, timeout=30)[0].device_id
        panel = FleetPanel(fleet)
        try:
            assert "—" in panel.children[0].value  # placeholders before any telemetry
            panel.set_metric(device_id, "p95_ms", 4.25)
            panel.set_metric(device_id, "sync_backlog", 7)
            panel.refresh()
            row = _by_id(panel.shown_rows)[device_id]
            assert (row["p95_ms"], row["sync_backlog"]) == (4.25, 7)
            assert "4.2 ms" in panel.children[0].value or "4.3 ms" in panel.children[0].value
            with pytest.raises(ConfigError, match="no metric column 'cpu'"):
                panel.set_metric(device_id, "cpu", 1)
        finally:
            panel.close()


@pytest.mark.usefixtures("keys_env")
def test_fleet_panel_counts_a_device_failed_when_it_rejected_its_last_deployment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet_factory: Any) -> None:
    monkeypatch.setenv("WORKBENCH_ARTIFACTS", str(tmp_path / "artifacts"))
    record = fleet_factory(devices=3)
    stranger = tmp_path / "stranger-keys"
    init_keys(stranger)
    package = build_package(tiny_model(tmp_path / "m.onnx", seed=9), tmp_path / "pkg", load_signing_key(stranger))
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(3, timeout=30)
        fleet.wait_until(lambda f: all(d.profile for d in f.devices), timeout=30)
        report = fleet.deploy(package.path, devices=["sim-02"], keys_dir=stranger).wait(timeout=120)
        assert [d["state"] for d in report.devices] == ["rejected"]
        panel = FleetPanel(fleet, page_size=2)
        try:
            assert panel.counts == {"serving": 0, "idle": 2, "updating": 0, "failed": 1, "offline": 0}
            assert "● 1 failed" in panel.children[0].value
            assert [row["device_id"] for row in panel.shown_rows] == ["sim-01", "sim-02"]
            assert "rows 1-2 of 3" in panel.children[0].value
            panel.filter_text = "FAILED"
            assert [row["device_id"] for row in panel.shown_rows] == ["sim-02"]
            assert "rows 1-1 of 1 matching" in panel.children[0].value
            profile = fleet["sim-03"].profile
            panel.filter_text = f"{profile} idle"
            assert {row["device_id"] for row in panel.shown_rows} == {
                d.device_id for d in fleet.devices if d.profile == profile and d.device_id != "sim-02"}
        finally:
            panel.close()
