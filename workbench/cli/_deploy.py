"""`workbench deploy`, `workbench package`, `workbench keys init` and `workbench export-k8s`."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

_GATE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+)\s*$")


def register(sub: argparse._SubParsersAction) -> None:
    deploy = sub.add_parser("deploy", help="deploy a model package to the fleet",
                            description="Deploy a signed model package (a directory) to devices of the fleet, "
                            "all at once or as a canary with gates; prints one line per device transition.")
    deploy.add_argument("package", type=Path, help="the package directory (from `workbench package` or optimize)")
    deploy.add_argument("--devices", help="comma-separated device ids (default: every device)")
    deploy.add_argument("--profile", help="only devices of this hardware profile")
    deploy.add_argument("--strategy", choices=["all", "canary"], default="all")
    deploy.add_argument("--first", type=int, default=1, help="canary: devices in the first wave (default: 1)")
    deploy.add_argument("--waves", default="0.5,1.0", help="canary: cumulative fractions (default: 0.5,1.0)")
    deploy.add_argument("--soak", type=float, default=5.0, help="canary: seconds to watch gates after each wave")
    deploy.add_argument("--gate", action="append", default=[], help="e.g. 'p95_latency_ms<=20' (repeatable)")
    deploy.add_argument("--max-failures", type=float, help="failed devices that abort (count, or a fraction < 1)")
    deploy.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the rollout")
    deploy.add_argument("--run-dir", type=Path, help="the local fleet's run directory (default: ~/.workbench/fleet)")
    deploy.add_argument("--broker", help="broker URL of a remote fleet instead of the local one")
    deploy.add_argument("--keys-dir", type=Path, help="signing keys (default: ~/.workbench/keys)")
    deploy.add_argument("--json", action="store_true", help="print the final report as JSON")
    deploy.set_defaults(func=run_deploy)

    package = sub.add_parser("package", help="wrap an ONNX model into a signed package",
                             description="Wrap an ONNX model into a signed package directory: manifest with "
                             "hashes, I/O spec, health-check sample and expected output, Ed25519 signature.")
    package.add_argument("model", type=Path, help="the .onnx model, or a directory (e.g. optimize's output) to sign")
    package.add_argument("--out", type=Path, help="the package directory to create (for a .onnx model)")
    package.add_argument("--name")
    package.add_argument("--version")
    package.add_argument("--target", help="hardware profile the model was optimized for")
    package.add_argument("--slo-ms", type=float, help="latency SLO of the health check, in ms")
    package.add_argument("--keys-dir", type=Path, help="signing keys (default: ~/.workbench/keys)")
    package.add_argument("--json", action="store_true")
    package.set_defaults(func=run_package)

    keys = sub.add_parser("keys", help="manage the package signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = keys_sub.add_parser("init", help="create the Ed25519 signing keypair")
    init.add_argument("--dir", type=Path, help="where to write it (default: $WORKBENCH_KEYS_DIR or ~/.workbench/keys)")
    init.add_argument("--force", action="store_true", help="replace an existing key")
    init.set_defaults(func=run_keys_init)

    export = sub.add_parser("export-k8s", help="write Kubernetes/KubeEdge manifests for a package",
                            description="Write the manifests to run the agent under K3s or KubeEdge: DaemonSet "
                            "with the profile's node selector and limits, liveness probe, data volume, trusted key.")
    export.add_argument("package", type=Path)
    export.add_argument("--out", type=Path, default=Path("k8s"))
    export.add_argument("--broker", required=True, help="broker URL the agents connect to")
    export.add_argument("--profile", help="target profile (default: the package's target)")
    export.add_argument("--image", help="agent image (default: edge-workbench-agent:VERSION, the Containerfile's)")
    export.add_argument("--namespace", default="workbench")
    export.add_argument("--kubeedge", action="store_true", help="select KubeEdge edge nodes too")
    export.add_argument("--keys-dir", type=Path)
    export.set_defaults(func=run_export)


def parse_gate(text: str) -> Any:
    """``'p95_latency_ms<=20'`` -> a Gate; raises ConfigError naming the expected form."""
    from workbench.deploy import gate
    from workbench.errors import ConfigError

    match = _GATE.match(text)
    if not match:
        raise ConfigError(f"cannot read gate {text!r}; write it like 'p95_latency_ms<=20' or 'error_rate<=0.01'")
    return gate(match.group(1), match.group(2), float(match.group(3)))


def run_deploy(args: argparse.Namespace) -> int:
    import workbench
    from workbench.deploy import AllAtOnce, Canary

    gates = [parse_gate(text) for text in args.gate]
    if args.strategy == "canary":
        waves = [float(w) for w in args.waves.split(",") if w.strip()]
        strategy: Any = Canary(first=args.first, waves=waves, soak_s=args.soak)
    else:
        strategy = AllAtOnce(soak_s=args.soak if gates else 0.0)
    fleet = workbench.connect(args.broker) if args.broker else workbench.connect(run_dir=args.run_dir)
    with fleet:
        fleet.wait_until(lambda f: len(f) > 0, timeout=5)
        fleet.wait_until(lambda f: all(d.inventory_data for d in f.online()), timeout=5)
        devices: Any = [d.strip() for d in args.devices.split(",")] if args.devices else None
        if args.profile:
            devices = [d for d in (devices or [x.device_id for x in fleet.devices])
                       if fleet[d].profile == args.profile]
        max_failures = args.max_failures
        if max_failures is not None and max_failures >= 1:
            max_failures = int(max_failures)
        rollout = fleet.deploy(args.package, devices, strategy=strategy, gates=gates, keys_dir=args.keys_dir,
                               max_failures=max_failures)
        seen: dict[str, str] = {}

        def show(r: Any) -> None:
            for row in r.rows():
                if seen.get(row["device_id"]) != row["state"]:
                    seen[row["device_id"]] = row["state"]
                    if not args.json:
                        reason = f"  ({row['reason']})" if row["reason"] else ""
                        print(f"{row['device_id']:<16} wave {row['wave'] if row['wave'] is not None else '-'}  "
                              f"{row['state']}{reason}", flush=True)

        rollout.on_change(show)
        report = rollout.wait(timeout=args.timeout)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(f"rollout {report.rollout_id}: {report.status}" + (f" ({report.reason})" if report.reason else ""))
    return 0 if report.status == "succeeded" else 2


def run_package(args: argparse.Namespace) -> int:
    from workbench.deploy import build_package, load_signing_key, sign_package
    from workbench.errors import ConfigError

    key = load_signing_key(args.keys_dir, create=True)
    options = {"name": args.name, "version": args.version, "target": args.target, "slo_ms": args.slo_ms}
    if args.model.is_dir():
        package = sign_package(args.model, key, **options)
    else:
        if args.out is None:
            raise ConfigError("give --out DIR: where to create the package for this model")
        package = build_package(args.model, args.out, key, **options)
    info = {**package.describe(), "path": str(package.path), "size": package.size, "key_id": key.key_id}
    print(json.dumps(info, indent=2) if args.json else
          f"package {info['name']} {info['version']} ({info['package_id'][:12]}) at {info['path']}, signed by "
          f"key {key.key_id}")
    return 0


def run_keys_init(args: argparse.Namespace) -> int:
    from workbench.deploy import init_keys

    key = init_keys(args.dir, force=args.force)
    print(f"signing key {key.key_id} written to {key.directory} (public key: {key.public_file}); "
          "devices must trust the public key (`workbench up` enrolls it in local fleets)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from workbench.deploy._k8s import export_k8s

    paths = export_k8s(args.package, args.out, broker=args.broker, profile=args.profile, image=args.image,
                       namespace=args.namespace, keys_dir=args.keys_dir, kubeedge=args.kubeedge)
    for path in paths:
        print(path)
    return 0


