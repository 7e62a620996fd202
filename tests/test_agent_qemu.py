"""The agent for real on arm64, emulated: Debian bookworm arm64 python under qemu-user, joined to a local fleet.

The root is Debian's own arm64 packages (debootstrap's first stage, unpacked: nothing arm64 runs
to build it) plus the agent's dependencies as the aarch64 wheels pip picks for a Pi. qemu-user 7.2
shows the host's x86 ``/proc/cpuinfo`` to the guest, on which onnxruntime's CPU probe crashes, so
the agent runs in a private mount namespace with a Raspberry Pi 5's ``/proc/cpuinfo`` bound over
it (tests/fixtures/devices). Every timing is labelled "emulated": it measures qemu, not a Pi.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, FleetFactory

import workbench
from workbench import settings
from workbench.deploy._examples import tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.network]

CACHE = settings().arm64_root or Path("/var/tmp/wb-arm64")
CPUINFO = REPO / "tests" / "fixtures" / "devices" / "raspberry-pi-5" / "proc" / "cpuinfo"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["numpy>=1.24", "onnxruntime>=1.17", "paho-mqtt>=2.0", "psutil>=5.9", "zstandard>=0.22", "cryptography>=41"]


def _require_tools() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("qemu-aarch64-static", "debootstrap", "unshare", "dpkg-deb")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install qemu-user-static debootstrap): the "
                    "emulated arm64 run needs them")
    if platform.machine() != "x86_64" or os.geteuid() != 0:
        pytest.skip("the emulated run needs root on an x86_64 host (a private mount namespace for /proc/cpuinfo)")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    return {name: str(path) for name, path in tools.items()}


def _arm64_root() -> Path:
    """Build (once, cached) a Debian bookworm arm64 root with python3.11 and the agent's dependencies."""
    ready = CACHE / ".ready"
    root = CACHE / "root"
    if ready.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    CACHE.mkdir(parents=True, exist_ok=True)
    boot = subprocess.run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
                           "--include=python3.11-minimal,libpython3.11-stdlib,python3.11,libstdc++6,libffi8,libssl3",
                           "bookworm", str(root), MIRROR], capture_output=True, text=True, timeout=900)
    if boot.returncode != 0:
        pytest.skip(f"debootstrap could not fetch Debian's arm64 packages: {boot.stdout[-500:]}{boot.stderr[-500:]}")
    for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=300)
    platforms = ["manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 29))]
    pip = subprocess.run([sys.executable, "-m", "pip", "install",
                          "--isolated", "--quiet", "--disable-pip-version-check", "--target", str(root / "opt/wb-site"),
                          "--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:",
                          *(arg for p in platforms for arg in ("--platform", p)), *PACKAGES],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        pytest.skip(f"pip could not fetch the aarch64 wheels: {pip.stderr[-500:]}")
    ready.write_text("debootstrap bookworm arm64 + aarch64 wheels\n")
    return root


def test_agent_joins_answers_ping_inventory_and_benchmark_under_arm64_emulation(
        fleet_factory: FleetFactory, tmp_path: Path) -> None:
    _require_tools()
    root = _arm64_root()
    record = fleet_factory(devices=1)
    from workbench.deploy import load_signing_key
    from workbench.protocol.keys import enroll

    key = load_signing_key(create=True)
    enroll(key.public_file, tmp_path / "data" / "trusted_keys")  # one device, its own --data-dir: what this key signed
    env = {**os.environ, "PYTHONPATH": f"{root / 'opt/wb-site'}:{REPO}", "PYTHONDONTWRITEBYTECODE": "1"}
    agent_cmd = (f"mount --bind {CPUINFO} /proc/cpuinfo && exec qemu-aarch64-static -L {root} "
                 f"{root / 'usr/bin/python3.11'} -m workbench.cli agent --device-id arm-01 "
                 f"--broker {record['broker']['url']} --data-dir {tmp_path / 'data'} --log-level WARNING")
    started = time.monotonic()
    agent = subprocess.Popen(["unshare", "-m", "sh", "-c", agent_cmd], cwd=REPO, env=env, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with workbench.connect(run_dir=record["run_dir"]) as fleet:
            deadline = time.monotonic() + 240
            while "arm-01" not in [d.device_id for d in fleet.devices if d.online] and time.monotonic() < deadline:
                assert agent.poll() is None, agent.communicate()[1]
                time.sleep(0.5)
            joined_s = time.monotonic() - started
            device = fleet["arm-01"]
            rtts = [device.ping() for _ in range(5)]
            inventory = device.call("inventory", timeout=60)
            hardware = inventory["hardware"]
            assert hardware["arch"] == "aarch64" and hardware["cpu_model"] == "ARM Cortex-A76"
            assert "asimddp" in hardware["isa_features"]
            assert hardware["execution_providers"] == ["CPUExecutionProvider"]
            assert hardware["python"].startswith("3.11") and inventory["agent_version"] == workbench.__version__
            from workbench.deploy import ArtifactServer
            from workbench.protocol.candidates import stage_candidates

            model = tiny_model(tmp_path / "tiny.onnx")
            with ArtifactServer(tmp_path / "store") as server:
                # The device runs only candidates the workbench signed, fetched from its artifact origin.
                candidates = stage_candidates({"model": model}, server, key)
                sample = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
                result = device.call("benchmark", {
                    "candidates": candidates, "iterations": 50,
                    "inputs": {"x": {"dtype": "float32", "shape": [1, 16], "data": sample.ravel().tolist()}}},
                    timeout=240)
            print(f"\nemulated arm64 (qemu-user, Debian bookworm, Pi 5 cpuinfo): joined in {joined_s:.1f} s, "
                  f"ping median {sorted(rtts)[2]:.1f} ms, onnxruntime {hardware['onnxruntime']}, benchmark {result}")
            timing = result["results"]["model"]
            assert result["device_id"] == "arm-01" and result["provider"] == "CPUExecutionProvider"
            assert timing["p50_ms"] > 0 and timing["iterations"] >= 50 and timing["load_ms"] > 0
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            _, err = agent.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            agent.kill()
            _, err = agent.communicate()
    assert agent.returncode == 0, err
