"""Rollout-wave benchmark: the time for one wave of 500 devices on a real local fleet.

Starts a fleet of ``--devices`` simulated devices (real agent processes on a real broker, no hub: the rollout
runs in this process, as ``fleet.deploy`` does for a fleet without one), builds and signs a small real ONNX model
package, and rolls it out with ``workbench.Waves(size=--wave, soak_s=0)``: every device downloads the package
from the fleet's artifact server, verifies its signature, loads it and passes its health check. Prints per wave
(issue 17: "the time for a rollout wave of 500 devices"):

- devices, activated, failed, offline;
- publishing every device's desired state (s from the wave's start);
- time to activate per device (desired state sent to "active" seen), p50 and p95;
- the wave's duration (start to every device final).

The CPU flags and load average are printed beside the figures: the machine is shared, and they move with its
load. Run under the shared lock: ``flock /work/locks/heavy.lock nice -n 5 python benchmarks/rollout_waves.py``.

Usage: python benchmarks/rollout_waves.py [--devices 500] [--wave 500] [--broker mosquitto] [--insecure]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import cpu_flags, load_average

import workbench
from workbench.deploy import Waves, build_package, load_signing_key
from workbench.deploy._examples import tiny_model
from workbench.sim import down, up


def _shown(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else f"{value:,}"


def measure(devices: int, wave: int, *, broker: str, secure: bool, timeout: float,
            device_timeout: float) -> dict[str, Any]:
    """Start the fleet, roll a package out in waves of ``wave``; return the report's figures. The fleet is stopped."""
    with tempfile.TemporaryDirectory(prefix="wb-waves-") as base:
        # The agents trust the key that signs the package: it lives with this run, not in the user's home.
        os.environ["WORKBENCH_KEYS_DIR"] = str(Path(base) / "keys")
        os.environ["WORKBENCH_DEPLOY_HISTORY"] = str(Path(base) / "history.jsonl")
        os.environ["WORKBENCH_ARTIFACTS"] = str(Path(base) / "artifacts")
        run_dir = Path(base) / "fleet"
        load_up = load_average()
        started = time.perf_counter()
        up(devices=devices, run_dir=run_dir, broker=broker, hub=False, secure=secure, timeout=timeout, keepalive=30)
        online_s = time.perf_counter() - started
        try:
            package = build_package(tiny_model(Path(base) / "m.onnx", seed=11), Path(base) / "pkg",
                                    load_signing_key(create=True), version="waves")
            with workbench.connect(run_dir=run_dir) as fleet:
                fleet.wait_for(devices, timeout=120)
                fleet.wait_until(lambda f: sum(1 for d in f.devices if d.inventory_data) >= devices, timeout=120)
                time.sleep(3.0)  # the start-up's retained deliveries settle before the clock starts
                load_before = load_average()
                report = fleet.deploy(package.path, strategy=Waves(size=wave, soak_s=0.0),
                                      device_timeout=device_timeout).wait(timeout=device_timeout * (devices / wave + 1))
                load_after = load_average()
        finally:
            down(run_dir)
    return {"devices": devices, "broker": broker, "online_s": online_s, "load_up": load_up,
            "load_before": load_before, "load_after": load_after, "status": report.status,
            "reason": report.reason, "waves": report.waves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500, help="devices in the fleet")
    parser.add_argument("--wave", type=int, default=500, help="devices per wave")
    parser.add_argument("--broker", default="mosquitto", help="embedded (NATS) or mosquitto")
    parser.add_argument("--insecure", action="store_true", help="no TLS or per-device passwords (as --insecure)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds `up` may take")
    parser.add_argument("--device-timeout", type=float, default=300.0, help="seconds a device may take to finish")
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}")
    result = measure(args.devices, args.wave, broker=args.broker, secure=not args.insecure, timeout=args.timeout,
                     device_timeout=args.device_timeout)
    print(f"fleet: {result['devices']:,} devices on {result['broker']}, online in {result['online_s']:.1f} s "
          f"(load before `up`: {result['load_up']}); rollout {result['status']}"
          + (f" ({result['reason']})" if result["reason"] else ""))
    print("| wave | devices | activated | failed | offline | desired state sent s | activate p50 s | "
          "activate p95 s | wave s | load average before → after |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for info in result["waves"]:
        print(f"| {info['index'] + 1} | {_shown(info.get('devices_n'))} | {_shown(info.get('activated'))} | "
              f"{_shown(info.get('failed'))} | {_shown(info.get('pending_offline'))} | {_shown(info.get('sent_s'))} | "
              f"{_shown(info.get('activate_p50_s'))} | {_shown(info.get('activate_p95_s'))} | "
              f"{_shown(info.get('seconds'))} | {result['load_before']} → {result['load_after']} |", flush=True)


if __name__ == "__main__":
    main()
