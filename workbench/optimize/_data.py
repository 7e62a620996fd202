"""Eval and calibration data in the forms users have it, checked against the model's inputs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import ConfigError
from workbench.protocol.spec import ModelSpec, generated_inputs


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
    origin: str  # where the data came from, for the report
    # True: sample i is ``array[i:i+1]`` (axis 0 is the model's batch axis). False: sample i is ``array[i]``
    # (the model has a scalar input or a fixed leading axis, so each sample is fed on its own).
    stacked: bool = True

    @property
    def count(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batches(self, size: int) -> Iterable[dict[str, np.ndarray]]:
        """Feeds of up to ``size`` samples each (always one sample when samples are not stacked)."""
        if not self.stacked:
            for index in range(self.count):
                yield {name: array[index, ...] for name, array in self.inputs.items()}  # 0-d arrays, not scalars
            return
        for start in range(0, self.count, size):
            yield {name: array[start:start + size] for name, array in self.inputs.items()}

    def head(self, count: int) -> Samples:
        return Samples({k: v[:count] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[:count], self.origin, self.stacked)

    def sample_bytes(self) -> int:
        """Bytes of one sample's inputs."""
        return max(1, sum(a.nbytes for a in self.inputs.values()) // max(1, self.count))

    def digest(self) -> str:
        sha = hashlib.sha256()
        sha.update(b"stacked" if self.stacked else b"single")
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


def _is_pair(item: Any) -> bool:
    # A torch DataLoader yields [inputs, labels] lists; a plain iterable yields (inputs, labels) tuples.
    return isinstance(item, (tuple, list)) and len(item) == 2 and not isinstance(item[0], (int, float))


def _split(data: Any) -> tuple[Any, Any]:
    if _is_pair(data) and isinstance(data, tuple):
        return data
    if isinstance(data, Mapping) and "inputs" in data:
        return data["inputs"], data.get("labels")
    if isinstance(data, (np.ndarray, Mapping)) or hasattr(data, "detach"):
        return data, None
    if isinstance(data, Iterable):  # batches of (inputs, labels) or of inputs
        xs, ys = [], []
        for item in data:
            x, y = _split(tuple(item)) if _is_pair(item) else (_split(item) if isinstance(item, Mapping)
                                                                else (item, None))
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
                      "a dict of arrays by input name, an .npz file, a directory of images, a torch DataLoader, "
                      "a callable returning one of these, or an iterable of batches")


def _source(data: Any, spec: ModelSpec, what: str, sizes: ModelSpec) -> tuple[Any, str]:
    """Read a file, directory or callable into data ``_split`` takes, and say what it was."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            from workbench.optimize._images import load_image_dir

            return load_image_dir(path, sizes, what=what)
        if path.suffix == ".npz" and path.is_file():
            return _load_npz(path, spec, what), f"npz file {path.name}"
        if path.suffix == ".npy" and path.is_file():
            return np.load(path), f"npy file {path.name}"
        raise ConfigError(f"{what} {str(path)!r} is neither an .npz/.npy file nor a directory of images")
    if callable(data) and not hasattr(data, "state_dict") and not isinstance(data, (np.ndarray, Mapping)):
        name = getattr(data, "__name__", type(data).__name__)
        return _source(data(), spec, what, sizes)[0], f"callable {name}()"
    if type(data).__name__ == "DataLoader":
        return data, f"torch DataLoader ({len(data)} batches)"
    return data, "given arrays"


def _load_npz(path: Path, spec: ModelSpec, what: str) -> Any:
    try:
        with np.load(path) as archive:
            arrays = {k: np.asarray(archive[k]) for k in archive.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc}") from exc
    names = {t.name for t in spec.inputs}
    if names <= set(arrays):
        labels = arrays.get("labels", arrays.get("y")) if not names & {"labels", "y"} else None
        return ({n: arrays[n] for n in names}, labels) if labels is not None else {n: arrays[n] for n in names}
    for x_key, y_key in (("inputs", "labels"), ("x", "y")):
        if x_key in arrays:
            return (arrays[x_key], arrays[y_key]) if y_key in arrays else arrays[x_key]
    raise ConfigError(f"{what} file {path} has arrays {sorted(arrays)}; name them after the model's inputs "
                      f"({', '.join(sorted(names))}) or 'inputs'/'labels' or 'x'/'y'")


def to_samples(data: Any, spec: ModelSpec, *, what: str, stacked: bool = True,
               sizes: ModelSpec | None = None) -> Samples:
    """Normalise ``data`` and check it against the model's inputs (names, rank, fixed sizes, dtype).

    ``data`` is ``(inputs, labels)``, an array, a dict of arrays by input name, a path to an .npz file
    or to a directory of images (resized to the input), a torch ``DataLoader``, a callable returning
    one of these, or an iterable of batches. With ``stacked=False`` (a model fed one sample at a time)
    each array has one more axis than the input: the sample axis. Images are resized to the sizes in
    ``sizes`` (a spec with every dim filled in; default ``spec``).

    Example:
        >>> import numpy as np
        >>> from workbench.protocol.spec import TensorSpec
        >>> spec = ModelSpec((TensorSpec("x", "float32", ("batch", 3)),), (), 17, ())
        >>> to_samples((np.zeros((5, 3)), np.arange(5)), spec, what="eval data").count
        5
    """
    data, origin = _source(data, spec, what, sizes or spec)
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
    for name, array in list(arrays.items()):
        tensor = expected[name]
        rank = len(tensor.shape)
        if not stacked and array.ndim == rank:
            array = arrays[name] = array[None]  # one sample
        want_ndim = rank if stacked else rank + 1
        if array.ndim != want_ndim:
            axis_note = "the first axis is the sample axis" if stacked else \
                "the model takes one sample at a time, so add a leading sample axis"
            raise ConfigError(f"{what} for input {name!r} has shape {array.shape} (rank {array.ndim}) but the "
                              f"model expects rank {rank} {list(tensor.shape)}; reshape it ({axis_note})")
        per_sample = array.shape if stacked else array.shape[1:]
        for axis, (have, want) in enumerate(zip(per_sample, tensor.shape, strict=True)):
            if (axis > 0 or not stacked) and isinstance(want, int) and have != want:
                raise ConfigError(f"{what} for input {name!r} has shape {array.shape} but the model expects "
                                  f"{list(tensor.shape)} (axis {axis} must be {want})")
        want_dtype = np.dtype(tensor.dtype)
        if array.dtype != want_dtype:
            if array.dtype.kind == want_dtype.kind == "f" or (array.dtype.kind in "iu" and want_dtype.kind in "iu") \
                    or (want_dtype.kind == "b" and array.dtype.kind in "biu"):
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
    return Samples(arrays, label_array, f"given: {origin}", stacked)


def generated_samples(spec: ModelSpec, count: int, *, seed: int = 0, stacked: bool | None = None) -> Samples:
    """``count`` samples made from the input spec (see :func:`generated_inputs` for the values).

    Stacked on the batch axis where every input has one; otherwise (a scalar sample rate, a state
    ``[layers, batch, hidden]``) each sample keeps the input's own shape under a leading sample axis.

    Example:
        >>> from workbench.protocol.spec import TensorSpec
        >>> spec = ModelSpec((TensorSpec("x", "float32", ("batch", 3)), TensorSpec("sr", "int64", ())), (), 17, ())
        >>> generated_samples(spec, 4).inputs["sr"].tolist()
        [16000, 16000, 16000, 16000]
    """
    from workbench.optimize._shapes import stacks_on_first_axis

    stacked = stacks_on_first_axis(spec) if stacked is None else stacked
    rows = [generated_inputs(spec, batch=1, seed=seed + i) for i in range(count)]
    if stacked:
        inputs = {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}
    else:
        inputs = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
    return Samples(inputs, None, "generated from the model's input spec (no data given)", stacked)
