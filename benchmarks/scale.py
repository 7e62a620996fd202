"""Scale benchmark: how many simulated devices one machine holds, how fast they come online, what idle costs.

Prints, in one run on this machine (every number measured here, none estimated), for each broker
(the embedded NATS server, Mosquitto) and each fleet size (500, 1,000, 2,000 devices by default):
- time to all online: ``workbench up`` (broker, hub, agent processes) until every device is online;
- agent memory per device: the agent processes' RSS and USS (unique set: what stopping them frees), divided
  by the devices; threads per device;
- idle cost per device over ``--idle`` seconds with nothing to do: the agents' CPU (share of one core) and
  their context switches (wake-ups) per second;
- the broker's idle CPU, per 1,000 devices (share of one core);
- on NATS, the JetStream consumers the devices' QoS 1 subscriptions made and the refused ones (SUBACK does not
  tell: read from /jsz and the broker's log);
- ``fleet.inventory()`` time for the whole fleet, from a client connected to the fleet (the hub's view).

Goals (issue 17): 2,000 devices online in under 60 s; idle cost per device under 1 MiB and under 0.1 % of a core;
``fleet.inventory()`` for 2,000 devices under 1 s. The CPU flags and load average are printed beside each row:
the machine is shared, and figures move with its load.

Usage: python benchmarks/scale.py [--sizes 500,1000,2000] [--brokers embedded,mosquitto] [--idle 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from _machine import cpu_flags, load_average

import workbench
from workbench.sim import down, up
from workbench.sim._brokers import broker_processes, subscription_report


def _processes(records: list[dict[str, Any]]) -> list[psutil.Process]:
    return [psutil.Process(int(r["pid"])) for r in records]


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def _switches(procs: list[psutil.Process]) -> int:
    """Context switches of every thread (psutil's num_ctx_switches counts the main thread's only)."""
    total = 0
    for proc in procs:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            try:
                text = (task / "status").read_text()
            except OSError:
                continue  # the thread ended meanwhile
            total += sum(int(line.split()[1]) for line in text.splitlines()
                         if "ctxt_switches:" in line)
    return total


def measure(broker: str, devices: int, *, idle: float, timeout: float, keepalive: int = 30) -> dict[str, Any]:
    """One fleet of ``devices`` on ``broker``: time to online, memory, idle CPU and wake-ups; the fleet is stopped."""
    with tempfile.TemporaryDirectory(prefix="wb-scale-") as run_dir:
        load_before = load_average()
        started = time.perf_counter()
        # "cluster3": the embedded broker as a cluster of three NATS servers (`workbench up --cluster 3`).
        nodes = int(broker.removeprefix("cluster")) if broker.startswith("cluster") else 1
        record = up(devices=devices, run_dir=run_dir, broker="embedded" if nodes > 1 else broker, timeout=timeout,
                    keepalive=keepalive, cluster=nodes)
        online_s = time.perf_counter() - started
        try:
            agents = _processes(record["agents"])
            broker_proc = _processes(broker_processes(record["broker"]))
            time.sleep(3.0)  # let the start-up's last replies and retained deliveries settle
            cpu0, sw0, bcpu0 = _cpu_seconds(agents), _switches(agents), _cpu_seconds(broker_proc)
            time.sleep(idle)
            cpu1, sw1, bcpu1 = _cpu_seconds(agents), _switches(agents), _cpu_seconds(broker_proc)
            memory = [proc.memory_full_info() for proc in agents]
            threads = sum(proc.num_threads() for proc in agents)
            with workbench.connect(run_dir=run_dir) as fleet:
                fleet.wait_for(devices, timeout=60)
                fleet.inventory()  # the first call imports pandas
                t0 = time.perf_counter()
                inventory = fleet.inventory()
                inventory_s = time.perf_counter() - t0
                assert len(inventory) == devices, f"inventory has {len(inventory)} rows, not {devices}"
            subscriptions = subscription_report(record["broker"]) if broker != "mosquitto" else None
        finally:
            down(run_dir)
    return {
        "broker": broker, "devices": devices, "processes": len(record["agents"]), "online_s": online_s,
        "rss_mib_per_device": sum(m.rss for m in memory) / devices / 2**20,
        "uss_mib_per_device": sum(m.uss for m in memory) / devices / 2**20,
        "threads_per_device": threads / devices,
        "idle_cpu_pct_per_device": 100 * (cpu1 - cpu0) / idle / devices,
        "wakeups_per_s_per_device": (sw1 - sw0) / idle / devices,
        "broker_idle_cpu_pct_per_1000": 100 * (bcpu1 - bcpu0) / idle / devices * 1000,
        "inventory_s": inventory_s, "subscriptions": subscriptions,
        "load_before": load_before, "load_after": load_average(),
    }


def _row(r: dict[str, Any]) -> str:
    subs = r["subscriptions"]
    consumers = "-" if subs is None else f"{subs['consumers']} ({subs['refused']} refused)"
    return (f"| {r['broker']} | {r['devices']:,} | {r['processes']} | {r['online_s']:.1f} | "
            f"{r['rss_mib_per_device']:.2f} / {r['uss_mib_per_device']:.2f} | {r['threads_per_device']:.2f} | "
            f"{r['idle_cpu_pct_per_device']:.4f} | {r['wakeups_per_s_per_device']:.2f} | "
            f"{r['broker_idle_cpu_pct_per_1000']:.2f} | {r['inventory_s'] * 1000:.0f} | {consumers} | "
            f"{r['load_before']} → {r['load_after']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="500,1000,2000", help="comma-separated fleet sizes")
    parser.add_argument("--brokers", default="embedded,mosquitto",
                        help="comma-separated: embedded, mosquitto, cluster3 (three NATS nodes)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measurement per fleet")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds `up` may take per fleet")
    parser.add_argument("--keepalive", type=int, default=30, help="the agents' MQTT keepalive (s)")
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}")
    print(f"load average before: {load_average()}")
    print("| broker | devices | agent processes | online s | RSS / USS MiB per device | threads per device | "
          "idle CPU % of a core per device | wake-ups/s per device | broker idle CPU % per 1,000 | "
          "inventory() ms | JetStream consumers | load average before → after |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
    for broker in args.brokers.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            try:
                row = measure(broker, size, idle=args.idle, timeout=args.timeout, keepalive=args.keepalive)
                print(_row(row), flush=True)
            except workbench.WorkbenchError as exc:
                print(f"| {broker} | {size:,} | failed: {exc} |", flush=True)
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
