"""The registry of named hardware profiles."""

from __future__ import annotations

from workbench.errors import UnknownProfileError
from workbench.profiles._profile import HardwareProfile

_PROFILES: dict[str, HardwareProfile] = {}


def register_profile(profile: HardwareProfile, *, replace: bool = False) -> HardwareProfile:
    """Add a profile to the registry, so ``workbench up --profiles NAME`` and ``optimize`` know it.

    Example:
        >>> from workbench.profiles import HardwareProfile, register_profile
        >>> _ = register_profile(HardwareProfile("my-gateway", "4-core x86 gateway", "x86_64", 4, 8192),
        ...                      replace=True)
    """
    if profile.name in _PROFILES and not replace:
        raise ValueError(f"profile {profile.name!r} is already registered; pass replace=True to override it")
    if profile.cores < 1 or profile.memory_mb < 64:
        raise ValueError(f"profile {profile.name!r} needs at least 1 core and 64 MB of memory")
    _PROFILES[profile.name] = profile
    return profile


def get_profile(name: str) -> HardwareProfile:
    """Look a profile up by name.

    Example:
        >>> get_profile("jetson-orin-nano").execution_providers[0]
        'TensorrtExecutionProvider'
    """
    try:
        return _PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(_PROFILES))
        raise UnknownProfileError(f"unknown hardware profile {name!r}; known profiles: {known}") from None


def list_profiles() -> list[HardwareProfile]:
    """Every registered profile, sorted by name.

    Example:
        >>> "raspberry-pi-4" in [p.name for p in list_profiles()]
        True
    """
    return [_PROFILES[name] for name in sorted(_PROFILES)]


_CPU = ("CPUExecutionProvider",)

for _profile in (
    HardwareProfile(
        "raspberry-pi-4", "Raspberry Pi 4 Model B: 4x Cortex-A72 @1.8 GHz, no Arm dot product",
        "aarch64", 4, 4096, ("neon", "asimd"), (), ("XnnpackExecutionProvider", *_CPU),
        ("fp32", "int8"), 32_768, ("arm", "sbc"),
    ),
    HardwareProfile(
        "raspberry-pi-5", "Raspberry Pi 5: 4x Cortex-A76 @2.4 GHz with Arm dot product (asimddp)",
        "aarch64", 4, 8192, ("neon", "asimd", "asimddp"), (), ("XnnpackExecutionProvider", *_CPU),
        ("fp32", "int8"), 65_536, ("arm", "sbc"),
    ),
    HardwareProfile(
        "jetson-orin-nano", "NVIDIA Jetson Orin Nano 8GB: 6x Cortex-A78AE, 1024-core Ampere GPU (shared memory)",
        "aarch64", 6, 8192, ("neon", "asimd", "asimddp"), ("cuda:ampere-sm87",),
        ("TensorrtExecutionProvider", "CUDAExecutionProvider", *_CPU), ("fp32", "fp16", "int8"), 131_072,
        ("arm", "gpu"),
    ),
    HardwareProfile(
        "intel-nuc", "Intel NUC 11 (i5-1135G7): 4 cores, AVX2 and AVX-512 VNNI",
        "x86_64", 4, 16_384, ("avx2", "fma", "avx512f", "avx512_vnni"), ("intel-iris-xe",),
        ("OpenVINOExecutionProvider", *_CPU), ("fp32", "int8"), 262_144, ("x86",),
    ),
    HardwareProfile(
        "x86-server", "x86-64 edge server: 16 cores, AVX2 and AVX-512 VNNI",
        "x86_64", 16, 65_536, ("avx2", "fma", "avx512f", "avx512_vnni"), (), _CPU,
        ("fp32", "int8"), 1_048_576, ("x86",),
    ),
    HardwareProfile(
        "x86-server-gpu", "x86-64 edge server with an NVIDIA GPU: 16 cores, AVX-512 VNNI, CUDA and TensorRT",
        "x86_64", 16, 65_536, ("avx2", "fma", "avx512f", "avx512_vnni"), ("cuda",),
        ("TensorrtExecutionProvider", "CUDAExecutionProvider", *_CPU), ("fp32", "fp16", "int8"), 1_048_576,
        ("x86", "gpu"),
    ),
    HardwareProfile(
        "generic-arm64", "Generic 64-bit Arm board: 4 cores, NEON, 2 GB",
        "aarch64", 4, 2048, ("neon", "asimd"), (), _CPU, ("fp32", "int8"), 16_384, ("arm",),
    ),
):
    register_profile(_profile)
