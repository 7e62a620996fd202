"""The agent's shared network loop: one thread per process drives every device's MQTT client and timers."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from workbench.agent._device import AgentConfig, DeviceAgent, reconnect_delay
from workbench.agent._netloop import CONNECTS_IN_FLIGHT, NetLoop
from workbench.agent._tasks import POOL_WORKERS, Task
from workbench.protocol._mqtt import BrokerAddress
from workbench.sim import _brokers, _procs
from workbench.sim._rundir import RunDir


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[dict[str, Any]]:
    record = _brokers.start_broker(_brokers.EMBEDDED, RunDir(tmp_path / "run"))
    try:
        yield record
    finally:
        _procs.stop([record])


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the probe is closed


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate()]


def test_twenty_devices_add_a_few_shared_threads_not_several_each_when_online(
        broker: dict[str, Any], tmp_path: Path) -> None:
    address = BrokerAddress.parse(broker["url"])
    before = threading.active_count()
    with ThreadPoolExecutor(max_workers=2) as executor:
        agents = [DeviceAgent(AgentConfig(f"loop-{i:02d}", address, tmp_path / f"loop-{i:02d}", claim_timeout=0.3),
                              executor) for i in range(20)]
        try:
            for agent in agents:
                agent.start()
            for agent in agents:
                agent.wait_claimed(timeout=30)
            time.sleep(1.5)  # every service started and ran a round
            names = _threads()
            assert all(agent.online and agent.network_alive() for agent in agents)
            assert names.count("wb-netloop") == 1
            assert not [n for n in names if n.startswith(("paho-mqtt-client", "wb-sync", "wb-telemetry", "deploy-",
                                                          "wb-link", "claim-"))]
            # paho's loop_start alone added one thread per device, and five more ran per device before.
            assert threading.active_count() - before <= 1 + POOL_WORKERS + 2
        finally:
            for agent in agents:
                agent.stop()


def test_agent_connects_to_the_next_broker_when_the_first_address_refuses(
        broker: dict[str, Any], tmp_path: Path) -> None:
    dead = BrokerAddress.parse(f"mqtt://127.0.0.1:{_closed_port()}")
    live = BrokerAddress.parse(broker["url"])
    config = AgentConfig("failover-01", dead, tmp_path / "failover-01", claim_timeout=0.3, failover=(live,))
    assert config.brokers == (dead, live)
    with ThreadPoolExecutor(max_workers=1) as executor:
        agent = DeviceAgent(config, executor)
        agent.start()
        try:
            agent.wait_claimed(timeout=15)
            assert agent.online
            assert agent.config.brokers[agent._address] == live
            assert agent.counters["connects"] == 1 and agent.counters["reconnects"] == 0
        finally:
            agent.stop()


def test_reconnect_delay_doubles_up_to_the_cap_with_random_jitter_when_attempts_grow() -> None:
    first = [reconnect_delay(0) for _ in range(400)]
    assert min(first) >= 1.0 and max(first) <= 3.0
    assert statistics.pstdev(first) > 0.4  # uniform over 2 s: ~0.58; a fixed delay would be 0
    assert all(8.0 <= reconnect_delay(3) <= 10.0 for _ in range(50))
    assert all(30.0 <= reconnect_delay(40) <= 32.0 for _ in range(50))


def test_task_runs_again_after_the_current_run_when_woken_during_it() -> None:
    entered, release = threading.Event(), threading.Event()
    runs: list[float] = []

    def run() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            entered.set()
            release.wait(5)
        return None

    task = Task("test", run)
    task.start()
    assert entered.wait(5)
    task.wake()  # during the first run: must not be lost, and must not run concurrently
    release.set()
    deadline = time.monotonic() + 5
    while len(runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    task.stop()
    assert len(runs) == 2
    time.sleep(0.2)
    task.wake()
    assert len(runs) == 2  # stopped: no more runs


def test_task_stop_waits_for_the_run_in_progress_when_called_from_another_thread() -> None:
    entered, done = threading.Event(), threading.Event()

    def run() -> float:
        entered.set()
        time.sleep(0.3)
        done.set()
        return 0.01

    task = Task("slow", run)
    task.start()
    assert entered.wait(5)
    task.stop(timeout=5)
    assert done.is_set()


def test_loop_runs_timers_in_order_of_their_due_time_when_scheduled_from_other_threads() -> None:
    loop = NetLoop.get()
    seen: list[int] = []
    finished = threading.Event()
    loop.call_later(0.15, lambda: (seen.append(3), finished.set()))
    loop.call_later(0.05, lambda: seen.append(1))
    loop.call_later(0.10, lambda: seen.append(2))
    loop.call_later(0.01, lambda: seen.append(99)).cancel()
    assert finished.wait(5)
    assert seen == [1, 2, 3]


def test_loop_holds_connects_beyond_the_in_flight_limit_until_earlier_ones_release() -> None:
    loop = NetLoop.get()
    ran: list[int] = []
    for i in range(CONNECTS_IN_FLIGHT + 5):
        loop.call_soon_wait(lambda i=i: loop.gate(lambda: ran.append(i)), timeout=5)
    assert ran == list(range(CONNECTS_IN_FLIGHT))  # the rest wait their turn, in order
    loop.call_soon_wait(loop.release, timeout=5)
    loop.call_soon_wait(loop.release, timeout=5)
    loop.call_soon_wait(lambda: None, timeout=5)  # the released turns run as queued calls
    assert ran == list(range(CONNECTS_IN_FLIGHT + 2))
    for _ in range(CONNECTS_IN_FLIGHT + 2):
        loop.call_soon_wait(loop.release, timeout=5)
    loop.call_soon_wait(lambda: None, timeout=5)
    assert ran == list(range(CONNECTS_IN_FLIGHT + 5))
    for _ in range(3):
        loop.call_soon_wait(loop.release, timeout=5)
