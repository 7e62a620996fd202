"""`workbench agent --trusted-keys DIR --health-port PORT`: a real agent process trusting only those keys and
answering GET /healthz with its state (what the exported Kubernetes liveness probe asks)."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import FleetFactory

import workbench
from workbench.deploy import build_package, init_keys, load_signing_key
from workbench.deploy._examples import tiny_model
from workbench.sim import _procs


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.mark.usefixtures("keys_env")
def test_agent_installs_only_packages_of_its_trusted_keys_and_reports_health(
        fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=1, keepalive=5)
    other = init_keys(tmp_path / "other-keys")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / other.public_file.name).write_bytes(other.public_file.read_bytes())
    port = _procs.free_port()
    agent = _procs.spawn([sys.executable, "-m", "workbench.cli", "agent", "--device-id", "edge-01",
                          "--broker", record["broker"]["url"], "--data-dir", str(tmp_path / "edge"),
                          "--keepalive", "5", "--trusted-keys", str(trusted), "--health-port", str(port),
                          "--health-host", "127.0.0.1"], tmp_path / "edge.log")
    try:
        with workbench.connect(run_dir=record["run_dir"]) as fleet:
            fleet.wait_until(lambda f: "edge-01" in f and f["edge-01"].online and bool(f["edge-01"].inventory_data),
                             timeout=30)
            status, body = healthz(port)
            assert status == 200 and body["devices"][0]["model_needed"] is False, body
            model = tiny_model(tmp_path / "m.onnx", seed=3)
            by_workbench = build_package(model, tmp_path / "wb-pkg", load_signing_key(None, create=True), version="wb")
            report = fleet.deploy(by_workbench.path, devices=["edge-01"]).wait(timeout=60)
            assert report.devices[0]["state"] == "rejected" and "not trusted" in report.devices[0]["reason"]
            by_other = build_package(model, tmp_path / "other-pkg", other, version="other")
            report = fleet.deploy(by_other.path, devices=["edge-01"], keys_dir=other.directory).wait(timeout=60)
            assert report.devices[0]["state"] == "active", str(report)
            status, body = healthz(port)
            device = body["devices"][0]
            assert status == 200 and device["verified"] and device["version"] == "other", body
        _procs.stop([record["broker"]])  # the broker goes away: the agent is no longer connected
        deadline = time.monotonic() + 20
        while (status := healthz(port)[0]) != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, body = healthz(port)
        assert status == 503 and "not connected to the broker" in body["devices"][0]["reasons"], body
    finally:
        _procs.stop([agent])
