"""Loading an ONNX model with clear errors, and its input/output spec."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import ConfigError, OptimizeError

# ONNX Runtime runs opset 7 and later; a pass that needs more (per-channel QDQ needs 13) upgrades a copy
# with onnx's version converter. The newest opset is whatever the installed onnx knows.
MIN_OPSET = 7

_ONNX_TO_NUMPY = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool", "tensor(int16)": "int16",
}
# A symbolic dimension other than the batch axis gets this size when inputs are generated.
_GENERATED_DIM = 16


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, dtype and shape (a str or None for a symbolic dimension).

    Example:
        >>> TensorSpec("input", "float32", ("batch", 1, 8, 8)).dynamic_batch
        True
    """

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]
    high: int | None = None  # integer inputs: exclusive upper bound of valid values (a vocabulary size), if known

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shape) and not isinstance(self.shape[0], int)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpec:
    """What a model takes and returns, and its opset.

    Example:
        >>> spec = ModelSpec.from_path("model.onnx")   # doctest: +SKIP
        >>> [i.name for i in spec.inputs]              # doctest: +SKIP
        ['input']
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    op_types: tuple[str, ...]

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> ModelSpec:
        model = load_model(path)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        initializers = {init.name for init in model.graph.initializer}
        vocab = _lookup_sizes(model)
        inputs = tuple(_tensor_spec(v, vocab.get(v.name)) for v in model.graph.input if v.name not in initializers)
        outputs = tuple(_tensor_spec(v) for v in model.graph.output)
        return cls(inputs, outputs, opset, tuple(sorted(_op_types(model.graph))))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "opset": self.opset}


def _op_types(graph: Any) -> set[str]:
    """Operator types of a graph and of its subgraphs (the branches of If, the bodies of Loop and Scan)."""
    found: set[str] = set()
    for node in graph.node:
        found.add(node.op_type)
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                found |= _op_types(sub)
    return found


def _lookup_sizes(model: Any) -> dict[str, int]:
    """Graph inputs used as Gather indices into a weight table: the table's size on that axis (a vocabulary)."""
    produced_by = {out: node for node in model.graph.node for out in node.output}
    tables = {init.name: tuple(init.dims) for init in model.graph.initializer}
    graph_inputs = {v.name for v in model.graph.input}
    sizes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in tables:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        dims = tables[node.input[0]]
        if not dims:
            continue
        name = node.input[1]
        # Token ids often pass through a Cast or a Reshape on their way to the embedding.
        while name not in graph_inputs and name in produced_by and \
                produced_by[name].op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"):
            name = produced_by[name].input[0]
        if name in graph_inputs:
            size = int(dims[axis])
            sizes[name] = min(sizes.get(name, size), size)
    return sizes


def _tensor_spec(value: Any, high: int | None = None) -> TensorSpec:
    import onnx

    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "float32"
    shape: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        # Exporters write -1 or 0 for "any size" as often as a symbolic name: all three are dynamic.
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(int(dim.dim_value))
        else:
            shape.append(dim.dim_param or None)
    return TensorSpec(value.name, dtype, tuple(shape), high)


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load and check an ONNX model file, or raise an error that names what is wrong.

    Example:
        >>> load_model("missing.onnx")
        Traceback (most recent call last):
        ...
        workbench.errors.ConfigError: model file missing.onnx does not exist; pass the path of an .onnx file
    """
    import onnx

    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"model file {source} does not exist; pass the path of an .onnx file")
    try:
        # Weights in external data are not needed to read the graph (and may be over 2 GB).
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning or ValueError by version
        raise OptimizeError(f"{source} is not a valid ONNX model (truncated or not ONNX at all: {exc}); "
                            "re-export it, e.g. with workbench.optimize.export_onnx") from exc
    if len(model.graph.node) == 0:
        raise OptimizeError(f"{source} has no graph nodes (truncated or empty file); re-export the model")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    newest = onnx.defs.onnx_opset_version()
    if opset is None or opset < MIN_OPSET or opset > newest:
        raise OptimizeError(f"{source} uses ONNX opset {opset}; supported opsets are {MIN_OPSET} to {newest}. "
                            "Convert it with onnx.version_converter.convert_version(model, 17) or re-export")
    try:
        onnx.checker.check_model(str(source))
    except Exception as exc:
        raise OptimizeError(f"{source} fails the ONNX checker: {exc}; fix or re-export the model") from exc
    return model


_STATE_WORDS = ("state", "hidden", "cache", "past", "memory")
_STATE_NAMES = {"h", "c", "h0", "c0", "hx", "cx", "h_0", "c_0"}
_RATE_NAMES = {"sr", "sample_rate", "sampling_rate", "samplerate", "fs"}


def input_role(tensor: TensorSpec) -> str:
    """What generated data an input gets, guessed from its name and dtype.

    ``"rate"`` (a sample-rate scalar: 16000), ``"state"`` (a recurrent state: zeros), ``"mask"``
    (ones), ``"ids"`` (integers below ``tensor.high``), ``"bool"``, ``"int"`` (small non-negative
    integers) or ``"float"`` (standard normal).

    Example:
        >>> input_role(TensorSpec("sr", "int64", ()))
        'rate'
    """
    name = tensor.name.lower()
    kind = np.dtype(tensor.dtype).kind
    if kind == "b":
        return "bool"
    if kind in "iu" and name in _RATE_NAMES and len(tensor.shape) <= 1:
        return "rate"
    if name in _STATE_NAMES or any(word in name for word in _STATE_WORDS):
        return "state"
    if kind in "iu" and "mask" in name:
        return "mask"
    if kind in "iu":
        return "ids" if tensor.high else "int"
    return "float"


def generated_inputs(spec: ModelSpec, batch: int = 1, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs made from the model's input spec, for when the user gave none.

    Symbolic batch axes get ``batch``; other symbolic axes get 16. Each input gets values of its
    dtype in a plausible range (see :func:`input_role`): floats are standard normal, token ids lie
    in ``[0, vocab)`` where the vocabulary is known from the graph, other integers are 0 or 1, a
    sample rate is 16000, a state is zeros, a mask is ones.

    Example:
        >>> spec = ModelSpec((TensorSpec("x", "float32", ("batch", 3)),), (), 17, ())
        >>> generated_inputs(spec, batch=2)["x"].shape
        (2, 3)
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        shape = [batch if i == 0 and not isinstance(d, int) else (d if isinstance(d, int) else _GENERATED_DIM)
                 for i, d in enumerate(tensor.shape)]
        dtype = np.dtype(tensor.dtype)
        role = input_role(tensor)
        if role == "rate":
            feeds[tensor.name] = np.full(shape, 16000, dtype)
        elif role == "state":
            feeds[tensor.name] = np.zeros(shape, dtype)
        elif role == "mask":
            feeds[tensor.name] = np.ones(shape, dtype)
        elif role == "bool":
            feeds[tensor.name] = rng.integers(0, 2, shape).astype(bool)
        elif role == "ids":
            feeds[tensor.name] = rng.integers(0, int(tensor.high or 2), shape).astype(dtype)
        elif role == "int":
            feeds[tensor.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(dtype)
    return feeds
