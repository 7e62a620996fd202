"""Shadow mode: the candidate answers the active model's real inputs on the device, then is promoted or discarded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FleetFactory

import workbench
from workbench.deploy import build_package, load_signing_key
from workbench.deploy._examples import tiny_model
from workbench.fleet._fleet import Fleet
from workbench.protocol.package import Package


@pytest.fixture
def serving(fleet_factory: FleetFactory, keys_env: Path) -> Iterator[Fleet]:
    """One device serving a digits classifier with live inputs (the telemetry's digits source)."""
    record = fleet_factory(devices=1, keepalive=5)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        assert fleet.deploy(package(keys_env, "v1", seed=1).path).wait(timeout=60).status == "succeeded"
        fleet.telemetry.configure("sim-01", source="digits", rate_hz=50)
        yield fleet


def package(base: Path, version: str, seed: int) -> Package:
    model = tiny_model(base / f"{version}.onnx", seed=seed, features=64, classes=10)
    return build_package(model, base / version, load_signing_key(None, create=True), version=version)


def version(fleet: Fleet) -> str | None:
    return (fleet["sim-01"].active_model or {}).get("version")


def test_shadow_reports_agreement_and_both_latencies_and_keeps_active_when_not_promoting(serving: Fleet,
                                                                                         tmp_path: Path) -> None:
    same = package(tmp_path, "v1-rebuilt", seed=1)  # the same weights: it must agree on every input
    rollout = serving.deploy(same.path, strategy=workbench.Shadow(duration=2))
    report = rollout.wait(timeout=60)
    assert report.status == "succeeded" and report.shadow is not None, str(report)
    stats = report.shadow["devices"]["sim-01"]
    assert stats["samples"] > 10 and stats["agreement"] == 1.0 and stats["candidate_errors"] == 0
    assert stats["active_p95_ms"] > 0 and stats["candidate_p95_ms"] > 0
    assert report.shadow["decision"] == "discarded" and version(serving) == "v1"
    assert [d["state"] for d in report.devices] == ["shadowed"]
    from widgets._rollout_progress import render_html

    markup = render_html(rollout)
    assert "shadow: discarded" in markup and f"<td>{stats['samples']}</td>" in markup


def test_shadow_discards_candidate_when_it_disagrees(serving: Fleet, tmp_path: Path) -> None:
    other = package(tmp_path, "v2-other", seed=2)  # different weights: different top-1 answers
    report = serving.deploy(other.path, strategy=workbench.Shadow(duration=2, promote=True)).wait(timeout=60)
    assert report.status == "aborted" and "agreement" in str(report.reason), str(report)
    assert report.shadow is not None and report.shadow["decision"] == "discarded"
    assert report.shadow["devices"]["sim-01"]["agreement"] < 0.99
    assert version(serving) == "v1"


def test_shadow_promotes_candidate_when_it_agrees_and_promote_is_set(serving: Fleet, tmp_path: Path) -> None:
    same = package(tmp_path, "v1-promoted", seed=1)
    report = serving.deploy(same.path, strategy=workbench.Shadow(duration=1.5, promote=True)).wait(timeout=60)
    assert report.status == "succeeded" and report.shadow is not None, str(report)
    assert report.shadow["decision"] == "promoted" and [d["state"] for d in report.devices] == ["active"]
    serving.wait_until(lambda f: version(f) == "v1-promoted", timeout=20)
