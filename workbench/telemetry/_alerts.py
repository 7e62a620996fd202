"""Alert rules on any metric: fixed thresholds and rolling statistics (z-score), per device."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.errors import ConfigError

Alert = dict[str, Any]


@dataclass
class AlertRule:
    """Fire when ``metric`` is above/below a threshold, or ``zscore`` standard deviations off its rolling mean.

    ``for_points`` consecutive breaching points are needed (one spike is not an alert);
    a device fires a rule at most once per ``cooldown_s``.

    Example:
        >>> AlertRule("hot", "latency_p95_ms", above=50).breaches(80.0, None)
        True
        >>> AlertRule("drift", "acc_x", zscore=4, window=50).name
        'drift'
    """

    name: str
    metric: str
    above: float | None = None
    below: float | None = None
    zscore: float | None = None
    window: int = 100
    for_points: int = 1
    cooldown_s: float = 30.0
    devices: list[str] | None = None

    def __post_init__(self) -> None:
        if self.above is None and self.below is None and self.zscore is None:
            raise ConfigError(f"alert rule {self.name!r} needs above=, below= or zscore=")
        if self.zscore is not None and (self.zscore <= 0 or self.window < 10):
            raise ConfigError(f"alert rule {self.name!r}: zscore must be > 0 and window at least 10 points")
        if self.for_points < 1:
            raise ConfigError(f"alert rule {self.name!r}: for_points must be at least 1")

    def breaches(self, value: float, stats: tuple[float, float] | None) -> bool:
        """Whether one value breaches the rule, given the rolling (mean, std) when it has one."""
        if self.above is not None and value > self.above:
            return True
        if self.below is not None and value < self.below:
            return True
        if self.zscore is not None and stats is not None:
            mean, std = stats
            return std > 0 and abs(value - mean) / std > self.zscore
        return False

    def describe(self, value: float, stats: tuple[float, float] | None) -> str:
        if self.above is not None and value > self.above:
            return f"{self.metric} = {value:.4g} is above {self.above:g}"
        if self.below is not None and value < self.below:
            return f"{self.metric} = {value:.4g} is below {self.below:g}"
        mean, std = stats or (math.nan, math.nan)
        return f"{self.metric} = {value:.4g} is {abs(value - mean) / std:.1f} std from its rolling mean {mean:.4g}"


@dataclass
class _State:
    history: deque[float]
    streak: int = 0
    last_fired: float = -math.inf


@dataclass
class AlertEngine:
    """Evaluates rules on newly stored points; fired alerts go to the store and to listeners."""

    rules: dict[str, AlertRule] = field(default_factory=dict)
    fired: list[Alert] = field(default_factory=list)
    listeners: list[Callable[[Alert], None]] = field(default_factory=list)
    _states: dict[tuple[str, str], _State] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rule: AlertRule) -> None:
        with self._lock:
            self.rules[rule.name] = rule
            self._states = {k: v for k, v in self._states.items() if k[0] != rule.name}

    def remove(self, name: str) -> None:
        with self._lock:
            self.rules.pop(name, None)

    def metrics(self) -> set[str]:
        with self._lock:
            return {rule.metric for rule in self.rules.values()}

    def evaluate(self, metric: str, device: str, ts: np.ndarray, values: np.ndarray) -> list[Alert]:
        """Feed one device's new points of ``metric`` (in time order) through every rule on it."""
        with self._lock:
            rules = [r for r in self.rules.values()
                     if r.metric == metric and (r.devices is None or device in r.devices)]
        fired: list[Alert] = []
        for rule in rules:
            state = self._states.setdefault((rule.name, device), _State(deque(maxlen=rule.window)))
            for t, v in zip(ts.tolist(), values.tolist(), strict=True):
                stats = None
                if rule.zscore is not None and len(state.history) >= 10:
                    history = np.fromiter(state.history, dtype=np.float64)
                    stats = (float(history.mean()), float(history.std()))
                breach = rule.breaches(v, stats)
                state.streak = state.streak + 1 if breach else 0
                if not breach:
                    state.history.append(v)  # breaching points would drag the baseline toward the fault
                if state.streak >= rule.for_points and t - state.last_fired >= rule.cooldown_s:
                    state.last_fired = t
                    fired.append({"ts": t, "device_id": device, "rule": rule.name, "metric": metric, "value": v,
                                  "message": f"{device}: {rule.describe(v, stats)}", "received": time.time()})
        if fired:
            with self._lock:
                self.fired.extend(fired)
                listeners = list(self.listeners)
            for alert in fired:
                for listener in listeners:
                    listener(alert)
        return fired
