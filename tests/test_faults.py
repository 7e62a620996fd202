"""Faults of the foundation: dead and frozen agents, duplicate ids, unreachable brokers, double `up`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import BROKERS, FleetFactory, run_cli

import workbench
from workbench.sim import _procs


def _agent_of(record: dict[str, Any], device_id: str) -> dict[str, Any]:
    return next(agent for agent in record["agents"] if device_id in agent["devices"])


def _stable(inventory: dict[str, Any]) -> dict[str, Any]:
    # What must survive a restart: everything but the process's identity.
    return {k: v for k, v in inventory.items() if k not in ("instance", "pid", "started_at", "hardware")}


@pytest.mark.parametrize("broker", BROKERS)
def test_killed_agent_goes_offline_and_returns_with_same_inventory_when_restarted(
    fleet_factory: FleetFactory, broker: str
) -> None:
    record = fleet_factory(devices=2, broker=broker, keepalive=2)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        before = fleet["sim-01"].call("inventory")
        agent = _agent_of(record, "sim-01")
        os.kill(agent["pid"], signal.SIGKILL)
        # Within 1.5x keepalive the broker must publish the will (here the closed socket makes it immediate).
        fleet.wait_until(lambda f: not f["sim-01"].online, timeout=1.5 * 2 + 2)
        assert fleet["sim-01"].offline_reason == "connection lost"
        assert fleet["sim-02"].online
        restarted = _procs.spawn(agent["argv"], Path(agent["log"]))
        try:
            fleet.wait_until(lambda f: f["sim-01"].online and f["sim-01"].instance != before["instance"],
                             timeout=30)
            after = fleet["sim-01"].call("inventory")
            assert _stable(after) == _stable(before)
            assert after["hardware"]["cpu_model"] == before["hardware"]["cpu_model"]
        finally:
            _procs.stop([restarted])


@pytest.mark.parametrize("broker", BROKERS)
def test_frozen_agent_shows_offline_within_one_and_a_half_keepalives(fleet_factory: FleetFactory,
                                                                      broker: str) -> None:
    # A keepalive long enough that the brokers' own check granularity is small beside it.
    keepalive = 6
    record = fleet_factory(devices=1, broker=broker, keepalive=keepalive)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1, timeout=30)
        pid = _agent_of(record, "sim-01")["pid"]
        os.kill(pid, signal.SIGSTOP)  # the socket stays open: only the keepalive can tell
        try:
            stopped_at = time.monotonic()
            fleet.wait_until(lambda f: not f["sim-01"].online, timeout=30)
            # The broker's deadline is 1.5x keepalive. NATS meets it to within scheduling noise; Mosquitto 2.0
            # sweeps for expired clients only every few seconds and was measured up to ~6 s late here.
            margin = 2.0 if broker == "embedded" else 7.0
            assert time.monotonic() - stopped_at <= 1.5 * keepalive + margin
        finally:
            os.kill(pid, signal.SIGCONT)
        fleet.wait_until(lambda f: f["sim-01"].online, timeout=30)  # reconnects with backoff
        assert fleet["sim-01"].ping() > 0


def test_second_agent_with_same_device_id_is_refused_and_first_keeps_serving(shared_fleet: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        fleet.wait_for(3, timeout=30)
        instance = fleet["sim-01"].instance
        result = subprocess.run(
            [sys.executable, "-m", "workbench.cli", "agent", "--device-id", "sim-01", "--broker",
             shared_fleet["broker"]["url"], "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == workbench.agent.EXIT_REFUSED
        assert "device id 'sim-01' is already online" in result.stderr
        assert "another --device-id" in result.stderr
        assert fleet["sim-01"].online and fleet["sim-01"].instance == instance
        assert fleet["sim-01"].ping() > 0


def test_connect_raises_broker_unreachable_naming_url_when_nothing_listens() -> None:
    port = _procs.free_port()
    started = time.monotonic()
    with pytest.raises(workbench.BrokerUnreachableError, match=f"mqtt://127.0.0.1:{port}"):
        workbench.connect(f"mqtt://127.0.0.1:{port}", timeout=3)
    assert time.monotonic() - started < 3 + 2


def test_connect_raises_broker_unreachable_when_listener_does_not_speak_mqtt() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
    thread.start()
    try:
        with pytest.raises(workbench.BrokerUnreachableError, match=f"127.0.0.1:{port}.*no CONNACK"):
            workbench.connect(f"mqtt://127.0.0.1:{port}", timeout=1.5)
    finally:
        for conn in accepted:
            conn.close()
        server.close()


def test_connect_without_url_raises_fleet_not_running_when_run_dir_is_empty(tmp_path: Path) -> None:
    with pytest.raises(workbench.FleetNotRunningError, match="workbench up"):
        workbench.connect(run_dir=tmp_path)


def test_up_twice_says_already_up_and_starts_nothing(fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1)
    before = {p.pid for p in psutil.process_iter()}
    result = run_cli("up", "--devices", "1", "--run-dir", record["run_dir"], "--json")
    after = {p.pid for p in psutil.process_iter()}
    assert result.returncode == 0
    assert "already up" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["already_running"] and summary["broker"] == record["broker"]["url"]
    # No new broker or agent for this run dir (their command lines name files in it).
    assert not [p for p in after - before if record["run_dir"] in " ".join(_cmdline(p))]
    with pytest.raises(workbench.FleetAlreadyRunningError, match="already up"):
        workbench.sim.up(devices=1, run_dir=record["run_dir"])


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def test_down_stops_only_its_own_processes(fleet_factory: FleetFactory) -> None:
    first = fleet_factory(devices=1)
    second = fleet_factory(devices=1)
    workbench.sim.down(first["run_dir"])
    assert not _procs.is_alive(first["broker"]) and not _procs.is_alive(first["agents"][0])
    assert _procs.is_alive(second["broker"]) and _procs.is_alive(second["agents"][0])
    with workbench.connect(run_dir=second["run_dir"]) as fleet:
        assert fleet.wait_for(1, timeout=30)[0].ping() > 0
    with pytest.raises(workbench.FleetNotRunningError, match="nothing to stop"):
        workbench.sim.down(first["run_dir"])


def test_down_never_kills_a_process_that_reused_a_recorded_pid(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # A stale record naming a live, unrelated pid with another start time.
        record = {"pid": stranger.pid, "create_time": psutil.Process(stranger.pid).create_time() - 100}
        _procs.stop([record], grace=1)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_up_raises_unknown_profile_naming_known_ones(tmp_path: Path) -> None:
    result = run_cli("up", "--devices", "1", "--profiles", "raspberry-pi-9", "--run-dir", str(tmp_path))
    assert result.returncode == 1
    assert "unknown hardware profile 'raspberry-pi-9'" in result.stderr and "raspberry-pi-5" in result.stderr
    assert not (tmp_path / "fleet.json").exists()


@pytest.mark.parametrize("broker", BROKERS)
def test_agents_and_fleet_reconnect_when_broker_restarts(fleet_factory: FleetFactory, broker: str) -> None:
    record = fleet_factory(devices=2, broker=broker, keepalive=2)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        instances = {d.device_id: d.instance for d in fleet.devices}
        _procs.stop([record["broker"]])
        time.sleep(1.0)  # agents and fleet see the connection drop and start backing off
        restarted = _procs.spawn(record["broker"]["argv"], Path(record["broker"]["log"]))
        try:
            assert _procs.wait_port("127.0.0.1", record["broker"]["port"], timeout=20)
            restarted_at = time.time()
            # Each agent re-announces itself on reconnect; the fleet hears it once it has reconnected too.
            fleet.wait_until(lambda f: all((d.last_seen or 0) > restarted_at for d in f.online())
                             and len(f.online()) == 2, timeout=60)
            # Agents retry with backoff (1, 2, 4... s), so allow several rounds before they answer.
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert fleet["sim-02"].ping(timeout=3) > 0
                    break
                except workbench.CommandTimeoutError:
                    if time.monotonic() > deadline:
                        raise
            # Same processes, same instances: they reconnected rather than restarted.
            assert {d.device_id: d.instance for d in fleet.devices} == instances
        finally:
            _procs.stop([restarted])
