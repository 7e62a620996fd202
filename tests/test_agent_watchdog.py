"""sd_notify from the agent: READY, watchdog pings, and silence once a network thread has died.

Each test binds a real AF_UNIX datagram socket, as systemd does, and reads what the agent sends.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import REPO, FleetFactory

import workbench
from workbench.agent import AgentConfig, run_agents
from workbench.agent import _device as device_module
from workbench.agent._health import _AGENTS, device_health
from workbench.agent._watchdog import Watchdog, notify, watchdog_interval
from workbench.protocol._mqtt import BrokerAddress


class NotifySocket:
    """What systemd listens on: a datagram socket; collects every message with its arrival time."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def read(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))
        return [m for _, m in self.messages]

    def wait_for(self, text: str, seconds: float) -> float:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for at, message in self.messages:
                if text in message:
                    return at
            self.read(0.1)
        raise AssertionError(f"no {text!r} within {seconds} s; got {[m for _, m in self.messages]}")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(tmp_path / "notify.sock")
    listener = NotifySocket(path)
    yield path, listener
    listener.sock.close()


def test_notify_sends_one_datagram_when_notify_socket_is_set(notify_socket: tuple[str, NotifySocket]) -> None:
    path, listener = notify_socket
    assert notify("READY=1\nSTATUS=connecting", {"NOTIFY_SOCKET": path})
    assert listener.read(0.3) == ["READY=1\nSTATUS=connecting"]
    assert not notify("READY=1", {})  # not under systemd: nothing to tell
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(Path(path).with_name("gone.sock"))})


def test_notify_reaches_an_abstract_socket_when_name_starts_with_at() -> None:
    name = f"wb-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket("\0" + name)
    try:
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.read(0.3) == ["WATCHDOG=1"]
    finally:
        listener.sock.close()


def test_watchdog_interval_is_half_of_watchdog_usec_only_for_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None and watchdog_interval({}) is None


def test_agent_process_sends_ready_then_pings_then_stopping_when_run_under_systemd_protocol(
        fleet_factory: FleetFactory, notify_socket: tuple[str, NotifySocket], tmp_path: Path) -> None:
    record = fleet_factory(devices=1)
    path, listener = notify_socket
    env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "agent", "--device-id", "svc-01",
                             "--broker", record["broker"]["url"], "--data-dir", str(tmp_path / "data")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        listener.wait_for("READY=1", 30)
        listener.read(3.0)
        pings = [at for at, m in listener.messages if m == "WATCHDOG=1"]
        assert len(pings) >= 4, listener.messages  # every 0.5 s for 3 s
        assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0  # always within WatchdogSec (1 s)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    listener.read(0.3)
    assert proc.returncode == 0, err
    assert any(m == "STOPPING=1" for _, m in listener.messages)


def test_agent_waiting_for_its_ca_file_is_ready_and_fed_so_systemd_does_not_kill_the_wait(
        notify_socket: tuple[str, NotifySocket], tmp_path: Path) -> None:
    path, listener = notify_socket
    ca = tmp_path / "ca.pem"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "agent", "--device-id", "svc-02",
                             "--broker", "mqtts://127.0.0.1:1", "--ca-file", str(ca),
                             "--data-dir", str(tmp_path / "data")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        listener.wait_for("READY=1", 30)
        ready = next(m for _, m in listener.messages if "READY=1" in m)
        assert f"TLS CA file {ca} is missing" in ready  # systemctl status shows what it waits for
        listener.read(2.5)
        assert sum(m == "WATCHDOG=1" for _, m in listener.messages) >= 3
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_watchdog_pings_stop_when_the_agents_network_thread_dies_and_cannot_be_restarted(
        fleet_factory: FleetFactory, notify_socket: tuple[str, NotifySocket], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    record = fleet_factory(devices=1)
    path, listener = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    stop = threading.Event()
    config = AgentConfig("deaf-01", BrokerAddress.parse(record["broker"]["url"]), tmp_path / "deaf")
    runner = threading.Thread(target=run_agents, args=([config],), kwargs={"stop": stop})
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not (_AGENTS.get("deaf-01") and _AGENTS["deaf-01"].online) and time.monotonic() < deadline:
            time.sleep(0.05)
        agent = _AGENTS["deaf-01"]
        listener.wait_for("WATCHDOG=1", 10)
        assert agent.network_alive() and device_health(agent)["healthy"]

        # A bug in a message callback escapes paho's loop_read into the shared network loop, and the agent's
        # restart of its connection fails: only then is the agent deaf, and systemd must restart it.
        def broken(_client: mqtt.Client, _userdata: Any, _message: mqtt.MQTTMessage) -> None:
            raise RuntimeError("bug in a callback")

        def cannot_restart(_client: mqtt.Client) -> None:
            raise OSError("injected: the network thread cannot be started again")

        monkeypatch.setattr(device_module, "restart_network", cannot_restart)
        agent._client.suppress_exceptions = False
        agent._client.on_message = broken
        with workbench.connect(record["broker"]["url"]) as fleet:
            fleet.wait_for(2, timeout=30)
            with pytest.raises(workbench.CommandTimeoutError):
                fleet["deaf-01"].call("ping", timeout=1.0)  # it no longer answers
        died_at = listener.wait_for("died", 5)
        listener.read(1.5)
        later = [m for at, m in listener.messages if at > died_at]
        assert "WATCHDOG=1" not in later  # systemd's WatchdogSec now runs out and it restarts the agent
        assert not agent.network_alive() and agent.counters["network_restarts"] >= 1
        health = device_health(agent)
        assert not health["healthy"] and any("network thread died" in r for r in health["reasons"])
        # The process's shared network loop caught the bug and named it (it serves the other devices on).
        assert any("bug in a callback" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive()


def test_watchdog_does_not_ping_when_not_asked_to() -> None:
    dog = Watchdog(lambda: [], environ={})
    assert dog.interval is None and dog.poll_seconds == 0.2
    dog.tick()
    assert dog.stopped_pinging is None
