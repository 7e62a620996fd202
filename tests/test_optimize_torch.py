"""Export from torch, pruning before export, and removal of pruned channels: checked against torch's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from workbench.errors import ConfigError
from workbench.optimize import ModelSpec, export_onnx, optimize, prune_module
from workbench.optimize._prune import remove_zero_channels


class TinyCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def net() -> TinyCnn:
    torch.manual_seed(0)
    model = TinyCnn()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding and pruning are really exercised
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_export_has_dynamic_batch_and_matches_torch_when_batch_differs(net: TinyCnn, tmp_path: Path) -> None:
    path = export_onnx(net, torch.randn(1, 1, 8, 8), tmp_path / "cnn.onnx")
    spec = ModelSpec.from_path(path)
    assert spec.inputs[0].dynamic_batch and spec.inputs[0].shape[1:] == (1, 8, 8)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(_run(path, x.numpy()), expected, rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.glob("*.data"))  # one self-contained file


def test_export_raises_when_model_is_not_a_module(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"torch\.nn\.Module"):
        export_onnx(object(), torch.randn(1, 4), tmp_path / "x.onnx")


def test_structured_pruning_zeroes_channels_with_bias_and_batchnorm(net: TinyCnn) -> None:
    pruned = prune_module(net, "structured", 0.5)
    zero = pruned.conv1.weight.detach().flatten(1).abs().sum(1) == 0
    assert int(zero.sum()) == 4
    assert torch.all(pruned.conv1.bias[zero] == 0) and torch.all(pruned.bn1.weight[zero] == 0)
    assert torch.all(pruned.bn1.bias[zero] == 0)
    assert int((net.conv1.weight.detach().flatten(1).abs().sum(1) == 0).sum()) == 0  # the original is untouched


def test_remove_zero_channels_keeps_outputs_when_pruned_channels_go(net: TinyCnn, tmp_path: Path) -> None:
    from workbench.optimize._passes import PassContext, apply_recipe

    pruned = prune_module(net, "structured", 0.5)
    exported = export_onnx(pruned, torch.randn(1, 1, 8, 8), tmp_path / "pruned.onnx")
    folded = tmp_path / "folded.onnx"
    apply_recipe(exported, [{"pass": "graph-opt", "level": "basic"}], folded, PassContext(tmp_path))
    slim = tmp_path / "slim.onnx"
    removed = remove_zero_channels(folded, slim)
    assert removed == 4
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(slim, x), _run(exported, x), rtol=1e-4, atol=1e-5)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(slim)).graph.initializer}
    assert sorted(w.shape[0] for w in weights.values() if w.ndim == 4) == [4, 8]


def test_prune_raises_when_amount_is_not_a_fraction(net: TinyCnn) -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        prune_module(net, "structured", 1.5)


def test_optimize_builds_pruned_variants_when_given_torch_module(net: TinyCnn) -> None:
    x = np.random.default_rng(1).standard_normal((32, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()
    result = optimize(net, "x86-server", example_input=torch.from_numpy(x[:1]), eval_data=(x, y),
                      calibration_data=x, prune=[("structured", 0.5)], passes=["pruned-structured-50"],
                      finetune_data=(x, y), finetune_steps=2, use_cache=False, warmup=1, iterations=10, rounds=2)
    variants = set(result.candidates["variant"])
    assert {"fp32", "pruned-structured-50", "pruned-structured-50+int8-static-minmax"} <= variants
    assert result.row("pruned-structured-50")["recipe"]["prune"] == {"kind": "structured", "amount": 0.5}
    assert any("removed" in note for note in result.notes)


class SeparableNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw1 = torch.nn.Conv2d(3, 8, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.pw2 = torch.nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.pw1(x)))
        x = torch.clamp(self.bn2(self.dw(x)), 0.0, 6.0)  # ReLU6, as in MobileNets
        return self.pw2(x).mean(dim=(2, 3))


def test_remove_zero_channels_folds_depthwise_bias_when_pruned_channel_feeds_depthwise(tmp_path: Path) -> None:
    from workbench.optimize._passes import PassContext, apply_recipe

    torch.manual_seed(0)
    net = SeparableNet().eval()
    with torch.no_grad():  # depthwise BatchNorm with a real shift, so the folded constant is not zero
        net.bn2.bias.uniform_(0.5, 1.0)
        net.bn2.running_mean.uniform_(-0.2, 0.2)
    pruned = prune_module(net, "structured", 0.5)
    exported = export_onnx(pruned, torch.randn(1, 3, 8, 8), tmp_path / "sep.onnx")
    folded = tmp_path / "folded.onnx"
    apply_recipe(exported, [{"pass": "graph-opt", "level": "basic"}], folded, PassContext(tmp_path))
    slim = tmp_path / "slim.onnx"
    assert remove_zero_channels(folded, slim) == 4
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(slim, x), _run(exported, x), rtol=1e-4, atol=1e-5)
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(slim)).graph.initializer]
    assert sorted(w.shape for w in weights if w.ndim == 4) == [(4, 1, 3, 3), (4, 3, 1, 1), (6, 4, 1, 1)]


def test_optimize_skips_structured_pruning_with_reason_when_model_has_no_conv() -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    result = optimize(mlp, "x86-server", example_input=torch.randn(1, 8), metric="agreement", passes=[],
                      use_cache=False, warmup=1, iterations=10, rounds=2)
    assert "no (non-grouped) Conv2d" in result.skipped["pruned-structured-30"]
    assert not any(v.startswith("pruned") for v in result.candidates["variant"])
