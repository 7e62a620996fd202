"""`workbench optimize`: build, measure and choose a model variant for a profile or a connected device."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from workbench.errors import ConfigError, UnknownDeviceError, UnknownProfileError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "optimize", help="optimize an ONNX model for a hardware profile or a connected device",
        description="Build the variants worth trying (graph optimization, INT8 dynamic and static, FP16 where it "
        "runs natively), measure them on the target (a profile: on this host with its thread count; a device id: "
        "on the device), choose the fastest within the constraints, never slower than FP32, and write a model "
        "package with report.json and report.html. A pass that fails is listed as skipped with its error; the run "
        "fails only when the FP32 model cannot run. DATA is FILE.npz[:INPUTS_KEY[,LABELS_KEY]] (default keys: the "
        "model's input names, 'inputs'/'labels' or 'x'/'y'), FILE.npy (inputs only) or a directory of images "
        "(resized to the input). Without data, inputs are generated from the model's spec.")
    parser.add_argument("model", help="path to an .onnx model")
    parser.add_argument("--target", required=True, help="a hardware profile name or a device id of the fleet")
    parser.add_argument("--eval", dest="eval_data", metavar="DATA", help="eval data with labels")
    parser.add_argument("--calibration", metavar="DATA", help="calibration inputs for static INT8")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
                        help="fix an input's dynamic dims (-1, 0, ? or symbolic), e.g. images=1,3,640,640; "
                        "repeat for several inputs")
    parser.add_argument("--metric", choices=["accuracy", "agreement"],
                        help="quality measure; 'agreement' compares with the FP32 outputs (no labels needed)")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01, help="allowed drop, 0.01 = 1 point")
    parser.add_argument("--latency-budget-ms", type=float)
    parser.add_argument("--max-size-mb", type=float)
    parser.add_argument("--passes", help="comma-separated variants to build (default: all worth building)")
    parser.add_argument("--iterations", type=int, default=200, help="timed runs per candidate (default 200)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per candidate first (default 5)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the optimize cache")
    parser.add_argument("--cache-dir", help="optimize cache directory (default ~/.cache/workbench/optimize)")
    parser.add_argument("--run-dir", help="local fleet run dir, for a device target")
    parser.add_argument("--broker", help="broker URL, for a device target outside a local fleet")
    parser.add_argument("--artifact-host", default="127.0.0.1",
                        help="address devices download candidates from (default 127.0.0.1, the local fleet)")
    parser.add_argument("--out", required=True, help="output directory (written atomically)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_optimize)


def load_data(spec: str) -> Any:
    """Read ``FILE.npz[:INPUTS[,LABELS]]`` or ``FILE.npy`` into (inputs, labels) or inputs.

    Example:
        >>> load_data("datasets/digits/digits.npz:x_test,y_test")[0].shape   # doctest: +SKIP
        (360, 1, 8, 8)
    """
    from pathlib import Path

    import numpy as np

    path, _, keys = spec.partition(":")
    if Path(spec).is_dir():
        return spec  # a directory of images: optimize() reads and resizes them for the model's input
    if path.endswith(".npy") and not keys:
        return _load(np, path)
    if not path.endswith(".npz"):
        raise ConfigError(f"data {spec!r}: use FILE.npz[:INPUTS[,LABELS]] or FILE.npy")
    if not keys:
        return path  # optimize() matches the arrays to the model's input names, or inputs/labels, or x/y
    archive = _load(np, path)
    names = [k for k in keys.split(",") if k] if keys else None
    if names is None:
        for pair in (["inputs", "labels"], ["x", "y"]):
            if pair[0] in archive.files:
                names = [n for n in pair if n in archive.files]
                break
    if not names or any(n not in archive.files for n in names):
        raise ConfigError(f"data {spec!r}: keys {names} not all in {path} (it has {', '.join(archive.files)}); "
                          "name them as FILE.npz:INPUTS,LABELS")
    return (archive[names[0]], archive[names[1]]) if len(names) > 1 else archive[names[0]]


def _load(np: Any, path: str) -> Any:
    try:
        return np.load(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read data file {path}: {exc}") from exc


def _target(args: argparse.Namespace) -> tuple[Any, Any]:
    from workbench.profiles import get_profile

    try:
        return get_profile(args.target), None
    except UnknownProfileError as exc:
        if not (args.run_dir or args.broker):
            raise UnknownProfileError(f"{exc}; for a device, also pass --run-dir or --broker") from None
    from workbench.fleet import connect

    fleet = connect(args.broker, run_dir=args.run_dir)
    deadline = time.monotonic() + 5.0
    while args.target not in fleet and time.monotonic() < deadline:
        time.sleep(0.1)  # retained inventories arrive just after connecting
    if args.target not in fleet:
        known = ", ".join(sorted(d.device_id for d in fleet.devices)) or "none"
        fleet.close()
        raise UnknownDeviceError(f"{args.target!r} is neither a hardware profile nor a device of the fleet "
                                 f"(devices: {known})")
    return fleet[args.target], fleet


def _optimize(args: argparse.Namespace) -> int:
    from workbench.optimize import optimize
    from workbench.optimize._package import write_directory_atomically
    from workbench.optimize._report import write_report
    from workbench.optimize._shapes import parse_input_shape

    shapes = dict(parse_input_shape(text) for text in args.input_shape)
    eval_data = load_data(args.eval_data) if args.eval_data else None
    calibration = load_data(args.calibration) if args.calibration else None
    if isinstance(calibration, tuple):
        calibration = calibration[0]
    target, fleet = _target(args)
    try:
        result = optimize(
            args.model, target, eval_data=eval_data, calibration_data=calibration, metric=args.metric,
            input_shapes=shapes or None,
            max_accuracy_drop=args.max_accuracy_drop, latency_budget_ms=args.latency_budget_ms,
            max_size_mb=args.max_size_mb, iterations=args.iterations, rounds=args.rounds, warmup=args.warmup,
            passes=[p.strip() for p in args.passes.split(",")] if args.passes else None,
            use_cache=not args.no_cache, cache_dir=args.cache_dir, artifact_host=args.artifact_host)
    finally:
        if fleet is not None:
            fleet.close()
    if result.best.variant is not None:
        out = result.save(args.out, report=True)
    else:
        out = write_directory_atomically(args.out, lambda d: write_report(result, d))
    if args.json:
        print(json.dumps({**result.to_dict(), "out": str(out)}, indent=2))
    else:
        import pandas as pd

        columns = ["variant", "size_mb", "quality", "p50_ms", "p95_ms", "p99_ms", "speedup", "measured_on",
                   "pareto", "chosen"]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(result.candidates[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"\nchosen: {result.best}")
        print(f"data: eval {result.data['eval']} ({result.data['eval_samples']} samples); calibration "
              f"{result.data['calibration']} ({result.data['calibration_samples']} samples)")
        for note in result.notes:
            if "upgraded" in note or "input shapes" in note:
                print(f"note: {note}")
        for variant, why in result.skipped.items():
            print(f"skipped {variant}: {why}")
        print(f"wrote {out}" + ("" if result.best.variant else " (report only: nothing met the constraints)"))
    if result.best.variant is None:
        print(f"workbench optimize: {result.best.reason}", file=sys.stderr)
        return 2
    return 0


__all__ = ["load_data", "register"]
