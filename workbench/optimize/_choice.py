"""The choice: Pareto front, constraints, and "never slower than FP32" decided with a noise margin."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median
from typing import Any

# The smallest speed-up that counts as real even when the measured spread is lower: timings on a
# shared machine drift by a few percent between runs.
MIN_NOISE_MARGIN = 0.05
BASELINE = "fp32"


@dataclass
class Constraints:
    """What the user allows: accuracy drop (absolute, 0.01 = 1 point), latency and size budgets.

    Example:
        >>> Constraints(max_accuracy_drop=0.01).max_accuracy_drop
        0.01
    """

    max_accuracy_drop: float = 0.01
    latency_budget_ms: float | None = None
    max_size_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"max_accuracy_drop": self.max_accuracy_drop, "latency_budget_ms": self.latency_budget_ms,
                "max_size_mb": self.max_size_mb}


@dataclass
class Choice:
    """The chosen variant (None when nothing meets the constraints) and why.

    Example:
        >>> Choice("int8-static-minmax", "fastest within 1 point of accuracy").variant
        'int8-static-minmax'
    """

    variant: str | None
    reason: str
    failures: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.variant or 'nothing'}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "reason": self.reason, "failures": self.failures}


def pareto_front(rows: list[dict[str, Any]]) -> set[str]:
    """Variants no other variant beats on all of quality (higher), p50 latency and size (lower).

    Example:
        >>> rows = [{"variant": "a", "quality": 0.9, "p50_ms": 1.0, "size_mb": 1.0},
        ...         {"variant": "b", "quality": 0.8, "p50_ms": 2.0, "size_mb": 2.0}]
        >>> sorted(pareto_front(rows))
        ['a']
    """
    front = set()
    for row in rows:
        dominated = False
        for other in rows:
            if other is row:
                continue
            no_worse = (other["quality"] >= row["quality"] and other["p50_ms"] <= row["p50_ms"]
                        and other["size_mb"] <= row["size_mb"])
            better = (other["quality"] > row["quality"] or other["p50_ms"] < row["p50_ms"]
                      or other["size_mb"] < row["size_mb"])
            if no_worse and better:
                dominated = True
                break
        if not dominated:
            front.add(row["variant"])
    return front


def _ratios(row: dict[str, Any], baseline: dict[str, Any]) -> list[float] | None:
    mine, base = row.get("round_p50_ms"), baseline.get("round_p50_ms")
    if mine and base and len(mine) == len(base) and len(mine) >= 3:
        return [b / max(m, 1e-12) for m, b in zip(mine, base, strict=True)]
    return None


def speedup(row: dict[str, Any], baseline: dict[str, Any]) -> float:
    """How much faster than FP32 a variant is: the median of its round-by-round speed-ups where the
    rounds were interleaved (load that comes and goes hits both alike), else the ratio of p50s.

    Example:
        >>> speedup({"round_p50_ms": [1.0, 1.0, 2.0]}, {"round_p50_ms": [2.0, 2.2, 2.0]})
        2.0
    """
    ratios = _ratios(row, baseline)
    if ratios:
        return float(median(ratios))
    return float(baseline["p50_ms"]) / max(float(row["p50_ms"]), 1e-12)


def noise_margin(row: dict[str, Any], baseline: dict[str, Any]) -> float:
    """How much faster than FP32 a variant must be to count: at least 5%, more where timing was noisy.

    With paired rounds, the noise is a 95% half-width of the median speed-up, from the rounds'
    median absolute deviation (robust to a round hit by a burst of other load); otherwise the
    larger of the two models' own spreads.

    Example:
        >>> base = {"round_p50_ms": [2.0, 2.0, 2.0, 2.0, 2.0]}
        >>> round(noise_margin({"round_p50_ms": [2.0, 2.0 / 1.2, 2.0 / 1.4, 2.0 / 1.1, 2.0 / 1.3]}, base), 3)
        0.133
    """
    ratios = _ratios(row, baseline)
    if ratios:
        center = median(ratios)
        mad = median([abs(r - center) for r in ratios])
        return max(MIN_NOISE_MARGIN, 1.4826 * mad * 2.0 / math.sqrt(len(ratios)))
    return max(MIN_NOISE_MARGIN, float(row.get("spread") or 0.0), float(baseline.get("spread") or 0.0))


def constraint_failures(row: dict[str, Any], baseline: dict[str, Any], constraints: Constraints) -> list[str]:
    """Which constraints a variant breaks, each with by how much."""
    failures = []
    drop = baseline["quality"] - row["quality"]
    if not math.isfinite(drop):  # NaN compares false with everything: it would pass every limit
        failures.append(f"{row['quality_name']} could not be measured ({row['quality']} against FP32's "
                        f"{baseline['quality']}): its outputs hold NaN or infinity")
    elif drop > constraints.max_accuracy_drop + 1e-12:
        failures.append(f"{row['quality_name']} drop {drop * 100:.2f} points > allowed "
                        f"{constraints.max_accuracy_drop * 100:.2f} (over by "
                        f"{(drop - constraints.max_accuracy_drop) * 100:.2f})")
    if constraints.latency_budget_ms is not None and row["p50_ms"] > constraints.latency_budget_ms:
        failures.append(f"p50 latency {row['p50_ms']:.3f} ms > budget {constraints.latency_budget_ms:g} ms "
                        f"(over by {row['p50_ms'] - constraints.latency_budget_ms:.3f} ms)")
    if constraints.max_size_mb is not None and row["size_mb"] > constraints.max_size_mb:
        failures.append(f"size {row['size_mb']:.3f} MB > limit {constraints.max_size_mb:g} MB "
                        f"(over by {row['size_mb'] - constraints.max_size_mb:.3f} MB)")
    return failures


def choose(rows: list[dict[str, Any]], constraints: Constraints) -> Choice:
    """The fastest variant that meets the constraints and beats FP32 by more than the noise; else FP32.

    Rows need ``variant``, ``quality``, ``quality_name``, ``p50_ms``, ``size_mb`` and ``spread``;
    the FP32 row is named ``fp32``.

    Example:
        >>> base = {"variant": "fp32", "quality": 0.98, "quality_name": "accuracy", "p50_ms": 1.0,
        ...         "size_mb": 1.0, "spread": 0.02}
        >>> fast = {**base, "variant": "int8", "p50_ms": 0.4, "quality": 0.975, "size_mb": 0.3}
        >>> choose([base, fast], Constraints(max_accuracy_drop=0.01)).variant
        'int8'
    """
    by_name = {row["variant"]: row for row in rows}
    if BASELINE not in by_name:
        raise ValueError("the candidates must include the FP32 baseline row 'fp32'")
    baseline = by_name[BASELINE]
    failures = {row["variant"]: constraint_failures(row, baseline, constraints) for row in rows}
    eligible = []
    slower: list[str] = []
    for row in rows:
        if row["variant"] == BASELINE or failures[row["variant"]]:
            continue
        gain = speedup(row, baseline)
        margin = noise_margin(row, baseline)
        if gain > 1.0 + margin and row["p50_ms"] >= baseline["p50_ms"]:
            # The paired rounds say faster, the overall p50s say not: a burst of load decided it, not the model.
            slower.append(f"{row['variant']} {gain:.2f}x by rounds but p50 {row['p50_ms']:.3f} >= "
                          f"{baseline['p50_ms']:.3f} ms")
            failures[row["variant"]].append(
                f"not faster than FP32 beyond the noise: {gain:.2f}x by paired rounds, but its p50 "
                f"{row['p50_ms']:.3f} ms is not below FP32's {baseline['p50_ms']:.3f} ms")
        elif gain > 1.0 + margin:
            eligible.append((row, gain, margin))
        else:
            slower.append(f"{row['variant']} {gain:.2f}x (needs > {1 + margin:.2f}x)")
            failures[row["variant"]].append(
                f"not faster than FP32 beyond the noise: {gain:.2f}x, needs more than {1 + margin:.2f}x")
    if eligible:
        # Among the fast ones, latencies within the noise of the fastest tie: prefer quality, then size.
        fastest = min(r["p50_ms"] for r, _, _ in eligible)
        tied = [e for e in eligible if e[0]["p50_ms"] <= fastest * (1.0 + e[2])]
        row, gain, margin = max(tied, key=lambda e: (e[0]["quality"], -e[0]["size_mb"], -e[0]["p50_ms"]))
        drop = (baseline["quality"] - row["quality"]) * 100
        return Choice(row["variant"],
                      f"{gain:.2f}x faster than FP32 at p50 ({row['p50_ms']:.3f} vs {baseline['p50_ms']:.3f} ms, "
                      f"beyond the {margin * 100:.0f}% noise margin), {row['quality_name']} drop {drop:.2f} points, "
                      f"{row['size_mb']:.3f} MB; meets every constraint", failures)
    if failures[BASELINE]:
        summary = "; ".join(f"{name}: {', '.join(items)}" for name, items in failures.items() if items)
        return Choice(None, f"no variant meets the constraints: {summary}", failures)
    why = ("no variant is faster than FP32 by more than the measured noise"
           + (f" ({'; '.join(slower)})" if slower else "")
           + "; variants that broke a constraint: "
           + (", ".join(n for n, f in failures.items() if f and n != BASELINE and not any("noise" in x for x in f))
              or "none"))
    return Choice(BASELINE, f"FP32 kept: {why}", failures)
