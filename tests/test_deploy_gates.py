"""Rollout gates read live telemetry from the deployed devices when it flows, probes otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FleetFactory

import workbench
from workbench.deploy import build_package, load_signing_key
from workbench.deploy._examples import tiny_model


@pytest.mark.usefixtures("keys_env")
def test_gates_read_telemetry_from_devices_sending_it_and_probe_the_others(
        fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=2, keepalive=5)
    key = load_signing_key(None, create=True)
    # The digits source feeds 64 pixels; a 64 -> 10 classifier takes them.
    packages = [build_package(tiny_model(tmp_path / f"d{i}.onnx", seed=i, features=64, classes=10),
                              tmp_path / f"pkg{i}", key, version=f"d{i}") for i in (1, 2)]
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        assert fleet.deploy(packages[0].path).wait(timeout=60).status == "succeeded"
        fleet.telemetry.configure("sim-01", source="digits", rate_hz=50, publish_interval_s=0.3)
        gates = [workbench.gate("p95_latency_ms", "<=", 1000, window_s=2),
                 workbench.gate("error_rate", "<=", 0.01, window_s=2),
                 workbench.gate("p50_latency_ms", "<=", 50, relative_to="previous", window_s=2)]
        report = fleet.deploy(packages[1].path, strategy=workbench.Canary(first=1, waves=[1.0], soak_s=3),
                              gates=gates).wait(timeout=90)
    assert report.status == "succeeded", str(report)
    last = {entry["metric"]: entry for entry in report.gates if entry["wave"] == 1}
    for metric in ("p95_latency_ms", "error_rate"):
        assert last[metric]["sources"] == {"sim-01": "telemetry", "sim-02": "probe"}, last[metric]
        assert last[metric]["devices"]["sim-01"] is not None
    assert last["error_rate"]["devices"]["sim-01"] == 0.0
    # A relative gate reads the same probe before the wave and during the soak, telemetry or not.
    assert last["p50_latency_ms"]["sources"] == {"sim-01": "probe", "sim-02": "probe"}, last["p50_latency_ms"]
    assert set(last["p50_latency_ms"]["baselines"]) == {"sim-01", "sim-02"}


@pytest.mark.usefixtures("keys_env")
def test_latency_gate_fails_from_telemetry_and_rolls_back_when_candidate_is_slow(
        fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=1, keepalive=5)
    key = load_signing_key(None, create=True)
    good = build_package(tiny_model(tmp_path / "g.onnx", seed=1, features=64, classes=10), tmp_path / "good", key,
                         version="good")
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        assert fleet.deploy(good.path).wait(timeout=60).status == "succeeded"
        fleet.telemetry.configure("sim-01", source="digits", rate_hz=50, publish_interval_s=0.3)
        fleet.telemetry.wait_for("latency_p95_ms", devices=["sim-01"], count=2, timeout=20)
        # The same model, but a threshold no real inference meets: the telemetry's latency fails it.
        candidate = build_package(tiny_model(tmp_path / "c.onnx", seed=2, features=64, classes=10),
                                  tmp_path / "cand", key, version="cand")
        report = fleet.deploy(candidate.path, strategy=workbench.Canary(first=1, soak_s=4),
                              gates=[workbench.gate("p95_latency_ms", "<=", 1e-6, window_s=3)]).wait(timeout=90)
        assert report.status == "aborted" and "from telemetry" in str(report.reason), str(report)
        assert [d["state"] for d in report.devices] == ["rolled_back"]
        fleet.wait_until(lambda f: (f["sim-01"].active_model or {}).get("version") == "good", timeout=20)
