"""Small real ONNX models for demos, tests and benchmarks of deployments (built with the onnx package)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def tiny_model(path: str | os.PathLike[str], *, seed: int = 0, features: int = 16, classes: int = 4) -> Path:
    """A one-layer classifier ``y = softmax(x @ W + b)`` with weights drawn from ``seed``.

    Different seeds give different models (and packages) of the same interface.

    Example:
        >>> tiny_model("/tmp/wb-tiny.onnx", seed=1).name
        'wb-tiny.onnx'
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["y"], axis=-1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])], [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="workbench")
    model.ir_version = 8
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def slow_model(path: str | os.PathLike[str], *, layers: int = 16, width: int = 256, features: int = 16,
               classes: int = 4, seed: int = 0) -> Path:
    """The same interface as :func:`tiny_model`, but ``layers`` dense ``width``-wide layers deep: deliberately slow.

    Used to show a latency gate failing and the rollout rolling back.

    Example:
        >>> slow_model("/tmp/wb-slow.onnx", layers=2).name
        'wb-slow.onnx'
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((features, width)) / np.sqrt(features)).astype(np.float32),
                                     "W_in")]
    nodes = [helper.make_node("MatMul", ["x", "W_in"], ["h0"])]
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
                                             f"W{i}"))
        nodes += [helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"])]
    inits.append(numpy_helper.from_array(rng.standard_normal((width, classes)).astype(np.float32), "W_out"))
    nodes += [helper.make_node("MatMul", [f"h{layers}", "W_out"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["y"], axis=-1)]
    # A batch of 256 rows makes each call do real work on any CPU.
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="workbench")
    model.ir_version = 8
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target
