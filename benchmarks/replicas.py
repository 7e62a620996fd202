"""Hub replicas benchmark: ingestion through 1 vs 2 hub replicas into PostgreSQL, in one run.

Simulated agents stream synthetic telemetry through Mosquitto; the hub replicas (``workbench hub --group``)
share the devices' outbox messages through an MQTT shared subscription and store into one PostgreSQL
database. For 1 replica, then 2, over the same offered load and window, it prints (every number measured
here, none estimated):

- points/s committed, in total and per replica, and each replica's share of the batches;
- each replica's CPU while the devices send nothing (its fixed cost: polls, timers, keepalives);
- CPU seconds of the hub processes, of PostgreSQL's server processes, of the broker and of the agents in
  the window, and points per CPU-second of hub work (the issue's figure of merit on 2 shared cores,
  where total throughput cannot double);
- the load average before and after each phase, and the CPU's flags.

Goal (issue 17): 2 replicas split the load evenly (each 40-60 %) with nothing lost, and points per
CPU-second of hub work within 10 % of one replica's.

Usage: python benchmarks/replicas.py --dsn postgresql://postgres@127.0.0.1:5432/db [--devices 8]
       [--points-per-s 40000,200000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from _machine import cpu_flags, load_average

from workbench import settings
from workbench.fleet._connect import connect_record
from workbench.sim import _procs, down, up
from workbench.sim._rundir import RunDir

IDLE_S = 5.0




def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _tree(pid: int) -> list[int]:
    try:
        proc = psutil.Process(pid)
        return [pid, *(child.pid for child in proc.children(recursive=True))]
    except psutil.Error:
        return []


def _postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def _spawn_replica(record: dict[str, Any], dsn: str, name: str, folder: Path) -> dict[str, Any]:
    from workbench.errors import HubError

    host, port = "127.0.0.1", _procs.free_port("127.0.0.1")
    token_file = folder / "hub.token"
    argv = [sys.executable, "-m", "workbench.cli", "hub", "--broker", record["broker"]["url"], "--store", dsn,
            "--group", "bench", "--replica", name, "--data-dir", str(folder / name), "--host", host,
            "--port", str(port), "--token-file", str(token_file)]
    proc = _procs.spawn_listening(argv, folder / f"{name}.log", host, port, wait=30, what=f"hub replica {name}",
                                  error=HubError)
    return {**proc, "name": name, "url": f"http://{host}:{port}", "token": token_file.read_text().strip()}


def _ingest(replica: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.get(f"{replica['url']}/v1/ingest", headers={"Authorization": f"Bearer {replica['token']}"},
                       timeout=30)
    answer.raise_for_status()
    return dict(answer.json())


def _drop(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("DROP SCHEMA IF EXISTS workbench CASCADE")


def _stored(dsn: str) -> tuple[int, int]:
    """Items stored (telemetry batches and other sync items) and telemetry points."""
    with psycopg.connect(dsn) as con:
        row = con.execute("SELECT count(*), coalesce(sum(n), 0) FROM workbench.batches").fetchone()
        other = con.execute("SELECT count(*) FROM workbench.sync_items").fetchone()
    return (int(row[0]) + (int(other[0]) if other else 0), int(row[1])) if row else (0, 0)


def phase(record: dict[str, Any], dsn: str, replicas: int, rate: int, seconds: float, folder: Path) -> dict[str, Any]:
    """Offer ``rate`` points/s through ``replicas`` replicas for a warm-up and ``seconds``; what each did."""
    _drop(dsn)
    devices = [d for agent in record["agents"] for d in agent["devices"]]
    started = [_spawn_replica(record, dsn, f"r{i + 1}", folder) for i in range(replicas)]
    load_before = load_average()
    try:
        with connect_record(record, RunDir.resolve(record["run_dir"]), timeout=20) as fleet:
            fleet.wait_for(len(devices), timeout=60)
            # What was acknowledged before this phase is in the previous phase's (dropped) tables; everything
            # else the outboxes hold or will produce must end up in this phase's, once.
            acked_before = sum(int(fleet.call(d, "sync.status", timeout=30)["counters"].get("acked", 0))
                               for d in devices)
            for device in devices:
                fleet.call(device, "telemetry.configure", {"enabled": False}, timeout=20)
            time.sleep(2.0)
            idle0 = {r["name"]: _cpu([r["pid"]]) for r in started}
            time.sleep(IDLE_S)  # each replica's own cost with nothing to store: the fixed part of its CPU
            idle = {r["name"]: round((_cpu([r["pid"]]) - idle0[r["name"]]) / IDLE_S, 4) for r in started}
            offer = {"enabled": True, "synthetic_points_per_s": rate // len(devices), "publish_interval_s": 0.1,
                     "batch_size": 500}
            for device in devices:
                fleet.call(device, "telemetry.configure", offer, timeout=20)
            time.sleep(3.0)  # warm-up: connections, name ids, the first inserts
            hub_pids = {r["name"]: r["pid"] for r in started}
            pg, broker = _postgres_pids(), _tree(record["broker"]["pid"])
            agents = [pid for agent in record["agents"] for pid in _tree(agent["pid"])]
            first = {r["name"]: _ingest(r) for r in started}
            cpu0 = {name: _cpu([pid]) for name, pid in hub_pids.items()}
            other0 = (_cpu(pg), _cpu(broker), _cpu(agents))
            t0 = time.monotonic()
            time.sleep(seconds)
            last = {r["name"]: _ingest(r) for r in started}
            cpu1 = {name: _cpu([pid]) for name, pid in hub_pids.items()}
            other1 = (_cpu(pg), _cpu(broker), _cpu(agents))
            window = time.monotonic() - t0
            for device in devices:
                fleet.call(device, "telemetry.configure", {"enabled": False}, timeout=30)
            backlog_ok = True
            for device in devices:  # every outbox drains: nothing offered was lost
                deadline = time.monotonic() + 120
                while fleet.call(device, "sync.status", timeout=30)["outbox_bytes"]:
                    if time.monotonic() > deadline:
                        backlog_ok = False
                        break
                    time.sleep(0.5)
            produced = sum(int(fleet.call(d, "sync.status", timeout=30)["counters"].get("produced", 0))
                           for d in devices) - acked_before
    finally:
        _procs.stop(started)
    stored_batches, stored_points = _stored(dsn)
    per: dict[str, dict[str, Any]] = {}
    for name in first:
        points = int(last[name]["points"]) - int(first[name]["points"])
        batches = int(last[name]["batches"]) - int(first[name]["batches"])
        cpu = cpu1[name] - cpu0[name]
        per[name] = {"points": points, "batches": batches, "cpu_s": round(cpu, 2), "idle_cores": idle[name],
                     "points_per_cpu_s": round(points / cpu) if cpu > 0 else None}
    total_points = sum(p["points"] for p in per.values())
    total_batches = sum(p["batches"] for p in per.values())
    hub_cpu = sum(p["cpu_s"] for p in per.values())
    for entry in per.values():
        entry["share"] = round(entry["batches"] / total_batches, 3) if total_batches else None
    return {"replicas": replicas, "offered_points_s": rate, "window_s": round(window, 1),
            "points_s": round(total_points / window), "per_replica": per,
            "hub_cpu_s": round(hub_cpu, 2), "points_per_hub_cpu_s": round(total_points / hub_cpu) if hub_cpu else None,
            "hub_cores": round(hub_cpu / window, 2), "postgres_cores": round((other1[0] - other0[0]) / window, 2),
            "broker_cores": round((other1[1] - other0[1]) / window, 2),
            "agent_cores": round((other1[2] - other0[2]) / window, 2),
            "items_to_store": produced, "stored_items": stored_batches, "stored_points": stored_points,
            "drained": backlog_ok, "nothing_lost": backlog_ok and stored_batches == produced,
            "load_before": load_before, "load_after": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=settings().test_postgres_dsn,
                        help="PostgreSQL database the replicas share (default: $WORKBENCH_TEST_POSTGRES_DSN); its "
                        "'workbench' schema is dropped before each phase")
    parser.add_argument("--devices", type=int, default=8, help="simulated devices (default: %(default)s)")
    parser.add_argument("--points-per-s", default="40000,200000", help="offered loads, comma-separated: each runs "
                        "with 1 then 2 replicas (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per phase (default: "
                        "%(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("give --dsn postgresql://... (or set WORKBENCH_TEST_POSTGRES_DSN)")
    print(f"CPU: {cpu_flags()}")
    print(f"load average at start: {load_average()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="wb-bench-replicas-") as tmp:
        run_dir = Path(tmp) / "fleet"
        record = up(devices=args.devices, broker="mosquitto", run_dir=run_dir, hub=False, secure=False, keepalive=10)
        try:
            for rate in [int(r) for r in str(args.points_per_s).split(",") if r.strip()]:
                for replicas in (1, 2):
                    result = phase(record, args.dsn, replicas, rate, args.seconds, Path(tmp))
                    results.append(result)
                    print(json.dumps(result, indent=1))
        finally:
            down(run_dir)
    ratios = []
    for one, two in zip(results[::2], results[1::2], strict=True):
        if one["points_per_hub_cpu_s"] and two["points_per_hub_cpu_s"]:
            ratios.append((one["offered_points_s"], two["points_per_hub_cpu_s"] / one["points_per_hub_cpu_s"]))
    print(f"\n{'offered':>8} {'replicas':>8} {'idle cores':>12} {'points/s':>9} {'hub cores':>9} {'pts/hub-cpu-s':>13} "
          f"{'postgres cores':>14} {'broker cores':>12} {'agent cores':>11} {'shares':>14} {'lost':>5}  "
          "load before -> after")
    for r in results:
        shares = "/".join(f"{p['share'] * 100:.0f}%" for p in r["per_replica"].values() if p["share"] is not None)
        idle = "+".join(f"{p['idle_cores']:.3f}" for p in r["per_replica"].values())
        print(f"{r['offered_points_s']:>8} {r['replicas']:>8} {idle:>12} {r['points_s']:>9} {r['hub_cores']:>9} "
              f"{r['points_per_hub_cpu_s']!s:>13} {r['postgres_cores']:>14} {r['broker_cores']:>12} "
              f"{r['agent_cores']:>11} {shares:>14} {'no' if r['nothing_lost'] else 'YES':>5}  "
              f"{r['load_before']} -> {r['load_after']}")
    for rate, ratio in ratios:
        print(f"offered {rate} points/s: points per hub CPU-second, 2 replicas / 1: {ratio:.2f} (goal: within 10 %)")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_flags(), "results": results, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
