"""Preflight: decide from a device's inventory, before any byte is sent, whether the package can run there."""

from __future__ import annotations

from typing import Any

from workbench.protocol.package import Package

# The highest ai.onnx opset each ONNX Runtime release runs (from its release notes); newer releases run at least 23.
_ORT_MAX_OPSET = {(1, 14): 18, (1, 15): 19, (1, 16): 19, (1, 17): 20, (1, 18): 21, (1, 19): 21, (1, 20): 21,
                  (1, 21): 22, (1, 22): 22, (1, 23): 23}


def max_opset(ort_version: str | None) -> int | None:
    """The highest opset an ONNX Runtime version supports, or None when unknown.

    Example:
        >>> max_opset("1.17.3"), max_opset("1.32.0")
        (20, 23)
    """
    try:
        major, minor = (int(part) for part in str(ort_version).split(".")[:2])
    except ValueError:
        return None
    if (major, minor) in _ORT_MAX_OPSET:
        return _ORT_MAX_OPSET[(major, minor)]
    return 23 if (major, minor) > max(_ORT_MAX_OPSET) else None


def preflight(package: Package, inventory: dict[str, Any]) -> list[str]:
    """Reasons the package cannot go to the device (empty: it can).

    Checks free disk (room for the package in a slot), the memory limit against the
    package's memory estimate, the opset against the device's ONNX Runtime, the execution
    providers, and the package's target profile.

    Example:
        >>> preflight(pkg, fleet["sim-01"].inventory_data)   # doctest: +SKIP
        []
    """
    reasons = []
    hardware = inventory.get("hardware") or {}
    limits = inventory.get("limits") or {}
    requirements = package.manifest.get("requirements") or {}
    free_mb = hardware.get("disk_free_mb")
    need_mb = package.size / 2**20
    if isinstance(free_mb, int | float) and free_mb < need_mb:
        reasons.append(f"not enough disk: the package needs {need_mb:.1f} MB, {free_mb:.0f} MB free")
    memory_mb = limits.get("memory_mb")
    estimate = requirements.get("memory_mb_estimate")
    if isinstance(memory_mb, int | float) and isinstance(estimate, int | float) and estimate > memory_mb:
        reasons.append(f"not enough memory: the model needs about {estimate:.0f} MB (estimate), the device's "
                       f"limit is {memory_mb} MB")
    opset = requirements.get("opset")
    supported = max_opset(hardware.get("onnxruntime"))
    if isinstance(opset, int) and supported is not None and opset > supported:
        reasons.append(f"opset {opset} is newer than ONNX Runtime {hardware.get('onnxruntime')} on the device runs "
                       f"(up to {supported}); export with a lower opset or upgrade the agent")
    providers = hardware.get("execution_providers")
    needed = requirements.get("execution_providers") or []
    if isinstance(providers, list) and providers:
        missing = [p for p in needed if p not in providers]
        if missing:
            reasons.append(f"execution provider(s) {', '.join(missing)} not available on the device "
                           f"(it has {', '.join(providers)})")
    target = package.manifest.get("target")
    profile = inventory.get("profile")
    if isinstance(target, str) and target and profile and target != profile:
        reasons.append(f"the package was optimized for {target}, the device is a {profile}; optimize it for "
                       f"{profile} or deploy to {target} devices")
    return reasons
