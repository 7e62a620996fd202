"""GPU paths of the optimizer: CUDA/TensorRT and FP16 are tried for GPU profiles only where onnxruntime has them.

This machine's onnxruntime is the CPU build, so here the GPU profiles must skip those paths with a stated
reason; the GPU test at the end runs only where a CUDA-enabled onnxruntime is installed.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from conftest import FleetFactory
from test_optimize_onnx import FAST, labelled, make_mlp

import workbench
from workbench.agent._benchmark import _providers
from workbench.optimize import optimize
from workbench.profiles import get_profile

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
GPU_PROFILES = ["jetson-orin-nano", "x86-server-gpu"]


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_gpu_profiles_declare_cuda_tensorrt_and_fp16_when_registered(profile: str) -> None:
    spec = get_profile(profile)
    assert set(GPU_PROVIDERS) <= set(spec.execution_providers) and "fp16" in spec.precisions
    assert spec.execution_providers[-1] == "CPUExecutionProvider"


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA, so the GPU paths are not skipped here")
@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_optimize_skips_gpu_providers_and_fp16_with_reason_when_onnxruntime_lacks_them(
    profile: str, tmp_path: Path
) -> None:
    mlp = make_mlp(tmp_path / "mlp.onnx")
    result = optimize(mlp, profile, eval_data=labelled(mlp), passes=["graph-opt", "fp16"], sweep=False,
                      use_cache=False, **FAST)
    for provider in GPU_PROVIDERS:
        assert "not available in the onnxruntime build" in result.skipped[f"provider {provider}"]
    assert "no GPU execution provider is available" in result.skipped["fp16"]
    frame = result.candidates
    assert "fp16" not in set(frame["variant"]) and "fp16" not in result.files
    assert set(frame["provider"]) == {"CPUExecutionProvider"}, "timings must name the provider that ran them"
    assert result.target["providers"] == ["CPUExecutionProvider"]
    report = (result.save(tmp_path / "package", report=True) / "report.html").read_text()
    assert "provider CUDAExecutionProvider" in report and "no GPU execution provider" in report


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA, so the GPU paths are not skipped here")
def test_optimize_on_gpu_profile_device_skips_cuda_with_reason_when_device_runtime_lacks_it(
    fleet_factory: FleetFactory, tmp_path: Path
) -> None:
    record = fleet_factory(devices=1, profiles=["x86-server-gpu"])
    mlp = make_mlp(tmp_path / "mlp.onnx")
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        device = fleet.wait_for(1, timeout=30)[0]
        result = optimize(mlp, device, eval_data=labelled(mlp), passes=["fp16"], sweep=False, use_cache=False,
                          **FAST)
    assert "not available in the onnxruntime build" in result.skipped["provider CUDAExecutionProvider"]
    assert "no GPU execution provider" in result.skipped["fp16"]
    assert set(result.candidates["provider"]) == {"CPUExecutionProvider"}
    assert result.candidates["measured_on"].str.startswith(f"simulated device {device.device_id}").all()


def test_agent_benchmark_providers_keep_only_available_ones_when_gpu_is_requested() -> None:
    available = set(ort.get_available_providers())
    chosen = _providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert chosen[-1] == "CPUExecutionProvider" and chosen.count("CPUExecutionProvider") == 1
    assert [p for p in chosen[:-1] if p not in available] == []
    assert _providers(None) == ["CPUExecutionProvider"]
    assert _providers(["NoSuchProvider", 3]) == ["CPUExecutionProvider"]


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider in this onnxruntime build (the CPU build): "
                                         "the GPU optimize path runs only where onnxruntime-gpu and a GPU are")
def test_optimize_builds_and_times_fp16_on_cuda_when_host_has_a_gpu(tmp_path: Path) -> None:
    mlp = make_mlp(tmp_path / "mlp.onnx")
    result = optimize(mlp, "x86-server-gpu", eval_data=labelled(mlp), passes=["fp16"], sweep=False,
                      use_cache=False, **FAST)
    assert "fp16" in set(result.candidates["variant"]), result.skipped
    assert result.row("fp16")["provider"] in GPU_PROVIDERS
    assert "provider CUDAExecutionProvider" not in result.skipped
