"""Eval and calibration data in the forms users have it, checked against the model's inputs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.errors import ConfigError
from workbench.optimize._spec import ModelSpec, generated_inputs


@dataclass
class Samples:
    """Model inputs stacked along the first axis, optional labels, and where they came from.

    Example:
        >>> import numpy as np
        >>> Samples({"x": np.zeros((4, 3), np.float32)}, None, "given").count
        4
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    origin: str  # "given" or "generated from the input spec"

    @property
    def count(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batches(self, size: int) -> Iterable[dict[str, np.ndarray]]:
        for start in range(0, self.count, size):
            yield {name: array[start:start + size] for name, array in self.inputs.items()}

    def head(self, count: int) -> Samples:
        return Samples({k: v[:count] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[:count], self.origin)

    def digest(self) -> str:
        sha = hashlib.sha256()
        for name in sorted(self.inputs):
            sha.update(name.encode())
            sha.update(np.ascontiguousarray(self.inputs[name]).tobytes())
        if self.labels is not None:
            sha.update(np.ascontiguousarray(self.labels).tobytes())
        return sha.hexdigest()


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _split(data: Any) -> tuple[Any, Any]:
    if isinstance(data, tuple) and len(data) == 2:
        return data
    if isinstance(data, Mapping) and "inputs" in data:
        return data["inputs"], data.get("labels")
    if isinstance(data, (np.ndarray, Mapping)) or hasattr(data, "detach"):
        return data, None
    if isinstance(data, Iterable):  # batches of (inputs, labels) or of inputs
        xs, ys = [], []
        for item in data:
            x, y = _split(item) if isinstance(item, (tuple, Mapping)) else (item, None)
            xs.append(x)
            ys.append(y)
        if not xs:
            raise ConfigError("the data iterable yielded nothing; pass at least one batch")
        if isinstance(xs[0], Mapping):
            merged: Any = {k: np.concatenate([_as_array(x[k]) for x in xs]) for k in xs[0]}
        else:
            merged = np.concatenate([_as_array(x) for x in xs])
        labels = None if any(y is None for y in ys) else np.concatenate([_as_array(y) for y in ys])
        return merged, labels
    raise ConfigError(f"cannot read data of type {type(data).__name__}; pass (inputs, labels), an array, "
                      "a dict of arrays by input name, or an iterable of such batches")


def to_samples(data: Any, spec: ModelSpec, *, what: str) -> Samples:
    """Normalise ``data`` and check it against the model's inputs (names, rank, fixed sizes, dtype).

    Example:
        >>> import numpy as np
        >>> from workbench.optimize._spec import TensorSpec
        >>> spec = ModelSpec((TensorSpec("x", "float32", ("batch", 3)),), (), 17, ())
        >>> to_samples((np.zeros((5, 3)), np.arange(5)), spec, what="eval data").count
        5
    """
    inputs, labels = _split(data)
    if isinstance(inputs, Mapping):
        arrays = {str(k): _as_array(v) for k, v in inputs.items()}
    else:
        if len(spec.inputs) != 1:
            names = ", ".join(t.name for t in spec.inputs)
            raise ConfigError(f"the model has {len(spec.inputs)} inputs ({names}); pass {what} as a dict "
                              "of arrays keyed by input name")
        arrays = {spec.inputs[0].name: _as_array(inputs)}
    expected = {t.name: t for t in spec.inputs}
    if set(arrays) != set(expected):
        raise ConfigError(f"{what} has inputs {sorted(arrays)} but the model takes {sorted(expected)}; "
                          "key the arrays by the model's input names")
    counts = set()
    for name, array in arrays.items():
        tensor = expected[name]
        if array.ndim != len(tensor.shape):
            raise ConfigError(f"{what} for input {name!r} has shape {array.shape} (rank {array.ndim}) but the "
                              f"model expects rank {len(tensor.shape)} {list(tensor.shape)}; reshape it "
                              "(the first axis is the sample axis)")
        for axis, (have, want) in enumerate(zip(array.shape, tensor.shape, strict=True)):
            if axis > 0 and isinstance(want, int) and have != want:
                raise ConfigError(f"{what} for input {name!r} has shape {array.shape} but the model expects "
                                  f"{list(tensor.shape)} (axis {axis} must be {want})")
        want_dtype = np.dtype(tensor.dtype)
        if array.dtype != want_dtype:
            if array.dtype.kind == want_dtype.kind == "f" or (array.dtype.kind in "iu" and want_dtype.kind in "iu"):
                arrays[name] = array.astype(want_dtype)  # same kind, other width: a lossless-enough cast
            else:
                raise ConfigError(f"{what} for input {name!r} has dtype {array.dtype} but the model expects "
                                  f"{want_dtype}; convert it with .astype({want_dtype.name!r})")
        counts.add(array.shape[0])
    if len(counts) != 1 or 0 in counts:
        raise ConfigError(f"{what} needs the same, non-zero number of samples for every input; got {sorted(counts)}")
    label_array = None
    if labels is not None:
        label_array = _as_array(labels)
        if label_array.shape[0] != next(iter(counts)):
            raise ConfigError(f"{what} has {next(iter(counts))} samples but {label_array.shape[0]} labels; "
                              "pass one label per sample")
    return Samples(arrays, label_array, "given")


def generated_samples(spec: ModelSpec, count: int, *, seed: int = 0) -> Samples:
    """``count`` samples made from the input spec, stacked on the batch axis.

    A model with a fixed leading axis (a recurrent state ``[layers, batch, hidden]``, say)
    cannot be stacked that way: it gets one generated sample.
    """
    if any(t.shape and isinstance(t.shape[0], int) for t in spec.inputs):
        return Samples(generated_inputs(spec, batch=1, seed=seed), None,
                       "generated from the model's input spec (no data given; one sample: fixed leading axes)")
    rows = [generated_inputs(spec, batch=1, seed=seed + i) for i in range(count)]
    inputs = {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}
    return Samples(inputs, None, "generated from the model's input spec (no data given)")
