"""Foundation benchmark: fleet start-up, command round trip against bare paho, memory per device.

Prints, in one run on this machine:
- wall time from `workbench up --devices N` (a real subprocess) to all N devices online;
- command round trip p50/p99 through the fleet API (fleet[...].ping()) and a bare paho
  publish/subscribe round trip through the same broker to an echo in another process, with
  the overhead ratio (goal: at most 1.2);
- peak resident memory per simulated device (agent processes' RSS / devices).

Usage: python benchmarks/connect.py [--devices 50] [--pings 500] [--broker embedded|mosquitto]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil

import workbench
from workbench.protocol._mqtt import BrokerAddress, connect_blocking, make_client, new_client_id

ECHO = textwrap.dedent(
    """
    import sys, threading
    from workbench.protocol._mqtt import BrokerAddress, connect_blocking, make_client, new_client_id
    address = BrokerAddress.parse(sys.argv[1])
    client = make_client(address, new_client_id("bench-echo"))
    def on_message(c, u, m):
        c.publish("bench/pong", m.payload, qos=1)
    client.on_message = on_message
    connect_blocking(client, address, keepalive=30, timeout=10)
    client.subscribe("bench/ping", qos=1)
    print("ready", flush=True)
    threading.Event().wait()
    """
)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class BareEcho:
    """A small QoS 1 round trip to an echo in another process: no workbench code on the path."""

    def __init__(self, url: str) -> None:
        self.echo = subprocess.Popen([sys.executable, "-c", ECHO, url], stdout=subprocess.PIPE, text=True)
        assert self.echo.stdout is not None and self.echo.stdout.readline().strip() == "ready"
        address = BrokerAddress.parse(url)
        self.client = make_client(address, new_client_id("bench-bare"))
        self.got = threading.Event()
        self.client.on_message = lambda c, u, m: self.got.set()
        connect_blocking(self.client, address, keepalive=30, timeout=10)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.subscribe("bench/pong", qos=1)
        subscribed.wait(5)
        # The same size as a ping request, so both paths carry alike.
        self.payload = json.dumps({"v": 1, "id": "x" * 32, "reply_to": "y" * 20, "args": {}}).encode()

    def round_trip(self) -> float:
        self.got.clear()
        start = time.perf_counter()
        self.client.publish("bench/ping", self.payload, qos=1)
        if not self.got.wait(5):
            raise RuntimeError("echo did not answer")
        return (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.echo.kill()
        self.echo.wait()


def round_trips(fleet: workbench.Fleet, url: str, count: int) -> tuple[list[float], list[float]]:
    """Alternate fleet pings and bare round trips one for one, so machine noise hits both alike."""
    device = fleet.devices[0]
    bare = BareEcho(url)
    try:
        for _ in range(20):  # warm-up
            device.ping()
            bare.round_trip()
        fleet_ms, bare_ms = [], []
        for _ in range(count):
            fleet_ms.append(device.ping())
            bare_ms.append(bare.round_trip())
        return fleet_ms, bare_ms
    finally:
        bare.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--broker", default="embedded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "fleet"
        start = time.perf_counter()
        # --insecure: the bare-paho baseline connects anonymously (and the README's figures were measured so).
        subprocess.run([sys.executable, "-m", "workbench.cli", "up", "--devices", str(args.devices),
                        "--run-dir", str(run_dir), "--broker", args.broker, "--insecure", "--json"],
                       check=True, capture_output=True)
        up_s = time.perf_counter() - start
        try:
            record = json.loads((run_dir / "fleet.json").read_text())
            rss = 0
            for agent in record["agents"]:
                rss += psutil.Process(agent["pid"]).memory_info().rss
            with workbench.connect(run_dir=run_dir) as fleet:
                fleet.wait_for(args.devices, timeout=60)
                fleet_ms, bare_ms = round_trips(fleet, record["broker"]["url"], args.pings)
        finally:
            subprocess.run([sys.executable, "-m", "workbench.cli", "down", "--run-dir", str(run_dir)],
                           capture_output=True)
    processes = len(record["agents"])
    f50, f99 = statistics.median(fleet_ms), percentile(fleet_ms, 0.99)
    b50, b99 = statistics.median(bare_ms), percentile(bare_ms, 0.99)
    print(f"broker: {args.broker}; devices: {args.devices} in {processes} agent processes; "
          f"CPU: {psutil.cpu_count()} cores")
    print(f"workbench up -> all {args.devices} online: {up_s:.2f} s")
    print(f"command round trip (fleet API ping): p50 {f50:.3f} ms, p99 {f99:.3f} ms  (n={len(fleet_ms)})")
    print(f"bare paho QoS 1 round trip to an echo process: p50 {b50:.3f} ms, p99 {b99:.3f} ms  (n={len(bare_ms)})")
    print(f"overhead ratio fleet/bare: p50 {f50 / b50:.2f}x, p99 {f99 / b99:.2f}x  (goal: <= 1.2)")
    print(f"resident memory: {rss / 2**20:.0f} MiB for {args.devices} devices = "
          f"{rss / 2**20 / args.devices:.1f} MiB per simulated device ({rss / 2**20 / processes:.0f} MiB per process)")


if __name__ == "__main__":
    main()
