"""Telemetry end to end: real agent processes serve real ONNX models, publish through a real broker, into DuckDB."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import deploy_model

import workbench
from workbench.errors import RemoteCommandError
from workbench.telemetry import build_digits_model, build_sensor_anomaly_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {"digits": build_digits_model(folder / "digits.onnx"),
            "anomaly": build_sensor_anomaly_model(folder / "anomaly.onnx")}


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_query_returns_each_devices_inference_metrics_when_models_serve_replayed_data(
        fleet_factory: Any, models: dict[str, Path], broker: str, tmp_path: Path) -> None:
    record = fleet_factory(devices=2, broker=broker)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2)
        deploy_model(fleet, models["digits"], ["sim-01"], tmp_path / "digits-pkg")
        deploy_model(fleet, models["anomaly"], ["sim-02"], tmp_path / "anomaly-pkg")
        telemetry = fleet.telemetry
        telemetry.configure("sim-01", source="digits", rate_hz=40, publish_interval_s=0.2, confidence_threshold=0.99)
        telemetry.configure("sim-02", source="sensors", rate_hz=40, publish_interval_s=0.2)
        telemetry.wait_for("latency_p95_ms", devices=["sim-01", "sim-02"], count=3, timeout=30)
        frame = telemetry.query(["latency_p95_ms", "inference_count"], since="1m", every="1s")
        assert set(frame["device_id"]) == {"sim-01", "sim-02"}
        counts = frame[frame.metric == "inference_count"].groupby("device_id")["value"].max()
        assert (counts > 0).all()
        assert (frame[frame.metric == "latency_p95_ms"]["value"] > 0).all()
        # Application data: the digits model's predictions and the watch's accelerometer.
        assert set(telemetry.query("prediction", devices="sim-01", since="1m")["value"]) <= set(range(10))
        assert len(telemetry.query("acc_x", devices="sim-02", since="1m")) > 0
        dropped = telemetry.query("dropped_low_confidence", devices="sim-01", since="1m")["value"].max()
        assert dropped > 0  # a 0.99 threshold drops some logistic-regression answers
        health = telemetry.health().set_index("device_id")
        assert health.loc["sim-01", "model"] == "digits" and health.loc["sim-02", "model"] == "anomaly"
        assert (health["sync_backlog"] >= 0).all()  # both devices reported their outbox (telemetry goes through it)
        stats = telemetry.stats().set_index("device_id")
        assert (stats[["duplicates", "malformed", "truncated"]] == 0).all().all()


def test_alert_fires_on_the_device_when_its_sensor_stream_turns_anomalous(
        fleet_factory: Any, models: dict[str, Path], tmp_path: Path) -> None:
    record = fleet_factory(devices=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1)
        deploy_model(fleet, models["anomaly"], ["sim-01"], tmp_path / "anomaly-pkg")
        telemetry = fleet.telemetry
        telemetry.add_rule("motion-anomaly", "anomaly_score", above=0.5, for_points=5, cooldown_s=60)
        telemetry.configure("sim-01", source="sensors", rate_hz=50, publish_interval_s=0.2,
                            sensor_activities=["Standing", "Walking"])
        telemetry.wait_for("anomaly_score", devices="sim-01", count=50, timeout=30)
        assert telemetry.alerts().empty
        telemetry.configure("sim-01", sensor_activities=["Running"])
        deadline = time.monotonic() + 20
        while telemetry.alerts().empty and time.monotonic() < deadline:
            time.sleep(0.2)
        alerts = telemetry.alerts()
        assert alerts[["device_id", "rule"]].values.tolist() == [["sim-01", "motion-anomaly"]]
        assert alerts["value"].iloc[0] > 0.5


def test_configure_raises_remote_error_naming_the_setting_when_it_is_unknown(shared_fleet: dict[str, Any]) -> None:
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        fleet.wait_for(3)
        with pytest.raises(RemoteCommandError, match="unknown telemetry setting 'rate'"):
            fleet["sim-01"].call("telemetry.configure", {"rate": 5})
        with pytest.raises(RemoteCommandError, match="rate_hz must be a number"):
            fleet["sim-01"].call("telemetry.configure", {"rate_hz": -1})


def test_http_endpoint_answers_predictions_when_a_real_device_posts_inputs(
        fleet_factory: Any, models: dict[str, Path], tmp_path: Path) -> None:
    record = fleet_factory(devices=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1)
        deploy_model(fleet, models["digits"], ["sim-01"], tmp_path / "digits-pkg")
        status = fleet["sim-01"].call("telemetry.configure", {"source": "http"})
        url = f"http://127.0.0.1:{status['http_port']}/infer"
        body = json.dumps({"inputs": [0.0] * 64}).encode()
        with urllib.request.urlopen(urllib.request.Request(url, body, method="POST"), timeout=5) as response:
            result = json.load(response)
        assert 0 <= result["prediction"] <= 9 and 0 < result["confidence"] <= 1
        bad = urllib.request.Request(url, json.dumps({"inputs": [1.0, 2.0]}).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(bad, timeout=5)
        assert caught.value.code == 400 and "does not fit model input" in json.load(caught.value)["error"]
        caught.value.close()
