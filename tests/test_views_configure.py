"""Configuring a serving source on a device without a model is refused, naming the device and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import deploy_model

import workbench
from workbench.errors import RemoteCommandError
from workbench.telemetry import build_digits_model


def test_configure_digits_raises_naming_device_and_deploy_when_the_device_has_no_model(
    fleet_factory: Any, tmp_path: Path,
) -> None:
    record = fleet_factory(devices=1, hub=True)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1)
        with pytest.raises(RemoteCommandError) as raised:
            fleet.telemetry.configure("sim-01", source="digits", rate_hz=5)
        message = str(raised.value)
        assert raised.value.device_id == "sim-01"
        assert "sim-01" in message and "deploy a model first" in message and "'digits'" in message, message
        # Nothing half-applied: the device still serves nothing.
        assert fleet["sim-01"].call("telemetry.status")["config"]["source"] == "none"
        # With a deployed package on the device, the same source is accepted.
        deploy_model(fleet, build_digits_model(tmp_path / "digits.onnx"), ["sim-01"], tmp_path / "digits-pkg")
        status = fleet.telemetry.configure("sim-01", source="digits", rate_hz=5)["sim-01"]
        assert status["config"]["source"] == "digits"
        fleet.telemetry.configure("sim-01", source="none")
