"""Loading an ONNX model with clear errors, and its input/output spec."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import ConfigError, OptimizeError

# ONNX Runtime's quantizer and kernels need at least opset 10 (QDQ per-channel needs 13, which
# the quantizer upgrades to); the newest opset is whatever the installed onnx knows.
MIN_OPSET = 10

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
        inputs = tuple(_tensor_spec(v) for v in model.graph.input if v.name not in initializers)
        outputs = tuple(_tensor_spec(v) for v in model.graph.output)
        return cls(inputs, outputs, opset, tuple(sorted({node.op_type for node in model.graph.node})))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "opset": self.opset}


def _tensor_spec(value: Any) -> TensorSpec:
    import onnx

    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "float32"
    shape: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        else:
            shape.append(dim.dim_param or None)
    return TensorSpec(value.name, dtype, tuple(shape))


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
        model = onnx.load(str(source))
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


def generated_inputs(spec: ModelSpec, batch: int = 1, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs made from the model's input spec, for when the user gave none.

    Symbolic batch axes get ``batch``; other symbolic axes get 16. Floats are standard
    normal; integer inputs (token ids, indices) are 0 or 1 so any embedding can look them up.

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
        if dtype.kind == "f":
            feeds[tensor.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[tensor.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[tensor.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds
