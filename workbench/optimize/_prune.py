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
# Ops that map a constant channel to a constant channel (pooling pads with -inf, so MaxPool qualifies).
_CONSTANT_PRESERVING = {"Relu", "Clip", "LeakyRelu", "Identity", "Dropout", "MaxPool"}


def _is_depthwise(node: Any, channels: int, inits: dict[str, Any], group: Any) -> bool:
    if node.op_type != "Conv" or node.input[1] not in inits or group(node) != channels:
        return False
    return tuple(inits[node.input[1]].dims[:2]) == (channels, 1)


def _padded(node: Any) -> bool:
    for attribute in node.attribute:
        if attribute.name == "pads" and any(attribute.ints):
            return True
        if attribute.name == "auto_pad" and attribute.s not in (b"", b"NOTSET", b"VALID"):
            return True
    return False


def _through(ops: list[Any], values: np.ndarray, inits: dict[str, Any], numpy_helper: Any) -> np.ndarray:
    """The constant that comes out of ``ops`` for constant channels of ``values``."""
    for op in ops:
        if op.op_type == "Relu":
            values = np.maximum(values, 0.0)
        elif op.op_type == "LeakyRelu":
            alpha = next((a.f for a in op.attribute if a.name == "alpha"), 0.01)
            values = np.where(values >= 0, values, values * alpha)
        elif op.op_type == "Clip":
            low = next((a.f for a in op.attribute if a.name == "min"), -np.inf)
            high = next((a.f for a in op.attribute if a.name == "max"), np.inf)
            if len(op.input) > 1 and op.input[1] in inits:
                low = float(numpy_helper.to_array(inits[op.input[1]]))
            if len(op.input) > 2 and op.input[2] in inits:
                high = float(numpy_helper.to_array(inits[op.input[2]]))
            values = np.clip(values, low, high)
    return values


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


def unprunable(module: Any, kind: str) -> str | None:
    """Why ``kind`` pruning cannot change ``module`` (None when it can).

    Example:
        >>> import torch
        >>> unprunable(torch.nn.Linear(4, 2), "structured")
        'structured pruning removes Conv2d channels and the model has no (non-grouped) Conv2d'
    """
    import torch

    if kind == "structured" and not any(isinstance(m, torch.nn.Conv2d) and m.groups == 1 for m in module.modules()):
        return "structured pruning removes Conv2d channels and the model has no (non-grouped) Conv2d"
    if kind == "magnitude" and not any(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in module.modules()):
        return "magnitude pruning applies to Conv2d and Linear weights and the model has neither"
    return None


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
        if tensor in outputs or not nexts:
            continue
        depthwise = None
        if len(nexts) == 1 and _is_depthwise(nexts[0], weight.shape[0], inits, group):
            # A zero channel into a depthwise conv comes out as that channel's bias, a constant, which a
            # following unpadded convolution can fold into its own bias.
            depthwise = nexts[0]
            tensor = depthwise.output[0]
            const_ops = []
            while tensor not in outputs and len(consumers.get(tensor, [])) == 1 and \
                    consumers[tensor][0].op_type in _CONSTANT_PRESERVING and \
                    all(not name or name in inits for name in consumers[tensor][0].input[1:]):
                const_ops.append(consumers[tensor][0])
                tensor = consumers[tensor][0].output[0]
            nexts = consumers.get(tensor, [])
            if tensor in outputs or not nexts or any(_padded(n) for n in nexts):
                continue
        if any(n.op_type != "Conv" or group(n) != 1 or n.input[0] != tensor or n.input[1] not in inits
               for n in nexts):
            continue
        weights_used = [node, *nexts] + ([depthwise] if depthwise is not None else [])
        if any(len(consumers.get(n.input[1], [])) > 1 for n in weights_used):
            continue  # a shared weight: slicing it would change another node
        keep = ~zero
        arrays[node.input[1]] = weight[keep]
        if bias is not None:
            arrays[node.input[2]] = bias[keep]
        if depthwise is not None:
            dw_bias_name = depthwise.input[2] if len(depthwise.input) > 2 and depthwise.input[2] else None
            dw_bias = array(dw_bias_name) if dw_bias_name else np.zeros(weight.shape[0], np.float32)
            constant = _through(const_ops, dw_bias[zero].astype(np.float64), inits, numpy_helper)
            arrays[depthwise.input[1]] = array(depthwise.input[1])[keep]
            if dw_bias_name:
                arrays[dw_bias_name] = dw_bias[keep]
            for attribute in depthwise.attribute:
                if attribute.name == "group":
                    attribute.i = int(keep.sum())
            for follower in nexts:
                w = array(follower.input[1])
                folded = (w[:, zero].sum(axis=(2, 3)) * constant).sum(axis=1).astype(np.float32)
                if len(follower.input) > 2 and follower.input[2]:
                    arrays[follower.input[2]] = array(follower.input[2]) + folded
                elif np.any(folded != 0):
                    name = f"{follower.name or follower.output[0]}_folded_bias"
                    graph.initializer.append(numpy_helper.from_array(folded, name))
                    inits[name] = graph.initializer[-1]
                    follower.input.append(name)
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
