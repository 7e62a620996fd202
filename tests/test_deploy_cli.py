"""The deploy command line: keys init, package, deploy to a real local fleet, export-k8s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import FleetFactory, run_cli

from workbench.deploy._examples import tiny_model


@pytest.fixture(autouse=True)
def isolated(keys_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_ARTIFACTS", str(keys_env / "artifacts"))


def test_keys_init_refuses_second_time_when_key_exists(tmp_path: Path) -> None:
    first = run_cli("keys", "init")
    assert first.returncode == 0 and (tmp_path / "keys" / "signing.key").exists(), first.stderr
    again = run_cli("keys", "init")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_package_then_export_k8s_writes_manifests_when_model_given(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "digits.onnx")
    result = run_cli("package", str(model), "--out", str(tmp_path / "pkg"), "--target", "raspberry-pi-5", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["name"] == "digits" and len(info["package_id"]) == 64
    exported = run_cli("export-k8s", str(tmp_path / "pkg"), "--out", str(tmp_path / "k8s"), "--broker",
                       "mqtt://gateway:1883", "--kubeedge")
    assert exported.returncode == 0, exported.stderr
    daemonset = yaml.safe_load((tmp_path / "k8s" / "daemonset.yaml").read_text())
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["workbench.io/profile"] == "raspberry-pi-5"
    assert pod["containers"][0]["resources"]["limits"]["cpu"] == "4"
    assert pod["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--health-port" in pod["containers"][0]["args"] and "--trusted-keys" in pod["containers"][0]["args"]
    assert daemonset["metadata"]["annotations"]["workbench.io/package-id"] == info["package_id"]


def test_package_fails_clearly_when_out_is_missing(tmp_path: Path) -> None:
    result = run_cli("package", str(tiny_model(tmp_path / "m.onnx")))
    assert result.returncode == 1 and "--out" in result.stderr


def test_deploy_cli_reports_every_device_active_when_fleet_is_up(tmp_path: Path,
                                                                 fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=2)
    model = tiny_model(tmp_path / "digits.onnx", seed=3)
    assert run_cli("package", str(model), "--out", str(tmp_path / "pkg")).returncode == 0
    result = run_cli("deploy", str(tmp_path / "pkg"), "--run-dir", record["run_dir"], "--strategy", "canary",
                     "--soak", "0.2", "--gate", "error_rate<=0.01", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["status"] == "succeeded"
    assert report["counts"] == {"active": 2}
    lines = run_cli("deploy", str(tmp_path / "pkg"), "--run-dir", record["run_dir"], "--gate", "bogus")
    assert lines.returncode == 1 and "cannot read gate" in lines.stderr
