"""Rollout strategies: which devices get the package in which wave, and what aborts the rollout."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from workbench.errors import ConfigError


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

    def plan(self, devices: list[str]) -> list[list[str]]:
        return [list(devices)] if devices else []


Strategy = AllAtOnce | Canary | Shadow


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
