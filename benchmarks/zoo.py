"""The benchmark's model zoo: realistic sizes defined as torch code, random weights with calibrated BatchNorm.

No downloads: each model is built here, its BatchNorm statistics are set by running a few batches of
random inputs in training mode (so activations have sane ranges, as in a trained model), its residual
branches are scaled down (``settle_residuals``: a random network is otherwise chaotic, which no trained
network is), and it is exported to ONNX with a dynamic batch axis.

* ``mobilenet_v2``: MobileNetV2 (width 1.0) at 224x224, 1000 classes;
* ``resnet18``: ResNet-18 at 224x224, 1000 classes;
* ``yolo_small``: a small YOLO-style detector (CSP-ish backbone, FPN neck, 3 heads) at 320x320;
* ``bert_small``: a 4-layer BERT-style encoder (d=256, 4 heads) over 128 int64 token ids;
* ``audio_gru``: a 1D-conv front end and a GRU over 0.1 s of 16 kHz audio, with its state in and out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.optimize import export_onnx


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] = nn.ReLU6
             ) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act())


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        config = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                  (6, 320, 1, 1)]
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for expand, cout, repeats, stride in config:
            for index in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.down(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


class CSPBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split = _conv_bn(channels, half, 1, act=nn.SiLU)
        self.keep = _conv_bn(channels, half, 1, act=nn.SiLU)
        self.body = nn.Sequential(_conv_bn(half, half, 3, act=nn.SiLU), _conv_bn(half, half, 3, act=nn.SiLU))
        self.merge = _conv_bn(channels, channels, 1, act=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.split(x)
        return self.merge(torch.cat([a + self.body(a), self.keep(x)], dim=1))


class YoloSmall(nn.Module):
    """Backbone to stride 32, a top-down FPN, and 3 heads of 3 anchors x (5 + 80 classes)."""

    def __init__(self, classes: int = 80) -> None:
        super().__init__()
        self.outputs = 3 * (5 + classes)
        self.stem = _conv_bn(3, 16, 3, 2, act=nn.SiLU)
        self.s4 = nn.Sequential(_conv_bn(16, 32, 3, 2, act=nn.SiLU), CSPBlock(32))
        self.s8 = nn.Sequential(_conv_bn(32, 64, 3, 2, act=nn.SiLU), CSPBlock(64))
        self.s16 = nn.Sequential(_conv_bn(64, 128, 3, 2, act=nn.SiLU), CSPBlock(128))
        self.s32 = nn.Sequential(_conv_bn(128, 256, 3, 2, act=nn.SiLU), CSPBlock(256))
        self.lat32 = _conv_bn(256, 128, 1, act=nn.SiLU)
        self.fuse16 = CSPBlock(256)
        self.lat16 = _conv_bn(256, 64, 1, act=nn.SiLU)
        self.fuse8 = CSPBlock(128)
        self.heads = nn.ModuleList([nn.Conv2d(c, self.outputs, 1) for c in (128, 256, 256)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c8 = self.s8(self.s4(self.stem(x)))
        c16 = self.s16(c8)
        c32 = self.s32(c16)
        p32 = self.lat32(c32)
        p16 = self.fuse16(torch.cat([nn.functional.interpolate(p32, scale_factor=2.0), c16], dim=1))
        q16 = self.lat16(p16)
        p8 = self.fuse8(torch.cat([nn.functional.interpolate(q16, scale_factor=2.0), c8], dim=1))
        batch = x.shape[0]
        parts = [head(p).reshape(batch, self.outputs, -1) for head, p in zip(self.heads, (p8, p16, c32), strict=True)]
        return torch.cat(parts, dim=2).transpose(1, 2)  # [batch, boxes, 3 * 85]


class BertSmall(nn.Module):
    def __init__(self, vocab: int = 30522, d: int = 256, heads: int = 4, layers: int = 4, seq: int = 128,
                 classes: int = 10) -> None:
        super().__init__()
        self.heads = heads
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.ModuleList([nn.Linear(d, 3 * d) for _ in range(layers)])
        self.proj = nn.ModuleList([nn.Linear(d, d) for _ in range(layers)])
        self.ff1 = nn.ModuleList([nn.Linear(d, 4 * d) for _ in range(layers)])
        self.ff2 = nn.ModuleList([nn.Linear(4 * d, d) for _ in range(layers)])
        self.n1 = nn.ModuleList([nn.LayerNorm(d) for _ in range(layers)])
        self.n2 = nn.ModuleList([nn.LayerNorm(d) for _ in range(layers)])
        self.head = nn.Linear(d, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, seq = ids.shape
        h = self.norm(self.tokens(ids) + self.positions[:, :seq])
        for qkv, proj, ff1, ff2, n1, n2 in zip(self.qkv, self.proj, self.ff1, self.ff2, self.n1, self.n2,
                                               strict=True):
            q, k, v = qkv(h).reshape(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            h = n1(h + proj((att @ v).transpose(1, 2).reshape(batch, seq, -1)))
            h = n2(h + ff2(nn.functional.gelu(ff1(h))))
        return self.head(h[:, 0])


class AudioGRU(nn.Module):
    """Audio [batch, 1, 1600] through strided 1D convs, a GRU carrying ``state`` [1, batch, 64], 2 classes."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.front = nn.Sequential(
            nn.Conv1d(1, 32, 8, 4, 2, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 64, 8, 4, 2, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Conv1d(64, 64, 4, 2, 1, bias=False), nn.BatchNorm1d(64), nn.ReLU())
        self.gru = nn.GRU(64, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, audio: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.front(audio).permute(2, 0, 1)  # [time, batch, channels]
        out, new_state = self.gru(features, state)
        return self.head(out[-1]), new_state


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: how to build it, a batch of inputs for it, and the ONNX names of its inputs and outputs."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int, np.random.Generator], tuple[np.ndarray, ...]]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    cnn: bool


def _images(size: int) -> Callable[[int, np.random.Generator], tuple[np.ndarray, ...]]:
    return lambda n, rng: (rng.standard_normal((n, 3, size, size)).astype(np.float32),)


ZOO = {
    "mobilenet_v2": ZooModel("mobilenet_v2", MobileNetV2, _images(224), ("input",), ("logits",), True),
    "resnet18": ZooModel("resnet18", ResNet18, _images(224), ("input",), ("logits",), True),
    "yolo_small": ZooModel("yolo_small", YoloSmall, _images(320), ("images",), ("boxes",), True),
    "bert_small": ZooModel("bert_small", BertSmall, lambda n, rng: (rng.integers(0, 30522, (n, 128)),),
                           ("ids",), ("logits",), False),
    "audio_gru": ZooModel("audio_gru", AudioGRU,
                          lambda n, rng: (rng.standard_normal((n, 1, 1600)).astype(np.float32),
                                          np.zeros((1, n, 64), np.float32)),
                          ("audio", "state"), ("logits", "stateN"), False),
}


def calibrate_batchnorm(model: nn.Module, entry: ZooModel, batches: int = 8, batch: int = 8, seed: int = 0) -> None:
    """Set every BatchNorm's running statistics from random inputs (a cumulative average), then eval()."""
    rng = np.random.default_rng(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches if norms else 0):
            model(*(torch.from_numpy(a) for a in entry.inputs(batch, rng)))
    model.eval()


# The residual branches' last BatchNorm is scaled to this after calibration, as zero-init-residual training
# starts (Goyal et al., 2017). A random network with full-scale BatchNorm in every branch is chaotic: it
# amplifies any perturbation by 2-3 dB per block, so INT8 rounding that a trained network absorbs leaves its
# last features at ~2 dB SQNR and every INT8 tool at ~0.45 top-1 agreement (measured 2026-12-05). Scaled, each
# block is near the identity, as in a trained network, and quantization error grows as it does there.
RESIDUAL_SCALE = 0.2


def settle_residuals(model: nn.Module, scale: float = RESIDUAL_SCALE) -> int:
    """Scale the last BatchNorm of every residual branch by ``scale``; returns how many branches.

    Example:
        >>> settle_residuals(ResNet18())
        8
    """
    norms: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, InvertedResidual) and module.residual:
            norms.append(module.body[-1])
        elif isinstance(module, BasicBlock):
            norms.append(module.bn2)
        elif isinstance(module, CSPBlock):
            norms.append(module.body[-1][1])
    with torch.no_grad():
        for norm in norms:
            assert isinstance(norm, nn.BatchNorm2d)
            norm.weight.mul_(scale)
            norm.bias.mul_(scale)
    return len(norms)


def _export_with_state(model: nn.Module, entry: ZooModel, path: Path) -> Path:
    # export_onnx makes axis 0 of every input the batch; the GRU state's batch axis is axis 1.
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1024)
    example = tuple(torch.from_numpy(a) for a in entry.inputs(2, np.random.default_rng(1)))
    torch.onnx.export(model, example, str(path), dynamo=True, external_data=False, opset_version=18,
                      input_names=list(entry.input_names), output_names=list(entry.output_names),
                      dynamic_shapes=({0: batch}, {1: batch}), verbose=False)
    onnx.checker.check_model(str(path))
    return path


PROTOTYPES = 10  # classes whose head rows are set from prototype inputs (the classifiers' "peaked" head)
_HEADS = {"mobilenet_v2": "classifier", "resnet18": "fc", "bert_small": "head"}


def prototypes(entry: ZooModel, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The classifier's prototype inputs, one per peaked class (the same for the build and the samples)."""
    return entry.inputs(PROTOTYPES, np.random.default_rng(seed + 100))


def samples(entry: ZooModel, count: int, rng: np.random.Generator, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Inputs one at a time. For the classifiers, each is a prototype disturbed by noise (images: 0.9 x prototype
    + 0.3 x noise; token ids: 15% replaced), so FP32's top-1 is a clear choice, as on real data, and top-1
    agreement measures the quantization error, not the coin flips of a random head's near-ties."""
    if entry.name not in _HEADS:
        return [dict(zip(entry.input_names, entry.inputs(1, rng), strict=True)) for _ in range(count)]
    base = prototypes(entry, seed)[0]
    items = []
    for _ in range(count):
        pick = base[int(rng.integers(0, PROTOTYPES))][None]
        if pick.dtype.kind == "f":
            value = 0.9 * pick + 0.3 * rng.standard_normal(pick.shape).astype(np.float32)
        else:
            value = pick.copy()
            mask = rng.random(pick.shape) < 0.15
            value[mask] = rng.integers(0, 30522, int(mask.sum()))
        items.append({entry.input_names[0]: value.astype(pick.dtype)})
    return items


def peak_head(model: nn.Module, entry: ZooModel, seed: int = 0) -> None:
    """Set the classifier's first rows to the centred, normalised features of the prototype inputs (scaled to
    logits of about +-8) and the rest near zero: a random-but-peaked head, as a trained one is."""
    head = getattr(model, _HEADS[entry.name])
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    with torch.no_grad():
        model(*(torch.from_numpy(a) for a in prototypes(entry, seed)))
    handle.remove()
    features = captured[0]
    centre = features.mean(0)
    rows = features - centre
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-6)
    scale = 8.0 / (rows * (features - centre)).sum(1).abs().mean().clamp_min(1e-6)
    with torch.no_grad():
        head.weight.mul_(0.01)
        head.bias.zero_()
        head.weight[:PROTOTYPES] = rows * scale
        head.bias[:PROTOTYPES] = -(rows * scale) @ centre


def build_onnx(entry: ZooModel, path: Path, seed: int = 0) -> Path:
    """Build, calibrate and export one zoo model to ``path``.

    Example:
        >>> build_onnx(ZOO["audio_gru"], Path("/tmp/audio_gru.onnx"))   # doctest: +SKIP
    """
    torch.manual_seed(seed)
    model = entry.build()
    calibrate_batchnorm(model, entry, seed=seed)
    settle_residuals(model)
    if entry.name in _HEADS:
        peak_head(model, entry, seed)
    example = tuple(torch.from_numpy(a) for a in entry.inputs(1, np.random.default_rng(seed + 1)))
    if entry.name == "audio_gru":
        return _export_with_state(model, entry, path)
    return export_onnx(model, example, path, input_names=list(entry.input_names),
                       output_names=list(entry.output_names), rtol=1e-2, atol=1e-3)
