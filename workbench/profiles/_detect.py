"""Detect the hardware this process runs on. A real agent reports this; it is never invented.

Everything is read from the files Linux publishes (``/proc/cpuinfo``, ``/proc/meminfo``,
``/proc/device-tree/model``, ``/sys/class/dmi/id``, ``/sys/class/thermal``) under a ``root``,
so a test can point detection at a copy of a real device's files.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any

import psutil

from workbench.profiles._profile import HardwareProfile

# Flags worth reporting: the ones that decide which ONNX Runtime kernels run.
_INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2",
)

# Arm's MIDR part numbers (implementer 0x41) of the cores edge boards use: AArch64 kernels
# print no "model name", so the part number is the only name of the core.
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE",
    "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
}

# Board names (device-tree model, or DMI product name on x86) -> profile. First match wins,
# so the longer name comes first.
_BOARDS = (
    (re.compile(r"Raspberry Pi 5\b"), "raspberry-pi-5"),
    (re.compile(r"Raspberry Pi (4|400|Compute Module 4)\b"), "raspberry-pi-4"),
    (re.compile(r"Jetson Orin Nano\b"), "jetson-orin-nano"),
    (re.compile(r"\bNUC"), "intel-nuc"),
)

# Providers an onnxruntime wheel lists that do not run a model on this device's hardware:
# AzureExecutionProvider calls a cloud endpoint.
NON_DEVICE_PROVIDERS = frozenset({"AzureExecutionProvider"})

# Thermal zone types that measure the CPU, best first; other zones (GPU, ACPI, PMIC) are fallbacks.
_CPU_ZONES = ("cpu-thermal", "x86_pkg_temp", "cpu_thermal", "soc_thermal", "tj-thermal")


def _read(root: Path, relative: str) -> str | None:
    try:
        return (root / relative).read_text(errors="replace")
    except OSError:
        return None


def _parse_cpuinfo(text: str) -> dict[str, Any]:
    info: dict[str, Any] = {"flags": set(), "processors": 0, "model": "", "parts": [], "arch_v8": False,
                            "x86_64": False}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            info["processors"] += 1
        elif key in ("model name", "cpu model") and not info["model"]:
            info["model"] = value
        elif key in ("flags", "features"):
            info["flags"].update(value.split())
            info["x86_64"] |= key == "flags" and "lm" in value.split()
        elif key == "cpu architecture":
            info["arch_v8"] |= value == "8"
        elif key == "cpu part" and value.lower() in _ARM_PARTS and _ARM_PARTS[value.lower()] not in info["parts"]:
            info["parts"].append(_ARM_PARTS[value.lower()])
    return info


def _cpu(root: Path) -> tuple[str, set[str], str, int]:
    """(model, flags, arch, logical processors listed) from ``root/proc/cpuinfo``."""
    text = _read(root, "proc/cpuinfo")
    if text is None:
        return platform.processor() or platform.machine(), set(), platform.machine(), 0
    info = _parse_cpuinfo(text)
    flags: set[str] = info["flags"]
    if info["x86_64"]:
        arch = "x86_64"
    elif info["arch_v8"] and "asimd" in flags:
        arch = "aarch64"
    else:
        arch = platform.machine() if root == Path("/") else "unknown"
    if arch == "aarch64":
        flags.add("neon")  # every AArch64 core has Advanced SIMD; /proc/cpuinfo calls it asimd
    # An A72's "ARMv8 Processor rev 3 (v8l)" names no core; the part number does.
    model = " + ".join(f"ARM {part}" for part in info["parts"]) or info["model"] or arch
    return model, flags, arch, int(info["processors"])


def _cores(root: Path, listed: int) -> int:
    online = _read(root, "sys/devices/system/cpu/online")
    if online and online.strip():
        count = 0
        for chunk in online.strip().split(","):
            low, _, high = chunk.partition("-")
            try:
                count += int(high or low) - int(low) + 1
            except ValueError:
                count = 0
                break
        if count > 0:
            return count
    if listed or root != Path("/"):
        return max(listed, 1)
    return psutil.cpu_count(logical=True) or 1


def _memory_mb(root: Path) -> int:
    text = _read(root, "proc/meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    if match:
        return int(match.group(1)) // 1024
    return int(psutil.virtual_memory().total // 2**20) if root == Path("/") else 0


def _board(root: Path) -> str | None:
    # The device tree's model ends in a NUL; x86 boards name themselves through DMI instead.
    model = _read(root, "proc/device-tree/model") or _read(root, "sys/firmware/devicetree/base/model")
    if model and model.strip("\x00\n "):
        return model.strip("\x00\n ")
    product = (_read(root, "sys/class/dmi/id/product_name") or "").strip()
    vendor = (_read(root, "sys/class/dmi/id/sys_vendor") or "").strip()
    name = " ".join(part for part in (vendor, product) if part)
    return name or None


def thermal_zones(root: str | os.PathLike[str] = "/") -> dict[str, float]:
    """Every readable ``/sys/class/thermal`` zone as ``{type: degrees Celsius}``.

    Example:
        >>> isinstance(thermal_zones(), dict)
        True
    """
    zones: dict[str, float] = {}
    base = Path(root) / "sys/class/thermal"
    try:
        entries = sorted(base.glob("thermal_zone*"), key=lambda p: int(p.name.removeprefix("thermal_zone") or 0))
    except (OSError, ValueError):
        return zones
    for zone in entries:
        kind = (_read(zone, "type") or zone.name).strip() or zone.name
        raw = (_read(zone, "temp") or "").strip()
        try:
            millidegrees = int(raw)
        except ValueError:
            continue  # a sensor that is powered down reads as an error, not a number
        if -40_000 <= millidegrees <= 150_000 and kind not in zones:
            zones[kind] = millidegrees / 1000
    return zones


def _temperature_c(root: Path) -> float | None:
    zones = thermal_zones(root)
    for kind in _CPU_ZONES:
        if kind in zones:
            return zones[kind]
    if zones:
        return next(iter(zones.values()))
    if root != Path("/"):
        return None
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


def cpu_features(root: str | os.PathLike[str] = "/") -> list[str]:
    """The ISA flags of this machine's CPU that matter for inference kernels.

    Example:
        >>> isinstance(cpu_features(), list)
        True
    """
    _, flags, _, _ = _cpu(Path(root))
    return [flag for flag in _INTERESTING_FLAGS if flag in flags]


def device_providers(available: list[str] | tuple[str, ...], profile: HardwareProfile | None = None) -> list[str]:
    """The execution providers that can run a model on the device, best first.

    ``available`` is what the onnxruntime wheel lists; providers that are not device
    accelerators (the Azure one) are dropped. For a simulated device, only the ones its
    profile also has remain, in the profile's order: a simulated Raspberry Pi must not
    claim the host's CUDA.

    Example:
        >>> device_providers(["AzureExecutionProvider", "CPUExecutionProvider"])
        ['CPUExecutionProvider']
    """
    usable = [p for p in available if p not in NON_DEVICE_PROVIDERS]
    if profile is None:
        return usable
    return [p for p in profile.execution_providers if p in usable]


def match_profile(hardware: dict[str, Any]) -> str | None:
    """The registered profile that describes detected ``hardware`` (see :func:`detect_hardware`).

    The board name decides; a board we do not know gets the generic profile of its
    architecture, or None when there is none.

    Example:
        >>> match_profile({"board": "Raspberry Pi 5 Model B Rev 1.0", "arch": "aarch64"})
        'raspberry-pi-5'
    """
    from workbench.profiles._registry import list_profiles

    board = str(hardware.get("board") or "")
    arch = hardware.get("arch")
    known = {p.name: p for p in list_profiles()}
    for pattern, name in _BOARDS:
        if pattern.search(board) and name in known and known[name].arch == arch:
            return name
    fallback = {"aarch64": "generic-arm64", "x86_64": "x86-server"}.get(str(arch))
    return fallback if fallback in known else None


def detect_hardware(data_dir: str | os.PathLike[str] = ".", *, root: str | os.PathLike[str] = "/") -> dict[str, Any]:
    """Measure the host: board, CPU model and flags, cores, memory, free disk, temperature, ONNX Runtime.

    ``root`` is where ``proc/`` and ``sys/`` are read from: ``/`` on a device, a copy of a
    device's files in a test.

    Example:
        >>> hw = detect_hardware()
        >>> hw["cores"] >= 1
        True
    """
    base = Path(root)
    model, flags, arch, listed = _cpu(base)
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
        providers = device_providers(list(onnxruntime.get_available_providers()))
    except ImportError:  # an agent without onnxruntime can still join and report
        ort_version, providers = None, []
    disk = shutil.disk_usage(data_dir)
    cores = _cores(base, listed)
    hardware: dict[str, Any] = {
        "board": _board(base),
        "cpu_model": model,
        "isa_features": [flag for flag in _INTERESTING_FLAGS if flag in flags],
        "cores": cores,
        "physical_cores": psutil.cpu_count(logical=False) if base == Path("/") else None,
        "memory_mb": _memory_mb(base),
        "disk_free_mb": disk.free // 2**20,
        "os": f"{platform.system()} {platform.release()}",
        "arch": arch,
        "python": platform.python_version(),
        "onnxruntime": ort_version,
        "execution_providers": providers,
        "temperature_c": _temperature_c(base),
        "thermal_zones": thermal_zones(base),
    }
    hardware["detected_profile"] = match_profile(hardware)
    return hardware
