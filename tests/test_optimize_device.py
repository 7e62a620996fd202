"""Measuring candidates on a connected (simulated) device through the agent's benchmark command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FleetFactory, run_cli
from test_optimize_onnx import FAST, labelled, make_mlp

import workbench
from workbench.errors import RemoteCommandError
from workbench.optimize import optimize


def test_optimize_measures_on_the_device_when_target_is_a_connected_device(fleet_factory: FleetFactory,
                                                                           tmp_path: Path) -> None:
    record = fleet_factory(devices=1, profiles=["raspberry-pi-5"])
    mlp = make_mlp(tmp_path / "mlp.onnx")
    x, y = labelled(mlp)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        device = fleet.wait_for(1, timeout=30)[0]
        result = optimize(mlp, device, eval_data=(x, y), passes=["int8-dynamic"], use_cache=False, **FAST)
    frame = result.candidates
    assert frame["measured_on"].str.startswith(f"simulated device {device.device_id} (raspberry-pi-5").all()
    assert (frame["p50_ms"] > 0).all() and (frame["threads"] <= 4).all()
    assert result.target["where"] == f"simulated device {device.device_id}"
    artifacts = Path(record["run_dir"]).rglob("artifacts/*.onnx")
    assert len(list(artifacts)) == 2  # both candidates were downloaded into the device's data dir


def test_benchmark_refuses_before_download_when_model_exceeds_memory(fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1, profiles=["generic-arm64"])
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        device = fleet.wait_for(1, timeout=30)[0]
        args = {"url": "http://127.0.0.1:9/artifacts/" + "a" * 64, "sha256": "a" * 64, "size": 10**12,
                "inputs_spec": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]}
        with pytest.raises(RemoteCommandError, match="memory limit"):
            device.call("benchmark", args, timeout=30)


def test_benchmark_reports_hash_mismatch_when_artifact_differs(fleet_factory: FleetFactory, tmp_path: Path) -> None:
    from workbench.deploy import ArtifactServer

    record = fleet_factory(devices=1)
    mlp = make_mlp(tmp_path / "mlp.onnx")
    with workbench.connect(run_dir=record["run_dir"]) as fleet, ArtifactServer(tmp_path / "store") as server:
        device = fleet.wait_for(1, timeout=30)[0]
        sha = server.add(mlp)
        args = {"url": server.url(sha), "sha256": "b" * 64, "size": mlp.stat().st_size,
                "inputs": {"x": {"dtype": "float32", "shape": [1, 16], "data": np.zeros(16).tolist()}}}
        with pytest.raises(RemoteCommandError, match="sha256"):
            device.call("benchmark", args, timeout=30)


def test_cli_writes_package_and_reports_when_target_is_a_device(fleet_factory: FleetFactory,
                                                               tmp_path: Path) -> None:
    record = fleet_factory(devices=1, profiles=["intel-nuc"])
    mlp = make_mlp(tmp_path / "mlp.onnx")
    x, y = labelled(mlp)
    np.savez(tmp_path / "eval.npz", inputs=x, labels=y)
    out = tmp_path / "out"
    proc = run_cli("optimize", str(mlp), "--target", "sim-01", "--run-dir", record["run_dir"], "--eval",
                   str(tmp_path / "eval.npz"), "--passes", "int8-dynamic", "--iterations", "10", "--no-cache",
                   "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "chosen:" in proc.stdout and "simulated device sim-01" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"model.onnx", "manifest.json", "report.json", "report.html"}
