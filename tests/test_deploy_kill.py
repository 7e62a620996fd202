"""kill -9 of the agent's install at random points: a restarted device always serves a verified model.

A helper process imports the agent's code once and forks a child per trial, so each trial is a
real process running the real install (HTTP download, signature and hash checks, ONNX Runtime
load, health check, fsync'd slot swap) that gets SIGKILL at a random moment; a fresh child then
boots from the same data directory the way a restarted agent does.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from workbench.deploy import ArtifactServer
from workbench.deploy._desired import stage_package
from workbench.deploy._examples import tiny_model
from workbench.protocol.keys import enroll, init_keys
from workbench.protocol.package import build_package, verify_package

HELPER = r"""
import json, os, sys
from pathlib import Path
from workbench.agent._deploy_service import Installer
from workbench.agent._limits import DeviceLimits
from workbench.agent._runtime import ModelRuntime
from workbench.agent._slots import SlotStore
from workbench.protocol.keys import load_trusted_keys

def installer(data):
    runtime = ModelRuntime(DeviceLimits(threads=1, memory_mb=1024))
    inst = Installer(SlotStore(data / "deploy"), runtime, trusted_keys=lambda: load_trusted_keys(data / "trusted_keys"),
                     retry_delay=0.01)
    inst.boot()
    return inst

for line in sys.stdin:
    op, data, arg = line.rstrip("\n").split(" ", 2)
    data = Path(data)
    pid = os.fork()
    if pid == 0:
        try:
            inst = installer(data)
            if op == "install":
                trace = open(data / "trace.log", "a")
                def report(state, **info):
                    trace.write(state + "\n"); trace.flush()
                result = inst.install(json.loads(arg), report)
            else:
                model = inst.runtime.active
                result = {"package_id": inst.package.id if inst.package else None,
                          "model_sha256": model.sha256 if model else None, "slot": inst.store.current()}
            sys.stdout.write("result " + json.dumps(result) + "\n"); sys.stdout.flush()
        finally:
            os._exit(0)
    sys.stdout.write(f"pid {pid}\n"); sys.stdout.flush()
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(f"exited {status}\n"); sys.stdout.flush()
"""

TRIALS = 50


class Helper:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=Path(__file__).resolve().parents[1])

    def start(self, op: str, data: Path, arg: str = "-") -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{op} {data} {arg}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.startswith("pid "), line
        return int(line.split()[1])

    def finish(self) -> dict | None:
        assert self.proc.stdout is not None
        result = None
        while True:
            line = self.proc.stdout.readline()
            assert line, "helper died"
            if line.startswith("result "):
                result = json.loads(line[7:])
            elif line.startswith("exited "):
                return result

    def run(self, op: str, data: Path, arg: str = "-") -> dict:
        self.start(op, data, arg)
        result = self.finish()
        assert result is not None
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_restarted_device_serves_verified_model_when_killed_at_random_points(tmp_path: Path) -> None:
    key = init_keys(tmp_path / "keys")
    data = tmp_path / "device"
    enroll(key.public_file, data / "trusted_keys")
    trusted = {key.key_id: key.private_key.public_key()}
    packages = [build_package(tiny_model(tmp_path / f"m{i}.onnx", seed=i), tmp_path / f"pkg{i}", key,
                              version=f"v{i}") for i in (1, 2)]
    model_hashes = {p.id: p.describe()["model_sha256"] for p in packages}
    helper = Helper()
    rng = random.Random(1234)
    outcomes: Counter[str] = Counter()
    killed_in: Counter[str] = Counter()
    try:
        with ArtifactServer(tmp_path / "store") as server:
            desired = {p.id: {**stage_package(p, server), "deployment_id": p.id[:8]} for p in packages}
            first = helper.run("install", data, json.dumps(desired[packages[0].id]))
            assert first["state"] == "active"
            # A full install of the other package measures how long the window to hit is.
            start = time.perf_counter()
            second = helper.run("install", data, json.dumps(desired[packages[1].id]))
            window = time.perf_counter() - start
            assert second["state"] == "active"
            start = time.perf_counter()
            helper.run("boot", data)
            boot = time.perf_counter() - start  # a child boots before it installs: aim past that

            durations = [window]
            seeds = {p.id: seed for p, seed in zip(packages, (1, 2), strict=True)}
            for trial in range(TRIALS):
                before = helper.run("boot", data)
                # The other model, signed anew: a device refuses to go back to an older package (anti-rollback).
                seed = 3 - seeds[before["package_id"]]
                target = build_package(tmp_path / f"m{seed}.onnx", tmp_path / f"t{trial}", key, version=f"t{trial}")
                seeds[target.id], model_hashes[target.id] = seed, target.describe()["model_sha256"]
                desired[target.id] = {**stage_package(target, server), "deployment_id": target.id[:8]}
                (data / "trace.log").unlink(missing_ok=True)
                started = time.perf_counter()
                pid = helper.start("install", data, json.dumps({**desired[target.id], "deployment_id": f"t{trial}"}))
                # Aim inside the install as it runs now: a busy machine makes it slower, a quiet one faster.
                typical = sorted(durations)[len(durations) // 2]
                time.sleep(0.9 * boot + rng.random() * max(0.9 * (typical - boot), 0.01))
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it finished first
                result = helper.finish()
                if result is not None:
                    durations.append(time.perf_counter() - started)
                trace = (data / "trace.log").read_text().split() if (data / "trace.log").exists() else []
                outcomes["completed" if result is not None else "killed"] += 1
                if result is None:
                    killed_in[trace[-1] if trace else "starting"] += 1
                after = helper.run("boot", data)
                # Never none, never unverified: the slot it serves verifies, and the runtime runs that model.
                assert after["package_id"] in model_hashes, (trial, trace, after)
                assert after["model_sha256"] == model_hashes[after["package_id"]], (trial, after)
                served = verify_package(data / "deploy" / "slots" / after["slot"], trusted)
                assert served.id == after["package_id"]
                if result is not None:
                    assert after["package_id"] == target.id
    finally:
        helper.close()
    print(f"\n{TRIALS} trials: {dict(outcomes)}; killed during: {dict(killed_in)}")
    assert outcomes["killed"] >= TRIALS // 5, outcomes  # the random kills did interrupt installs
