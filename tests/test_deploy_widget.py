"""RolloutProgress renders a real rollout's devices, wave and gate values."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FleetFactory

import workbench
from workbench.deploy import build_package, load_signing_key
from workbench.deploy._examples import tiny_model


@pytest.mark.usefixtures("keys_env")
def test_rollout_progress_shows_each_device_state_when_rollout_finishes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       fleet_factory: FleetFactory) -> None:
    monkeypatch.setenv("WORKBENCH_ARTIFACTS", str(tmp_path / "artifacts"))
    from widgets import RolloutProgress

    record = fleet_factory(devices=2)
    package = build_package(tiny_model(tmp_path / "m.onnx"), tmp_path / "pkg", load_signing_key(create=True))
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        fleet.wait_until(lambda f: all(d.inventory_data for d in f.online()), timeout=30)
        rollout = fleet.deploy(package.path, strategy=workbench.Canary(first=1, waves=[1.0], soak_s=0.2),
                               gates=[workbench.gate("error_rate", "<=", 0.0)])
        panel = RolloutProgress(rollout)
        rollout.wait(timeout=120)
        panel.refresh()
        markup = panel.children[0].value
        assert "succeeded" in markup
        assert markup.count(">active<") == 2
        assert "error_rate &lt;= 0" in markup
