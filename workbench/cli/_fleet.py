"""`workbench up`, `status` and `down`: the local simulated fleet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start a local fleet: a broker and simulated devices",
                        description="Start a broker and N simulated devices (real agent processes), wait "
                        "until all are online, and print the broker URL and devices.")
    up.add_argument("--devices", type=int, default=3, help="number of simulated devices (default: 3)")
    up.add_argument("--profiles", help="comma-separated hardware profiles, cycled over the devices")
    up.add_argument("--run-dir", help="where the fleet keeps its record, logs and data "
                    "(default: $WORKBENCH_RUN_DIR or ~/.workbench/fleet)")
    up.add_argument("--port", type=int, default=0, help="broker port; 0 picks a free one (default)")
    up.add_argument("--broker", default="embedded",
                    help="embedded (the NATS server, default), mosquitto, or an mqtt:// URL of a running broker")
    up.add_argument("--cluster", type=int, default=1, metavar="N",
                    help="run the embedded broker as a cluster of N NATS servers (3: one may fail), the MQTT state "
                    "replicated on each; devices spread over the nodes and fail over when theirs is lost")
    up.add_argument("--keepalive", type=int, default=10, help="agents' MQTT keepalive in seconds")
    up.add_argument("--per-process", type=int, help="simulated devices per agent process")
    security = up.add_mutually_exclusive_group()
    security.add_argument("--insecure", dest="secure", action="store_false",
                          help="no credentials, ACLs or TLS: any process on this machine can act as any device or "
                          "as the workbench (loopback only; for a throwaway fleet)")
    security.add_argument("--secure", dest="secure", action="store_true",
                          help="per-device credentials, ACLs and TLS with a generated CA: the default")
    up.add_argument("--host", default="127.0.0.1",
                    help="address the broker listens on (default: %(default)s); beyond loopback needs a secure fleet")
    up.add_argument("--no-hub", dest="hub", action="store_false",
                    help="run no fleet hub (by default it runs: the one receiver and store of the fleet's data, which "
                    "every notebook, dashboard and command reads); each client then receives for itself")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all devices")
    up.set_defaults(secure=True)
    up.add_argument("--json", action="store_true", help="print JSON")
    up.set_defaults(func=_up)

    status = sub.add_parser("status", help="list the local fleet's devices and their state")
    status.add_argument("--run-dir")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    down = sub.add_parser("down", help="stop the local fleet (only what `up` started)")
    down.add_argument("--run-dir")
    down.set_defaults(func=_down)


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {"run_dir": record["run_dir"], "broker": record["broker"]["url"], "broker_kind": record["broker"]["kind"]
            + (f" cluster of {record['broker']['cluster']}" if record["broker"].get("cluster") else ""),
            "secure": record.get("secure") is not None, "hub": (record.get("hub") or {}).get("url"),
            "devices": record["devices"]}


def _up(args: argparse.Namespace) -> int:
    from workbench.errors import FleetAlreadyRunningError
    from workbench.sim import RunDir, up

    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()] if args.profiles else None
    try:
        record = up(devices=args.devices, profiles=profiles, run_dir=args.run_dir, port=args.port,
                    broker=args.broker, keepalive=args.keepalive, per_process=args.per_process,
                    secure=args.secure, host=args.host, hub=args.hub, timeout=args.timeout,
                    cluster=args.cluster)
        already = False
    except FleetAlreadyRunningError as exc:
        print(f"workbench up: {exc}", file=sys.stderr)
        record = RunDir.resolve(args.run_dir).read() or {}
        already = True
    summary = {**_summary(record), "already_running": already}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        state = "already up" if already else "up"
        print(f"fleet {state}: broker {summary['broker']} ({summary['broker_kind']}), "
              f"{len(summary['devices'])} devices, run dir {summary['run_dir']}")
        if summary["secure"]:
            print(f"secure: TLS, a password and ACLs per device (secrets in {Path(summary['run_dir']) / 'secrets'})")
        elif record:
            print("INSECURE (--insecure): no credentials, ACLs or TLS; any local process can act as any device")
        if summary["hub"]:
            print(f"hub: {summary['hub']} (token in {Path(summary['run_dir']) / 'hub.token'})")
        for device in summary["devices"]:
            print(f"  {device['device_id']:<10} {device['profile']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from workbench.sim import status

    result = status(args.run_dir)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"broker {result['broker']} (running: {result['broker_running']}), run dir {result['run_dir']}")
    if result.get("error"):
        print(f"  cannot read device state: {result['error']}")
    for device in result["devices"]:
        state = "online" if device["online"] else "offline"
        print(f"  {device['device_id']:<10} {state:<8} {device['profile']:<18} model={device['active_model']}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from workbench.sim import down

    result = down(args.run_dir)
    print(f"fleet down: stopped {result['stopped_processes']} processes "
          f"({result['stopped_devices']} devices) in {result['run_dir']}")
    return 0
