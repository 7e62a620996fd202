"""The model a device serves: ONNX Runtime sessions under the device's limits, swapped atomically."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from workbench.agent._limits import DeviceLimits
from workbench.errors import ResourceLimitError, WorkbenchError
from workbench.protocol.artifacts import sha256_file


class ModelLoadError(WorkbenchError):
    """A model file could not be loaded into ONNX Runtime."""


@dataclass
class LoadedModel:
    """A model loaded into an ONNX Runtime session, ready to serve."""

    path: Path
    sha256: str
    session: Any = field(repr=False)
    name: str = ""
    version: str = ""
    load_ms: float = 0.0
    rss_growth_mb: float = 0.0

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return [{"name": i.name, "shape": list(i.shape), "type": i.type} for i in self.session.get_inputs()]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return [{"name": o.name, "shape": list(o.shape), "type": o.type} for o in self.session.get_outputs()]

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for inventory and telemetry."""
        return {"name": self.name or self.path.stem, "version": self.version, "sha256": self.sha256,
                "path": str(self.path), "inputs": self.inputs, "outputs": self.outputs,
                "load_ms": round(self.load_ms, 3), "rss_growth_mb": round(self.rss_growth_mb, 3)}


class ModelRuntime:
    """Holds the active model; loads new ones under the device's thread and memory limits.

    Serving never pauses for a swap: :meth:`infer` takes the active session under a lock
    and runs it outside, so a swap only changes which session the next call gets.

    Example:
        >>> runtime = ModelRuntime(DeviceLimits(threads=1, memory_mb=512))   # doctest: +SKIP
        >>> runtime.activate(runtime.load(Path("model.onnx")))              # doctest: +SKIP
        >>> runtime.infer({"input": x})                                     # doctest: +SKIP
    """

    def __init__(self, limits: DeviceLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._active: LoadedModel | None = None
        # observer(feeds, outputs, latency_ms) after each answer (shadow mode); must be quick.
        self.observers: list[Callable[[dict[str, np.ndarray], list[np.ndarray], float], None]] = []

    @property
    def active(self) -> LoadedModel | None:
        with self._lock:
            return self._active

    def load(self, path: Path, *, sha256: str | None = None, name: str = "", version: str = "") -> LoadedModel:
        """Load ``path`` into a new session (not yet active), checking the memory limit.

        Raises :class:`ModelLoadError` for a file ONNX Runtime rejects and
        :class:`ResourceLimitError` when the file or the session's measured memory
        growth exceeds the device's memory limit.
        """
        import onnxruntime as ort

        path = Path(path)
        size_mb = path.stat().st_size / 2**20
        self.limits.check_memory(size_mb, f"model {path.name} ({size_mb:.1f} MB on disk)")
        process = psutil.Process()
        before = process.memory_info().rss
        start = time.perf_counter()
        try:
            session = ort.InferenceSession(str(path), sess_options=self.limits.session_options(),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"ONNX Runtime cannot load {path.name}: {exc}; check that the file is a "
                                 "complete, valid ONNX model") from None
        load_ms = (time.perf_counter() - start) * 1000
        growth_mb = max(0.0, (process.memory_info().rss - before) / 2**20)
        try:
            self.limits.check_memory(growth_mb, f"model {path.name} (measured {growth_mb:.1f} MB resident)")
        except ResourceLimitError:
            del session
            raise
        return LoadedModel(path, sha256 or sha256_file(path), session, name, version, load_ms, growth_mb)

    def activate(self, model: LoadedModel) -> LoadedModel | None:
        """Make ``model`` the one served; return the previous one."""
        with self._lock:
            previous, self._active = self._active, model
        return previous

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the active model; raises :class:`ModelLoadError` when none is active."""
        model = self.active
        if model is None:
            raise ModelLoadError("no model is active on this device; deploy one first")
        start = time.perf_counter()
        outputs = list(model.session.run(None, feeds))
        for observer in list(self.observers):
            observer(feeds, outputs, (time.perf_counter() - start) * 1000)
        return outputs
