"""The agent's ``benchmark`` command: fetch candidate models over HTTP and time them under the device's limits.

Model bytes never travel over MQTT (256 KiB payload cap): the request carries each model's
URL, sha256 and size; the agent downloads into its data dir, verifies the hash, checks the
model fits its memory limit, and times it with its own thread limit. Only ``http(s)://`` URLs are
fetched, and a failed download gets one error whatever the cause: the reply must not tell a
caller whether a port is open, a file exists or what its hash is.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.agent._commands import register_command
from workbench.errors import ArtifactError, ConfigError, ResourceLimitError

if TYPE_CHECKING:
    from workbench.agent._device import DeviceAgent

# The loaded model takes roughly its file size again in arena and prepacked weights: an estimate
# checked before loading; the measured growth is checked after.
_LOAD_FACTOR = 2.0
_MAX_ITERATIONS = 10_000
# Generated inputs are allocated from the request's shapes: bounded before any allocation.
_MAX_INPUT_ELEMENTS = 16 * 2**20
_MAX_INPUTS = 64


def _inputs(args: dict[str, Any]) -> dict[str, np.ndarray]:
    if isinstance(args.get("inputs"), dict):
        feeds = {}
        for name, value in args["inputs"].items():
            try:
                dtype = np.dtype(value["dtype"])
                if dtype.kind not in "biuf" or dtype.itemsize > 8:  # "V1000000" would allocate per element
                    raise ValueError(f"dtype {value['dtype']!r} is not a number type")
                feeds[name] = np.asarray(value["data"], dtype=dtype).reshape(value["shape"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"benchmark input {name!r} is malformed ({exc}); send "
                                  "{'dtype':..., 'shape':[...], 'data':[...]}") from exc
        return feeds
    if isinstance(args.get("inputs_spec"), list):
        from workbench.protocol.spec import ModelSpec, TensorSpec, generated_inputs

        try:
            tensors = tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in args["inputs_spec"])
            batch, seed = int(args.get("batch", 1)), int(args.get("seed", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"benchmark inputs_spec is malformed ({exc}); send "
                              "[{'name':..., 'dtype':..., 'shape':[...]}]") from None
        _check_generated(tensors, batch)
        return generated_inputs(ModelSpec(tensors, (), 0, ()), batch=batch, seed=seed)
    raise ConfigError("benchmark needs 'inputs' (a small sample) or 'inputs_spec' (to generate one)")


def _check_generated(tensors: tuple[Any, ...], batch: int) -> None:
    if len(tensors) > _MAX_INPUTS or not 1 <= batch <= 65536:
        raise ConfigError(f"benchmark inputs_spec: at most {_MAX_INPUTS} inputs and a batch of 1..65536")
    for tensor in tensors:
        # Symbolic axes become the batch (first) or 16 (see generated_inputs); anything else must be a small int.
        elements = 1
        for index, dim in enumerate(tensor.shape):
            if isinstance(dim, bool) or (isinstance(dim, int) and dim < 0):
                raise ConfigError(f"benchmark input {str(tensor.name)[:64]!r} has a bad dimension {dim!r}")
            elements *= dim if isinstance(dim, int) else (batch if index == 0 else 16)
            if elements > _MAX_INPUT_ELEMENTS:
                raise ConfigError(f"benchmark input {str(tensor.name)[:64]!r} would hold more than "
                                  f"{_MAX_INPUT_ELEMENTS} elements; send a smaller shape or batch")


def _models(args: dict[str, Any]) -> list[dict[str, Any]]:
    models = args.get("models")
    if models is None and "url" in args:
        models = [{"name": args.get("name", "model"), "url": args["url"], "sha256": args.get("sha256"),
                   "size": args.get("size")}]
    if not isinstance(models, list) or not models:
        raise ConfigError("benchmark needs 'url', 'sha256' and 'size' of a model (or a 'models' list of them)")
    for model in models:
        if not isinstance(model, dict) or not all(isinstance(model.get(k), str) for k in ("url", "sha256")):
            raise ConfigError(f"benchmark model entry {model!r} needs string 'url' and 'sha256'")
    return models


def _providers(requested: Any) -> list[str]:
    """The requested execution providers this device's onnxruntime has, in order, with the CPU as the fallback."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = [p for p in requested or [] if isinstance(p, str) and p in available and p != "CPUExecutionProvider"]
    return [*wanted, "CPUExecutionProvider"]


@register_command("benchmark")
def _benchmark(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    from workbench.protocol.artifacts import fetch
    from workbench.protocol.timing import time_models

    models = _models(args)
    feeds = _inputs(args)
    iterations = int(args.get("iterations", 50))
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ConfigError(f"iterations must be 1..{_MAX_ITERATIONS}, got {iterations}")
    threads = max(1, min(int(args.get("threads") or agent.limits.threads), agent.limits.threads))
    store = agent.config.data_dir / "artifacts"
    paths: dict[str, str] = {}
    download_ms: dict[str, float] = {}
    for model in models:
        size = model.get("size")
        if isinstance(size, int):
            agent.limits.check_memory(size * _LOAD_FACTOR / 2**20, f"model {model.get('name')} (estimate)")
        start = time.perf_counter()
        try:
            path = fetch(model["url"], model["sha256"], store / f"{model['sha256']}.onnx",
                         size=size if isinstance(size, int) else None,
                         max_bytes=agent.limits.memory_mb * 2**20)
        except (ArtifactError, ConfigError, OSError, ValueError):
            raise ArtifactError(f"benchmark could not fetch model {str(model.get('name'))[:64]!r}: no file with "
                                "that sha256 and size came from that URL; serve it from the workbench's artifact "
                                "server (http:// or https://) and check the URL") from None
        download_ms[str(model.get("name"))] = (time.perf_counter() - start) * 1000.0
        paths[str(model.get("name", model["sha256"][:12]))] = str(path)
    options = agent.limits.session_options()
    providers = _providers(args.get("providers"))
    try:
        timings = time_models(paths, feeds, threads=threads, warmup=int(args.get("warmup", 5)),
                              iterations=iterations, rounds=int(args.get("rounds", 5)), session_options=options,
                              memory_check=agent.limits.check_memory, providers=providers)
    except ResourceLimitError:
        raise
    except Exception as exc:
        raise ConfigError(f"the device could not run the model: {type(exc).__name__}: {exc}") from exc
    return {
        "results": {name: {**timing.to_dict(), "download_ms": download_ms.get(name)} for name, timing in
                    timings.items()},
        "device_id": agent.device_id,
        "profile": agent.profile.name if agent.profile else None,
        "simulated": agent.config.simulated,
        "threads": threads,
        "provider": providers[0],
        "limits": agent.limits.to_dict(),
    }
