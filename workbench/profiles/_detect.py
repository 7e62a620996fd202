"""Detect the hardware this process runs on. A real agent reports this; it is never invented."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

import psutil

# Flags worth reporting: the ones that decide which ONNX Runtime kernels run.
_INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2",
)


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    model, flags = "", set[str]()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    if platform.machine() in ("aarch64", "arm64"):
        flags.add("neon")  # every AArch64 core has Advanced SIMD; /proc/cpuinfo calls it asimd
    return model or platform.machine(), flags


def cpu_features() -> list[str]:
    """The ISA flags of this machine's CPU that matter for inference kernels.

    Example:
        >>> isinstance(cpu_features(), list)
        True
    """
    _, flags = _cpuinfo()
    return [flag for flag in _INTERESTING_FLAGS if flag in flags]


def _temperature_c() -> float | None:
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is None:
        return None
    try:
        readings = sensors()
    except OSError:
        return None
    for entries in readings.values():
        for entry in entries:
            if entry.current:
                return float(entry.current)
    return None


def detect_hardware(data_dir: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """Measure the host: CPU model and flags, cores, memory, free disk, OS, ONNX Runtime.

    Example:
        >>> hw = detect_hardware()
        >>> hw["cores"] >= 1
        True
    """
    model, _ = _cpuinfo()
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
        providers = list(onnxruntime.get_available_providers())
    except ImportError:  # an agent without onnxruntime can still join and report
        ort_version, providers = None, []
    disk = shutil.disk_usage(data_dir)
    return {
        "cpu_model": model,
        "isa_features": cpu_features(),
        "cores": psutil.cpu_count(logical=True) or 1,
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_mb": psutil.virtual_memory().total // 2**20,
        "disk_free_mb": disk.free // 2**20,
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort_version,
        "execution_providers": providers,
        "temperature_c": _temperature_c(),
    }
