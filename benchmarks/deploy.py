"""Deploy benchmark: a canary rollout to N simulated devices, transfer efficiency, and serving during a swap.

Prints, in one run on this machine (all numbers measured):
- wall time of each wave of a Canary(first=1, waves=[0.1, 0.5, 1.0]) rollout to N devices (real agent
  processes, real downloads from the artifact server, real health checks);
- bytes the artifact server sent per device relative to the package size (goal: at most 1.05), with a
  resume: one device's download is interrupted half-way (a partial file left in its slot) before the rollout;
- time from setting one device's desired state to it reporting ``active``;
- inference throughput of a device's runtime while the installer swaps in a new model, relative to just
  before (in this process: the agent's own ModelRuntime and Installer, packages from the artifact server
  process), median over 16 installs, for installs in the serving process's own thread (``normal``, the code
  before the change) and in the agent's niceness +10 install thread (``background``, the default now).

Usage: python benchmarks/deploy.py [--devices 50]

Measured on the 2-core development VM (shared with other test runs), 50 devices, a 3.2 MB package,
served by the fleet's artifact server process: waves of 1/4/20/25 devices took 0.64/2.07/5.68/8.82 s;
the server sent 0.99x the package size per device (one device resumed a half-finished download); desired
state to active on one device 0.64 s. During a swap the runtime kept answering: at 0.63x its earlier rate
with installs in the serving process's thread (median install 0.16 s), at 0.96x with the low-priority
install thread (median install 0.38 s: the install yields the cores); the longest gap between two answers
was about 18 ms either way (the GIL held by ONNX Runtime session creation and JSON/crypto work). Earlier
figure, one install, in-process artifact server: 0.56x.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import workbench
from workbench.agent._deploy_service import Installer
from workbench.agent._limits import DeviceLimits
from workbench.agent._runtime import ModelRuntime
from workbench.agent._slots import SlotStore
from workbench.deploy import build_package, init_keys
from workbench.deploy._desired import stage_package
from workbench.deploy._examples import slow_model, tiny_model
from workbench.deploy._serve import spawn_artifact_server, store_for_record
from workbench.sim import _procs, down, up


def served_bytes(log_file: Path) -> int:
    """Body bytes the fleet's artifact server process sent, from its request log."""
    total = 0
    for line in log_file.read_text().splitlines():
        if line.startswith("GET "):
            total += int(dict(f.split("=", 1) for f in line.split()[2:])["bytes"])
    return total


def rollout_figures(devices: int, base: Path) -> dict[str, object]:
    import os

    os.environ["WORKBENCH_KEYS_DIR"] = str(base / "keys")
    os.environ["WORKBENCH_DEPLOY_HISTORY"] = str(base / "history.jsonl")
    key = init_keys(base / "keys")
    # A model of a realistic size (a few MB) so transfer figures mean something.
    package = build_package(slow_model(base / "model.onnx", layers=12, width=256), base / "pkg", key, slo_ms=5000)
    run_dir = base / "fleet"
    start = time.perf_counter()
    record = up(devices=devices, run_dir=run_dir, keepalive=10, timeout=600)
    up_s = time.perf_counter() - start
    try:
        with workbench.connect(run_dir=record["run_dir"]) as fleet:
            fleet.wait_for(devices, timeout=120)
            fleet.wait_until(lambda f: all(d.inventory_data for d in f.online()), timeout=60)
            # The fleet's own artifact server process (started by `workbench up`) serves the package.
            store = store_for_record(record)
            assert store is not None
            # Interrupted download: half of the model already in the last device's inactive slot.
            staged = stage_package(package, store)
            last = fleet.devices[-1].device_id
            slot = run_dir / "data" / last / "deploy" / "slots" / "a"
            slot.mkdir(parents=True, exist_ok=True)
            (slot / ".package_id").write_text(staged["package_id"])
            model_bytes = (package.path / "model.onnx").read_bytes()
            (slot / "model.onnx.part").write_bytes(model_bytes[: len(model_bytes) // 2])
            rollout = fleet.deploy(package.path, strategy=workbench.Canary(first=1, waves=[0.1, 0.5, 1.0], soak_s=0),
                                   device_timeout=600)
            report = rollout.wait(timeout=1200)
            first = next(d for d in rollout.devices.values() if d.wave == 0)
            sent = served_bytes(Path(record["artifacts"]["log"]))
            return {
                "devices": devices, "fleet_up_s": round(up_s, 1), "status": report.status, "counts": report.counts,
                "waves": [{"devices": len(w["devices"]), "seconds": round(w["seconds"], 2)} for w in report.waves],
                "package_bytes": package.size,
                "bytes_per_device_ratio": round(sent / (package.size * devices), 4),
                "desired_to_active_s_one_device": round((first.finished or 0) - (first.started or 0), 3),
            }
    finally:
        down(run_dir)


def swap_figures(base: Path, *, swaps: int = 16, settle_s: float = 0.3) -> dict[str, object]:
    """Serving throughput during installs, relative to just before each; baseline and low-priority installs.

    Both variants run in this process on the same cores: ``normal`` installs in the calling
    thread (the code before the change), ``background`` in a niceness +10 thread (the agent's
    default now). Each swap installs a new package from the artifact server process; the figure
    is the median over ``swaps`` installs, because one install lasts only ~0.1 s and two cores
    shared with other work make single windows noisy.
    """
    key = init_keys(base / "swap-keys")
    packages = [build_package(tiny_model(base / f"swap{i}.onnx", seed=i), base / f"swap{i}", key)
                for i in range(2 * swaps + 1)]
    server = spawn_artifact_server(base / "swap-store", base / "swap-server.log")
    try:
        store = store_for_record({"artifacts": server})
        assert store is not None
        staged = [{**stage_package(p, store), "deployment_id": str(i)} for i, p in enumerate(packages)]
        feeds, _ = packages[0].sample()
        results = {}
        for variant, chunk in (("normal", staged[1:swaps + 1]), ("background", staged[swaps + 1:])):
            runtime = ModelRuntime(DeviceLimits(threads=1, memory_mb=1024))
            installer = Installer(SlotStore(base / f"swap-dev-{variant}"), runtime, background=variant == "background",
                                  trusted_keys=lambda: {key.key_id: key.private_key.public_key()})
            installer.install(staged[0], lambda *a, **k: None)
            stamps: list[float] = []
            stop = threading.Event()

            def serve(rt: ModelRuntime = runtime, out: list[float] = stamps, end: threading.Event = stop) -> None:
                while not end.is_set():
                    rt.infer(feeds)
                    out.append(time.perf_counter())

            thread = threading.Thread(target=serve)
            thread.start()
            windows = []
            for desired in chunk:
                time.sleep(settle_s)
                begin = time.perf_counter()
                outcome = installer.install(desired, lambda *a, **k: None)
                assert outcome["state"] == "active", outcome
                windows.append((begin, time.perf_counter()))
            time.sleep(0.05)
            stop.set()
            thread.join()
            ratios, gaps = [], []
            for begin, end in windows:
                lead = begin - settle_s * 0.8
                before = bisect.bisect_left(stamps, begin) - bisect.bisect_left(stamps, lead)
                during = bisect.bisect_right(stamps, end) - bisect.bisect_left(stamps, begin)
                ratios.append((during / (end - begin)) / (before / (begin - lead)))
                inside = stamps[bisect.bisect_left(stamps, begin) - 1: bisect.bisect_right(stamps, end) + 1]
                gaps.append(max((b - a for a, b in itertools.pairwise(inside)), default=end - begin))
            results[variant] = {"swaps": len(windows),
                                "install_s_median": round(statistics.median(e - b for b, e in windows), 3),
                                "throughput_during_over_before_median": round(statistics.median(ratios), 3),
                                "longest_gap_ms_median": round(statistics.median(gaps) * 1000, 3)}
        return results
    finally:
        _procs.stop([server])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wb-bench-deploy-") as tmp:
        base = Path(tmp)
        figures = {"swap": swap_figures(base), "rollout": rollout_figures(args.devices, base)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
