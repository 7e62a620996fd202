"""Rollout gates: a metric of the updated devices, compared with a threshold during the soak.

A gate is absolute (``p95_latency_ms <= 20``) or relative to the model each device ran before
(``p95_latency_ms <= 1.5x previous``). An absolute millisecond threshold means different things on a
Raspberry Pi 4 and a NUC, and on two machines of one class: a relative gate measures the previous
model on the same device with the same probe right before its wave, so only a regression fails it.

Gates read metrics through a small interface, :class:`MetricSource`: a callable
``source(device_id, metric, window_s) -> float | None`` giving the metric's current value on
one device over the last ``window_s`` seconds. By default a rollout with gates uses
:class:`~workbench.deploy._telemetry_gates.GateMetrics`: live telemetry of the deployed model
where devices send it, else :class:`ProbeMetrics`, which measures for real on the device (the
agent's ``probe`` command runs N inferences of the active model on its package's sample input
and returns latency percentiles and the error rate). Any object with the same call signature
can be passed as ``fleet.deploy(..., metrics=source)``.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from workbench.errors import ConfigError, WorkbenchError

if TYPE_CHECKING:
    from workbench.fleet._fleet import Fleet

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq,
}
METRICS = ("p50_latency_ms", "p95_latency_ms", "mean_latency_ms", "error_rate", "errors")
RELATIVE_TO = ("previous",)
# Relative latency gates count a previous model faster than this as this fast: below it, a ratio
# measures timer resolution and scheduler noise (a 0.01 ms model "regresses" 3x when one probe of
# 100 is preempted), not the model.
LATENCY_FLOOR_MS = 0.2


class MetricSource(Protocol):
    """Where gates read metrics: telemetry, a probe, or anything else with this signature."""

    def __call__(self, device_id: str, metric: str, window_s: float) -> float | None:
        """The metric's value on ``device_id`` over the last ``window_s`` seconds (None: no data)."""
        ...


@dataclass(frozen=True)
class Gate:
    """``metric op threshold`` on every updated device, e.g. ``p95_latency_ms <= 20``.

    Example:
        >>> gate("error_rate", "<=", 0.01).passes(0.0)
        True
    """

    metric: str
    op: str
    threshold: float
    window_s: float = 10.0
    relative_to: str | None = None
    floor: float = 0.0

    @property
    def relative(self) -> bool:
        return self.relative_to is not None

    def limit(self, baseline: float | None) -> float | None:
        """The value to compare with: the threshold, or for a relative gate the threshold times the baseline.

        None for a relative gate without a baseline (the device ran no model before).

        Example:
            >>> gate("p95_latency_ms", "<=", 1.5, relative_to="previous", floor=0.2).limit(4.0)
            6.0
        """
        if not self.relative:
            return self.threshold
        if baseline is None:
            return None
        return self.threshold * max(baseline, self.floor)

    def passes(self, value: float | None, baseline: float | None = None) -> bool:
        """Whether a value passes; no data fails (a gate must see the device work to let it pass).

        A relative gate passes a device that ran no model before (``baseline`` None): nothing
        to regress from.

        Example:
            >>> slower = gate("p95_latency_ms", "<=", 1.5, relative_to="previous")
            >>> slower.passes(2.0, baseline=1.0), slower.passes(1.2, baseline=1.0), slower.passes(9.0, None)
            (False, True, True)
        """
        if value is None:
            return False
        limit = self.limit(baseline)
        return limit is None or _OPS[self.op](value, limit)

    def __str__(self) -> str:
        if self.relative:
            return f"{self.metric} {self.op} {self.threshold:g}x {self.relative_to}"
        return f"{self.metric} {self.op} {self.threshold:g}"


def gate(metric: str, op: str, threshold: float, *, window_s: float = 10.0, relative_to: str | None = None,
         floor: float | None = None) -> Gate:
    """A rollout gate; raises :class:`ConfigError` for an unknown operator or an impossible threshold.

    With ``relative_to="previous"`` the threshold is a ratio to the value of the model each
    device ran before, measured by the same probe on the same device right before its wave:
    ``gate("p95_latency_ms", "<=", 1.5, relative_to="previous")`` fails a device whose p95
    latency is more than 1.5 times what it was. ``floor`` is the smallest baseline a relative
    gate divides by (default: 0.2 ms for latency metrics, 0 otherwise), so sub-millisecond noise
    on a tiny model is not judged a regression.

    Example:
        >>> str(gate("p95_latency_ms", "<=", 20))
        'p95_latency_ms <= 20'
        >>> str(gate("p95_latency_ms", "<=", 1.5, relative_to="previous"))
        'p95_latency_ms <= 1.5x previous'
    """
    if op not in _OPS:
        raise ConfigError(f"unknown gate operator {op!r}; use one of {', '.join(_OPS)}")
    if not isinstance(metric, str) or not metric:
        raise ConfigError("a gate needs a metric name, e.g. 'p95_latency_ms' or 'error_rate'")
    if relative_to is not None and relative_to not in RELATIVE_TO:
        raise ConfigError(f"gate relative_to={relative_to!r} is not known; use relative_to='previous' (the model "
                          "each device ran before the rollout) or leave it out for an absolute threshold")
    threshold = float(threshold)
    if relative_to is not None and not threshold > 0:
        raise ConfigError(f"a relative gate's threshold is a ratio to the previous model's value and must be above "
                          f"0, got {threshold:g}; e.g. 1.5 allows 50 % more than before")
    if floor is None:
        floor = LATENCY_FLOOR_MS if relative_to is not None and metric.endswith("_latency_ms") else 0.0
    if not floor >= 0:
        raise ConfigError(f"a gate's floor must be 0 or more, got {floor!r}")
    return Gate(metric, op, threshold, float(window_s), relative_to, float(floor))


class ProbeMetrics:
    """A :class:`MetricSource` measuring on the device itself with the agent's ``probe`` command.

    One probe (``n`` real inferences) answers every metric of a device for ``window_s`` seconds.
    Gates fall back to it for devices that send no telemetry.

    Example:
        >>> ProbeMetrics(fleet)("sim-01", "p95_latency_ms", 5.0)   # doctest: +SKIP
        0.21
    """

    def __init__(self, fleet: Fleet, *, n: int = 30, timeout: float = 30.0) -> None:
        self.fleet = fleet
        self.n = n
        self.timeout = timeout
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __call__(self, device_id: str, metric: str, window_s: float) -> float | None:
        with self._lock:
            cached = self._cache.get(device_id)
        if cached is None or time.monotonic() - cached[0] > window_s:
            try:
                result = self.fleet.call(device_id, "probe", {"n": self.n}, timeout=self.timeout)
            except WorkbenchError:
                return None  # an unreachable device gives no data, which fails its gates
            cached = (time.monotonic(), result)
            with self._lock:
                self._cache[device_id] = cached
        value = cached[1].get(metric)
        return float(value) if isinstance(value, int | float) else None

    def invalidate(self) -> None:
        """Forget cached probes (after a wave changed what the devices run)."""
        with self._lock:
            self._cache.clear()
