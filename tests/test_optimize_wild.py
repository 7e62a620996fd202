"""`workbench optimize` on models as people bring them: one tiny fixture model per trait, built here with onnx.helper.

Each trait (a -1 dim, symbolic dims, old opsets, int64 ids, a state fed back, control flow, two inputs,
external data) must give exit 0 and a package whose outputs match FP32 within the quality limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from workbench.cli.main import main

# Quick timing: these tests are about what gets built and packaged, not about the numbers.
CLI_FAST = ["--no-cache", "--iterations", "4", "--rounds", "1", "--warmup", "1"]
MAX_DROP = 0.01


def _w(name: str, shape: tuple[int, ...], seed: int, scale: float = 0.4) -> onnx.TensorProto:
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32),
                                   name)


def _save(graph: onnx.GraphProto, path: Path, opset: int, **kwargs: Any) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)  # old opsets ship in old IR versions
    onnx.checker.check_model(model)
    onnx.save(model, str(path), **kwargs)
    return path


def conv_classifier(path: Path, dims: list[Any], opset: int) -> Path:
    """A text-direction-style CNN: Conv, Relu, global pool, Gemm to 4 classes, on an image input of ``dims``."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
         helper.make_node("Flatten", ["p"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc")],
        "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], 4])],
        [_w("cw", (8, 3, 3, 3), 0), _w("cb", (8,), 1, 0.1), _w("fw", (8, 4), 2, 1.0), _w("fb", (4,), 3, 0.1)])
    return _save(graph, path, opset)


def detector(path: Path) -> Path:
    """A DB-detector-style net (opset 12): symbolic batch, height and width; a stride-2 branch upsampled back
    and added to a full-resolution branch, so odd sizes break the Add."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["full"], pads=[1, 1, 1, 1], name="conv_full"),
         helper.make_node("Conv", ["x", "w2"], ["half"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv_half"),
         helper.make_node("Resize", ["half", "roi", "scales"], ["up"], mode="nearest", name="up"),
         helper.make_node("Add", ["full", "up"], ["sum"], name="add"),
         helper.make_node("Sigmoid", ["sum"], ["prob"], name="prob")],
        "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [_w("w1", (4, 3, 3, 3), 4), _w("w2", (4, 3, 3, 3), 5), numpy_helper.from_array(np.zeros(0, np.float32), "roi"),
         numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    return _save(graph, path, 12)


def mlp(path: Path, opset: int, *, external: bool = False, width: int = 16) -> Path:
    """A Gemm-Relu-Gemm MLP at ``opset``; ``external`` saves its weights in model.onnx.data."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [_w("w1", (width, 32), 6), _w("b1", (32,), 7, 0.1), _w("w2", (32, 10), 8), _w("b2", (10,), 9, 0.1)])
    if external:
        return _save(graph, path, opset, save_as_external_data=True, all_tensors_to_one_file=True,
                     location=f"{path.name}.data", size_threshold=0)
    return _save(graph, path, opset)


def token_classifier(path: Path) -> Path:
    """int64 token ids [batch, seq] into a 50-word embedding: ids of 50 or more make Gather fail."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
         helper.make_node("ReduceMean", ["e"], ["pooled"], axes=[1], keepdims=0, name="pool"),
         helper.make_node("MatMul", ["pooled", "w"], ["logits"], name="head")],
        "tokens", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [_w("emb", (50, 16), 10, 1.0), _w("w", (16, 5), 11)])
    return _save(graph, path, 17)


def voice_activity(path: Path) -> Path:
    """A stateful VAD-style model (opset 15): audio ``input`` [?, 64], ``state`` [2, ?, 8] fed back as
    ``stateN``, and a scalar int64 sample rate ``sr`` that scales the features."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w_in"], ["h"], name="proj"),
         helper.make_node("ReduceSum", ["state", "axis0"], ["carried"], keepdims=0, name="carry"),
         helper.make_node("Add", ["h", "carried"], ["mixed"], name="mix"),
         helper.make_node("Tanh", ["mixed"], ["new_h"], name="cell"),
         helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT, name="sr_float"),
         helper.make_node("Div", ["sr_f", "rate"], ["ratio"], name="sr_ratio"),
         helper.make_node("Mul", ["new_h", "ratio"], ["scaled"], name="scale"),
         helper.make_node("MatMul", ["scaled", "w_out"], ["logit"], name="head"),
         helper.make_node("Sigmoid", ["logit"], ["output"], name="prob"),
         helper.make_node("Unsqueeze", ["new_h", "axis0"], ["one"], name="lift"),
         helper.make_node("Concat", ["one", "one"], ["stateN"], axis=0, name="stack")],
        "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 8]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, None, 8])],
        [_w("w_in", (64, 8), 12, 0.2), _w("w_out", (8, 1), 13, 1.0),
         numpy_helper.from_array(np.array([0], np.int64), "axis0"),
         numpy_helper.from_array(np.array(16000.0, np.float32), "rate")])
    return _save(graph, path, 15)


def with_if(path: Path) -> Path:
    """An If node: a positive input sum takes the Relu branch, else the Tanh branch; both share a weight."""
    then_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["t"]), helper.make_node("MatMul", ["t", "w"],
                                                                                             ["then_out"])],
                                   "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph([helper.make_node("Tanh", ["x"], ["e"]), helper.make_node("MatMul", ["e", "w"],
                                                                                             ["else_out"])],
                                   "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, name="sum"),
         helper.make_node("Greater", ["total", "zero"], ["cond"], name="positive"),
         helper.make_node("If", ["cond"], ["logits"], then_branch=then_graph, else_branch=else_graph, name="branch")],
        "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 6])],
        [_w("w", (8, 6), 14, 1.0), numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return _save(graph, path, 17)


def with_loop(path: Path) -> Path:
    """A Loop that applies a Tanh(MatMul) cell three times to a carried state (an unrolled RNN)."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["v_in", "w"], ["m"]), helper.make_node("Tanh", ["m"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body, name="loop")],
        "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [_w("w", (8, 8), 15, 0.5), numpy_helper.from_array(np.array(3, np.int64), "trips")])
    return _save(graph, path, 17)


def with_scan(path: Path) -> Path:
    """A Scan over axis 1 of x [batch, seq, 4]: an RNN cell Tanh(h + x_t W) whose last state is classified."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "w"], ["m"]), helper.make_node("Add", ["h_in", "m"], ["s"]),
         helper.make_node("Tanh", ["s"], ["h_out"]), helper.make_node("Identity", ["h_out"], ["y_t"])],
        "cell", [helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", 4]),
                 helper.make_tensor_value_info("x_t", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, ["batch", 4])])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axis1"], ["summed"], keepdims=0, name="sum"),
         helper.make_node("Mul", ["summed", "zero"], ["h0"], name="zeros"),
         helper.make_node("Scan", ["h0", "x"], ["h_last", "ys"], body=body, num_scan_inputs=1,
                          scan_input_axes=[1], scan_output_axes=[1], name="scan"),
         helper.make_node("MatMul", ["h_last", "head"], ["logits"], name="head")],
        "scan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [_w("w", (4, 4), 25, 0.5), _w("head", (4, 3), 26, 1.0), numpy_helper.from_array(np.array(0.0, np.float32),
                                                                                          "zero"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    return _save(graph, path, 17)


def two_inputs(path: Path) -> Path:
    """Two float inputs added, then a Gemm."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"], name="add"),
         helper.make_node("Gemm", ["s", "w", "bias"], ["logits"], name="fc")],
        "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 8]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [_w("w", (8, 5), 16, 1.0), _w("bias", (5,), 17, 0.1)])
    return _save(graph, path, 17)


def masked(path: Path) -> Path:
    """A float input and a bool mask [batch, 8]: masked-out features are zeroed before a Gemm."""
    graph = helper.make_graph(
        [helper.make_node("Where", ["keep", "x", "zero"], ["kept"], name="mask"),
         helper.make_node("Gemm", ["kept", "w", "b"], ["logits"], name="fc")],
        "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
                   helper.make_tensor_value_info("keep", TensorProto.BOOL, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero"), _w("w", (8, 4), 21, 1.0),
         _w("b", (4,), 22, 0.1)])
    return _save(graph, path, 17)


def tf2onnx_style(path: Path) -> Path:
    """A tf2onnx-style NHWC classifier: input ``input_1:0`` [unk__1, unk__2, unk__3, 3], transposed to NCHW."""
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["input_1:0"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
         helper.make_node("Conv", ["nchw", "cw"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
         helper.make_node("Flatten", ["p"], ["f"], name="flat"),
         helper.make_node("MatMul", ["f", "fw"], ["Identity:0"], name="fc")],
        "tf2onnx", [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["unk__1", "unk__2", "unk__3", 3])],
        [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["unk__1", 4])],
        [_w("cw", (8, 3, 3, 3), 23), _w("fw", (8, 4), 24, 1.0)])
    return _save(graph, path, 13)


def _feeds(path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Test inputs of the model's dtypes (independent of the optimizer's generator)."""
    rng = np.random.default_rng(42)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {}
    for item in session.get_inputs():
        shape = (shapes or {}).get(item.name) or tuple(d if isinstance(d, int) and d > 0 else (2 if i == 0 else 16)
                                                       for i, d in enumerate(item.shape))
        if item.type == "tensor(bool)":
            feeds[item.name] = rng.integers(0, 2, shape).astype(bool)
        elif item.type == "tensor(int64)":
            feeds[item.name] = np.array(16000, np.int64) if item.name == "sr" else rng.integers(0, 50, shape)
        elif item.name == "state":
            feeds[item.name] = np.zeros(shape, np.float32)
        else:
            feeds[item.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a64 @ b64 / max(np.linalg.norm(a64) * np.linalg.norm(b64), 1e-30))


def _optimize_cli(model: Path, out: Path, *extra: str) -> int:
    return main(["optimize", str(model), "--target", "x86-server", "--out", str(out), *CLI_FAST, *extra])


def _assert_package_matches_fp32(model: Path, out: Path, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    report = json.loads((out / "report.json").read_text())
    chosen = report["best"]["variant"]
    rows = {row["variant"]: row for row in report["candidates"]}
    assert rows[chosen]["quality"] >= rows["fp32"]["quality"] - MAX_DROP
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"model.onnx"}
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)
    packaged = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(packaged) == len(reference)
    for want, have in zip(reference, packaged, strict=True):
        assert have.shape == want.shape
        assert _cosine(want, have) > 0.98, (chosen, _cosine(want, have))
    return report


TRAITS: dict[str, tuple[Callable[[Path], Path], dict[str, tuple[int, ...]] | None]] = {
    "minus-one-dims-opset11": (lambda p: conv_classifier(p, [-1, 3, -1, -1], 11), {"x": (2, 3, 24, 24)}),
    "symbolic-dims-opset12": (detector, {"x": (1, 3, 32, 48)}),
    "opset7": (lambda p: mlp(p, 7), None),
    "opset9": (lambda p: mlp(p, 9), None),
    "opset11": (lambda p: mlp(p, 11), None),
    "int64-token-ids": (token_classifier, {"ids": (2, 12)}),
    "state-in-out-and-sample-rate": (voice_activity, {"input": (1, 64), "state": (2, 1, 8)}),
    "if-node": (with_if, None),
    "loop-node": (with_loop, None),
    "scan-node": (with_scan, {"x": (2, 5, 4)}),
    "two-inputs": (two_inputs, None),
    "bool-mask-input": (masked, None),
    "tf2onnx-nhwc-unknown-dims": (tf2onnx_style, {"input_1:0": (2, 20, 28, 3)}),
    "external-data": (lambda p: mlp(p, 17, external=True), None),
}


# Shapes the optimizer must guess for the generated inputs (the rest have no dims to guess).
GUESSED = {
    "minus-one-dims-opset11": "x=[N,3,224,224] (guessed axes [2, 3])",
    "symbolic-dims-opset12": "x=[N,3,224,224] (guessed axes [2, 3])",
    "tf2onnx-nhwc-unknown-dims": "input_1:0=[N,224,224,3] (guessed axes [1, 2])",
    "state-in-out-and-sample-rate": "input=[1,64] (guessed axes [0]); state=[2,1,8] (guessed axes [1]); sr=[]",
    "int64-token-ids": "ids=[N,16] (guessed axes [1])",
}


@pytest.mark.parametrize("trait", sorted(TRAITS))
def test_cli_optimize_packages_model_matching_fp32_when_model_has_trait(trait: str, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    build, shapes = TRAITS[trait]
    model = build(tmp_path / "model.onnx")
    out = tmp_path / "pkg"
    code = _optimize_cli(model, out, "--passes", "int8-static-minmax,int8-dynamic")
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = _assert_package_matches_fp32(model, out, _feeds(model, shapes))
    assert "generated" in report["data"]["eval"]
    if trait in GUESSED:
        assert report["data"]["input_shapes"] == GUESSED[trait]
    if "opset" in trait:  # below 13: static INT8 ran on a copy upgraded by onnx's version converter, and says so
        assert any("was upgraded to 13 with onnx's version converter" in note for note in report["notes"])
        assert "int8-static-minmax" in {row["variant"] for row in report["candidates"]}
    assert not any(why.startswith("failed") for why in report["skipped"].values()), report["skipped"]


def test_package_carries_external_data_when_model_keeps_weights_outside(tmp_path: Path) -> None:
    from workbench.deploy import sha256_file
    from workbench.optimize import optimize

    model = mlp(tmp_path / "big.onnx", 17, external=True, width=256)
    result = optimize(model, "x86-server", passes=["int8-dynamic", "int8-static-minmax"], use_cache=False,
                      sweep=False, warmup=1, iterations=4, rounds=1)
    for variant in ("fp32", "int8-dynamic", "int8-static-minmax"):
        out = result.save(tmp_path / variant, variant=variant)
        manifest = json.loads((out / "manifest.json").read_text())
        assert set(manifest["files"]) == {"model.onnx", "model.onnx.data"}, variant
        for name, entry in manifest["files"].items():
            assert entry["sha256"] == sha256_file(out / name)
        # The weights really live in the data file: the .onnx alone is a few hundred bytes.
        assert (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
        feeds = _feeds(model)
        want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        have = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        assert _cosine(want, have) > 0.98
    assert result.source["size_mb"] * 2**20 > 256 * 32 * 4


def reshape_35(path: Path) -> Path:
    """Input x [batch, n] reshaped to [batch, 5, 7]: only n = 35 runs, which no guess hits."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "to"], ["r"], name="reshape"),
         helper.make_node("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0, name="pool"),
         helper.make_node("MatMul", ["m", "w"], ["logits"], name="head")],
        "r35", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.array([0, 5, 7], np.int64), "to"), _w("w", (5, 3), 18, 1.0)])
    return _save(graph, path, 17)


def test_cli_names_input_dim_and_flag_when_dynamic_dim_cannot_be_guessed(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = reshape_35(tmp_path / "r35.onnx")
    code = _optimize_cli(model, tmp_path / "pkg", "--passes", "int8-dynamic")
    err = capsys.readouterr().err
    assert code == 1
    assert "input 'x'" in err and "axis 1 ('n')" in err and "--input-shape x=1,D1" in err
    assert not (tmp_path / "pkg").exists()


def test_cli_runs_when_input_shape_flag_gives_the_dim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = reshape_35(tmp_path / "r35.onnx")
    code = _optimize_cli(model, tmp_path / "pkg", "--passes", "int8-dynamic", "--input-shape", "x=1,35")
    assert code == 0, capsys.readouterr().err
    report = _assert_package_matches_fp32(model, tmp_path / "pkg", {"x": np.ones((3, 35), np.float32)})
    assert "x=[N,35]" in report["data"]["input_shapes"]


def test_cli_rejects_input_shape_when_flag_is_malformed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = reshape_35(tmp_path / "r35.onnx")
    assert _optimize_cli(model, tmp_path / "pkg", "--input-shape", "x:1,35") == 1
    assert "NAME=D1,D2" in capsys.readouterr().err
    assert _optimize_cli(model, tmp_path / "pkg", "--input-shape", "y=1,35") == 1
    assert "'y'" in capsys.readouterr().err


def test_cli_says_model_is_not_onnx_when_file_is_unreadable(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "photo.onnx"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a model " * 50)
    assert _optimize_cli(bad, tmp_path / "pkg") == 1
    err = capsys.readouterr().err
    assert "photo.onnx is not a valid ONNX model" in err and "re-export" in err
    assert not (tmp_path / "pkg").exists()


def test_cli_says_runtime_cannot_load_when_model_uses_unknown_operator(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "custom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), str(path))
    assert _optimize_cli(path, tmp_path / "pkg") == 1
    err = capsys.readouterr().err
    assert "ONNX Runtime cannot load the FP32 model custom.onnx" in err and "Frobnicate" in err


def test_cli_says_fp32_does_not_run_when_model_breaks_on_its_own_inputs(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "to"], ["y"])], "broken",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
                              [numpy_helper.from_array(np.array([3, 5], np.int64), "to")])
    path = _save(graph, tmp_path / "broken.onnx", 17)
    assert _optimize_cli(path, tmp_path / "pkg") == 1
    err = capsys.readouterr().err
    assert "FP32 model does not run" in err and "x [1, 16]" in err


# -- a failing pass ------------------------------------------------------------------------


def _raising_apply(src: Path, dst: Path, ctx: Any, options: dict[str, Any]) -> None:
    # A real failure: the pass asks onnx to convert to an opset that does not exist.
    from onnx import version_converter

    version_converter.convert_version(onnx.load(str(src)), 999)


def _invalid_apply(src: Path, dst: Path, ctx: Any, options: dict[str, Any]) -> None:
    # Writes a graph whose node reads a tensor nothing produces: onnx saves it, ONNX Runtime refuses it.
    model = onnx.load(str(src))
    model.graph.node[0].input[0] = "nowhere"
    onnx.save(model, str(dst))


@pytest.fixture
def failing_passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from workbench.optimize import _passes

    always = lambda ctx: (True, "always")  # noqa: E731
    monkeypatch.setitem(_passes._PASSES, "raises", _passes.Pass("raises", "graph", "fails", always, _raising_apply))
    monkeypatch.setitem(_passes._PASSES, "invalid", _passes.Pass("invalid", "graph", "breaks", always, _invalid_apply))
    return ["raises", "invalid"]


def test_cli_packages_other_variants_and_names_failures_when_passes_fail(
        tmp_path: Path, failing_passes: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    model = mlp(tmp_path / "model.onnx", 17)
    out = tmp_path / "pkg"
    code = _optimize_cli(model, out, "--passes", ",".join(["int8-dynamic", *failing_passes]))
    printed = capsys.readouterr().out
    assert code == 0
    report = _assert_package_matches_fp32(model, out, _feeds(model))
    assert {row["variant"] for row in report["candidates"]} == {"fp32", "int8-dynamic"}
    assert report["skipped"]["raises"].startswith("failed: pass raises failed: ")
    assert report["skipped"]["invalid"].startswith("failed: the built model does not run: ")
    assert "nowhere" in report["skipped"]["invalid"]
    assert all("\n" not in why for why in report["skipped"].values())
    assert "skipped raises: failed" in printed and "skipped invalid: failed" in printed


def test_int8_is_skipped_with_reason_when_opset_cannot_be_upgraded(tmp_path: Path) -> None:
    from workbench.optimize import optimize

    # Opset 7 BatchNormalization with spatial=0 runs in ONNX Runtime, but onnx's version converter has no
    # adapter for it: both INT8 passes (which need opset 11 and 13) are skipped, and FP32 is still offered.
    stats = [numpy_helper.from_array(np.full(8, v, np.float32), n) for n, v in
             (("scale", 1.0), ("shift", 0.0), ("mean", 0.1), ("var", 1.0))]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "scale", "shift", "mean", "var"], ["n"], spatial=0, name="bn"),
         helper.make_node("Gemm", ["n", "w", "b"], ["logits"], name="fc")],
        "bn7", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [*stats, _w("w", (8, 4), 19, 1.0), _w("b", (4,), 20, 0.1)])
    path = _save(graph, tmp_path / "bn7.onnx", 7)
    result = optimize(path, "x86-server", passes=["int8-static-minmax", "int8-dynamic"], use_cache=False,
                      sweep=False, warmup=1, iterations=4, rounds=1)
    for variant, needed in (("int8-static-minmax", 13), ("int8-dynamic", 11)):
        why = result.skipped[variant]
        assert f"needs opset {needed}" in why and "the model has 7" in why and "version converter" in why
    assert result.best.variant == "fp32"


# -- generated and given data ------------------------------------------------------------------


def test_generated_data_respects_dtype_and_role_when_inputs_are_rate_state_ids_and_mask(tmp_path: Path) -> None:
    from workbench.optimize._data import generated_samples
    from workbench.protocol.spec import ModelSpec

    vad = ModelSpec.from_path(voice_activity(tmp_path / "vad.onnx"))
    vad_samples = generated_samples(vad, 8, seed=0)
    assert not vad_samples.stacked  # a scalar sr: fed one sample at a time
    assert vad_samples.inputs["sr"].dtype == np.int64 and set(vad_samples.inputs["sr"].tolist()) == {16000}
    assert vad_samples.inputs["state"].shape[1] == 2 and not vad_samples.inputs["state"].any()
    tokens = ModelSpec.from_path(token_classifier(tmp_path / "tok.onnx"))
    assert tokens.inputs[0].high == 50  # the embedding table's rows
    ids = generated_samples(tokens, 16, seed=0).inputs["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 50 and len(np.unique(ids)) > 10
    keep = generated_samples(ModelSpec.from_path(masked(tmp_path / "mask.onnx")), 4).inputs["keep"]
    assert keep.dtype == np.bool_ and keep.any() and not keep.all()


def test_state_input_gets_previous_fp32_state_when_samples_are_generated(tmp_path: Path) -> None:
    from workbench.optimize._data import generated_samples
    from workbench.optimize._shapes import resolve_shapes
    from workbench.optimize._state import roll_state, state_pairs
    from workbench.protocol.spec import ModelSpec

    path = voice_activity(tmp_path / "vad.onnx")
    spec = ModelSpec.from_path(path)
    assert state_pairs(spec) == {"state": "stateN"}
    shapes = resolve_shapes(spec, path)
    samples = roll_state(path, generated_samples(shapes.full, 4, seed=0, stacked=shapes.stacked),
                         state_pairs(spec))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    states = samples.inputs["state"]
    assert not states[0].any()
    for index in range(3):
        feeds = {name: array[index, ...] for name, array in samples.inputs.items()}
        expected = session.run(["stateN"], feeds)[0]
        np.testing.assert_array_equal(states[index + 1], expected)
    assert states[3].any()


def test_report_names_npz_data_when_cli_is_given_npz_keyed_by_input_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = two_inputs(tmp_path / "two.onnx")
    rng = np.random.default_rng(5)
    data = tmp_path / "data.npz"
    np.savez(data, a=rng.standard_normal((24, 8)).astype(np.float32), b=rng.standard_normal((24, 8)).astype(np.float32))
    code = _optimize_cli(model, tmp_path / "pkg", "--passes", "int8-dynamic", "--eval", str(data), "--calibration",
                         str(data), "--metric", "agreement")
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "pkg" / "report.json").read_text())
    assert report["data"]["eval"] == "given: npz file data.npz" and report["data"]["eval_samples"] == 24
    assert report["data"]["calibration"] == "given: npz file data.npz"
    assert "data: eval given: npz file data.npz (24 samples)" in printed
    assert "<b>Data:</b> eval: given: npz file data.npz (24 samples)" in (tmp_path / "pkg" / "report.html").read_text()


def test_images_are_resized_to_the_input_when_data_is_a_directory_of_images(tmp_path: Path) -> None:
    from workbench.optimize import optimize

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(6)
    for index in range(5):
        np.save(images / f"img{index}.npy", rng.integers(0, 256, (40 + index, 30, 3)).astype(np.uint8))
    model = conv_classifier(tmp_path / "cls.onnx", [-1, 3, -1, -1], 11)
    result = optimize(model, "x86-server", calibration_data=images, eval_data=images, metric="agreement",
                      input_shapes={"x": (1, 3, 32, 32)}, passes=["int8-static-minmax"], use_cache=False,
                      sweep=False, warmup=1, iterations=4, rounds=1)
    assert result.data["eval"] == "given: 5 images from images/, resized to 32x32, scaled to [0, 1]"
    assert result.data["calibration_samples"] == 5
    assert "x=[N,3,32,32]" in result.data["input_shapes"]


def test_torch_dataloader_and_callable_are_read_when_given_as_data(tmp_path: Path) -> None:
    import torch

    from workbench.optimize._data import to_samples
    from workbench.protocol.spec import ModelSpec

    spec = ModelSpec.from_path(mlp(tmp_path / "mlp.onnx", 17))
    x = torch.randn(10, 16)
    y = torch.arange(10) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    from_loader = to_samples(loader, spec, what="eval data")
    assert from_loader.count == 10 and from_loader.origin == "given: torch DataLoader (3 batches)"
    np.testing.assert_array_equal(from_loader.labels, y.numpy())

    def calibration_set() -> np.ndarray:
        return x.numpy()[:6]

    from_callable = to_samples(calibration_set, spec, what="calibration data")
    assert from_callable.count == 6 and from_callable.origin == "given: callable calibration_set()"


def test_optimize_says_fp32_does_not_run_on_eval_data_when_given_data_breaks_the_model(tmp_path: Path) -> None:
    from workbench.errors import OptimizeError
    from workbench.optimize import optimize

    model = reshape_35(tmp_path / "r35.onnx")
    wrong = np.zeros((4, 36), np.float32)  # the model's dim is dynamic, so only running it shows 36 is wrong
    with pytest.raises(OptimizeError, match=r"FP32 model does not run on the eval data.*x\['batch', 'n'\]"):
        optimize(model, "x86-server", eval_data=wrong, calibration_data=wrong, metric="agreement", use_cache=False,
                 sweep=False, warmup=1, iterations=4, rounds=1)


def test_optimize_rejects_input_shapes_when_rank_or_fixed_size_disagrees(tmp_path: Path) -> None:
    from workbench.errors import ConfigError
    from workbench.optimize import optimize

    model = conv_classifier(tmp_path / "cls.onnx", [-1, 3, -1, -1], 11)
    with pytest.raises(ConfigError, match=r"input 'x' has rank 4 \[\?, 3, \?, \?\].*3 dims"):
        optimize(model, "x86-server", input_shapes={"x": (1, 3, 32)}, use_cache=False)
    with pytest.raises(ConfigError, match=r"fixed size 3 on axis 1.*says 4"):
        optimize(model, "x86-server", input_shapes={"x": "1,4,32,32"}, use_cache=False)


def test_grey_images_become_nhwc_rgb_when_model_takes_channels_last(tmp_path: Path) -> None:
    from workbench.optimize._data import to_samples
    from workbench.optimize._shapes import resolve_shapes
    from workbench.protocol.spec import ModelSpec

    images = tmp_path / "grey"
    images.mkdir()
    for index in range(3):
        np.save(images / f"g{index}.npy", np.full((10, 14), 51 * index, np.uint8))
    path = tf2onnx_style(tmp_path / "tf.onnx")
    shapes = resolve_shapes(ModelSpec.from_path(path), path, {"input_1:0": (1, 20, 28, 3)})
    samples = to_samples(images, shapes.given, what="calibration data", sizes=shapes.full)
    batch = samples.inputs["input_1:0"]
    assert batch.shape == (3, 20, 28, 3) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[:, 0, 0, :], [[0.0] * 3, [0.2] * 3, [0.4] * 3], atol=1e-6)


@pytest.mark.parametrize("build", [with_if, with_loop], ids=["if", "loop"])
def test_static_int8_is_skipped_and_dynamic_quantizes_the_body_when_matmuls_sit_in_control_flow(
        build: Callable[[Path], Path], tmp_path: Path) -> None:
    from workbench.optimize import optimize

    model = build(tmp_path / "model.onnx")
    result = optimize(model, "x86-server", passes=["int8-static-minmax", "int8-dynamic"], use_cache=False,
                      iterations=4, rounds=1, warmup=1, sweep=False)
    # ORT's static quantizer does not look inside If/Loop bodies: an "INT8" variant would hold no INT8.
    assert "inside control flow" in result.skipped["int8-static-minmax"]
    assert not result.skipped["int8-static-minmax"].startswith("failed")
    body_ops = {inner.op_type for node in onnx.load(str(result.files["int8-dynamic"])).graph.node
                for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH for inner in attr.g.node}
    assert "MatMulInteger" in body_ops or "DynamicQuantizeLinear" in body_ops, body_ops
