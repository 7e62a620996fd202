"""Inference on the device: a data source feeds the active model, and every result becomes telemetry.

A simulated device replays a stream from ``datasets/`` at a configured rate (camera
frames from the digits, or smartwatch motion from BasicMotions); a real device gets
its inputs from ``POST /infer`` on a local HTTP port or from :meth:`InferenceLoop.submit`
(the Python hook). Classifier results under the confidence threshold are dropped and
counted; the rest are queued for sync.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.agent._http import JSONHandler
from workbench.errors import ConfigError, WorkbenchError

if TYPE_CHECKING:
    from workbench.agent._runtime import ModelRuntime

log = logging.getLogger("workbench.agent.inference")

Point = tuple[float, str, float]
SOURCES = ("digits", "sensors", "synthetic", "http", "none")


@dataclass
class Metrics:
    """Counters and the latencies of the current publish window, shared by loop and publisher."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inferences: int = 0
    errors: int = 0
    dropped_low_confidence: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    window_start: float = field(default_factory=time.monotonic)

    def add_points(self, points: list[Point]) -> None:
        with self.lock:
            self.points.extend(points)

    def drain(self) -> tuple[list[Point], dict[str, float]]:
        """Take the window's application points and its summary metrics; start a new window."""
        now = time.monotonic()
        with self.lock:
            points, self.points = self.points, []
            latencies, self.latencies_ms = self.latencies_ms, []
            elapsed, self.window_start = max(now - self.window_start, 1e-6), now
            summary = {"inference_count": float(self.inferences), "errors": float(self.errors),
                       "dropped_low_confidence": float(self.dropped_low_confidence),
                       "throughput": len(latencies) / elapsed}
        if latencies:
            p50, p95, p99 = np.percentile(np.asarray(latencies), [50, 95, 99])
            summary |= {"latency_p50_ms": float(p50), "latency_p95_ms": float(p95), "latency_p99_ms": float(p99)}
        return points, summary


class InferenceLoop:
    """Runs the active model on a source and records metrics, in its own thread.

    Example:
        >>> loop = InferenceLoop(agent.runtime, Metrics(), {"source": "digits", "rate_hz": 10})  # doctest: +SKIP
        >>> loop.start()                                                                         # doctest: +SKIP
        >>> loop.submit(np.zeros((1, 64), np.float32))["prediction"]                             # doctest: +SKIP
        0
    """

    def __init__(self, runtime: ModelRuntime, metrics: Metrics, config: dict[str, Any]) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.config = config
        self.results: deque[dict[str, Any]] = deque(maxlen=int(config.get("result_queue", 10000)))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self._next_sample: Callable[[], tuple[np.ndarray | None, list[Point]]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        source = self.config.get("source", "none")
        if source in ("digits", "sensors"):
            self._next_sample = self._digits() if source == "digits" else self._sensors()
            self._thread = threading.Thread(target=self._run, name="wb-inference", daemon=True)
            self._thread.start()
        elif source == "http":
            self._serve_http(int(self.config.get("http_port", 0)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    @property
    def http_port(self) -> int | None:
        return self._http.server_address[1] if self._http is not None else None

    # -- sources -----------------------------------------------------------------------------

    def _digits(self) -> Callable[[], tuple[np.ndarray | None, list[Point]]]:
        from workbench._datasets import load_digits_frames

        frames, _ = load_digits_frames()
        index = 0

        def next_sample() -> tuple[np.ndarray | None, list[Point]]:
            nonlocal index
            frame = frames[index % len(frames)]
            index += 1
            return frame[None, :], []

        return next_sample

    def _sensors(self) -> Callable[[], tuple[np.ndarray | None, list[Point]]]:
        from workbench._datasets import SENSOR_CHANNELS, sensor_stream

        stream = sensor_stream(list(self.config.get("sensor_activities") or ["Standing", "Walking"]))
        window = int(self.config.get("window", 20))
        history: deque[np.ndarray] = deque(maxlen=window)
        index = 0

        def next_sample() -> tuple[np.ndarray | None, list[Point]]:
            nonlocal index
            sample = stream[index % len(stream)]
            index += 1
            history.append(sample)
            now = time.time()
            points = [(now, name, float(v)) for name, v in zip(SENSOR_CHANNELS, sample, strict=True)]
            if len(history) < window:
                return None, points
            return np.stack(history).reshape(1, -1), points

        return next_sample

    def _run(self) -> None:
        assert self._next_sample is not None
        period = 1.0 / max(float(self.config.get("rate_hz", 10.0)), 1e-3)
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                sample, points = self._next_sample()
                if points:
                    self.metrics.add_points(points)
                if sample is not None and self.runtime.active is not None:
                    self.submit(sample)
            except WorkbenchError as exc:
                log.warning("inference source failed: %s", exc)
            next_at += period
            # Pace to the configured rate; after a stall, do not burst to catch up.
            delay = next_at - time.monotonic()
            if delay < -period:
                next_at = time.monotonic()
            self._stop.wait(max(delay, 0.0))

    # -- one inference (loop, HTTP and the Python hook) ------------------------------------------

    def submit(self, sample: np.ndarray) -> dict[str, Any]:
        """Run the active model on one input (the Python hook); returns the interpreted result.

        Raises :class:`ConfigError` when the input does not fit the model.
        """
        model = self.runtime.active
        if model is None:
            raise ConfigError("no model is active on this device; deploy one before sending inputs")
        spec = model.inputs[0]
        shape = [d if isinstance(d, int) else -1 for d in spec["shape"]]
        try:
            feed = np.asarray(sample, dtype=np.float32).reshape(shape if shape.count(-1) <= 1 else (1, -1))
        except ValueError:
            with self.metrics.lock:
                self.metrics.errors += 1
            raise ConfigError(f"input of shape {np.shape(sample)} does not fit model input {spec['name']} "
                              f"{spec['shape']}; send an array with that many values") from None
        start = time.perf_counter()
        try:
            outputs = self.runtime.infer({spec["name"]: feed})
        except Exception as exc:
            with self.metrics.lock:
                self.metrics.errors += 1
            raise ConfigError(f"the model failed on this input: {exc}") from None
        latency_ms = (time.perf_counter() - start) * 1000.0
        now = time.time()
        result = interpret(outputs, [o["name"] for o in model.outputs])
        threshold = float(self.config.get("confidence_threshold", 0.5))
        dropped = "confidence" in result and result["confidence"] < threshold
        with self.metrics.lock:
            self.metrics.inferences += 1
            self.metrics.latencies_ms.append(latency_ms)
            if dropped:
                self.metrics.dropped_low_confidence += 1
            self.metrics.points.extend((now, key, float(value)) for key, value in result.items())
        record: dict[str, Any] = {**result, "ts": now, "latency_ms": latency_ms, "model": model.name,
                                  "version": model.version}
        if not dropped:
            self.results.append(record)
        return record | {"dropped": dropped}

    def _serve_http(self, port: int) -> None:
        loop = self

        class Handler(JSONHandler):
            def do_POST(self) -> None:
                if self.path != "/infer":
                    self.reply(404, {"error": "unknown path; POST /infer"})
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(min(length, 16 * 2**20)) or b"{}")
                    inputs = body.get("inputs") if isinstance(body, dict) else None
                    if inputs is None:
                        raise ConfigError('send a JSON object {"inputs": [...numbers...]}')
                    self.reply(200, loop.submit(np.asarray(inputs, dtype=np.float32)))
                except (ValueError, ConfigError) as exc:
                    self.reply(400, {"error": str(exc)})

        self._http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._http.serve_forever, name="wb-infer-http", daemon=True).start()


def interpret(outputs: list[np.ndarray], names: list[str]) -> dict[str, float]:
    """Turn model outputs into telemetry values.

    A class-score output (more than one value) gives ``prediction`` and ``confidence``
    (softmax applied when the scores are not already probabilities); a single value is
    reported under the output's name, e.g. ``anomaly_score``.

    Example:
        >>> interpret([np.array([[0.1, 0.9]])], ["probabilities"])
        {'prediction': 1.0, 'confidence': 0.9}
    """
    result: dict[str, float] = {}
    for name, output in zip(names, outputs, strict=False):
        values = np.asarray(output, dtype=np.float64).reshape(-1)
        if values.size == 1:
            result[name] = float(values[0])
        elif values.size > 1 and "prediction" not in result:
            if values.min() < 0 or values.max() > 1 or abs(values.sum() - 1.0) > 1e-3:
                values = np.exp(values - values.max())
                values /= values.sum()
            best = int(values.argmax())
            result |= {"prediction": float(best), "confidence": round(float(values[best]), 6)}
    return result
