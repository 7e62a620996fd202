"""optimize(): export, build the candidates worth building for the target, measure them, choose."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import ConfigError, OptimizeError
from workbench.optimize import _prune
from workbench.optimize._cache import OptimizeCache, default_cache_dir, key_of, tool_versions
from workbench.optimize._choice import BASELINE, Constraints, choose, constraint_failures, pareto_front, speedup
from workbench.optimize._data import Samples, generated_samples, to_samples
from workbench.optimize._exclude import rank_layers
from workbench.optimize._export import export_onnx
from workbench.optimize._files import copy_model, model_bytes, model_sha256
from workbench.optimize._measure import measure_on_device, measure_on_host, sweep_threads
from workbench.optimize._metrics import agreement, run_outputs, score
from workbench.optimize._passes import (
    DEFAULT_CALIBRATION_MEMORY_MB,
    PassContext,
    apply_recipe,
    get_pass,
    list_passes,
    sensitive_nodes,
    static_blocker,
)
from workbench.optimize._preflight import int8_outlook
from workbench.optimize._result import OptimizeResult
from workbench.optimize._shapes import ShapePlan, one_line, resolve_shapes
from workbench.optimize._state import roll_state, state_pairs
from workbench.optimize._target import resolve_target
from workbench.protocol.spec import ModelSpec, load_model

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Static INT8 with signed activations (S8S8); the other int8-static-<method> variants use U8S8.
S8S8_VARIANT = "int8-static-s8s8"
_GENERATED_EVAL = 64


def _plan(spec: ModelSpec, ctx: PassContext, methods: Sequence[str], prune: list[tuple[str, float]],
          passes: Sequence[str] | None, module: Any = None,
          static_why: str | None = None, mixed: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The variants worth building for this target, and why the others are skipped.

    ``module`` is the torch module that ``prune`` applies to (None: no pruning is planned);
    ``static_why`` says why static INT8 can quantize nothing in this model (None: it can); ``mixed``
    lists the attention matmuls a mixed INT8/FP32 variant keeps in FP32 (None: not a transformer).
    """
    plan: list[dict[str, Any]] = [{"variant": BASELINE, "steps": []},
                                  {"variant": "graph-opt", "steps": [{"pass": "graph-opt", "level": "extended"}]}]
    skipped: dict[str, str] = {}
    if {"MatMul", "Gemm"} & set(spec.op_types):
        plan.append({"variant": "int8-dynamic", "steps": [{"pass": "int8-dynamic", "ops": ["MatMul", "Gemm"]}]})
    else:
        skipped["int8-dynamic"] = "the model has no MatMul/Gemm (dynamic Conv quantization is 3-11x slower on CPUs)"
    for method in methods:
        if method not in CALIBRATION_METHODS:
            raise ConfigError(f"unknown calibration method {method!r}; use {', '.join(CALIBRATION_METHODS)}")
        if static_why:
            skipped[f"int8-static-{method}"] = static_why
            continue
        plan.append({"variant": f"int8-static-{method}",
                     "steps": [{"pass": "int8-static", "method": method, "per_channel": True}]})
    if "minmax" in methods and not static_why:
        # What ORT's quantize_static does by default after quant_pre_process (S8 activations, per channel):
        # the fastest plain tool on some CPUs, so the choice is never worse than it for want of trying it.
        plan.append({"variant": S8S8_VARIANT, "steps": [{"pass": "int8-static", "method": "minmax",
                                                         "per_channel": True, "activations": "s8"}]})
    if mixed is not None and methods and not static_why:
        # A transformer: INT8 everywhere puts Softmax, LayerNorm and the attention matmuls on INT8 inputs.
        plan.append({"variant": f"int8-static-{methods[0]}-mixed", "excluded": mixed,
                     "steps": [{"pass": "int8-static", "method": methods[0], "per_channel": True, "mixed": True}]})
    plan.append({"variant": "fp16", "steps": [{"pass": "fp16"}]})
    for kind, amount in prune:
        tag = f"pruned-{kind}-{round(amount * 100)}"
        why = _prune.unprunable(module, kind)
        if why:  # the pruned variant and its quantized twin would be the unpruned model again
            skipped[tag] = why
            continue
        slim = [{"pass": "graph-opt", "level": "basic"}, {"pass": "remove-zero-channels"}] \
            if kind == "structured" else []
        plan.append({"variant": tag, "prune": {"kind": kind, "amount": amount}, "steps": slim})
        plan.append({"variant": f"{tag}+int8-static-{methods[0] if methods else 'minmax'}",
                     "prune": {"kind": kind, "amount": amount},
                     "steps": [*slim, {"pass": "int8-static", "method": methods[0] if methods else "minmax",
                                       "per_channel": True}]})
    if passes is not None:
        wanted = set(passes) | {BASELINE}
        plan = [p for p in plan if p["variant"] in wanted or any(p["variant"].startswith(w) for w in wanted)]
        # A pass registered by the user (register_pass) and named in ``passes`` is a variant of its own.
        planned = {p["variant"] for p in plan}
        registered = {item.name for item in list_passes()}
        for name in passes:
            if name not in planned and name not in skipped and name in registered \
                    and not any(v.startswith(name) for v in planned):
                plan.append({"variant": name, "steps": [{"pass": name}]})
    kept = []
    for item in plan:
        reasons = [get_pass(step["pass"]).helps(ctx) for step in item["steps"]]
        blocked = [why for ok, why in reasons if not ok]
        if blocked:
            skipped[item["variant"]] = "; ".join(blocked)
        else:
            kept.append(item)
    return kept, skipped


def _source(model: Any, example_input: Any, workdir: Path) -> tuple[Path, str, Any]:
    """The FP32 ONNX file to start from, a display name, and the torch module (or None)."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        load_model(path)  # clear errors for missing, truncated, wrong-opset files
        # Its external data (a model over 2 GB) comes along, re-pointed at source.onnx.data.
        return copy_model(path, workdir / "source.onnx"), path.name, None
    if type(model).__module__.startswith("torch") or hasattr(model, "state_dict"):
        if example_input is None:
            raise ConfigError("a torch model needs example_input (one batch shaped like the model's input) to export")
        return export_onnx(model, example_input, workdir / "source.onnx"), type(model).__name__, model
    raise ConfigError(f"model must be a path to an .onnx file or a torch.nn.Module, not {type(model).__name__}")


def _eval_samples(eval_data: Any, shapes: ShapePlan, metric: Any, notes: list[str]) -> Samples:
    if eval_data is None:
        notes.append(f"no eval data given: {_GENERATED_EVAL} inputs were generated from the model's input spec and "
                     "quality is agreement with the FP32 outputs, not accuracy")
        return generated_samples(shapes.full, _GENERATED_EVAL, seed=1, stacked=shapes.stacked)
    samples = to_samples(eval_data, shapes.given, what="eval data", stacked=shapes.stacked, sizes=shapes.full)
    if samples.labels is None and (metric is None or metric == "accuracy"):
        raise ConfigError("the eval data has no labels, so accuracy cannot be measured; pass (inputs, labels), "
                          "a metric callable, or metric='agreement' to rank by agreement with the FP32 outputs")
    return samples


def _prune_list(prune: Any, have_module: bool) -> list[tuple[str, float]]:
    if prune is None:
        return [("structured", 0.3)] if have_module else []
    if prune is False:
        return []
    if not have_module:
        raise ConfigError("pruning needs the torch model (it happens before export); pass the torch.nn.Module "
                          "with example_input, or prune=False")
    if prune is True:
        return [("structured", 0.3)]
    items = [prune] if isinstance(prune, tuple) else list(prune)
    return [(str(kind), float(amount)) for kind, amount in items]


def optimize(
    model: Any,
    target: Any = "x86-server",
    *,
    example_input: Any = None,
    eval_data: Any = None,
    calibration_data: Any = None,
    metric: str | Callable[[np.ndarray, np.ndarray], float] | None = None,
    input_shapes: Mapping[str, Sequence[int | str | None] | str] | None = None,
    max_accuracy_drop: float = 0.01,
    latency_budget_ms: float | None = None,
    max_size_mb: float | None = None,
    calibration_methods: Sequence[str] = CALIBRATION_METHODS,
    prune: Any = None,
    finetune_data: Any = None,
    finetune_steps: int = 0,
    exclude_layers: bool = True,
    sweep: bool = True,
    passes: Sequence[str] | None = None,
    batch: int = 1,
    warmup: int = 5,
    iterations: int = 200,
    rounds: int = 7,
    calibration_memory_mb: int = DEFAULT_CALIBRATION_MEMORY_MB,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    artifact_host: str = "127.0.0.1",
    timeout: float = 300.0,
) -> OptimizeResult:
    """Build the variants of ``model`` worth trying on ``target``, measure them there, and choose one.

    ``model`` is a path to an .onnx file or a ``torch.nn.Module`` (with ``example_input``).
    ``target`` is a profile name (measured on this host with the profile's thread count) or a
    connected device (``fleet["sim-03"]``: measured on the device through its ``benchmark``
    command). ``eval_data`` is ``(inputs, labels)``, a dict of arrays, or an iterable of batches;
    without labels pass ``metric="agreement"`` or a callable ``metric(outputs, labels)``.
    ``eval_data`` and ``calibration_data`` may also be a path to an .npz file or a directory of images
    (resized to the input), a torch ``DataLoader`` or a callable returning data; without them, inputs
    are generated from the model's spec (token ids below the vocabulary, a sample rate of 16000, a
    state of zeros). ``input_shapes`` (``{"images": (1, 3, 640, 640)}``) fixes dynamic dims (-1, 0,
    ``?`` and symbolic names); those not given are guessed and tried on the FP32 model.
    A pass that fails is listed in ``result.skipped`` with its error; only an FP32 model that does
    not run fails the call.
    The choice is never slower than the FP32 model beyond the measured noise; see
    ``result.best.reason``. With ``sweep`` the chosen variant is also timed with 1 thread and the
    target's thread count, and the faster count goes into its package's recipe.

    Example:
        >>> result = workbench.optimize(model, target="raspberry-pi-5", example_input=x,  # doctest: +SKIP
        ...                             eval_data=(x_test, y_test), calibration_data=x_calib)
        >>> result.candidates[["variant", "accuracy", "p50_ms"]]                            # doctest: +SKIP
        >>> result.save("out/pi5")                                                          # doctest: +SKIP
    """
    if not 0.0 <= max_accuracy_drop <= 1.0:
        raise ConfigError(f"max_accuracy_drop is a fraction (0.01 = 1 point), got {max_accuracy_drop}")
    if batch < 1 or iterations < 1 or warmup < 0 or rounds < 1:
        raise ConfigError("batch, iterations and rounds must be at least 1 and warmup at least 0")
    resolved = resolve_target(target)
    constraints = Constraints(max_accuracy_drop, latency_budget_ms, max_size_mb)
    cache = OptimizeCache((Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache else None)
    workdir = Path(tempfile.mkdtemp(prefix="wb-optimize-"))
    notes: list[str] = []
    source_path, source_name, module = _source(model, example_input, workdir)
    spec = ModelSpec.from_path(source_path)
    shapes = resolve_shapes(spec, source_path, input_shapes,
                            need_generated=eval_data is None or calibration_data is None, name=source_name)
    if shapes.guessed or shapes.user:
        notes.append(f"input shapes used for generated inputs: {shapes.describe()}" + (
            "; pass --input-shape NAME=D1,D2,... (input_shapes= in Python) to set them" if shapes.guessed else ""))
    samples = _eval_samples(eval_data, shapes, metric, notes)
    pairs = state_pairs(spec)
    if eval_data is None:
        samples = roll_state(source_path, samples, pairs)
    if calibration_data is None:
        calibration = roll_state(source_path, generated_samples(shapes.full, 64, seed=2, stacked=shapes.stacked),
                                 pairs)
        notes.append("no calibration data given: 64 inputs were generated from the model's input spec; give real "
                     "calibration data for usable INT8 ranges")
    else:
        calibration = to_samples(calibration_data, shapes.given, what="calibration data", stacked=shapes.stacked,
                                 sizes=shapes.full)
    if pairs and (eval_data is None or calibration_data is None):
        notes.append("generated samples run as a stream: each state input (" + ", ".join(
            f"{i} <- {o}" for i, o in pairs.items()) + ") gets the FP32 model's state from the sample before; "
            "the first starts from zeros")
    finetune = to_samples(finetune_data, shapes.given, what="fine-tuning data", stacked=shapes.stacked,
                          sizes=shapes.full) if finetune_data is not None else None
    ctx = PassContext(workdir, calibration, resolved.profile.precisions, resolved.providers,
                      calibration_memory_mb, notes)
    transformer = {"Softmax", "MatMul"} <= set(spec.op_types)
    plan, skipped = _plan(spec, ctx, list(calibration_methods), _prune_list(prune, module is not None), passes,
                          module, static_blocker(source_path), sensitive_nodes(source_path) if transformer else None)
    excluded_by_plan = {item["variant"]: item["excluded"] for item in plan if "excluded" in item}
    for provider, why in resolved.skipped_providers.items():
        skipped[f"provider {provider}"] = why
    versions = tool_versions()
    source_sha = model_sha256(source_path)
    outlook_here = int8_outlook(resolved.isa_features, resolved.arch)
    outlook_profile = int8_outlook(resolved.profile.isa_features, resolved.profile.arch)
    flags = ", ".join(resolved.isa_features) or "no flags"
    summary = (f"INT8 on the measuring CPU ({resolved.arch}, {flags}): {_likely(outlook_here[0])}: "
               f"{outlook_here[1]}.")
    if resolved.device is None and resolved.profile.arch != resolved.arch:
        summary += (f" The {resolved.profile.name} profile ({resolved.profile.arch}) is measured on this "
                    f"{resolved.arch} host with its thread count, so the timings are this CPU's, not the "
                    f"device's; on the device itself INT8 is {_likely(outlook_profile[0])}: {outlook_profile[1]}.")
    preflight: dict[str, Any] = {
        "int8_likely_helps": outlook_here[0], "why": outlook_here[1], "measured_cpu_isa": list(resolved.isa_features),
        "profile_int8_likely_helps": outlook_profile[0], "profile_why": outlook_profile[1], "summary": summary}

    # The FP32 outputs first: if FP32 cannot run on the eval data, nothing else is worth building.
    try:
        reference = run_outputs(str(source_path), samples)
    except Exception as exc:
        raise OptimizeError(f"the FP32 model does not run on the eval data in ONNX Runtime: {one_line(exc)}; "
                            "check the data's shapes and dtypes against the model's inputs "
                            f"({', '.join(t.name + str(list(t.shape)) for t in spec.inputs)})") from exc

    # -- build -----------------------------------------------------------------------
    files: dict[str, Path] = {}
    recipes: dict[str, dict[str, Any]] = {}
    build_keys: dict[str, str] = {}
    exported: dict[tuple[str, float], Path] = {}
    for item in plan:
        recipe = {"prune": item.get("prune"), "steps": item["steps"],
                  "finetune_steps": finetune_steps if item.get("prune") else 0}
        key = key_of({"source": source_sha, "recipe": recipe, "versions": versions,
                      "calibration": calibration.digest(), "finetune": finetune.digest() if finetune else None})
        recipes[item["variant"]] = recipe
        build_keys[item["variant"]] = key
        cached = cache.model_path(key)
        if cached is not None:
            files[item["variant"]] = cached
            continue
        start = source_path
        if item.get("prune"):
            spec_key = (item["prune"]["kind"], item["prune"]["amount"])
            if spec_key not in exported:
                pruned = _prune.prune_module(module, spec_key[0], spec_key[1], finetune=finetune,
                                             finetune_steps=finetune_steps)
                exported[spec_key] = export_onnx(pruned, example_input,
                                                 workdir / f"pruned-{spec_key[0]}-{spec_key[1]}.onnx")
            start = exported[spec_key]
        out = workdir / f"{item['variant']}.onnx"
        try:
            apply_recipe(start, item["steps"], out, ctx)
        except Exception as exc:  # one failing pass never fails the run: the others are still worth measuring
            if item["variant"] == BASELINE:
                raise
            skipped[item["variant"]] = f"failed: {exc if isinstance(exc, OptimizeError) else one_line(exc)}"
            continue
        files[item["variant"]] = cache.put_model(key, out)

    # -- quality -----------------------------------------------------------------------
    rows: dict[str, dict[str, Any]] = {}

    def quality_row(variant: str) -> dict[str, Any]:
        outputs = reference if variant == BASELINE else run_outputs(str(files[variant]), samples)
        value, name = score(outputs, samples, metric, reference)
        agree = agreement(reference, outputs)
        acc = value if name == "accuracy" else None
        return {"variant": variant, "recipe": recipes[variant], "quality": value, "quality_name": name,
                "accuracy": acc, "agreement_top1": agree["top1"], "cosine": agree["cosine"],
                "sqnr_db": agree["sqnr_db"], "size_mb": model_bytes(files[variant]) / 2**20}

    for variant in list(files):
        try:
            rows[variant] = quality_row(variant)
            if variant in excluded_by_plan:
                rows[variant]["excluded_layers"] = excluded_by_plan[variant]
        except Exception as exc:  # built but does not run (an invalid graph): skipped, like a failed build
            skipped[variant] = f"failed: the built model does not run: {one_line(exc)}"
            del files[variant]

    # -- exclude the layers that break under quantization ----------------------------------
    layers: dict[str, list[dict[str, Any]]] = {}
    static = [v for v in rows if v.startswith("int8-static-") and "+" not in v]
    if exclude_layers and static:
        try:
            _exclude_layers(static, rows, files, recipes, source_path, samples, workdir, ctx, notes, layers,
                            max_accuracy_drop, quality_row)
        except Exception as exc:
            notes.append(f"excluding sensitive layers failed, so only the plain INT8 variants are offered: "
                         f"{one_line(exc)}")

    # -- timing ----------------------------------------------------------------------------
    feeds = next(iter(samples.batches(batch)))
    if not samples.stacked:
        notes.append("the model takes one sample at a time (a scalar input or a fixed leading axis): timed on "
                     "one sample")
    fingerprint = resolved.fingerprint()
    measure_settings = {"warmup": warmup, "iterations": iterations, "rounds": rounds, "batch": batch,
                        "eval": samples.digest(), "metric": str(getattr(metric, "__name__", metric))}
    row_keys = {v: key_of({"build": build_keys.get(v, key_of(recipes[v])), "target": fingerprint,
                           "measure": measure_settings}) for v in rows}
    cached_rows = {v: cache.get_row(k) for v, k in row_keys.items()}
    all_hit = all(r is not None for r in cached_rows.values())
    if all_hit:
        timings = {v: {k: r.get(k) for k in ("p50_ms", "p95_ms", "p99_ms", "load_ms", "rss_growth_mb", "spread",
                                                "iterations", "threads", "measured_on", "provider", "round_p50_ms")}
                   for v, r in cached_rows.items() if r is not None}
    elif resolved.device is not None:
        timings = measure_on_device(files, feeds, shapes.full, resolved, warmup=warmup, iterations=iterations,
                                    rounds=rounds, artifact_host=artifact_host, timeout=timeout)
    else:
        timings = measure_on_host(files, feeds, resolved, warmup=warmup, iterations=iterations, rounds=rounds)
    for variant, row in rows.items():
        row.update(timings[variant])
        row["cached"] = all_hit
        cache.put_row(row_keys[variant], row)
    base = rows[BASELINE]
    for row in rows.values():
        row["speedup"] = speedup(row, base)
    notes.extend(_exclusion_costs(rows))
    parts = {v: {"recipe": recipes[v], "versions": versions, "target": fingerprint, "measure": measure_settings}
             for v in rows}
    diff = cache.diff_against_last(key_of({"source": source_sha, "target": resolved.name}), parts)

    # -- choice ------------------------------------------------------------------------------
    row_list = list(rows.values())
    front = pareto_front(row_list)
    choice = choose(row_list, constraints)
    for row in row_list:
        row["pareto"] = row["variant"] in front
        row["chosen"] = row["variant"] == choice.variant
    threads: dict[str, Any] = {}
    if sweep and resolved.threads > 1 and not all_hit:
        # The thread count is part of the recipe: fewer threads can win on a busy or small CPU.
        picked = {v: files[v] for v in {BASELINE, choice.variant or BASELINE}}
        tried = sweep_threads(picked, feeds, shapes.full, resolved, warmup=warmup, iterations=iterations,
                              rounds=rounds, artifact_host=artifact_host, timeout=timeout)
        best_variant = choice.variant or BASELINE
        best_count = min(tried, key=lambda n: tried[n][best_variant])
        threads = {"tried": tried, "best": best_count, "variant": best_variant}
        notes.append(f"thread counts tried for {best_variant}: " + ", ".join(
            f"{n}: {tried[n][best_variant]:.3f} ms" for n in sorted(tried)) + f"; fastest with {best_count}")
    result = OptimizeResult(
        rows=row_list, best=choice, files=files, target=resolved.to_dict(), constraints=constraints,
        spec=spec.to_dict(), source={"name": source_name, "sha256": source_sha,
                                     "size_mb": model_bytes(source_path) / 2**20},
        preflight=preflight, skipped=skipped, layers=layers, notes=notes, threads=threads,
        data={"eval": samples.origin, "eval_samples": samples.count, "calibration": calibration.origin,
              "calibration_samples": calibration.count, "quality": row_list[0]["quality_name"],
              "input_shapes": shapes.describe()},
        cache={"enabled": cache.enabled, "hit": all_hit, "directory": str(cache.directory) if cache.directory
               else None, "diff": diff},
        tool_versions=versions,
    )
    # The candidates' files live as long as the result, so save() works later in the notebook.
    result._keepalive = weakref.finalize(result, shutil.rmtree, workdir, True)
    return result


def _exclude_layers(static: list[str], rows: dict[str, dict[str, Any]], files: dict[str, Path],
                    recipes: dict[str, dict[str, Any]], source_path: Path, samples: Samples, workdir: Path,
                    ctx: PassContext, notes: list[str], layers: dict[str, list[dict[str, Any]]],
                    max_accuracy_drop: float, quality_row: Callable[[str], dict[str, Any]]) -> None:
    """Rebuild the best static INT8 variant without its worst layers until it meets the accuracy limit."""
    best_static = max(static, key=lambda v: rows[v]["quality"])
    accuracy_only = Constraints(max_accuracy_drop)
    if constraint_failures(rows[best_static], rows[BASELINE], accuracy_only):
        ranked = rank_layers(files[BASELINE], files[best_static], samples, workdir)
        layers[best_static] = ranked
        excluded: list[str] = []
        count = 1
        while count <= len(ranked):
            excluded = [r["node"] for r in ranked[:count]]
            steps = [{**s, "exclude": excluded} for s in recipes[best_static]["steps"]]
            variant = f"{best_static}-excl{count}"
            out = workdir / f"{variant}.onnx"
            apply_recipe(source_path, steps, out, ctx)
            files[variant] = out
            recipes[variant] = {**recipes[best_static], "steps": steps}
            try:
                rows[variant] = {**quality_row(variant), "excluded_layers": excluded}
            except Exception:
                del files[variant]
                raise
            if not constraint_failures(rows[variant], rows[BASELINE], accuracy_only):
                notes.append(f"{best_static} lost too much {rows[best_static]['quality_name']}; excluding the "
                             f"{count} worst layer(s) by added quantization error ({', '.join(excluded)}) "
                             "brought it within the allowed drop")
                break
            count *= 2
        else:
            notes.append(f"{best_static}: excluding up to {len(ranked)} layers did not meet the accuracy "
                         "constraint")


def _exclusion_costs(rows: dict[str, dict[str, Any]]) -> list[str]:
    """One line per variant built with layers kept in FP32: which layers, and what that gained and cost."""
    lines = []
    for variant, row in rows.items():
        excluded = row.get("excluded_layers")
        plain = rows.get(variant.rsplit("-excl", 1)[0].removesuffix("-mixed")) if excluded is not None else None
        if excluded is None or plain is None:
            continue
        kept = ("Softmax, LayerNorm and every op but Conv/MatMul/Gemm, and " if variant.endswith("-mixed") else "")
        lines.append(f"{variant} keeps {kept}{len(excluded)} layer(s) in FP32 ({', '.join(excluded) or 'none'}): "
                     f"{row['quality_name']} {plain['quality']:.4g} -> {row['quality']:.4g} "
                     f"(FP32 {rows[BASELINE]['quality']:.4g}), p50 {plain['p50_ms']:.4g} -> {row['p50_ms']:.4g} ms "
                     f"(FP32 {rows[BASELINE]['p50_ms']:.4g} ms)")
    return lines


def _likely(value: bool | None) -> str:
    return {True: "likely to help", False: "unlikely to help", None: "uncertain"}[value]


