"""Timing the candidates where the target runs them: on this host, or on a connected device."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import OptimizeError, RemoteCommandError
from workbench.optimize._target import Target
from workbench.protocol.spec import ModelSpec
from workbench.protocol.timing import time_models

# A sample input larger than this goes to the device as its spec (regenerated there from a seed).
_MAX_INLINE_INPUT_BYTES = 64 * 1024


def measure_on_host(paths: dict[str, Path], feeds: dict[str, np.ndarray], target: Target, *, warmup: int,
                    iterations: int, rounds: int, threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Interleaved timing of every candidate on this host, with the target's thread count (or ``threads``)."""
    timings = time_models({k: str(v) for k, v in paths.items()}, feeds, threads=threads or target.threads,
                          providers=list(target.providers), warmup=warmup, iterations=iterations, rounds=rounds)
    return {name: {**t.to_dict(), "measured_on": "host", "provider": target.providers[0]}
            for name, t in timings.items()}


def measure_on_device(paths: dict[str, Path], feeds: dict[str, np.ndarray], spec: ModelSpec, target: Target, *,
                      warmup: int, iterations: int, rounds: int, artifact_host: str = "127.0.0.1",
                      artifact_port: int = 0, timeout: float = 300.0, seed: int = 0,
                      threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Serve each candidate over HTTP and have the device fetch and time them under its own limits.

    Example:
        >>> measure_on_device(paths, feeds, spec, target, warmup=5, iterations=50, rounds=5)  # doctest: +SKIP
    """
    from workbench.deploy._serve import store_for_record
    from workbench.protocol.artifacts import ArtifactServer
    from workbench.protocol.candidates import stage_candidates
    from workbench.protocol.keys import load_signing_key

    device = target.device
    # A device downloads only from its fleet's artifact origin: a local fleet's artifact server when there is one.
    record = getattr(getattr(device, "_fleet", None), "local_record", None)
    fleet_store = store_for_record(record) if record is not None else None
    with tempfile.TemporaryDirectory(prefix="wb-artifacts-") as folder, \
            contextlib.nullcontext(fleet_store) if fleet_store is not None else \
            ArtifactServer(folder, host=artifact_host, port=artifact_port) as server:
        # The device runs only what the workbench signed: the candidates go as a signed list.
        candidates = stage_candidates(paths, server, load_signing_key(create=True))
        # The device times on the target's GPU/accelerator providers it has; an older agent ignores the key.
        args: dict[str, Any] = {"candidates": candidates, "warmup": warmup, "iterations": iterations, "rounds": rounds,
                                "threads": threads or target.threads, "providers": list(target.providers)}
        if sum(a.nbytes for a in feeds.values()) <= _MAX_INLINE_INPUT_BYTES:
            args["inputs"] = {k: {"dtype": v.dtype.name, "shape": list(v.shape), "data": v.ravel().tolist()}
                              for k, v in feeds.items()}
        else:
            # ``spec`` has every dim filled in but a stacked batch axis, so the device makes the same shapes.
            batch = next((v.shape[0] for v in feeds.values() if v.ndim), 1)
            args |= {"inputs_spec": [t.to_dict() for t in spec.inputs], "batch": batch, "seed": seed}
        try:
            reply = device.call("benchmark", args, timeout=timeout)
        except RemoteCommandError as exc:
            raise OptimizeError(f"device {device.device_id} could not benchmark the candidates: {exc}") from exc
    where = f"{'simulated device' if reply.get('simulated') else 'device'} {reply.get('device_id')} " \
            f"({reply.get('profile')}, {reply.get('threads')} threads)"
    provider = str(reply.get("provider") or "CPUExecutionProvider")
    return {name: {**timing, "measured_on": where, "provider": provider}
            for name, timing in reply["results"].items()}


def sweep_threads(paths: dict[str, Path], feeds: dict[str, np.ndarray], spec: ModelSpec, target: Target, *,
                  warmup: int, iterations: int, rounds: int, artifact_host: str = "127.0.0.1",
                  timeout: float = 300.0) -> dict[int, dict[str, float]]:
    """p50 latency of the given models at each thread count worth trying (1 and the target's), where measured.

    Example:
        >>> sweep_threads({"fp32": path}, feeds, spec, target, warmup=2, iterations=20, rounds=2)  # doctest: +SKIP
        {1: {'fp32': 0.41}, 4: {'fp32': 0.18}}
    """
    counts = sorted({1, target.threads})
    out: dict[int, dict[str, float]] = {}
    for count in counts:
        if target.device is not None:
            timings = measure_on_device(paths, feeds, spec, target, warmup=warmup, iterations=iterations,
                                        rounds=rounds, artifact_host=artifact_host, timeout=timeout, threads=count)
        else:
            timings = measure_on_host(paths, feeds, target, warmup=warmup, iterations=iterations, rounds=rounds,
                                      threads=count)
        out[count] = {name: float(t["p50_ms"]) for name, t in timings.items()}
    return out
