"""The agent's ``benchmark`` command: fetch candidate models over HTTP and time them under the device's limits.

Model bytes never travel over MQTT (256 KiB payload cap): the request names a candidate list
the workbench signed (:mod:`workbench.protocol.candidates`) in the fleet's artifact store. The
agent downloads it from its artifact origin only (:mod:`workbench.agent._origin`), verifies the
signature against its trusted keys, then downloads each candidate with the signed sha256 and
size (enforced while streaming), checks it fits its memory limit, and times it with its own
thread limit. A failed download gets one error whatever the cause: the reply must not tell a
caller whether a port is open, a file exists or what its hash is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.agent._commands import register_command
from workbench.agent._origin import ArtifactOrigin
from workbench.errors import ArtifactError, ConfigError, ResourceLimitError
from workbench.protocol.candidates import CANDIDATES_FORMAT

if TYPE_CHECKING:
    from workbench.agent._device import DeviceAgent

# The loaded model takes roughly its file size again in arena and prepacked weights: an estimate
# checked before loading; the measured growth is checked after.
_LOAD_FACTOR = 2.0
_MAX_ITERATIONS = 10_000
# Generated inputs are allocated from the request's shapes: bounded before any allocation.
_MAX_INPUT_ELEMENTS = 16 * 2**20
_MAX_INPUTS = 64
_MAX_CANDIDATES = 64
# One error for every failed download, whatever the cause: no file, port or hash oracle (issue 12, row 8).
_FETCH_FAILED = ("benchmark could not fetch {what}: no file with the signed sha256 and size came from the fleet's "
                 "artifact origin; check that the artifact server runs and the device reaches it")


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


def _candidates(args: dict[str, Any]) -> dict[str, Any]:
    spec = args.get("candidates")
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), str) for k in
                                             ("manifest_sha256", "signature_sha256", "base_url")):
        raise ConfigError("benchmark takes 'candidates': a candidate list the workbench signed and put in the fleet's "
                          "artifact store (workbench.protocol.candidates.stage_candidates; optimize() does this); "
                          "a bare 'url' is refused, since a device runs only models the workbench signed")
    return spec


def _fetch_signed(agent: DeviceAgent, spec: dict[str, Any]) -> tuple[dict[str, Path], dict[str, float]]:
    """Download and verify the signed candidate list, then each candidate it names: model files and download ms."""
    import shutil
    import tempfile

    origin = ArtifactOrigin.for_device(agent.config.data_dir, agent.config.broker.host)
    base_url = str(spec["base_url"]).rstrip("/")
    # Scratch space per call (two benchmarks may run at once); only the list and its signature land here.
    staging = Path(tempfile.mkdtemp(prefix="benchmark-", dir=agent.config.data_dir))
    try:
        return _fetch_listed(agent, spec, origin, base_url, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch_listed(agent: DeviceAgent, spec: dict[str, Any], origin: ArtifactOrigin, base_url: str,
                  staging: Path) -> tuple[dict[str, Path], dict[str, float]]:
    from workbench.agent._deploy_service import trusted_keys_dir
    from workbench.protocol.artifacts import fetch
    from workbench.protocol.keys import load_trusted_keys
    from workbench.protocol.package import MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, load_package, verify_signature

    try:
        origin.check(base_url, "benchmark")
        for name, sha, size, cap in (("manifest.json", spec["manifest_sha256"], spec.get("manifest_size"),
                                      MAX_MANIFEST_BYTES),
                                     ("signature.json", spec["signature_sha256"], spec.get("signature_size"),
                                      MAX_SIGNATURE_BYTES)):
            fetch(f"{base_url}/artifacts/{sha}", str(sha), staging / name, size=size if isinstance(size, int) else None,
                  max_bytes=cap, timeout=15.0, attempts=1)
    except (ArtifactError, ConfigError, OSError, ValueError):
        raise ArtifactError(_FETCH_FAILED.format(what="the candidate list")) from None
    listed = load_package(staging)
    verify_signature(listed, load_trusted_keys(trusted_keys_dir(agent)))
    if listed.manifest.get("format") != CANDIDATES_FORMAT:
        raise ArtifactError(f"the signed manifest is not a candidate list ({CANDIDATES_FORMAT}); the workbench "
                            "signs one per benchmark")
    store = agent.config.data_dir / "artifacts"
    paths: dict[str, Path] = {}
    download_ms: dict[str, float] = {}
    for name, entry in list(listed.files.items())[:_MAX_CANDIDATES]:
        sha, size = entry.get("sha256") if isinstance(entry, dict) else None, \
            entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(sha, str) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ArtifactError(f"candidate {name[:64]!r} has no sha256 and size in the signed list")
        agent.limits.check_memory(size * _LOAD_FACTOR / 2**20, f"model {name[:64]} (estimate)")
        start = time.perf_counter()
        try:
            paths[name] = fetch(f"{base_url}/artifacts/{sha}", sha, store / f"{sha}.onnx", size=size,
                                max_bytes=agent.limits.memory_mb * 2**20)
        except (ArtifactError, ConfigError, OSError, ValueError):
            raise ArtifactError(_FETCH_FAILED.format(what=f"model {name[:64]!r}")) from None
        download_ms[name] = (time.perf_counter() - start) * 1000.0
    return paths, download_ms


def _providers(requested: Any) -> list[str]:
    """The requested execution providers this device's onnxruntime has, in order, with the CPU as the fallback."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = [p for p in requested or [] if isinstance(p, str) and p in available and p != "CPUExecutionProvider"]
    return [*wanted, "CPUExecutionProvider"]


@register_command("benchmark")
def _benchmark(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    from workbench.protocol.timing import time_models

    spec = _candidates(args)
    feeds = _inputs(args)
    iterations = int(args.get("iterations", 50))
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ConfigError(f"iterations must be 1..{_MAX_ITERATIONS}, got {iterations}")
    threads = max(1, min(int(args.get("threads") or agent.limits.threads), agent.limits.threads))
    fetched, download_ms = _fetch_signed(agent, spec)
    paths = {name: str(path) for name, path in fetched.items()}
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
