"""The benchmark zoo's models: residual branches scaled down after BatchNorm calibration."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

# Loaded from its file: benchmarks/ is not a package, and putting it on sys.path would leak into other tests.
_ZOO = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo.py"
_spec = importlib.util.spec_from_file_location("wb_bench_zoo", _ZOO)
assert _spec is not None and _spec.loader is not None
zoo = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = zoo  # dataclasses look their module up by name
_spec.loader.exec_module(zoo)


def test_settle_residuals_scales_only_the_residual_branches_last_norm_when_applied() -> None:
    torch.manual_seed(0)
    model = zoo.MobileNetV2()
    blocks = [m for m in model.modules() if isinstance(m, zoo.InvertedResidual)]
    before = [m.body[-1].weight.detach().clone() for m in blocks]
    assert zoo.settle_residuals(model, 0.25) == sum(m.residual for m in blocks) == 10
    for block, weight in zip(blocks, before, strict=True):
        expected = weight * 0.25 if block.residual else weight
        assert torch.allclose(block.body[-1].weight, expected), block


def test_settle_residuals_counts_every_resnet_and_csp_branch_when_applied() -> None:
    assert zoo.settle_residuals(zoo.ResNet18()) == 8
    assert zoo.settle_residuals(zoo.YoloSmall()) == 6
