"""Deployment faults with real parts: the fleet's artifact server process, write errors, a server going away
mid-transfer, a device offline for a whole rollout, two rollouts at once, and kill -9 of the agent process."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import FleetFactory, run_cli

import workbench
from workbench.agent._origin import ORIGIN_FILE
from workbench.deploy import ArtifactServer, build_package, load_signing_key
from workbench.deploy._desired import stage_package
from workbench.deploy._examples import slow_model, tiny_model
from workbench.deploy._serve import spawn_artifact_server
from workbench.deploy._state import DeployState
from workbench.fleet._fleet import Fleet
from workbench.protocol.artifacts import ArtifactStore
from workbench.protocol.keys import enroll
from workbench.protocol.package import Package
from workbench.sim import RunDir, _procs, down


def _restart(record: dict[str, Any], agent: dict[str, Any]) -> None:
    """Start the agent process again and record it in fleet.json, so the fleet's `down` stops it too."""
    agent.update(_procs.spawn(agent["argv"], Path(agent["log"])))
    RunDir(Path(record["run_dir"])).write({key: value for key, value in record.items() if key != "version"})


def make_package(base: Path, name: str, seed: int, *, slow: bool = False, layers: int = 4) -> Package:
    key = load_signing_key(None, create=True)
    if slow:
        model = slow_model(base / f"{name}.onnx", seed=seed, layers=layers)
    else:
        model = tiny_model(base / f"{name}.onnx", seed=seed)
    return build_package(model, base / name, key, version=name, slo_ms=5000)


def active_version(fleet: Fleet, device_id: str) -> str | None:
    return (fleet[device_id].active_model or {}).get("version")


@pytest.fixture
def one_device(fleet_factory: FleetFactory, keys_env: Path) -> Iterator[tuple[dict[str, Any], Fleet]]:
    record = fleet_factory(devices=1, keepalive=5)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        yield record, fleet


# -- the fleet's artifact server ----------------------------------------------------------------------


def test_up_records_artifact_server_and_down_stops_only_it_when_fleet_stops(fleet_factory: FleetFactory,
                                                                            keys_env: Path) -> None:
    record = fleet_factory(devices=1)
    server = record["artifacts"]
    assert _procs.is_alive(server) and Path(server["directory"]).is_dir()
    blob = keys_env / "blob.bin"
    blob.write_bytes(os.urandom(1000))
    store = ArtifactStore(server["directory"], server["url"])
    sha = store.add(blob)
    import urllib.request

    with urllib.request.urlopen(store.url(sha), timeout=10) as response:
        assert response.read() == blob.read_bytes()
    result = down(record["run_dir"])
    assert result["stopped_processes"] == 3  # agent, artifact server, broker
    assert not _procs.is_alive(server)


def test_offline_device_installs_from_fleet_server_when_it_returns_after_deploying_session_closed(
        one_device: tuple[dict[str, Any], Fleet], keys_env: Path) -> None:
    record, fleet = one_device
    agent = record["agents"][0]
    _procs.stop([agent])
    fleet.wait_until(lambda f: not f["sim-01"].online, timeout=20)
    package = make_package(keys_env, "while-away", seed=11)
    report = fleet.deploy(package.path).wait(timeout=60)
    assert [d["state"] for d in report.devices] == ["pending_offline"]
    fleet.close()  # the deploying session is gone: only the fleet's own artifact server can serve the package
    _restart(record, agent)
    with workbench.connect(run_dir=record["run_dir"]) as later:
        later.wait_until(lambda f: "sim-01" in f and f["sim-01"].online and active_version(f, "sim-01")
                         == "while-away", timeout=60)
    log = Path(record["artifacts"]["log"]).read_text()
    assert f"GET {package.describe()['model_sha256'][:12]}" in log


# -- write errors and disk space ------------------------------------------------------------------------

INSTALL_WITH_FILE_LIMIT = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    from workbench.agent._deploy_service import Installer
    from workbench.agent._limits import DeviceLimits
    from workbench.agent._runtime import ModelRuntime
    from workbench.agent._slots import SlotStore
    from workbench.protocol.keys import load_trusted_keys

    data, old, new, limit = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    runtime = ModelRuntime(DeviceLimits(threads=1, memory_mb=1024))
    inst = Installer(SlotStore(data / "deploy"), runtime, trusted_keys=lambda: load_trusted_keys(data / "keys"),
                     retry_delay=0.01)
    first = inst.install(old, lambda *a, **k: None)
    # From here on the kernel refuses to grow any file past `limit` bytes (EFBIG), as a full disk would.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    second = inst.install(new, lambda *a, **k: None)
    feeds, _ = inst.package.sample()
    outputs = runtime.infer(feeds)
    print(json.dumps({"first": first, "second": second, "serving": runtime.active.version,
                      "outputs": len(outputs)}))
""")


def test_install_fails_with_reason_and_old_model_serves_when_write_fails_during_download(keys_env: Path) -> None:
    key = load_signing_key(None, create=True)
    enroll(key.public_file, keys_env / "device" / "keys")
    old = make_package(keys_env, "old", seed=1)
    new = make_package(keys_env, "big", seed=2, slow=True, layers=8)
    model_size = (new.path / "model.onnx").stat().st_size
    with ArtifactServer(keys_env / "store") as server:
        args = [json.dumps({**stage_package(p, server), "deployment_id": p.version}) for p in (old, new)]
        result = subprocess.run([sys.executable, "-c", INSTALL_WITH_FILE_LIMIT, str(keys_env / "device"), *args,
                                 str(model_size // 3)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["first"]["state"] == "active"
    assert outcome["second"]["state"] == "failed"
    assert "cannot write model.onnx" in outcome["second"]["reason"] and "free disk space" in outcome["second"]["reason"]
    assert outcome["serving"] == "old" and outcome["outputs"] == 1


def test_install_fails_before_download_when_device_disk_lacks_space(keys_env: Path) -> None:
    from workbench.agent._deploy_service import Installer
    from workbench.agent._limits import DeviceLimits
    from workbench.agent._runtime import ModelRuntime
    from workbench.agent._slots import SlotStore

    data = keys_env / "small-disk"
    data.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a 1 MiB tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        key = load_signing_key(None, create=True)
        big = make_package(keys_env, "too-big", seed=3, slow=True, layers=8)
        runtime = ModelRuntime(DeviceLimits(threads=1, memory_mb=1024))
        installer = Installer(SlotStore(data / "deploy"), runtime,
                              trusted_keys=lambda: {key.key_id: key.private_key.public_key()})
        with ArtifactServer(keys_env / "store") as server:
            result = installer.install({**stage_package(big, server), "deployment_id": "x"}, lambda *a, **k: None)
            assert server.bytes_served == 0  # refused before any byte was sent
        assert result["state"] == "failed" and "not enough disk" in result["reason"]
    finally:
        subprocess.run(["umount", str(data)], check=True)


# -- the artifact server going away mid-transfer ------------------------------------------------------------


def test_download_resumes_where_it_stopped_when_artifact_server_dies_mid_transfer_and_returns(keys_env: Path) -> None:
    from workbench.agent._deploy_service import Installer
    from workbench.agent._limits import DeviceLimits
    from workbench.agent._runtime import ModelRuntime
    from workbench.agent._slots import SlotStore

    key = load_signing_key(None, create=True)
    package = make_package(keys_env, "resumed", seed=4, slow=True, layers=6)
    model_sha = package.describe()["model_sha256"]
    size = (package.path / "model.onnx").stat().st_size
    store_dir, port = keys_env / "served", _procs.free_port()
    first = spawn_artifact_server(store_dir, keys_env / "server-1.log", port=port)
    rate = size / 2.0  # about two seconds for the model: time to interrupt it
    argv = [*first["argv"], "--rate", str(rate)]
    _procs.stop([first])
    server = _procs.spawn(argv, keys_env / "server-1.log")
    assert _procs.wait_port("127.0.0.1", port, timeout=20, proc=server)
    store = ArtifactStore(store_dir, f"http://127.0.0.1:{port}")
    desired = {**stage_package(package, store), "deployment_id": "resume"}
    runtime = ModelRuntime(DeviceLimits(threads=1, memory_mb=1024))
    installer = Installer(SlotStore(keys_env / "dev" / "deploy"), runtime, download_attempts=8, retry_delay=0.2,
                          trusted_keys=lambda: {key.key_id: key.private_key.public_key()})
    results: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: results.append(installer.install(desired, lambda *a, **k: None)))
    thread.start()
    part = keys_env / "dev" / "deploy" / "slots" / "a" / "model.onnx.part"
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size > size // 4) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(server["pid"], signal.SIGKILL)  # the server goes away mid-transfer
    _procs.stop([server])
    time.sleep(0.5)
    back = _procs.spawn(argv, keys_env / "server-2.log")
    try:
        thread.join(timeout=60)
    finally:
        _procs.stop([back])
    assert results and results[0]["state"] == "active", results
    log = (keys_env / "server-2.log").read_text().splitlines()
    lines = [line for line in log if line.startswith(f"GET {model_sha[:12]}")]
    assert lines, "the returning server never got the model request"
    fields = dict(f.split("=", 1) for f in lines[0].split()[2:])
    start = int(fields["range"].removeprefix("bytes=").rstrip("-"))
    assert start > size // 4 and int(fields["status"]) == 206 and int(fields["bytes"]) == size - start


# -- two rollouts at once -------------------------------------------------------------------------------------


def test_second_rollout_from_another_process_is_refused_when_device_is_mid_install(
        one_device: tuple[dict[str, Any], Fleet], keys_env: Path) -> None:
    record, fleet = one_device
    # A server that accepts connections but never answers keeps the first install downloading.
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(8)
    first_pkg, second_pkg = make_package(keys_env, "first", seed=5), make_package(keys_env, "second", seed=6)
    stuck = ArtifactStore(keys_env / "stuck", f"http://127.0.0.1:{hanging.getsockname()[1]}")
    # Devices download only from their artifact origins: the operator adds the stuck server as one.
    with open(RunDir(Path(record["run_dir"])).data / "sim-01" / ORIGIN_FILE, "a") as origins:
        origins.write(stuck.base_url + "\n")
    rollout = fleet.deploy(first_pkg.path, artifacts=stuck, device_timeout=60)
    state = DeployState(fleet.bus)
    try:
        assert state.wait(lambda s: s.reported("sim-01").get("state") == "downloading", timeout=20)
        refused = run_cli("deploy", str(second_pkg.path), "--run-dir", record["run_dir"], "--timeout", "30")
        assert refused.returncode == 1
        assert "being deployed first" in refused.stderr and "force" in refused.stderr, refused.stderr
    finally:
        hanging.close()  # the first install's download fails now
        state.close()
    first = rollout.wait(timeout=90)
    assert first.devices[0]["state"] == "failed" and "download" in first.devices[0]["reason"]
    accepted = run_cli("deploy", str(second_pkg.path), "--run-dir", record["run_dir"], "--json", "--timeout", "60")
    assert accepted.returncode == 0, accepted.stderr
    fleet.wait_until(lambda f: active_version(f, "sim-01") == "second", timeout=20)


# -- kill -9 of the real agent process during a real rollout ---------------------------------------------------


def test_restarted_agent_serves_verified_model_when_killed_during_rollout(one_device: tuple[dict[str, Any], Fleet],
                                                                           keys_env: Path) -> None:
    record, fleet = one_device
    agent = record["agents"][0]
    packages = [make_package(keys_env, f"k{i}", seed=20 + i) for i in range(2)]
    ids = {p.id: p.version for p in packages}
    assert fleet.deploy(packages[0].path).wait(timeout=60).status == "succeeded"
    start = time.perf_counter()
    assert fleet.deploy(packages[1].path).wait(timeout=60).status == "succeeded"
    window = time.perf_counter() - start
    rng = random.Random(7)
    for trial in range(3):
        # A new package each time (newer sequence): a device refuses to go back to an older one.
        target = make_package(keys_env, f"t{trial}", seed=20 + trial % 2)
        ids[target.id] = target.version
        rollout = fleet.deploy(target.path, device_timeout=60)
        time.sleep(rng.random() * window)
        psutil.Process(agent["pid"]).kill()
        fleet.wait_until(lambda f: not f["sim-01"].online, timeout=20)
        _restart(record, agent)
        fleet.wait_until(lambda f: f["sim-01"].online, timeout=30)
        # At any moment after the restart the device serves one of the two verified packages, never none.
        status = fleet.call("sim-01", "deploy_status", {}, timeout=20)
        assert (status["active"] or {}).get("package_id") in ids, (trial, status)
        rollout.wait(timeout=60)
        # The retained desired state finishes the install after the restart.
        fleet.wait_until(lambda f, t=target: active_version(f, "sim-01") == t.version, timeout=60)
        probe = fleet.call("sim-01", "probe", {"n": 5}, timeout=20)
        assert probe["errors"] == 0 and probe["active"]["package_id"] == target.id, (trial, probe)
