"""The pass registry: each pass transforms an ONNX file and declares which hardware it helps."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import OptimizeError
from workbench.optimize._data import Samples
from workbench.optimize._files import copy_model, data_location, has_external_data, move_model, remove_model, save_model

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
MinOpset = Callable[[dict[str, Any]], tuple[int, str]]


def _any_opset(options: dict[str, Any]) -> tuple[int, str]:
    return 0, ""


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
    # The lowest opset the pass's output is valid at, for these options, and why; an older model is upgraded first.
    min_opset: MinOpset = _any_opset


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
    if has_external_data(src):  # a model over 2 GB cannot be written as one protobuf
        session_options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                                 data_location(dst))
        session_options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                                 "1024")
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
                         nodes_to_exclude=list(options.get("exclude", [])),
                         use_external_data_format=has_external_data(src),
                         # MatMuls inside If/Loop/Scan bodies too (an RNN cell in a Loop); off by default.
                         extra_options={"EnableSubgraph": True})


def _dynamic_opset(options: dict[str, Any]) -> tuple[int, str]:
    return 11, "DynamicQuantizeLinear needs opset >= 11"


register_pass(Pass("int8-dynamic", "quantize", "INT8 dynamic quantization of MatMul/Gemm",
                   _dynamic_helps, _dynamic_apply, _dynamic_opset))


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

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    except Exception:  # shape inference is only for the estimate: count the declared outputs instead
        model = onnx.load(str(path), load_external_data=False)
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
        note = (f"calibration used {cap} of {samples.count} samples to stay within {memory_mb} MB of activations "
                f"(estimated {per_sample / 2**20:.2f} MB per sample)")
        if note not in notes:  # every static variant calibrates the same model: one line says it for all
            notes.append(note)
        samples = samples.head(cap)
    return list(samples.batches(1))


def _static_helps(ctx: PassContext) -> tuple[bool, str]:
    if "int8" not in ctx.precisions:
        return False, "the target's profile does not list int8 among its precisions"
    if ctx.calibration is None:
        return False, "no calibration data"
    return True, "INT8 QDQ with calibrated activation ranges: Conv and MatMul run on INT8 kernels"


# Activation types of static INT8. "u8" (U8S8) is the x86 fast path (VPMADDUBSW/VNNI); "s8" (S8S8) is what
# ORT's quantize_static does by default, and what ARM's dot-product kernels take; which is faster (and which
# saturates less on AVX2 without VNNI) is measured, not assumed.
ACTIVATION_TYPES = ("u8", "s8")


def _static_apply(src: Path, dst: Path, ctx: PassContext, options: dict[str, Any]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if ctx.calibration is None:
        raise OptimizeError("static INT8 quantization needs calibration data; pass calibration_data")
    blocker = static_blocker(src)
    if blocker:
        raise OptimizeError(blocker)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.get("method", "minmax")]
    activations = options.get("activations", "u8")
    if activations not in ACTIVATION_TYPES:
        raise OptimizeError(f"unknown activation type {activations!r} for int8-static; use "
                            f"{' or '.join(ACTIVATION_TYPES)}")
    prepared = dst.with_name(dst.stem + ".pre.onnx")
    external = has_external_data(src)
    with _quiet():
        try:
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True, save_as_external_data=external,
                              all_tensors_to_one_file=True, external_data_location=data_location(prepared))
        except Exception as exc:  # pre-processing is an optimization; quantize the raw model instead
            from workbench.optimize._shapes import one_line

            note = f"quant_pre_process failed on {src.name} ({one_line(exc)}); quantized without it"
            if note not in ctx.notes:
                ctx.notes.append(note)
            remove_model(prepared)
            copy_model(src, prepared)
        batches = calibration_batches(prepared, ctx.calibration, ctx.calibration_memory_mb, ctx.notes)
        # Not CalibMaxIntermediateOutputs: ORT 1.32 drops (not merges) the data it flushes. The sample cap
        # above bounds memory instead.
        extra: dict[str, Any] = {}
        if method == CalibrationMethod.Percentile:
            extra["CalibPercentile"] = float(options.get("percentile", 99.999))
        exclude = list(options.get("exclude", []))
        mixed: dict[str, Any] = {}
        if options.get("mixed"):  # INT8 weights' matmuls and convs only; attention and normalization stay FP32
            exclude += [name for name in sensitive_nodes(prepared) if name not in exclude]
            mixed["op_types_to_quantize"] = list(MIXED_QUANTIZED_OPS)
        try:
            quantize_static(str(prepared), str(dst), _Reader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=bool(options.get("per_channel", True)),
                            activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=method, nodes_to_exclude=exclude,
                            extra_options=extra, use_external_data_format=external, **mixed)
        finally:
            remove_model(prepared)
            for leftover in Path(dst.parent).glob("augmented_model*.onnx"):
                leftover.unlink(missing_ok=True)


_STATIC_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")
_CONTROL_FLOW = ("If", "Loop", "Scan")


def static_blocker(src: Path) -> str | None:
    """Why static INT8 cannot quantize anything in this model, or None when it can.

    ORT's static quantizer calibrates and rewrites the main graph only: a model whose Conv/MatMul nodes
    all sit inside If/Loop/Scan would come out with no INT8 at all (MinMax) or fail with "Histogram has
    not been collected" (entropy, percentile).

    Example:
        >>> static_blocker(Path("silero_vad.onnx"))  # doctest: +SKIP
        "the model's Conv/MatMul nodes are all inside control flow (12 in If If_0), ..."
    """
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    if any(node.op_type in _STATIC_OPS for node in graph.node):
        return None
    nested: dict[str, int] = {}

    def walk(g: onnx.GraphProto, owner: str) -> None:
        for node in g.node:
            if node.op_type in _STATIC_OPS and owner:
                nested[owner] = nested.get(owner, 0) + 1
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    walk(sub, owner or f"{node.op_type} {node.name or '(unnamed)'}")

    walk(graph, "")
    if nested:
        where = ", ".join(f"{count} in {owner}" for owner, count in nested.items())
        return (f"the model's Conv/MatMul nodes are all inside control flow ({where}), which ORT's static "
                "quantizer neither calibrates nor rewrites, so static INT8 would change nothing; export the model "
                "without the If/Loop/Scan around them to quantize it")
    return "the model has no Conv, MatMul or Gemm node, so static INT8 has nothing to quantize"


# Ops that keep their FP32 kernels in the mixed variant: with QDQ around them ORT would run them on
# dequantized INT8 values, adding error (Softmax, LayerNorm) for no speed.
MIXED_QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def sensitive_nodes(path: Path) -> list[str]:
    """Named MatMul nodes that multiply two activations (attention's Q·Kᵀ and scores·V): kept in FP32 in the mixed
    INT8/FP32 variant, since both operands change per input and INT8 scores feed a Softmax.

    Example:
        >>> sensitive_nodes(Path("bert.onnx"))[:1]  # doctest: +SKIP
        ['/layers.0/attn/MatMul']
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    # A weight reached through Transpose/Identity/Cast of an initializer is still a weight.
    for node in graph.node:
        if node.op_type == "Constant" or (node.op_type in ("Transpose", "Identity", "Cast", "Reshape")
                                          and node.input and node.input[0] in constants):
            constants.update(node.output)
    return [node.name for node in graph.node
            if node.op_type == "MatMul" and node.name and not any(name in constants for name in node.input)]


def _static_opset(options: dict[str, Any]) -> tuple[int, str]:
    if options.get("per_channel", True):
        return 13, "per-channel QDQ (DequantizeLinear with axis) needs opset >= 13"
    return 10, "QuantizeLinear needs opset >= 10"


register_pass(Pass("int8-static", "quantize", "INT8 static QDQ quantization with calibration",
                   _static_helps, _static_apply, _static_opset))


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
    save_model(model, dst, external=has_external_data(src))


register_pass(Pass("fp16", "precision", "FP16 weights and activations (GPU/accelerator EPs)",
                   _fp16_helps, _fp16_apply))


def model_opset(path: Path) -> int:
    """The default-domain opset a model file imports."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgraded(src: Path, dst: Path, opset: int) -> None:
    """Write a copy of ``src`` converted to ``opset`` with onnx's version converter, or raise OptimizeError."""
    import onnx
    from onnx import version_converter

    before = model_opset(src)
    try:
        model = version_converter.convert_version(onnx.load(str(src)), opset)
        onnx.checker.check_model(model)
    except Exception as exc:
        from workbench.optimize._shapes import one_line

        raise OptimizeError(f"onnx's version converter could not upgrade opset {before} to {opset}: "
                            f"{one_line(exc)}") from exc
    save_model(model, dst, external=has_external_data(src))


def apply_recipe(src: Path, steps: list[dict[str, Any]], dst: Path, ctx: PassContext) -> None:
    """Run the recipe's ONNX passes in order, writing only the final file to ``dst``.

    A pass that needs a newer opset than the model has (per-channel QDQ needs 13) runs on a copy
    upgraded with onnx's version converter, and a note says so. Any failure raises
    :class:`OptimizeError` naming the pass, in one line.
    """
    from workbench.optimize._shapes import one_line

    current = src
    temps: list[Path] = []
    try:
        for index, step in enumerate(steps):
            item = get_pass(step["pass"])
            needed, why = item.min_opset(step)
            have = model_opset(current)
            if needed > have:
                lifted = dst.with_name(f"{dst.stem}.step{index}.opset{needed}.onnx")
                temps.append(lifted)
                try:
                    upgraded(current, lifted, needed)
                except OptimizeError as exc:
                    raise OptimizeError(f"pass {item.name} needs opset {needed} ({why}) and the model has "
                                        f"{have}; {exc}") from exc
                note = (f"{item.name}: the model's opset {have} was upgraded to {needed} with onnx's version "
                        f"converter ({why})")
                if note not in ctx.notes:
                    ctx.notes.append(note)
                current = lifted
            out = dst.with_name(f"{dst.stem}.step{index}.onnx")
            temps.append(out)
            try:
                item.apply(current, out, ctx, step)
            except Exception as exc:
                raise OptimizeError(f"pass {item.name} failed: {one_line(exc)}") from exc
            current = out
        if current == src:
            copy_model(src, dst)
        else:
            move_model(current, dst)
    finally:
        for temp in temps:
            remove_model(temp)
