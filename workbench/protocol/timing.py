"""Latency, load time and memory of ONNX models, timed in interleaved rounds.

Kept to numpy, onnxruntime and psutil so an agent on a small device can run it too.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psutil


@dataclass
class Timing:
    """One model's timing on one machine.

    ``spread`` is the relative spread of the per-round medians ((max-min)/median): the
    run-to-run noise. ``round_p50_ms`` keeps each round's median so two models timed in the same
    interleaved rounds can be compared round by round.

    Example:
        >>> Timing(1.0, 1.2, 1.3, 5.0, 0.4, 0.05, 100, 2).p50_ms
        1.0
    """

    p50_ms: float
    p95_ms: float
    p99_ms: float
    load_ms: float
    rss_growth_mb: float
    spread: float
    iterations: int
    threads: int
    round_p50_ms: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def time_models(
    paths: dict[str, str],
    feeds: dict[str, np.ndarray],
    *,
    threads: int,
    providers: list[str] | None = None,
    warmup: int = 5,
    iterations: int = 50,
    rounds: int = 5,
    min_round_ms: float = 50.0,
    session_options: Any = None,
    memory_check: Any = None,
) -> dict[str, Timing]:
    """Time every model on the same inputs, interleaving rounds so drift hits all alike.

    Each round runs at least ``iterations / rounds`` times and at least ``min_round_ms`` long
    per model, so sub-millisecond models are not timed on a handful of calls.
    ``memory_check(needed_mb, what)`` (a device's limit check) is called with each model's
    measured resident growth after loading.

    Example:
        >>> time_models({"fp32": "model.onnx"}, {"input": x}, threads=2)  # doctest: +SKIP
    """
    import onnxruntime as ort

    providers = providers or ["CPUExecutionProvider"]
    sessions: dict[str, Any] = {}
    load_ms: dict[str, float] = {}
    base_rss: dict[str, float] = {}
    peak_rss: dict[str, float] = {}
    warm_ms: dict[str, float] = {}
    for name, path in paths.items():
        if session_options is not None:
            options = session_options
        else:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # graph-cleanup warnings about a quantized model are not the user's
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        gc.collect()
        base_rss[name] = _rss_mb()
        start = time.perf_counter()
        sessions[name] = ort.InferenceSession(path, sess_options=options, providers=providers)
        load_ms[name] = (time.perf_counter() - start) * 1000.0
        start = time.perf_counter()
        for _ in range(max(1, warmup)):
            sessions[name].run(None, feeds)
        warm_ms[name] = (time.perf_counter() - start) * 1000.0 / max(1, warmup)
        peak_rss[name] = _rss_mb()
        if memory_check is not None:
            memory_check(peak_rss[name] - base_rss[name], f"model {name}")
    slowest = max(warm_ms.values())
    per_round = max(1, iterations // max(1, rounds), int(min_round_ms / max(slowest, 1e-3)))
    samples: dict[str, list[float]] = {name: [] for name in paths}
    medians: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(max(1, rounds)):
        order = list(paths) if round_index % 2 == 0 else list(reversed(paths))
        for name in order:
            session = sessions[name]
            times = []
            for _ in range(per_round):
                start = time.perf_counter()
                session.run(None, feeds)
                times.append((time.perf_counter() - start) * 1000.0)
            samples[name].extend(times)
            medians[name].append(float(np.median(times)))
            peak_rss[name] = max(peak_rss[name], _rss_mb())
    results = {}
    for name in paths:
        values = np.asarray(samples[name])
        round_medians = np.asarray(medians[name])
        p50 = float(np.percentile(values, 50))
        results[name] = Timing(
            p50_ms=p50,
            p95_ms=float(np.percentile(values, 95)),
            p99_ms=float(np.percentile(values, 99)),
            load_ms=load_ms[name],
            rss_growth_mb=max(0.0, peak_rss[name] - base_rss[name]),
            spread=float((round_medians.max() - round_medians.min()) / max(p50, 1e-9)),
            iterations=int(values.size),
            threads=threads,
            round_p50_ms=[float(m) for m in round_medians],
        )
    return results
