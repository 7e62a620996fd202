"""Rollout strategies: which devices get the package in which wave, and what aborts the rollout.

A strategy is a generator of steps. :meth:`steps` yields :class:`Wave` after :class:`Wave`; the
rollout deploys each, applies the failure limit and soaks the gates, then sends the wave's
:class:`WaveResult` back in. The generator may return an :class:`Outcome` to end the rollout with
its own verdict (a shadow that discards its candidate); returning nothing lets the rollout judge
by the devices' states. Every strategy goes through this one loop, so ``max_failures`` and the
gates hold for all of them, a shadow's promote wave included.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from workbench.errors import ConfigError


@dataclass(frozen=True)
class Wave:
    """One step: set these devices' desired state, wait for their reports, then check and soak.

    ``action`` is ``install`` (activate the package) or ``shadow`` (run it beside the active
    model for ``duration_s``). ``shadow`` is a shadow's verdict to show in the report from this
    wave on.
    """

    devices: list[str]
    action: str = "install"
    duration_s: float = 0.0
    shadow: dict[str, Any] | None = None


@dataclass(frozen=True)
class WaveResult:
    """What the devices of a wave reported: per device ``state``, ``reason`` and ``report`` (None: none)."""

    devices: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    """A strategy's own verdict, which ends the rollout."""

    status: str
    reason: str | None = None
    shadow: dict[str, Any] | None = None


Steps = Generator[Wave, WaveResult, Outcome | None]


class Strategy(Protocol):
    """What a rollout needs of a strategy: its steps, its soak time and its failure limit."""

    @property
    def soak_s(self) -> float:
        """Seconds the gates watch the updated devices after each wave."""
        ...

    @property
    def max_failures(self) -> int | float | None:
        """Failed devices that abort the rollout (a float below 1: a fraction; None: never)."""
        ...

    def steps(self, devices: list[str]) -> Steps:
        """Yield the waves to deploy; receive each wave's result; optionally return an Outcome."""
        ...


def _waves(plan: list[list[str]]) -> Steps:
    for devices in plan:
        yield Wave(devices)
    return None


@dataclass(frozen=True)
class AllAtOnce:
    """Every device in one wave; by default failures are reported, not aborted on.

    Example:
        >>> AllAtOnce().plan(["a", "b"])
        [['a', 'b']]
    """

    soak_s: float = 0.0
    max_failures: int | float | None = None

    def plan(self, devices: list[str]) -> list[list[str]]:
        return [list(devices)] if devices else []

    def steps(self, devices: list[str]) -> Steps:
        return _waves(self.plan(devices))


@dataclass(frozen=True)
class Canary:
    """``first`` devices, then waves reaching the given cumulative fractions; gates soak after each wave.

    Example:
        >>> Canary(first=1, waves=[0.5, 1.0]).plan(["a", "b", "c", "d"])
        [['a'], ['b'], ['c', 'd']]
    """

    first: int = 1
    waves: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0])
    soak_s: float = 5.0
    max_failures: int | float | None = 0

    def __post_init__(self) -> None:
        if self.first < 1:
            raise ConfigError(f"Canary(first=...) must be at least 1, got {self.first}")
        if any(not 0 < w <= 1 for w in self.waves) or list(self.waves) != sorted(self.waves):
            raise ConfigError(f"Canary waves must be increasing fractions in (0, 1], got {self.waves}")
        if self.soak_s < 0:
            raise ConfigError("soak_s must not be negative")

    def plan(self, devices: list[str]) -> list[list[str]]:
        waves = [list(devices[: self.first])]
        done = len(waves[0])
        for fraction in [*self.waves, 1.0]:
            upto = max(done, math.ceil(fraction * len(devices)))
            if upto > done:
                waves.append(list(devices[done:upto]))
                done = upto
        return [w for w in waves if w]

    def steps(self, devices: list[str]) -> Steps:
        return _waves(self.plan(devices))


@dataclass(frozen=True)
class Waves:
    """Waves of ``size`` devices, or reaching cumulative ``percent`` of the devices; gated like Canary's.

    For fleets of thousands: each wave is deployed, checked against the failure limit and soaked
    under the gates before the next starts, and the rollout reports per-wave figures (devices,
    activated, failed, rolled back, time to activate p50/p95, duration). ``max_failures`` counts
    over the whole rollout, as for every strategy (a float below 1 is a fraction of the devices).

    Example:
        >>> Waves(size=2).plan(["a", "b", "c", "d", "e"])
        [['a', 'b'], ['c', 'd'], ['e']]
        >>> Waves(percent=[10, 50, 100]).plan([str(i) for i in range(10)])
        [['0'], ['1', '2', '3', '4'], ['5', '6', '7', '8', '9']]
    """

    size: int | None = None
    percent: list[float] | None = None
    soak_s: float = 5.0
    max_failures: int | float | None = 0

    def __post_init__(self) -> None:
        if (self.size is None) == (self.percent is None):
            raise ConfigError("Waves needs exactly one of size= (devices per wave, e.g. Waves(size=500)) or "
                              "percent= (cumulative, e.g. Waves(percent=[1, 10, 50, 100]))")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ConfigError(f"Waves(size=...) must be a whole number of devices, at least 1, got {self.size!r}")
        if self.percent is not None:
            values = list(self.percent)
            if not values or any(isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100
                                 for p in values) or values != sorted(set(values)):
                raise ConfigError(f"Waves(percent=...) must be increasing percentages in (0, 100], "
                                  f"got {self.percent!r}")
        if self.soak_s < 0:
            raise ConfigError("soak_s must not be negative")

    def plan(self, devices: list[str]) -> list[list[str]]:
        if self.size is not None:
            return [list(devices[start:start + self.size]) for start in range(0, len(devices), self.size)]
        waves, done = [], 0
        for percent in [*(self.percent or []), 100.0]:
            # At least one device per listed step, so a 1 % first wave of 50 devices is still a wave.
            upto = min(len(devices), max(done + 1, math.ceil(percent * len(devices) / 100)))
            if upto > done:
                waves.append(list(devices[done:upto]))
                done = upto
        return waves

    def steps(self, devices: list[str]) -> Steps:
        return _waves(self.plan(devices))


@dataclass(frozen=True)
class Shadow:
    """Run the candidate next to the active model on the same inputs for ``duration`` seconds, then decide.

    Each device loads the candidate beside its active model (which keeps answering unchanged),
    runs it on every input the active model serves, and reports agreement and both models'
    latency. With ``promote=True`` the candidate is installed where every device agreed at
    least ``min_agreement`` (on at least one input); otherwise it is discarded.

    Example:
        >>> Shadow(duration=10).duration
        10
    """

    duration: float = 10.0
    promote: bool = False
    min_agreement: float = 0.99
    soak_s: float = 0.0
    max_failures: int | float | None = None

    def __post_init__(self) -> None:
        from workbench.protocol.states import MAX_SHADOW_S

        if isinstance(self.duration, bool) or not isinstance(self.duration, (int, float)) or \
                not 0 < self.duration <= MAX_SHADOW_S:
            raise ConfigError(f"Shadow(duration=...) must be seconds above 0 and at most {MAX_SHADOW_S:g} (devices "
                              f"refuse longer shadow runs), got {self.duration!r}")

    def plan(self, devices: list[str]) -> list[list[str]]:
        return [list(devices)] if devices else []

    def steps(self, devices: list[str]) -> Steps:
        if not devices:
            return None
        result = yield Wave(list(devices), action="shadow", duration_s=self.duration)
        verdict = self.judge(result)
        if verdict["problems"]:
            reason = (f"shadow: {'; '.join(verdict['problems'])}; the candidate was discarded, the active model "
                      "kept serving")
            return Outcome("aborted", reason, verdict["shadow"] | {"decision": "discarded"})
        if not self.promote:
            return Outcome("succeeded", "shadow only (promote=False): the candidate agreed; deploy it again without "
                           "Shadow, or with Shadow(promote=True), to promote it",
                           verdict["shadow"] | {"decision": "discarded"})
        # The promote wave is an ordinary install: the failure limit and the gates' soak hold for it too.
        yield Wave(list(devices), shadow=verdict["shadow"] | {"decision": "promoted"})
        return None

    def judge(self, result: WaveResult) -> dict[str, Any]:
        """The shadow wave's verdict: each device's stats and what stops a promotion.

        Example:
            >>> shadowed = {"state": "shadowed", "reason": None, "report": {"shadow": {"samples": 9, "agreement": 1.0}}}
            >>> Shadow(promote=True).judge(WaveResult({"a": shadowed}))["problems"]
            []
        """
        stats: dict[str, dict[str, Any]] = {}
        problems = []
        for device_id, entry in result.devices.items():
            report = entry.get("report")
            if report is None or entry.get("state") != "shadowed":
                problems.append(f"{device_id}: {entry.get('state')} ({entry.get('reason') or 'no shadow result'})")
                continue
            device = stats[device_id] = dict(report.get("shadow") or {})
            if not device.get("samples"):
                problems.append(f"{device_id}: no inputs reached the active model during the shadow; send it "
                                "traffic (e.g. a telemetry source) or shadow longer")
            elif float(device.get("agreement") or 0.0) < self.min_agreement:
                problems.append(f"{device_id}: agreement {device['agreement']:.4g} below {self.min_agreement:g}")
        summary = {"duration_s": self.duration, "min_agreement": self.min_agreement, "promote": self.promote,
                   "devices": stats}
        return {"shadow": summary, "problems": problems}


def failure_limit(strategy: Strategy, total: int, override: int | float | None = None) -> int | None:
    """How many failed devices abort the rollout (None: never); a float below 1 is a fraction of ``total``.

    Example:
        >>> failure_limit(Canary(), 10), failure_limit(AllAtOnce(), 10, 0.2)
        (0, 2)
    """
    value = override if override is not None else strategy.max_failures
    if value is None:
        return None
    if isinstance(value, float) and value < 1:
        return math.floor(value * total)
    return int(value)
