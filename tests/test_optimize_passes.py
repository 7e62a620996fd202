"""The pass registry: which hardware each pass helps, FP16 and graph passes, memory-bounded calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from test_optimize_onnx import labelled, make_mlp

from workbench.errors import OptimizeError
from workbench.optimize import list_passes
from workbench.optimize._data import Samples
from workbench.optimize._passes import PassContext, apply_recipe, calibration_batches, get_pass


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return make_mlp(tmp_path / "mlp.onnx")


def test_registry_lists_the_builtin_passes_when_imported() -> None:
    names = {p.name for p in list_passes()}
    assert {"graph-opt", "int8-dynamic", "int8-static", "fp16", "remove-zero-channels"} <= names


def test_fp16_is_skipped_with_reason_when_target_cpu_emulates_it(tmp_path: Path) -> None:
    helps, why = get_pass("fp16").helps(PassContext(tmp_path, precisions=("fp32", "int8")))
    assert helps is False and "casting back to FP32" in why


def test_fp16_is_skipped_with_reason_when_gpu_provider_is_missing(tmp_path: Path) -> None:
    ctx = PassContext(tmp_path, precisions=("fp32", "fp16"), providers=("CPUExecutionProvider",))
    helps, why = get_pass("fp16").helps(ctx)
    assert helps is False and "no GPU execution provider" in why


def test_fp16_is_planned_when_gpu_provider_is_available(tmp_path: Path) -> None:
    ctx = PassContext(tmp_path, precisions=("fp32", "fp16"), providers=("CUDAExecutionProvider",))
    assert get_pass("fp16").helps(ctx)[0] is True


def test_fp16_pass_halves_weights_and_keeps_float_io_when_applied(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp16.onnx"
    apply_recipe(mlp, [{"pass": "fp16"}], out, PassContext(tmp_path))
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert out.stat().st_size < mlp.stat().st_size * 0.75


def test_int8_static_keeps_top1_close_when_calibrated_on_real_inputs(mlp: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    x, y = labelled(mlp, count=128)
    ctx = PassContext(tmp_path, calibration=Samples({"x": x}, None, "given"), precisions=("fp32", "int8"))
    out = tmp_path / "int8.onnx"
    apply_recipe(mlp, [{"pass": "int8-static", "method": "minmax", "per_channel": True}], out, ctx)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].argmax(1)
    assert float(np.mean(got == y)) >= 0.8


def activation_zero_point_types(path: Path) -> set[int]:
    """The element types of the QuantizeLinear zero points: weights are stored quantized, so these are activations."""
    model = onnx.load(str(path))
    types = {init.name: init.data_type for init in model.graph.initializer}
    return {types[node.input[2]] for node in model.graph.node if node.op_type == "QuantizeLinear"}


def test_int8_static_quantizes_activations_signed_when_activations_is_s8(mlp: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    x, y = labelled(mlp, count=128)
    ctx = PassContext(tmp_path, calibration=Samples({"x": x}, None, "given"), precisions=("fp32", "int8"))
    unsigned, signed = tmp_path / "u8.onnx", tmp_path / "s8.onnx"
    apply_recipe(mlp, [{"pass": "int8-static", "method": "minmax"}], unsigned, ctx)
    apply_recipe(mlp, [{"pass": "int8-static", "method": "minmax", "activations": "s8"}], signed, ctx)
    assert activation_zero_point_types(unsigned) == {onnx.TensorProto.UINT8}
    assert activation_zero_point_types(signed) == {onnx.TensorProto.INT8}
    got = ort.InferenceSession(str(signed), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].argmax(1)
    assert float(np.mean(got == y)) >= 0.8


def test_int8_static_rejects_an_unknown_activation_type_naming_the_choices(mlp: Path, tmp_path: Path) -> None:
    ctx = PassContext(tmp_path, calibration=Samples({"x": np.zeros((8, 16), np.float32)}, None, "given"))
    out = tmp_path / "bad.onnx"
    with pytest.raises(OptimizeError, match=r"unknown activation type 'u4'.*u8 or s8"):
        apply_recipe(mlp, [{"pass": "int8-static", "activations": "u4"}], out, ctx)
    assert not out.exists() and not list(tmp_path.glob("bad.step*"))


def test_calibration_is_capped_with_one_note_when_memory_budget_is_small_for_every_variant(mlp: Path) -> None:
    x = np.zeros((500, 16), np.float32)
    notes: list[str] = []
    batches = calibration_batches(mlp, Samples({"x": x}, None, "given"), memory_mb=0, notes=notes)
    assert len(batches) == 8 and "calibration used 8 of 500 samples" in notes[0]
    calibration_batches(mlp, Samples({"x": x}, None, "given"), memory_mb=0, notes=notes)
    assert len(notes) == 1, notes


def test_apply_recipe_leaves_no_file_when_a_pass_fails(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad.onnx"
    with pytest.raises(OptimizeError, match="calibration data"):
        apply_recipe(mlp, [{"pass": "int8-static"}], out, PassContext(tmp_path))
    assert not out.exists() and not list(tmp_path.glob("bad.step*"))


def test_unknown_pass_raises_naming_the_known_ones() -> None:
    with pytest.raises(OptimizeError, match="graph-opt"):
        get_pass("turbo")


def test_cli_prints_json_and_writes_reports_when_target_is_a_profile(mlp: Path, tmp_path: Path) -> None:
    x, y = labelled(mlp)
    np.savez(tmp_path / "digits.npz", x_test=x, y_test=y)
    out = tmp_path / "out"
    data = tmp_path / "digits.npz"
    proc = run_cli("optimize", str(mlp), "--target", "raspberry-pi-4", "--eval", f"{data}:x_test,y_test",
                   "--calibration", f"{data}:x_test", "--passes", "int8-dynamic",
                   "--iterations", "10", "--no-cache", "--json", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["out"] == str(out.resolve())
    assert {c["variant"] for c in report["candidates"]} == {"fp32", "int8-dynamic"}
    assert json.loads((out / "report.json").read_text())["best"] == report["best"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variant"] == report["best"]["variant"]
