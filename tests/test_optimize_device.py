"""Measuring candidates on a connected (simulated) device through the agent's benchmark command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FleetFactory, run_cli
from test_optimize_onnx import FAST, labelled, make_mlp

import workbench
from workbench.deploy import load_signing_key
from workbench.deploy._serve import store_for_record
from workbench.errors import RemoteCommandError
from workbench.optimize import optimize
from workbench.protocol.candidates import sign_candidates


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
    store = store_for_record(record)
    assert store is not None
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        device = fleet.wait_for(1, timeout=30)[0]
        candidates = sign_candidates({"huge": {"sha256": "a" * 64, "size": 10**12}}, store,
                                     load_signing_key(create=True))
        args = {"candidates": candidates, "inputs_spec": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]}
        with pytest.raises(RemoteCommandError, match="memory limit"):
            device.call("benchmark", args, timeout=30)


def test_benchmark_reports_hash_mismatch_when_artifact_differs(fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=1)
    store = store_for_record(record)
    assert store is not None
    mlp = make_mlp(tmp_path / "mlp.onnx")
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        device = fleet.wait_for(1, timeout=30)[0]
        (store.directory / ("b" * 64)).write_bytes(mlp.read_bytes())  # served under a sha256 it does not have
        candidates = sign_candidates({"mlp": {"sha256": "b" * 64, "size": mlp.stat().st_size}}, store,
                                     load_signing_key(create=True))
        args = {"candidates": candidates,
                "inputs": {"x": {"dtype": "float32", "shape": [1, 16], "data": np.zeros(16).tolist()}}}
        with pytest.raises(RemoteCommandError, match="sha256"):
            device.call("benchmark", args, timeout=30)


def test_benchmark_refuses_candidates_when_the_list_is_signed_by_a_key_the_device_does_not_trust(
        fleet_factory: FleetFactory, tmp_path: Path) -> None:
    """Row 7: the benchmark runs only models the workbench signed; a stranger's list is refused before any model."""
    from workbench.deploy import init_keys
    from workbench.protocol.candidates import stage_candidates

    record = fleet_factory(devices=1)
    store = store_for_record(record)
    assert store is not None
    mlp = make_mlp(tmp_path / "mlp.onnx")
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        device = fleet.wait_for(1, timeout=30)[0]
        inputs = {"x": {"dtype": "float32", "shape": [1, 16], "data": np.zeros(16).tolist()}}
        stranger = init_keys(tmp_path / "stranger")
        with pytest.raises(RemoteCommandError, match="not trusted here"):
            device.call("benchmark", {"candidates": stage_candidates({"mlp": mlp}, store, stranger),
                                      "inputs": inputs, "iterations": 1}, timeout=30)
        with pytest.raises(RemoteCommandError, match="a bare 'url' is refused"):
            device.call("benchmark", {"url": store.url(store.add(mlp)), "sha256": store.add(mlp),
                                      "inputs": inputs}, timeout=30)
        assert not list(Path(record["run_dir"]).rglob("artifacts/*.onnx"))  # no model reached the device's disk
        signed = stage_candidates({"mlp": mlp}, store, load_signing_key(create=True))
        reply = device.call("benchmark", {"candidates": signed, "inputs": inputs, "iterations": 1}, timeout=60)
        assert reply["results"]["mlp"]["p50_ms"] > 0


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
