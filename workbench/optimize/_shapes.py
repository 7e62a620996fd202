"""Concrete input shapes for a model with dynamic dims: the user's, else guessed and tried on the FP32 model."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, OptimizeError
from workbench.protocol.spec import ModelSpec, TensorSpec, generated_inputs, input_role

Dim = int | str | None
# Sizes tried, in order, for a dim that cannot be read from the model: image sides, then sequence-like lengths.
_SPATIAL_TRIES = (224, 320, 640, 32, 64)
_LENGTH_TRIES = (16, 64, 256, 512, 1024)
_BATCH_NAMES = re.compile(r"batch|^(n|b|bs|batch_size)$", re.IGNORECASE)
_SPATIAL_NAMES = re.compile(r"height|width|^(h|w)$", re.IGNORECASE)


def parse_input_shape(text: str) -> tuple[str, tuple[int | None, ...]]:
    """``NAME=1,3,640,640`` as the CLI's ``--input-shape`` takes it; ``-1``, ``0`` or ``?`` leave a dim dynamic.

    Example:
        >>> parse_input_shape("images=1,3,640,640")
        ('images', (1, 3, 640, 640))
        >>> parse_input_shape("tokens=1,?")
        ('tokens', (1, None))
    """
    name, sep, dims = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--input-shape {text!r}: use NAME=D1,D2,... e.g. --input-shape images=1,3,640,640")
    out: list[int | None] = []
    for part in (p.strip() for p in dims.split(",") if p.strip()):
        if part in ("?", "-1", "0"):
            out.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            raise ConfigError(f"--input-shape {text!r}: dim {part!r} is not a whole number (use -1 or ? to leave "
                              "it dynamic)") from None
        if value < 0:
            raise ConfigError(f"--input-shape {text!r}: dim {value} is negative; use -1 or ? to leave it dynamic")
        out.append(value)
    return name.strip(), tuple(out)


def _user_shapes(spec: ModelSpec, input_shapes: Mapping[str, Any] | None) -> dict[str, tuple[int | None, ...]]:
    wanted: dict[str, tuple[int | None, ...]] = {}
    by_name = {t.name: t for t in spec.inputs}
    for name, dims in (input_shapes or {}).items():
        if name not in by_name:
            raise ConfigError(f"input_shapes names {name!r}, but the model's inputs are "
                              f"{', '.join(sorted(by_name))}")
        parsed = parse_input_shape(f"{name}=" + ",".join(str(d) if d is not None else "?" for d in dims))[1] \
            if not isinstance(dims, str) else parse_input_shape(f"{name}={dims}")[1]
        declared = by_name[name].shape
        if len(parsed) != len(declared):
            raise ConfigError(f"input {name!r} has rank {len(declared)} {_show(declared)}, but the shape given for "
                              f"it has {len(parsed)} dims {list(parsed)}")
        for axis, (have, want) in enumerate(zip(parsed, declared, strict=True)):
            if have is not None and isinstance(want, int) and have != want:
                raise ConfigError(f"input {name!r} has a fixed size {want} on axis {axis} {_show(declared)}; the "
                                  f"shape given for it says {have}")
        wanted[name] = parsed
    return wanted


def stacks_on_first_axis(spec: ModelSpec) -> bool:
    """Whether samples can be stacked on axis 0 of every input (a dynamic batch axis everywhere).

    A scalar input (a sample rate) or a fixed leading axis (a state ``[layers, batch, hidden]``)
    rules it out: each sample is then fed on its own.

    Example:
        >>> stacks_on_first_axis(ModelSpec((TensorSpec("x", "float32", ("batch", 3)),), (), 17, ()))
        True
    """
    return bool(spec.inputs) and all(t.shape and not isinstance(t.shape[0], int) for t in spec.inputs)


@dataclass(frozen=True)
class ShapePlan:
    """The model's spec with the user's dims filled in (``given``: data is checked against it), with every
    dim concrete but the sample axis (``full``: inputs are generated from it), and the dims that were guessed."""

    given: ModelSpec
    full: ModelSpec
    stacked: bool
    guessed: dict[str, dict[int, int]] = field(default_factory=dict)
    user: dict[str, tuple[int | None, ...]] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the report: the shapes used to generate inputs, and which dims were guessed."""
        parts = []
        for tensor in self.full.inputs:
            shape = ["N" if d is None or isinstance(d, str) else str(d) for d in tensor.shape]
            guessed = self.guessed.get(tensor.name)
            parts.append(f"{tensor.name}=[{','.join(shape)}]" + (f" (guessed axes {sorted(guessed)})"
                                                                  if guessed else ""))
        return "; ".join(parts)


def _kind(tensor: TensorSpec, axis: int, dim: Dim, stacked: bool) -> str:
    if isinstance(dim, str) and dim != "?":
        if _BATCH_NAMES.search(dim):
            return "batch"
        if _SPATIAL_NAMES.search(dim):
            return "spatial"
    rank = len(tensor.shape)
    if axis == 0 and rank >= 2:
        return "batch"
    if input_role(tensor) == "state" and axis == 1:
        return "batch"  # [layers, batch, hidden]
    if rank == 4 and input_role(tensor) == "float":
        first = tensor.shape[1] in (1, 3, 4) or not isinstance(tensor.shape[3], int)
        if (first and axis in (2, 3)) or (not first and axis in (1, 2)):
            return "spatial"
    return "length"


def _filled(spec: ModelSpec, dims: dict[str, tuple[Dim, ...]]) -> ModelSpec:
    return replace(spec, inputs=tuple(replace(t, shape=dims.get(t.name, t.shape)) for t in spec.inputs))


def resolve_shapes(spec: ModelSpec, path: Path, input_shapes: Mapping[str, Any] | None = None, *,
                   need_generated: bool = True, name: str | None = None) -> ShapePlan:
    """Fill the model's dynamic dims: the user's ``input_shapes`` first, then guesses tried on the FP32 model.

    Raises :class:`ConfigError` naming the input, the dim and the ``--input-shape`` flag to pass when no
    guess runs, and :class:`OptimizeError` when the FP32 model does not load, or does not run on
    generated inputs of its own fixed shapes (``name``: the model as the user knows it). When the user
    gives all the data (``need_generated=False``), a failed try is left for that data to decide.

    Example:
        >>> plan = resolve_shapes(ModelSpec.from_path("det.onnx"), Path("det.onnx"),   # doctest: +SKIP
        ...                       {"images": (1, 3, 640, 640)})
    """
    user = _user_shapes(spec, input_shapes)
    stacked = stacks_on_first_axis(spec)
    given_dims: dict[str, tuple[Dim, ...]] = {}
    for tensor in spec.inputs:
        wanted = user.get(tensor.name)
        dims: list[Dim] = list(tensor.shape)
        if wanted:
            for axis, value in enumerate(wanted):
                # The sample axis stays dynamic: samples are stacked on it.
                if value is not None and not (stacked and axis == 0):
                    dims[axis] = value
        given_dims[tensor.name] = tuple(dims)
    given = _filled(spec, given_dims)

    # Which dims to guess, and of what kind; dims sharing a symbolic name share a value.
    slots: dict[str, list[tuple[int, str]]] = {}
    for tensor in given.inputs:
        for axis, dim in enumerate(tensor.shape):
            if isinstance(dim, int) or (stacked and axis == 0):
                continue
            slots.setdefault(tensor.name, []).append((axis, _kind(tensor, axis, dim, stacked)))
    kinds = {kind for entries in slots.values() for _, kind in entries}
    tries = len(_SPATIAL_TRIES) if kinds & {"spatial", "length"} else 1
    session = _session(path, name or path.name)
    last_error = ""
    for attempt in range(tries):
        full_dims = dict(given_dims)
        guessed: dict[str, dict[int, int]] = {}
        for tensor in given.inputs:
            dims = list(tensor.shape)
            for axis, kind in slots.get(tensor.name, []):
                value = 1 if kind == "batch" else (_SPATIAL_TRIES if kind == "spatial" else _LENGTH_TRIES)[attempt]
                dims[axis] = value
                guessed.setdefault(tensor.name, {})[axis] = value
            full_dims[tensor.name] = tuple(dims)
        full = _filled(given, full_dims)
        error = _try_run(session, full)
        if error is None:
            return ShapePlan(given, full, stacked, guessed, user)
        last_error = error
    if not need_generated:
        # The user's eval and calibration data decide: generated inputs may miss values the model needs.
        return ShapePlan(given, given, stacked, {}, user)
    if not slots:
        shapes = ", ".join(f"{t.name} {_show(t.shape)}" for t in given.inputs)
        raise OptimizeError(f"the FP32 model does not run in ONNX Runtime on inputs shaped {shapes}: {last_error}. "
                            "The model itself is broken or expects other inputs; check it with onnxruntime "
                            "before optimizing")
    raise ConfigError(_cannot_guess(given, slots, tries, last_error))


def _cannot_guess(given: ModelSpec, slots: dict[str, list[tuple[int, str]]], tries: int, error: str) -> str:
    lines = []
    flags = []
    python = []
    for tensor in given.inputs:
        if tensor.name not in slots:
            continue
        axes = [axis for axis, _ in slots[tensor.name]]
        named = ", ".join(f"axis {a} ({tensor.shape[a]!r})" if isinstance(tensor.shape[a], str)
                          else f"axis {a}" for a in axes)
        lines.append(f"input {tensor.name!r} {_show(tensor.shape)}: dynamic {named}")
        template = [str(d) if isinstance(d, int) else ("1" if a == 0 else f"D{a}")
                    for a, d in enumerate(tensor.shape)]
        flags.append(f"--input-shape {tensor.name}={','.join(template)}")
        python.append(f"{tensor.name!r}: ({', '.join(template)})")
    tried = "the sizes tried" if tries == 1 else f"{tries} guesses"
    return (f"cannot guess the model's input sizes: {'; '.join(lines)}; the FP32 model failed on {tried} "
            f"(last error: {error}). Give the shapes, replacing each D with a size the model takes: "
            f"{' '.join(flags)} (Python: input_shapes={{{', '.join(python)}}}), or pass eval and calibration data")


def _show(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _session(path: Path, name: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Guessing sizes fails on purpose until one fits; ORT would print each failed run as an ERROR line.
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OptimizeError(f"ONNX Runtime cannot load the FP32 model {name}: {one_line(exc)}; the model is "
                            "malformed or uses operators ONNX Runtime lacks; re-export it") from exc


def _try_run(session: Any, spec: ModelSpec) -> str | None:
    feeds = generated_inputs(spec, batch=1, seed=0)
    try:
        session.run(None, feeds)
    except Exception as exc:
        return one_line(exc)
    return None


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line: its type and the first line of its message, cut to ``limit`` characters.

    Example:
        >>> one_line(ValueError("bad\\nmore"))
        'ValueError: bad'
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
