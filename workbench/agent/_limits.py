"""Resource limits a device honours: its profile's cores and memory, applied for real."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psutil

from workbench.errors import ResourceLimitError
from workbench.profiles import HardwareProfile


@dataclass(frozen=True)
class DeviceLimits:
    """Inference threads and memory a device may use.

    A simulated device takes its profile's core count (capped at this host's) as the
    ONNX Runtime thread count and its profile's memory as a budget that loading a model
    must fit in: the model's measured resident growth is checked against it.

    Example:
        >>> from workbench.profiles import get_profile
        >>> DeviceLimits.for_profile(get_profile("raspberry-pi-4")).threads <= 4
        True
    """

    threads: int
    memory_mb: int

    @classmethod
    def for_profile(cls, profile: HardwareProfile) -> DeviceLimits:
        host_cores = os.cpu_count() or 1
        host_mb = psutil.virtual_memory().total // 2**20
        return cls(threads=max(1, min(profile.cores, host_cores)), memory_mb=min(profile.memory_mb, host_mb))

    @classmethod
    def for_host(cls) -> DeviceLimits:
        return cls(threads=os.cpu_count() or 1, memory_mb=psutil.virtual_memory().total // 2**20)

    def session_options(self) -> Any:
        """ONNX Runtime session options that keep inference inside the thread limit."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        return options

    def check_memory(self, needed_mb: float, what: str) -> None:
        """Raise :class:`ResourceLimitError` if ``needed_mb`` does not fit the memory budget."""
        if needed_mb > self.memory_mb:
            raise ResourceLimitError(
                f"{what} needs {needed_mb:.0f} MB but the device's memory limit is {self.memory_mb} MB; "
                "use a smaller model (quantize or prune it) or a device with more memory"
            )

    def to_dict(self) -> dict[str, int]:
        return {"threads": self.threads, "memory_mb": self.memory_mb}
