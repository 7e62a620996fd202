"""optimize() end to end on small ONNX models measured on this host: candidates, choice, package, cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from workbench.deploy import sha256_file
from workbench.optimize import optimize

FAST: dict[str, Any] = {"warmup": 1, "iterations": 10, "rounds": 2}


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def make_mlp(path: Path, seed: int = 0) -> Path:
    """A 16 -> 32 -> 10 MLP with a dynamic batch axis."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2")],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [_init("w1", rng.standard_normal((16, 32)) * 0.5), _init("b1", rng.standard_normal(32) * 0.1),
         _init("w2", rng.standard_normal((32, 10)) * 0.5), _init("b2", np.zeros(10))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def labelled(path: Path, count: int = 64, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and the labels the FP32 model itself gives them (so FP32 accuracy is exactly 1)."""
    import onnxruntime as ort

    x = np.random.default_rng(seed).standard_normal((count, 16)).astype(np.float32)
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return x, logits.argmax(axis=1)


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return make_mlp(tmp_path / "mlp.onnx")


def test_optimize_measures_every_planned_variant_when_given_onnx_path(mlp: Path) -> None:
    x, y = labelled(mlp)
    result = optimize(mlp, "x86-server", eval_data=(x, y), calibration_data=x,
                      passes=["int8-dynamic", "int8-static-minmax", "fp16"], exclude_layers=False, use_cache=False,
                      **FAST)
    frame = result.candidates
    assert set(frame["variant"]) == {"fp32", "int8-dynamic", "int8-static-minmax"}
    assert (frame["measured_on"] == "host").all()
    assert (frame["p50_ms"] > 0).all() and (frame["p99_ms"] >= frame["p50_ms"]).all()
    assert frame.set_index("variant").loc["fp32", "accuracy"] == 1.0
    assert result.best.variant in set(frame["variant"]) and result.best.reason
    assert frame["chosen"].sum() == 1
    assert "fp16" in result.skipped and "FP16" in result.skipped["fp16"]
    if result.target["threads"] > 1:  # the thread sweep tries 1 and the target's count for the chosen variant
        assert set(result.threads["tried"]) == {1, result.target["threads"]}
        assert result.threads["best"] in result.threads["tried"]


def test_optimize_builds_and_times_the_s8s8_variant_when_minmax_is_tried(mlp: Path) -> None:
    from test_optimize_passes import activation_zero_point_types

    x, y = labelled(mlp)
    result = optimize(mlp, "x86-server", eval_data=(x, y), calibration_data=x, passes=["int8-static"],
                      calibration_methods=("minmax",), exclude_layers=False, sweep=False, use_cache=False, **FAST)
    rows = {row["variant"]: row for row in result.rows}
    assert {"fp32", "int8-static-minmax", "int8-static-s8s8"} <= set(rows), result.skipped
    assert rows["int8-static-s8s8"]["recipe"]["steps"] == [
        {"pass": "int8-static", "method": "minmax", "per_channel": True, "activations": "s8"}]
    assert rows["int8-static-s8s8"]["p50_ms"] > 0 and rows["int8-static-s8s8"]["accuracy"] >= 0.8
    assert activation_zero_point_types(result.files["int8-static-s8s8"]) == {onnx.TensorProto.INT8}
    assert activation_zero_point_types(result.files["int8-static-minmax"]) == {onnx.TensorProto.UINT8}


def test_optimize_plans_no_s8s8_variant_when_minmax_is_not_among_the_methods(mlp: Path, tmp_path: Path) -> None:
    from workbench.optimize._data import Samples
    from workbench.optimize._optimize import _plan
    from workbench.optimize._passes import PassContext
    from workbench.protocol.spec import ModelSpec

    ctx = PassContext(tmp_path, calibration=Samples({"x": np.zeros((8, 16), np.float32)}, None, "given"),
                      precisions=("fp32", "int8"))
    spec = ModelSpec.from_path(mlp)
    with_minmax = {item["variant"] for item in _plan(spec, ctx, ["minmax", "entropy"], [], None)[0]}
    without = {item["variant"] for item in _plan(spec, ctx, ["entropy"], [], None)[0]}
    assert "int8-static-s8s8" in with_minmax
    assert "int8-static-s8s8" not in without and "int8-static-entropy" in without


def test_save_writes_package_with_hashes_recipe_and_spec_when_variant_chosen(mlp: Path, tmp_path: Path) -> None:
    x, y = labelled(mlp)
    result = optimize(mlp, "raspberry-pi-5", eval_data=(x, y), calibration_data=x, passes=["int8-dynamic"],
                      use_cache=False, **FAST)
    out = result.save(tmp_path / "package", variant="int8-dynamic", report=True)
    assert out.stat().st_mode & 0o755 == 0o755
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["model.onnx"]["sha256"] == sha256_file(out / "model.onnx")
    assert manifest["recipe"]["steps"][0]["pass"] == "int8-dynamic"
    assert manifest["target"]["profile"] == "raspberry-pi-5"
    assert manifest["inputs"][0]["name"] == "x" and manifest["outputs"][0]["name"] == "logits"
    assert manifest["metrics"]["p50_ms"] > 0
    assert manifest["recipe"]["threads"] in (1, result.target["threads"])
    assert "plotly" in (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["best"]["variant"] == result.best.variant


def test_save_leaves_no_directory_when_writing_fails(mlp: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = labelled(mlp)
    result = optimize(mlp, "x86-server", eval_data=(x, y), passes=[], use_cache=False, **FAST)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("workbench.optimize._result.write_package", broken)
    with pytest.raises(OSError, match="disk full"):
        result.save(tmp_path / "out")
    assert list(tmp_path.glob("*out*")) == []


def test_optimize_hits_cache_on_rerun_and_shows_diff_when_settings_change(mlp: Path, tmp_path: Path) -> None:
    x, y = labelled(mlp)
    kwargs: dict[str, Any] = {"eval_data": (x, y), "passes": ["int8-dynamic"], "cache_dir": tmp_path / "cache"}
    first = optimize(mlp, "x86-server", **kwargs, **FAST)
    second = optimize(mlp, "x86-server", **kwargs, **FAST)
    assert first.cache["hit"] is False and second.cache["hit"] is True
    assert second.cache["diff"] == {}
    assert second.row("fp32")["p50_ms"] == first.row("fp32")["p50_ms"]
    third = optimize(mlp, "x86-server", **kwargs, **{**FAST, "iterations": 12})
    assert third.cache["hit"] is False
    assert third.cache["diff"]["fp32"]["measure.iterations"] == [10, 12]


def test_optimize_ranks_and_excludes_layers_when_int8_breaks_the_quality_constraint(mlp: Path) -> None:
    x, _ = labelled(mlp)
    import onnxruntime as ort

    reference = ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    def neg_mse(outputs: np.ndarray, ref: np.ndarray) -> float:
        return -float(np.mean((outputs - ref) ** 2))

    result = optimize(mlp, "x86-server", eval_data=(x, reference), calibration_data=x, metric=neg_mse,
                      max_accuracy_drop=0.0, passes=["int8-static-minmax"], use_cache=False, **FAST)
    ranked = result.layers["int8-static-minmax"]
    assert {r["node"] for r in ranked} <= {"fc1", "fc2"} and ranked
    assert all("added_error_db" in r for r in ranked)
    assert any(v.startswith("int8-static-minmax-excl") for v in result.candidates["variant"])
    # What keeping layers in FP32 gained and cost is reported per excluded variant.
    excl = [row for row in result.rows if row["variant"].startswith("int8-static-minmax-excl")]
    for row in excl:
        assert row["excluded_layers"] and set(row["excluded_layers"]) <= {"fc1", "fc2"}
        line = next(n for n in result.notes if n.startswith(f"{row['variant']} keeps"))
        assert ", ".join(row["excluded_layers"]) in line and "p50" in line and "-> " in line


def test_optimize_generates_inputs_when_multi_input_model_has_no_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "tokens"], ["e"], name="embed"),
         helper.make_node("ReduceMean", ["e"], ["pooled"], axes=[1], keepdims=0, name="pool"),
         helper.make_node("Add", ["pooled", "extra"], ["s"], name="add"),
         helper.make_node("MatMul", ["s", "w"], ["out"], name="head")],
        "two_inputs",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        [_init("emb", rng.standard_normal((50, 8))), _init("w", rng.standard_normal((8, 4)))],
    )
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    result = optimize(path, "x86-server", passes=["int8-dynamic"], use_cache=False, **FAST)
    assert "generated" in result.data["eval"] and "generated" in result.data["calibration"]
    assert result.data["quality"] == "top-1 agreement with FP32"
    assert any("generated" in note for note in result.notes)
    assert result.row("fp32")["quality"] == 1.0


def test_optimize_runs_recurrent_model_when_it_has_state_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hidden = 6
    graph = helper.make_graph(
        [helper.make_node("GRU", ["x", "W", "R", "", "", "h0"], ["y", "h"], hidden_size=hidden, name="gru")],
        "gru",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", 4]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", hidden])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "batch", hidden])],
        [_init("W", rng.standard_normal((1, 3 * hidden, 4)) * 0.3),
         _init("R", rng.standard_normal((1, 3 * hidden, hidden)) * 0.3)],
    )
    path = tmp_path / "gru.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    result = optimize(path, "generic-arm64", metric="agreement", passes=[], use_cache=False, **FAST)
    assert result.best.variant in ("fp32", "graph-opt")
    assert result.row("fp32")["p50_ms"] > 0


def test_workbench_optimize_is_callable_when_package_was_imported_first(mlp: Path) -> None:
    import workbench
    import workbench.optimize  # sets the attribute workbench.optimize to the package

    x, y = labelled(mlp)
    result = workbench.optimize(mlp, "x86-server", eval_data=(x, y), passes=[], use_cache=False, **FAST)
    assert result.row("fp32")["accuracy"] == 1.0
