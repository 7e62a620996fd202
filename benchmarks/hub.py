"""Hub benchmark: ingestion into the hub against in-kernel ingestion, query latency, publish-to-commit under queries.

Prints, in one run on this machine (every number measured here, none estimated):
- ingestion: simulated agents' synthetic source offering 1,000,000 points/s through their outboxes and the
  broker, stored (a) in this process, as a notebook does without a hub (the baseline), then (b) by the hub
  process (`workbench up` runs it); points/s stored by each, and the ratio hub / in-kernel;
- query latency: one hour of 50 devices at 1 s resolution (180,000 points, written into the hub's store before it
  starts) queried from this process over HTTP (Arrow IPC) while the agents offer 100,000 points/s; p50 and p95;
- publish-to-commit latency p50/p99 (batch ``sent`` on the device to committed in the hub's store, same-host
  clocks) at 100,000 points/s offered while 5 client processes query the hub in a loop.

Goals (issue 11): ingestion at least the in-kernel figure (1 M points/s); query p50 under 100 ms; p99 under 100 ms.
The CPU flags and load average are printed: the machine is shared, and figures move with its load.

Usage: python benchmarks/hub.py [--devices 4] [--seconds 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import cpu_flags, load_average

import workbench
from workbench.hub import HubClient
from workbench.sim import down, up

GOAL_POINTS_S = 1_000_000
PACED_POINTS_S = 100_000
HISTORY_DEVICES = 50
HISTORY_S = 3600


def _configure(fleet: Any, devices: list[str], **settings: Any) -> None:
    for device in devices:
        fleet.call(device, "telemetry.configure", settings, timeout=20)


def _offer(fleet: Any, devices: list[str], rate: float) -> None:
    _configure(fleet, devices, synthetic_points_per_s=int(rate / len(devices)), publish_interval_s=0.1,
               batch_size=500)


def _quiet(points: Any, seconds: float = 1.5, limit: float = 20.0) -> None:
    """Wait until the stored count stops moving (the outboxes' backlog drained), at most ``limit`` seconds."""
    before, since, stop = -1, time.monotonic(), time.monotonic() + limit
    while time.monotonic() - since < seconds and time.monotonic() < stop:
        now = points()
        if now != before:
            before, since = now, time.monotonic()
        time.sleep(0.25)


def in_kernel(devices: int, seconds: float) -> float:
    """Points/s stored by this process's own ingestion (no hub) at 1 M points/s offered: the baseline."""
    with tempfile.TemporaryDirectory(prefix="wb-bench-hub-base-") as tmp:
        up(devices=devices, run_dir=tmp, hub=False)  # this process receives, as without a hub
        try:
            with workbench.connect(run_dir=tmp) as fleet:
                fleet.wait_for(devices)
                names = sorted(d.device_id for d in fleet.devices)
                ingestor = fleet.telemetry.ingestor
                _offer(fleet, names, GOAL_POINTS_S)
                time.sleep(2.0)
                start, began = ingestor.totals["points"], time.monotonic()
                time.sleep(seconds)
                rate = (ingestor.totals["points"] - start) / (time.monotonic() - began)
                _configure(fleet, names, synthetic_points_per_s=0)
        finally:
            down(tmp)
    return float(rate)


def _prefill(store_file: Path, now: float) -> int:
    """One hour of ``latency_p95_ms`` for 50 devices at 1 s, written straight into the store the hub will open."""
    from workbench.telemetry._store import DuckDBStore

    store = DuckDBStore(store_file)
    try:
        devices = store.device_ids([f"hist-{i:02d}" for i in range(HISTORY_DEVICES)])
        metric = store.metric_ids(["latency_p95_ms"])[0]
        ts = np.arange(now - HISTORY_S, now, 1.0)
        rng = np.random.default_rng(0)
        for device in devices:
            n = len(ts)
            store.insert_batches(ts, np.full(n, device), np.full(n, metric), rng.gamma(2.0, 2.0, n),
                                 np.full(n, 1, dtype=np.uint64), [device], [1], [now], [n])
        return int(store.count())
    finally:
        store.close()


def _client_loop(record: dict[str, Any], seconds: float, counts: Any, index: int) -> None:
    with HubClient.for_record(record) as hub:
        done, stop = 0, time.monotonic() + seconds
        while time.monotonic() < stop:
            hub.query("synthetic_0", since="1m", every="1s")
            done += 1
    counts[index] = done


def with_hub(devices: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="wb-bench-hub-") as tmp:
        now = time.time()
        history = _prefill(Path(tmp) / "hub" / "fleet.duckdb", now)
        record = up(devices=devices, run_dir=tmp, hub=True)
        try:
            with workbench.connect(run_dir=tmp) as fleet, HubClient.for_record(record) as hub:
                fleet.wait_for(devices)
                names = sorted(d.device_id for d in fleet.devices)
                # Paced first: a flat-out phase leaves a backlog in the outboxes that would count as latency.
                _offer(fleet, names, PACED_POINTS_S)
                time.sleep(2.0)
                timings = []
                for _ in range(20):
                    began = time.perf_counter()
                    frame = hub.query("latency_p95_ms", since=now - HISTORY_S, until=now)
                    timings.append((time.perf_counter() - began) * 1000.0)
                assert len(frame) == HISTORY_DEVICES * HISTORY_S, len(frame)
                mark = hub.ingest()["batches"]
                counts = mp.get_context("spawn").Array("i", 5)
                clients = [mp.get_context("spawn").Process(target=_client_loop, args=(record, seconds, counts, i))
                           for i in range(5)]
                for client in clients:
                    client.start()
                for client in clients:
                    client.join(timeout=seconds + 60)
                paced = hub.ingest(after=mark)["latency_ms"]
                _offer(fleet, names, GOAL_POINTS_S)
                time.sleep(2.0)
                start, began = hub.ingest()["points"], time.monotonic()
                time.sleep(seconds)
                rate = (hub.ingest()["points"] - start) / (time.monotonic() - began)
                _configure(fleet, names, synthetic_points_per_s=0)
                _quiet(lambda: hub.ingest()["points"])
        finally:
            down(tmp)
    return {"history_points": float(history), "query_p50_ms": statistics.median(timings),
            "query_p95_ms": sorted(timings)[int(len(timings) * 0.95)], "points_s": rate,
            "paced_p50_ms": float(paced["p50"] or "nan"), "paced_p99_ms": float(paced["p99"] or "nan"),
            "paced_batches": float(paced["count"]), "client_queries": float(sum(counts))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=4, help="simulated agents (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement (default: %(default)s)")
    args = parser.parse_args()
    print(cpu_flags())
    print(f"load average before: {load_average()}")
    base = in_kernel(args.devices, args.seconds)
    hub = with_hub(args.devices, args.seconds)
    print(f"ingestion at {GOAL_POINTS_S:,} points/s offered by {args.devices} agents: in this process (no hub) "
          f"{base:,.0f} points/s; by the hub {hub['points_s']:,.0f} points/s; hub / in-kernel "
          f"{hub['points_s'] / base:.2f}x")
    print(f"query of 1 h x {HISTORY_DEVICES} devices at 1 s ({int(hub['history_points']):,} points) from a client "
          f"process over HTTP (Arrow IPC), at {PACED_POINTS_S:,} points/s ingested: p50 {hub['query_p50_ms']:.1f} ms, "
          f"p95 {hub['query_p95_ms']:.1f} ms (goal p50 < 100 ms)")
    print(f"publish-to-commit at {PACED_POINTS_S:,} points/s with 5 client processes querying "
          f"({int(hub['client_queries'])} queries, {int(hub['paced_batches'])} batches): p50 "
          f"{hub['paced_p50_ms']:.1f} ms, p99 {hub['paced_p99_ms']:.1f} ms (goal p99 < 100 ms)")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
