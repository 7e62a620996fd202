"""Rollout gates: a metric of the updated devices, compared with a threshold during the soak.

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

    def passes(self, value: float | None) -> bool:
        """Whether a value passes; no data fails (a gate must see the device work to let it pass)."""
        return value is not None and _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


def gate(metric: str, op: str, threshold: float, *, window_s: float = 10.0) -> Gate:
    """A rollout gate; raises :class:`ConfigError` for an unknown operator.

    Example:
        >>> str(gate("p95_latency_ms", "<=", 20))
        'p95_latency_ms <= 20'
    """
    if op not in _OPS:
        raise ConfigError(f"unknown gate operator {op!r}; use one of {', '.join(_OPS)}")
    if not isinstance(metric, str) or not metric:
        raise ConfigError("a gate needs a metric name, e.g. 'p95_latency_ms' or 'error_rate'")
    return Gate(metric, op, float(threshold), float(window_s))


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
