"""Pruning in torch before export (magnitude and structured), and physically removing pruned channels in ONNX.

Magnitude pruning zeroes single weights: dense CPU kernels do the same work, so it only pays
where weights are compressed or sparse kernels exist. Structured pruning zeroes whole Conv output
channels (and their bias and BatchNorm scale/shift, so the channel's output is exactly zero); the
``remove-zero-channels`` pass then deletes those channels and the matching inputs of the next
convolution, which does make the model smaller and faster.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import ConfigError
from workbench.optimize._data import Samples
from workbench.optimize._passes import Pass, PassContext, register_pass

# Ops that map an all-zero channel to an all-zero channel, channel by channel.
_ZERO_PRESERVING = {"Relu", "MaxPool", "AveragePool", "LeakyRelu", "Identity", "Dropout"}


def prune_module(module: Any, kind: str, amount: float, *, finetune: Samples | None = None,
                 finetune_steps: int = 0, lr: float = 1e-3, seed: int = 0) -> Any:
    """A pruned copy of ``module``: ``kind`` is "magnitude" or "structured", ``amount`` the fraction removed.

    With ``finetune`` (labelled samples) and ``finetune_steps`` > 0 the pruned model is trained
    briefly with the pruning masks held, to win back accuracy.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
        >>> pruned = prune_module(net, "structured", 0.5)
        >>> int((pruned[0].weight.flatten(1).abs().sum(1) == 0).sum())
        4
    """
    import torch
    from torch.nn.utils import prune

    if kind not in ("magnitude", "structured"):
        raise ConfigError(f"unknown pruning kind {kind!r}; use 'magnitude' or 'structured'")
    if not 0.0 < amount < 1.0:
        raise ConfigError(f"pruning amount must be between 0 and 1 (a fraction), got {amount}")
    torch.manual_seed(seed)
    model = copy.deepcopy(module).train()
    pruned: list[tuple[Any, str]] = []
    modules = list(model.modules())
    for index, layer in enumerate(modules):
        if kind == "magnitude" and isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            prune.l1_unstructured(layer, "weight", amount=amount)
            pruned.append((layer, "weight"))
        elif kind == "structured" and isinstance(layer, torch.nn.Conv2d) and layer.groups == 1:
            channels = layer.out_channels
            drop = int(channels * amount)
            if drop < 1 or drop >= channels:
                continue
            norms = layer.weight.detach().flatten(1).norm(dim=1)
            mask = torch.ones(channels)
            mask[torch.argsort(norms)[:drop]] = 0.0
            prune.custom_from_mask(layer, "weight", mask.view(-1, 1, 1, 1).expand_as(layer.weight).clone())
            pruned.append((layer, "weight"))
            if layer.bias is not None:
                prune.custom_from_mask(layer, "bias", mask.clone())
                pruned.append((layer, "bias"))
            follower = modules[index + 1] if index + 1 < len(modules) else None
            if isinstance(follower, torch.nn.BatchNorm2d) and follower.num_features == channels:
                for name in ("weight", "bias"):
                    prune.custom_from_mask(follower, name, mask.clone())
                    pruned.append((follower, name))
    if finetune is not None and finetune_steps > 0:
        if finetune.labels is None:
            raise ConfigError("fine-tuning after pruning needs labelled data (inputs, labels)")
        _finetune(model, finetune, finetune_steps, lr)
    for layer, name in pruned:
        prune.remove(layer, name)
    return model.eval()


def _finetune(model: Any, data: Samples, steps: int, lr: float) -> None:
    import torch

    inputs = torch.from_numpy(np.ascontiguousarray(next(iter(data.inputs.values()))))
    labels = torch.from_numpy(np.asarray(data.labels)).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(0, inputs.shape[0], (min(64, inputs.shape[0]),), generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs[index]), labels[index])
        loss.backward()
        optimizer.step()
    model.eval()


def remove_zero_channels(src: Path, dst: Path) -> int:
    """Delete Conv output channels whose weights and bias are all zero, and the next Convs' matching inputs.

    Only where the channel provably stays zero until it reaches the next convolution (through
    ReLU, pooling and similar ops) and nothing else reads it. Returns how many channels went.

    Example:
        >>> remove_zero_channels(Path("pruned.onnx"), Path("slim.onnx"))   # doctest: +SKIP
        24
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed = 0
    arrays: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    def group(node: Any) -> int:
        return next((int(a.i) for a in node.attribute if a.name == "group"), 1)

    for node in graph.node:
        if node.op_type != "Conv" or group(node) != 1 or node.input[1] not in inits:
            continue
        weight = array(node.input[1])
        bias = array(node.input[2]) if len(node.input) > 2 and node.input[2] in inits else None
        zero = np.all(weight.reshape(weight.shape[0], -1) == 0, axis=1)
        if bias is not None:
            zero &= bias == 0
        if not zero.any() or zero.all():
            continue
        tensor = node.output[0]
        while tensor not in outputs and len(consumers.get(tensor, [])) == 1 and \
                consumers[tensor][0].op_type in _ZERO_PRESERVING:
            tensor = consumers[tensor][0].output[0]
        nexts = consumers.get(tensor, [])
        if tensor in outputs or not nexts or any(
                n.op_type != "Conv" or group(n) != 1 or n.input[0] != tensor or n.input[1] not in inits
                for n in nexts):
            continue
        if any(len(consumers.get(n.input[1], [])) > 1 for n in [node, *nexts]):
            continue  # a shared weight: slicing it would change another node
        keep = ~zero
        arrays[node.input[1]] = weight[keep]
        if bias is not None:
            arrays[node.input[2]] = bias[keep]
        for follower in nexts:
            arrays[follower.input[1]] = array(follower.input[1])[:, keep]
        removed += int(zero.sum())
    for name, value in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    del graph.value_info[:]  # channel counts changed: let shape inference redo them
    onnx.save(model, str(dst))
    return removed


def _remove_helps(ctx: PassContext) -> tuple[bool, str]:
    return True, "structurally pruned channels removed: fewer multiply-adds on every CPU"


def _remove_apply(src: Path, dst: Path, ctx: PassContext, options: dict[str, Any]) -> None:
    count = remove_zero_channels(src, dst)
    ctx.notes.append(f"remove-zero-channels removed {count} convolution channels")


register_pass(Pass("remove-zero-channels", "graph", "delete structurally pruned Conv channels",
                   _remove_helps, _remove_apply))
