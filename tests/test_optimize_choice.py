"""The choice rule: Pareto front, constraints with by-how-much, never slower than FP32 beyond the noise."""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.optimize import Constraints, choose, pareto_front
from workbench.optimize._choice import noise_margin
from workbench.optimize._preflight import int8_outlook


def row(variant: str, quality: float, p50: float, size: float, rounds: list[float] | None = None) -> dict[str, Any]:
    return {"variant": variant, "quality": quality, "quality_name": "accuracy", "p50_ms": p50, "size_mb": size,
            "spread": 0.0, "round_p50_ms": rounds}


def test_choose_picks_fastest_within_constraints_when_several_are_faster() -> None:
    rows = [row("fp32", 0.98, 1.0, 1.0), row("int8-a", 0.975, 0.4, 0.3), row("int8-b", 0.90, 0.3, 0.3)]
    choice = choose(rows, Constraints(max_accuracy_drop=0.01))
    assert choice.variant == "int8-a"
    assert any("drop" in f for f in choice.failures["int8-b"])


def test_choose_keeps_fp32_when_no_variant_beats_the_noise() -> None:
    rows = [row("fp32", 0.98, 1.0, 1.0, [1.0, 1.3, 0.9, 1.2, 0.8]), row("int8", 0.98, 0.9, 0.3, [0.9] * 5)]
    choice = choose(rows, Constraints())
    assert choice.variant == "fp32"
    assert "noise" in choice.reason and "int8" in choice.reason


def test_choose_keeps_fp32_when_variant_is_slower() -> None:
    rows = [row("fp32", 0.98, 1.0, 1.0), row("int8-dynamic", 0.98, 4.5, 0.3)]
    assert choose(rows, Constraints()).variant == "fp32"


def test_choose_reports_which_constraint_failed_and_by_how_much_when_nothing_fits() -> None:
    rows = [row("fp32", 0.98, 2.0, 1.0), row("int8", 0.90, 1.0, 0.3)]
    choice = choose(rows, Constraints(max_accuracy_drop=0.01, latency_budget_ms=0.5))
    assert choice.variant is None
    assert "budget 0.5 ms" in choice.reason and "over by 1.500 ms" in choice.reason
    assert "over by 7.00" in choice.reason  # 8 points dropped, 1 allowed


def test_choose_prefers_quality_when_fast_variants_tie_within_noise() -> None:
    rows = [row("fp32", 0.98, 1.0, 1.0), row("a", 0.97, 0.50, 0.3), row("b", 0.98, 0.51, 0.3)]
    assert choose(rows, Constraints(max_accuracy_drop=0.02)).variant == "b"


def test_pareto_front_excludes_dominated_variants_when_one_is_better_everywhere() -> None:
    rows = [row("fp32", 0.98, 1.0, 1.0), row("int8", 0.98, 0.5, 0.3), row("slow", 0.97, 2.0, 2.0)]
    assert pareto_front(rows) == {"int8"}


def test_noise_margin_grows_with_round_to_round_scatter_when_rounds_are_paired() -> None:
    steady = noise_margin(row("x", 1, 1, 1, [1.0] * 5), row("fp32", 1, 1, 1, [2.0] * 5))
    noisy = noise_margin(row("x", 1, 1, 1, [1.0] * 5), row("fp32", 1, 1, 1, [2.0, 1.4, 2.6, 1.2, 2.0]))
    assert steady == 0.05  # the floor
    assert noisy > 0.3


def test_choose_ignores_one_bursty_round_when_rounds_are_paired() -> None:
    # Round 3 hit a burst of other load while FP32 ran: the paired median still says 2x.
    base = row("fp32", 0.98, 2.0, 1.0, [2.0, 2.0, 9.0, 2.0, 2.0])
    fast = row("int8", 0.98, 1.0, 0.3, [1.0, 1.0, 1.0, 1.0, 1.0])
    choice = choose([base, fast], Constraints())
    assert choice.variant == "int8" and "2.00x" in choice.reason


def test_int8_outlook_is_positive_when_cpu_has_dot_product() -> None:
    assert int8_outlook(["neon", "asimddp"], "aarch64")[0] is True
    assert int8_outlook(["avx2", "avx512_vnni"], "x86_64")[0] is True


def test_int8_outlook_is_uncertain_or_negative_when_cpu_lacks_dot_product() -> None:
    likely, why = int8_outlook(["avx2", "fma"], "x86_64")
    assert likely is None and "VNNI" in why
    assert int8_outlook(["neon", "asimd"], "aarch64")[0] is False


def test_choose_keeps_fp32_when_paired_rounds_say_faster_but_p50_is_slower() -> None:
    # Three rounds where one burst of load hit FP32 twice: the paired median says 1.5x, the p50s disagree.
    rows = [row("fp32", 0.98, 3.18, 1.0, [3.0, 6.0, 6.0]), row("int8-dynamic", 0.98, 3.33, 0.6, [4.0, 4.0, 4.0])]
    choice = choose(rows, Constraints())
    assert choice.variant == "fp32"
    assert any("p50 3.330 ms is not below FP32's 3.180 ms" in f for f in choice.failures["int8-dynamic"])


def test_choose_rejects_variant_when_its_quality_is_nan() -> None:
    rows = [row("fp32", 1.0, 2.0, 1.0), row("int8-broken", float("nan"), 1.0, 0.3)]
    choice = choose(rows, Constraints())
    assert choice.variant == "fp32"
    assert any("could not be measured" in why for why in choice.failures["int8-broken"])


def test_cosine_agreement_is_zero_when_a_variant_outputs_all_zeros() -> None:
    from workbench.optimize._metrics import agreement

    reference = [np.array([[[0.1, 0.9], [0.0, 0.7]]], np.float32)]
    assert agreement(reference, [np.zeros_like(reference[0])])["cosine"] == 0.0
    assert agreement([np.zeros((1, 2, 2))], [np.zeros((1, 2, 2))])["cosine"] == 1.0


def test_choose_picks_the_s8s8_variant_when_it_beats_fp32_and_the_u8_variant_by_more_than_the_noise() -> None:
    rows = [row("fp32", 1.0, 4.0, 14.0, [4.0] * 5), row("int8-static-minmax", 1.0, 3.9, 3.6, [3.9] * 5),
            row("int8-static-s8s8", 1.0, 2.0, 3.6, [2.0] * 5)]
    choice = choose(rows, Constraints())
    assert choice.variant == "int8-static-s8s8"
    assert any("noise" in f for f in choice.failures["int8-static-minmax"])
