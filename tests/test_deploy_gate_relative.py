"""Relative gates: a threshold as a ratio to what the previous model measured on the same device."""

from __future__ import annotations

import pytest

import workbench
from workbench.deploy._gates import LATENCY_FLOOR_MS
from workbench.errors import ConfigError


def test_relative_gate_fails_a_regression_and_passes_the_same_speed_when_baseline_is_known() -> None:
    slower = workbench.gate("p95_latency_ms", "<=", 1.5, relative_to="previous")
    assert not slower.passes(6.0, baseline=3.0)
    assert slower.passes(4.4, baseline=3.0)
    assert slower.limit(3.0) == pytest.approx(4.5)


def test_relative_gate_scales_with_the_device_when_the_same_regression_runs_on_fast_and_slow_cpus() -> None:
    slower = workbench.gate("p95_latency_ms", "<=", 1.5, relative_to="previous")
    for cpu_speed in (0.25, 1.0, 4.0):  # the same two models on CPUs of different speed
        previous, candidate = 2.0 / cpu_speed, 10.0 / cpu_speed
        assert not slower.passes(candidate, baseline=previous), cpu_speed
        assert slower.passes(previous * 1.1, baseline=previous), cpu_speed


def test_relative_latency_gate_counts_a_tiny_previous_model_as_the_floor_when_noise_would_decide() -> None:
    slower = workbench.gate("p95_latency_ms", "<=", 1.5, relative_to="previous")
    assert slower.floor == LATENCY_FLOOR_MS
    # 0.008 ms before, 0.03 ms now: one preempted inference, not a regression.
    assert slower.passes(0.03, baseline=0.008)
    assert not slower.passes(0.9, baseline=0.008)
    strict = workbench.gate("p95_latency_ms", "<=", 1.5, relative_to="previous", floor=0.0)
    assert not strict.passes(0.03, baseline=0.008)


def test_relative_gate_passes_a_device_that_ran_no_model_before_but_fails_one_without_data() -> None:
    slower = workbench.gate("p95_latency_ms", "<=", 1.5, relative_to="previous")
    assert slower.passes(50.0, baseline=None)
    assert not slower.passes(None, baseline=2.0)


def test_relative_gate_keeps_no_floor_when_the_metric_is_not_a_latency() -> None:
    errors = workbench.gate("error_rate", "<=", 2.0, relative_to="previous")
    assert errors.floor == 0.0
    assert not errors.passes(0.01, baseline=0.0)
    assert errors.passes(0.0, baseline=0.0)


def test_relative_gate_reads_as_a_ratio_when_printed() -> None:
    assert str(workbench.gate("p95_latency_ms", "<=", 1.5, relative_to="previous")) == "p95_latency_ms <= 1.5x previous"
    assert str(workbench.gate("p95_latency_ms", "<=", 20)) == "p95_latency_ms <= 20"


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"relative_to": "baseline"}, "relative_to='baseline' is not known"),
    ({"relative_to": "previous", "threshold": 0}, "must be above 0"),
    ({"relative_to": "previous", "floor": -1.0}, "floor must be 0 or more"),
])
def test_gate_names_the_bad_argument_when_a_relative_gate_is_misconfigured(kwargs: dict[str, object],
                                                                            words: str) -> None:
    arguments: dict[str, object] = {"threshold": 1.5, **kwargs}
    threshold = arguments.pop("threshold")
    with pytest.raises(ConfigError, match=words):
        workbench.gate("p95_latency_ms", "<=", threshold, **arguments)  # type: ignore[arg-type]
