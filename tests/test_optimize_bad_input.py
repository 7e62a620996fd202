"""Bad input to optimize() and `workbench optimize`: each a clear error naming the problem, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper
from test_optimize_onnx import FAST, labelled, make_mlp

from workbench.errors import ConfigError, DeviceOfflineError, OptimizeError, UnknownProfileError
from workbench.fleet import Device
from workbench.optimize import optimize


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return make_mlp(tmp_path / "mlp.onnx")


def test_optimize_raises_when_file_is_not_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(OptimizeError, match=r"garbage\.onnx"):
        optimize(bad, "x86-server", use_cache=False)


def test_optimize_raises_when_file_is_truncated(mlp: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    data = mlp.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(OptimizeError, match=r"cut\.onnx"):
        optimize(cut, "x86-server", use_cache=False)


def test_optimize_raises_when_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        optimize(tmp_path / "nope.onnx", "x86-server", use_cache=False)


@pytest.mark.parametrize("opset", [6, 99])
def test_optimize_raises_when_opset_is_unsupported(tmp_path: Path, opset: int) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / f"opset{opset}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    with pytest.raises(OptimizeError, match=f"opset {opset}"):
        optimize(path, "x86-server", use_cache=False)


def test_optimize_raises_when_calibration_shape_is_wrong(mlp: Path) -> None:
    with pytest.raises(ConfigError, match=r"calibration data.*axis 1 must be 16"):
        optimize(mlp, "x86-server", metric="agreement", calibration_data=np.zeros((8, 15), np.float32),
                 use_cache=False)


def test_optimize_raises_when_calibration_dtype_is_wrong(mlp: Path) -> None:
    with pytest.raises(ConfigError, match=r"calibration data.*dtype int64.*float32"):
        optimize(mlp, "x86-server", metric="agreement", calibration_data=np.zeros((8, 16), np.int64),
                 use_cache=False)


def test_optimize_raises_when_eval_set_has_no_labels(mlp: Path) -> None:
    with pytest.raises(ConfigError, match="no labels"):
        optimize(mlp, "x86-server", eval_data=np.zeros((8, 16), np.float32), use_cache=False)


def test_optimize_raises_when_labels_do_not_match_samples(mlp: Path) -> None:
    with pytest.raises(ConfigError, match="8 samples but 5 labels"):
        optimize(mlp, "x86-server", eval_data=(np.zeros((8, 16), np.float32), np.zeros(5)), use_cache=False)


def test_optimize_raises_when_profile_is_unknown(mlp: Path) -> None:
    with pytest.raises(UnknownProfileError, match="no-such-board"):
        optimize(mlp, "no-such-board", use_cache=False)


def test_optimize_raises_when_device_is_offline(mlp: Path) -> None:
    device = Device("sim-09", _fleet=None, online=False)  # type: ignore[arg-type]
    with pytest.raises(DeviceOfflineError, match="sim-09"):
        optimize(mlp, device, use_cache=False)


def test_save_raises_when_nothing_meets_constraints(mlp: Path, tmp_path: Path) -> None:
    x, y = labelled(mlp)
    result = optimize(mlp, "x86-server", eval_data=(x, y), passes=[], max_size_mb=1e-6, use_cache=False, **FAST)
    assert result.best.variant is None
    assert "size" in result.best.reason and "over by" in result.best.reason
    with pytest.raises(OptimizeError, match="nothing to save"):
        result.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_fails_cleanly_without_output_when_model_is_truncated(mlp: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mlp.read_bytes()[:100])
    proc = run_cli("optimize", str(cut), "--target", "x86-server", "--out", str(tmp_path / "out"), "--no-cache")
    assert proc.returncode == 1
    assert "not a valid ONNX model" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_fails_cleanly_when_target_is_neither_profile_nor_device(mlp: Path, tmp_path: Path) -> None:
    proc = run_cli("optimize", str(mlp), "--target", "toaster", "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "toaster" in proc.stderr and "--run-dir" in proc.stderr
