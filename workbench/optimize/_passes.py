"""The pass registry: each pass transforms an ONNX file and declares which hardware it helps."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import OptimizeError
from workbench.optimize._data import Samples

# Bytes of intermediate outputs the static calibrator may hold at once; the sample count is capped to fit.
DEFAULT_CALIBRATION_MEMORY_MB = 512


@dataclass
class PassContext:
    """What a pass may use: calibration data, the target's facts, a work directory."""

    workdir: Path
    calibration: Samples | None = None
    precisions: tuple[str, ...] = ("fp32",)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    calibration_memory_mb: int = DEFAULT_CALIBRATION_MEMORY_MB
    notes: list[str] = field(default_factory=list)


Helps = Callable[[PassContext], tuple[bool, str]]
Apply = Callable[[Path, Path, PassContext, dict[str, Any]], None]


@dataclass(frozen=True)
class Pass:
    """One model transformation.

    Example:
        >>> get_pass("int8-dynamic").kind
        'quantize'
    """

    name: str
    kind: str  # "graph", "quantize", "precision"
    description: str
    helps: Helps
    apply: Apply


_PASSES: dict[str, Pass] = {}


def register_pass(item: Pass) -> Pass:
    """Add a pass to the registry (a later capability or a user can add their own).

    Example:
        >>> register_pass(Pass("noop", "graph", "copies the model", lambda ctx: (True, "always"),
        ...                    lambda src, dst, ctx, opts: dst.write_bytes(src.read_bytes())))  # doctest: +SKIP
    """
    _PASSES[item.name] = item
    return item


def get_pass(name: str) -> Pass:
    """A registered pass by name."""
    try:
        return _PASSES[name]
    except KeyError:
        raise OptimizeError(f"unknown pass {name!r}; registered passes: {', '.join(sorted(_PASSES))}") from None


def list_passes() -> list[Pass]:
    """Every registered pass."""
    return list(_PASSES.values())


class _quiet:
    # The quantizer and ORT's tools warn about things that are not the user's to fix; warnings are errors in tests.
    def __enter__(self) -> None:
        import contextlib
        import io

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        # The histogram calibrators print() progress lines straight to stdout.
        self._stdout = contextlib.redirect_stdout(io.StringIO())
        self._stdout.__enter__()
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"onnxruntime\..*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"onnxruntime\..*")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"onnxruntime\..*")
        import logging

        self._logger = logging.getLogger()
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)  # the quantizer logs INFO lines via the root logger

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)
        self._stdout.__exit__(None, None, None)
        self._ctx.__exit__(None, None, None)


# -- graph optimization ------------------------------------------------------------------


def _graph_helps(ctx: PassContext) -> tuple[bool, str]:
    return True, ("ONNX Runtime's extended (portable) fusions saved offline: faster session load; runtime "
                  "speed is usually the same as the default online optimization")


def _graph_apply(src: Path, dst: Path, ctx: PassContext, options: dict[str, Any]) -> None:
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    level = options.get("level", "extended")
    session_options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    session_options.optimized_model_filepath = str(dst)
    session_options.log_severity_level = 3
    ort.InferenceSession(str(src), sess_options=session_options, providers=["CPUExecutionProvider"])


register_pass(Pass("graph-opt", "graph", "ORT graph optimization saved offline", _graph_helps, _graph_apply))


# -- INT8 dynamic -----------------------------------------------------------------------


def _dynamic_helps(ctx: PassContext) -> tuple[bool, str]:
    if "int8" not in ctx.precisions:
        return False, "the target's profile does not list int8 among its precisions"
    return True, ("weights of MatMul/Gemm stored as INT8, activations quantized at run time: helps MLPs and "
                  "transformers; Conv is left in FP32 because dynamic ConvInteger is 3-11x slower on CPUs")


def _dynamic_apply(src: Path, dst: Path, ctx: PassContext, options: dict[str, Any]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(options.get("ops", ["MatMul", "Gemm"])),
                         weight_type=QuantType.QInt8, per_channel=bool(options.get("per_channel", False)),
                         nodes_to_exclude=list(options.get("exclude", [])))


register_pass(Pass("int8-dynamic", "quantize", "INT8 dynamic quantization of MatMul/Gemm",
                   _dynamic_helps, _dynamic_apply))


# -- INT8 static QDQ -----------------------------------------------------------------------


class _Reader:
    """Feeds calibration batches to ORT's calibrator one at a time (it keeps only what it reduces)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = batches
        self._iter: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def activation_bytes_per_sample(path: Path) -> int:
    """An estimate of the bytes of all intermediate tensors for one sample (batch axis = 1)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    total = 0
    for value in list(model.graph.value_info) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        size = 1
        for dim in dims:
            size *= dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1
        total += size * 4
    return max(total, 1)


def calibration_batches(path: Path, samples: Samples, memory_mb: int, notes: list[str]) -> list[dict[str, Any]]:
    """Calibration samples capped so the calibrator's activations fit in ``memory_mb`` (an estimate)."""
    per_sample = activation_bytes_per_sample(path)
    cap = max(8, int(memory_mb * 2**20 // per_sample))
    if samples.count > cap:
        notes.append(f"calibration used {cap} of {samples.count} samples to stay within {memory_mb} MB of "
                     f"activations (estimated {per_sample / 2**20:.2f} MB per sample)")
        samples = samples.head(cap)
    return list(samples.batches(1))


def _static_helps(ctx: PassContext) -> tuple[bool, str]:
    if "int8" not in ctx.precisions:
        return False, "the target's profile does not list int8 among its precisions"
    if ctx.calibration is None:
        return False, "no calibration data"
    return True, "INT8 QDQ with calibrated activation ranges: Conv and MatMul run on INT8 kernels"


def _static_apply(src: Path, dst: Path, ctx: PassContext, options: dict[str, Any]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if ctx.calibration is None:
        raise OptimizeError("static INT8 quantization needs calibration data; pass calibration_data")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.get("method", "minmax")]
    prepared = dst.with_name(dst.stem + ".pre.onnx")
    with _quiet():
        try:
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing is an optimization; quantize the raw model instead
            ctx.notes.append(f"quant_pre_process failed ({type(exc).__name__}: {exc}); quantized without it")
            prepared.write_bytes(src.read_bytes())
        batches = calibration_batches(prepared, ctx.calibration, ctx.calibration_memory_mb, ctx.notes)
        # Not CalibMaxIntermediateOutputs: ORT 1.32 drops (not merges) the data it flushes. The sample cap
        # above bounds memory instead.
        extra: dict[str, Any] = {}
        if method == CalibrationMethod.Percentile:
            extra["CalibPercentile"] = float(options.get("percentile", 99.999))
        try:
            quantize_static(str(prepared), str(dst), _Reader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=bool(options.get("per_channel", True)),
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method, nodes_to_exclude=list(options.get("exclude", [])),
                            extra_options=extra)
        finally:
            prepared.unlink(missing_ok=True)
            for leftover in Path(dst.parent).glob("augmented_model*.onnx"):
                leftover.unlink(missing_ok=True)


register_pass(Pass("int8-static", "quantize", "INT8 static QDQ quantization with calibration",
                   _static_helps, _static_apply))


# -- FP16 ---------------------------------------------------------------------------------

_FP16_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider",
                   "CoreMLExecutionProvider")


def _fp16_helps(ctx: PassContext) -> tuple[bool, str]:
    if "fp16" not in ctx.precisions:
        return False, ("the target runs FP16 only by casting back to FP32 on its CPU (no FP16 kernels), so it "
                       "halves the file but is not faster")
    usable = [p for p in ctx.providers if p in _FP16_PROVIDERS]
    if not usable:
        return False, ("the target's profile runs FP16 natively on its GPU/accelerator, but no GPU execution "
                       "provider is available where it is measured, so it cannot be measured here")
    return True, f"FP16 runs natively on {usable[0]}"


def _fp16_apply(src: Path, dst: Path, ctx: PassContext, options: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


register_pass(Pass("fp16", "precision", "FP16 weights and activations (GPU/accelerator EPs)",
                   _fp16_helps, _fp16_apply))


def apply_recipe(src: Path, steps: list[dict[str, Any]], dst: Path, ctx: PassContext) -> None:
    """Run the recipe's ONNX passes in order, writing only the final file to ``dst`` (atomically)."""
    current = src
    temps: list[Path] = []
    try:
        for index, step in enumerate(steps):
            item = get_pass(step["pass"])
            out = dst.with_name(f"{dst.stem}.step{index}.onnx")
            temps.append(out)
            try:
                item.apply(current, out, ctx, step)
            except OptimizeError:
                raise
            except Exception as exc:
                raise OptimizeError(f"pass {item.name} failed on {src.name}: {type(exc).__name__}: {exc}") from exc
            current = out
        if current == src:
            dst.write_bytes(src.read_bytes())
        else:
            os.replace(current, dst)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
