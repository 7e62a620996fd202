"""Rollouts through a real local fleet: broker, agent processes, artifact server, desired/reported state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import workbench
from workbench.deploy import DeployConflictError, build_package, init_keys, load_signing_key
from workbench.deploy._examples import slow_model, tiny_model
from workbench.fleet._fleet import Fleet
from workbench.protocol.package import Package
from workbench.sim import RunDir, down, up


@pytest.fixture(scope="module")
def deploy_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("deploy-env")
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_KEYS_DIR", str(base / "keys"))
    mp.setenv("WORKBENCH_DEPLOY_HISTORY", str(base / "history.jsonl"))
    mp.setenv("WORKBENCH_ARTIFACTS", str(base / "artifacts"))
    yield base
    mp.undo()


@pytest.fixture(scope="module")
def fleet_record(deploy_env: Path) -> Iterator[dict[str, Any]]:
    run_dir = deploy_env / "fleet"
    record = up(devices=3, run_dir=run_dir, keepalive=5)
    yield record
    down(run_dir)


@pytest.fixture
def fleet(fleet_record: dict[str, Any]) -> Iterator[Fleet]:
    with workbench.connect(run_dir=fleet_record["run_dir"]) as connected:
        connected.wait_for(3, timeout=30)
        yield connected


def make_package(base: Path, name: str, seed: int, *, slow: bool = False, keys: Path | None = None) -> Package:
    key = load_signing_key(keys, create=True)
    model = (slow_model if slow else tiny_model)(base / f"{name}.onnx", seed=seed)
    return build_package(model, base / name, key, version=name)


def versions(fleet: Fleet) -> dict[str, Any]:
    return {d.device_id: (d.active_model or {}).get("version") for d in fleet.devices}


def test_deploy_all_at_once_activates_every_device_when_package_is_good(fleet: Fleet, deploy_env: Path) -> None:
    package = make_package(deploy_env, "good-1", seed=1)
    report = fleet.deploy(package.path).wait(timeout=120)
    assert report.status == "succeeded", str(report)
    assert report.counts == {"active": 3}
    fleet.wait_until(lambda f: set(versions(f).values()) == {"good-1"}, timeout=20)
    probe = fleet.call("sim-01", "probe", {"n": 10})
    assert probe["errors"] == 0 and probe["active"]["version"] == "good-1"
    history = fleet.history()
    assert history.iloc[-1]["rollout_id"] == report.rollout_id and history.iloc[-1]["status"] == "succeeded"


def test_canary_promotes_through_waves_when_gates_pass(fleet: Fleet, deploy_env: Path) -> None:
    package = make_package(deploy_env, "good-2", seed=2)
    rollout = fleet.deploy(package.path, strategy=workbench.Canary(first=1, waves=[0.5, 1.0], soak_s=0.5),
                           gates=[workbench.gate("error_rate", "<=", 0.01), workbench.gate("p95_latency_ms", "<=",
                                                                                          1000)])
    report = rollout.wait(timeout=120)
    assert report.status == "succeeded", str(report)
    assert [len(w["devices"]) for w in report.waves] == [1, 1, 1]
    assert all(g["passed"] for g in report.gates) and report.gates


def test_canary_rolls_back_canary_when_latency_gate_fails(fleet: Fleet, deploy_env: Path) -> None:
    good = make_package(deploy_env, "good-3", seed=3)
    assert fleet.deploy(good.path).wait(timeout=120).status == "succeeded"
    slow = make_package(deploy_env, "slow-3", seed=3, slow=True)
    report = fleet.deploy(slow.path, strategy=workbench.Canary(first=1, soak_s=0.5),
                          gates=[workbench.gate("p95_latency_ms", "<=", 1.0)]).wait(timeout=180)
    assert report.status == "aborted" and "p95_latency_ms" in str(report.reason)
    states = {d["device_id"]: d["state"] for d in report.devices}
    assert sorted(states.values()) == ["not_started", "not_started", "rolled_back"], states
    fleet.wait_until(lambda f: set(versions(f).values()) == {"good-3"}, timeout=20)


def test_devices_reject_and_keep_serving_when_package_signed_by_unenrolled_key(fleet: Fleet,
                                                                              deploy_env: Path) -> None:
    good = make_package(deploy_env, "good-4", seed=4)
    assert fleet.deploy(good.path).wait(timeout=120).status == "succeeded"
    stranger = deploy_env / "stranger-keys"
    init_keys(stranger)
    bad = make_package(deploy_env, "stranger-4", seed=5, keys=stranger)
    report = fleet.deploy(bad.path, keys_dir=stranger).wait(timeout=120)
    assert report.status == "partial"
    assert {d["state"] for d in report.devices} == {"rejected"}
    assert all("not trusted" in d["reason"] for d in report.devices)
    assert set(versions(fleet).values()) == {"good-4"}


def test_second_rollout_is_refused_when_devices_are_busy(fleet: Fleet, deploy_env: Path) -> None:
    one, two = make_package(deploy_env, "good-5", seed=6), make_package(deploy_env, "good-6", seed=7)
    # Gates and a soak keep the first rollout busy for seconds, whoever runs it (this process or the hub).
    first = fleet.deploy(one.path, strategy=workbench.Canary(first=1, waves=[1.0], soak_s=3),
                         gates=[workbench.gate("error_rate", "<=", 0.01)])
    try:
        with pytest.raises(DeployConflictError, match="being deployed"):
            fleet.deploy(two.path, devices=["sim-02"])
    finally:
        assert first.wait(timeout=120).status == "succeeded"


def test_offline_device_catches_up_when_it_returns(fleet: Fleet, fleet_record: dict[str, Any],
                                                   deploy_env: Path) -> None:
    from workbench.sim import _procs

    agent = next(a for a in fleet_record["agents"] if a["devices"] == ["sim-03"])
    _procs.stop([agent])
    fleet.wait_until(lambda f: not f["sim-03"].online, timeout=20)
    package = make_package(deploy_env, "good-7", seed=8)
    report = fleet.deploy(package.path).wait(timeout=120)
    states = {d["device_id"]: d["state"] for d in report.devices}
    assert states == {"sim-01": "active", "sim-02": "active", "sim-03": "pending_offline"}
    assert report.status == "partial"
    restarted = _procs.spawn(agent["argv"], Path(agent["log"]))
    try:
        fleet.wait_until(lambda f: f["sim-03"].online and (f["sim-03"].active_model or {}).get("version") == "good-7",
                         timeout=60)
    finally:
        _procs.stop([restarted])
        # Leave the shared fleet as it was: sim-03 back under the record's control.
        agent.update(_procs.spawn(agent["argv"], Path(agent["log"])))
        RunDir(Path(fleet_record["run_dir"])).write(fleet_record)
    fleet.wait_until(lambda f: f["sim-03"].online, timeout=30)
