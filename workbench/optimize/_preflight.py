"""Before quantizing: is INT8 likely to pay on this CPU, and why. The measurement decides."""

from __future__ import annotations

from collections.abc import Iterable

_DOT = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8",
        "asimddp": "the Arm dot-product instructions (SDOT/UDOT)", "i8mm": "Arm I8MM"}


def int8_outlook(isa_features: Iterable[str], arch: str) -> tuple[bool | None, str]:
    """(likely to help?, why) for INT8 on a CPU with these ISA flags; None means "measure to know".

    Example:
        >>> int8_outlook(["avx2", "avx512_vnni"], "x86_64")[0]
        True
        >>> int8_outlook(["neon", "asimd"], "aarch64")[0]
        False
    """
    flags = set(isa_features)
    found = [label for flag, label in _DOT.items() if flag in flags]
    if found:
        return True, (f"{', '.join(found)} multiply-accumulate four INT8 pairs per lane per instruction, so "
                      "ONNX Runtime's INT8 Conv/MatMul kernels can run 2-4x the FP32 throughput")
    if arch in ("x86_64", "amd64") and "avx2" in flags:
        return None, ("AVX2 without VNNI: INT8 kernels use vpmaddubsw/vpmaddwd (about 2x the FP32 work per "
                      "instruction, with 16-bit intermediates), so larger convolutions gain modestly and tiny "
                      "models often do not; the measurement decides")
    if arch in ("aarch64", "arm64"):
        return False, ("NEON without the dot-product extension (asimddp): INT8 widens to 16-bit multiplies, "
                       "roughly the FP32 rate, so INT8 mostly saves size and memory bandwidth, not time")
    return False, "no SIMD INT8 support detected: INT8 is unlikely to be faster than FP32 here"
