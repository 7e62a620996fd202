"""Strategies are step generators: waves out, each wave's result in, an optional verdict at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import FleetFactory

import workbench
from workbench.deploy import Outcome, Wave, WaveResult, build_package, load_signing_key
from workbench.deploy._examples import tiny_model
from workbench.deploy._strategies import Steps
from workbench.errors import ConfigError


def _run(steps: Steps, results: list[WaveResult]) -> tuple[list[Wave], Outcome | None]:
    """Drive a strategy's generator as the rollout does, answering each wave with the next result."""
    waves: list[Wave] = []
    answers = iter(results)
    result: WaveResult | None = None
    while True:
        try:
            waves.append(steps.send(result))  # type: ignore[arg-type]
        except StopIteration as stop:
            return waves, stop.value
        result = next(answers, WaveResult({}))


def _shadowed(agreement: float, samples: int = 50) -> dict[str, Any]:
    return {"state": "shadowed", "reason": None, "report": {"shadow": {"samples": samples, "agreement": agreement}}}


def test_canary_steps_are_its_plan_when_every_wave_goes_through() -> None:
    waves, outcome = _run(workbench.Canary(first=1, waves=[0.5, 1.0]).steps(["a", "b", "c", "d"]), [])
    assert [w.devices for w in waves] == [["a"], ["b"], ["c", "d"]]
    assert {w.action for w in waves} == {"install"} and outcome is None


def test_shadow_promotes_through_an_install_wave_when_every_device_agrees() -> None:
    strategy = workbench.Shadow(duration=3, promote=True)
    waves, outcome = _run(strategy.steps(["a", "b"]), [WaveResult({"a": _shadowed(1.0), "b": _shadowed(0.995)})])
    assert [(w.action, w.devices) for w in waves] == [("shadow", ["a", "b"]), ("install", ["a", "b"])]
    assert waves[0].duration_s == 3
    # The promote is an ordinary wave of the rollout's loop (failure limit, gates), not a path of its own.
    assert outcome is None and waves[1].shadow is not None and waves[1].shadow["decision"] == "promoted"


def test_shadow_discards_without_a_promote_wave_when_a_device_disagrees_or_saw_no_input() -> None:
    strategy = workbench.Shadow(promote=True, min_agreement=0.99)
    waves, outcome = _run(strategy.steps(["a", "b"]),
                          [WaveResult({"a": _shadowed(0.5), "b": _shadowed(1.0, samples=0)})])
    assert [w.action for w in waves] == ["shadow"]
    assert outcome is not None and outcome.status == "aborted" and outcome.shadow is not None
    assert outcome.shadow["decision"] == "discarded"
    assert "a: agreement 0.5 below 0.99" in str(outcome.reason) and "b: no inputs reached" in str(outcome.reason)


def test_shadow_reports_the_device_state_when_a_device_never_shadowed() -> None:
    strategy = workbench.Shadow(promote=True)
    failed = {"state": "failed", "reason": "health check failed", "report": None}
    _, outcome = _run(strategy.steps(["a"]), [WaveResult({"a": failed})])
    assert outcome is not None and outcome.status == "aborted"
    assert "a: failed (health check failed)" in str(outcome.reason)


def test_deploy_names_what_a_strategy_needs_when_given_an_object_without_steps() -> None:
    with pytest.raises(ConfigError, match=r"steps\(devices\), soak_s"):
        workbench.deploy.deploy(None, "pkg", strategy=object())  # type: ignore[arg-type]


class OneByOne:
    """A strategy of a user's own: one device per wave."""

    soak_s = 0.0
    max_failures = 0

    def steps(self, devices: list[str]) -> Steps:
        for device in devices:
            yield Wave([device])
        return None


@pytest.mark.usefixtures("keys_env")
def test_deploy_runs_a_strategy_of_the_users_own_when_it_yields_waves(fleet_factory: FleetFactory,
                                                                    tmp_path: Path) -> None:
    record = fleet_factory(devices=2, keepalive=5)
    key = load_signing_key(None, create=True)
    package = build_package(tiny_model(tmp_path / "m.onnx", seed=3), tmp_path / "pkg", key, version="own")
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        report = fleet.deploy(package.path, strategy=OneByOne()).wait(timeout=90)
    assert report.status == "succeeded", str(report)
    assert [w["devices"] for w in report.waves] == [["sim-01"], ["sim-02"]]
    assert report.counts == {"active": 2}
