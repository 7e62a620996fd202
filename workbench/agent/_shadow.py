"""Shadow mode on the device: a candidate model answers the same inputs as the active one, off the serving path.

The active model keeps answering every request exactly as before; after each answer the
runtime hands the input and the output to :class:`ShadowRun` (a queue put, nothing more). A
worker thread runs the candidate on that input, times it and compares its output with the
active model's. Agreement is top-1 equality for outputs with a class axis (last axis longer
than one), equality within the package's tolerance otherwise. When the worker falls behind,
inputs are dropped and counted, never queued without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np

from workbench.agent._runtime import LoadedModel, ModelRuntime

_Item = tuple[dict[str, np.ndarray], list[np.ndarray], float]


def outputs_agree(got: list[Any], want: list[np.ndarray], *, atol: float, rtol: float) -> bool:
    """Whether a candidate's outputs agree with the active model's (top-1 for class scores, else allclose).

    Example:
        >>> outputs_agree([np.array([[0.1, 0.9]])], [np.array([[0.3, 0.7]])], atol=1e-4, rtol=1e-3)
        True
    """
    if len(got) != len(want):
        return False
    for candidate, active in zip(got, want, strict=True):
        candidate, active = np.asarray(candidate), np.asarray(active)
        if candidate.shape != active.shape:
            return False
        if active.ndim >= 2 and active.shape[-1] > 1:
            if not np.array_equal(candidate.argmax(axis=-1), active.argmax(axis=-1)):
                return False
        elif not np.allclose(candidate, active, atol=atol, rtol=rtol, equal_nan=True):
            return False
    return True


class ShadowRun:
    """Run ``candidate`` next to the runtime's active model on the inputs it serves, for a while.

    Example:
        >>> stats = ShadowRun(runtime, candidate, atol=1e-4, rtol=1e-3).run(10.0)   # doctest: +SKIP
        >>> stats["agreement"], stats["candidate_p95_ms"]                          # doctest: +SKIP
    """

    def __init__(self, runtime: ModelRuntime, candidate: LoadedModel, *, atol: float, rtol: float,
                 queue_size: int = 64) -> None:
        self.runtime = runtime
        self.candidate = candidate
        self.atol, self.rtol = atol, rtol
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        self.samples = self.agreed = self.dropped = self.candidate_errors = 0
        self.active_ms: list[float] = []
        self.candidate_ms: list[float] = []

    def _observe(self, feeds: dict[str, np.ndarray], outputs: list[np.ndarray], latency_ms: float) -> None:
        try:
            self._queue.put_nowait((feeds, outputs, latency_ms))
        except queue.Full:
            self.dropped += 1

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            feeds, outputs, active_ms = item
            start = time.perf_counter()
            try:
                got = self.candidate.session.run(None, feeds)
            except Exception:  # onnxruntime's untyped errors: a candidate failing an input counts against it
                self.candidate_errors += 1
                self.samples += 1
                continue
            self.candidate_ms.append((time.perf_counter() - start) * 1000)
            self.active_ms.append(active_ms)
            self.samples += 1
            self.agreed += outputs_agree(got, outputs, atol=self.atol, rtol=self.rtol)

    def run(self, duration: float, stop: threading.Event | None = None) -> dict[str, Any]:
        """Shadow for ``duration`` seconds (or until ``stop``); return agreement and both models' latency."""
        worker = threading.Thread(target=self._work, name="shadow", daemon=True)
        worker.start()
        self.runtime.observers.append(self._observe)
        try:
            (stop or threading.Event()).wait(duration)
        finally:
            self.runtime.observers.remove(self._observe)
            self._queue.put(None)
            worker.join(timeout=30)
        return self.stats(duration)

    def stats(self, duration: float) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)), 4) if values else None

        return {"duration_s": duration, "samples": self.samples, "agreed": self.agreed,
                "agreement": round(self.agreed / self.samples, 6) if self.samples else None,
                "dropped": self.dropped, "candidate_errors": self.candidate_errors,
                "active_p50_ms": pct(self.active_ms, 50), "active_p95_ms": pct(self.active_ms, 95),
                "candidate_p50_ms": pct(self.candidate_ms, 50), "candidate_p95_ms": pct(self.candidate_ms, 95)}
