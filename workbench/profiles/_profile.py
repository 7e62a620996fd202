"""The hardware profile: what a class of edge device offers an ONNX model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class HardwareProfile:
    """A named class of edge hardware.

    ``isa_features`` use Linux ``/proc/cpuinfo`` flag names (``avx2``, ``avx512_vnni``,
    ``asimddp`` for the Arm dot-product instructions), so a real device's detected flags
    compare directly. ``execution_providers`` are ONNX Runtime provider names in the order
    worth trying; ``precisions`` are the numeric formats worth building for this hardware.

    Example:
        >>> from workbench.profiles import get_profile
        >>> get_profile("raspberry-pi-5").cores
        4
    """

    name: str
    description: str
    arch: str  # "x86_64" or "aarch64"
    cores: int
    memory_mb: int
    isa_features: tuple[str, ...] = ()
    accelerators: tuple[str, ...] = ()
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    precisions: tuple[str, ...] = ("fp32",)
    disk_mb: int = 16_384
    tags: tuple[str, ...] = field(default=())

    @property
    def int8_dot_product(self) -> bool:
        """True when the CPU has instructions that make INT8 matrix work pay (VNNI, Arm dot product)."""
        return bool(set(self.isa_features) & INT8_DOT_PRODUCT_FEATURES)

    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON-ready data.

        Example:
            >>> from workbench.profiles import get_profile
            >>> get_profile("intel-nuc").to_dict()["arch"]
            'x86_64'
        """
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        data["int8_dot_product"] = self.int8_dot_product
        return data


# CPU flags under which ONNX Runtime's INT8 kernels use a dot-product instruction.
INT8_DOT_PRODUCT_FEATURES = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})
