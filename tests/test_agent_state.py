"""The agent's state file: services save it from their own threads, and it is always whole."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workbench.agent import AgentConfig
from workbench.agent._device import DeviceAgent
from workbench.protocol._mqtt import BrokerAddress


def test_state_file_stays_whole_when_services_save_it_from_several_threads_at_once(tmp_path: Path) -> None:
    config = AgentConfig("state-01", BrokerAddress.parse("mqtt://127.0.0.1:1"), tmp_path / "state-01")
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=1) as executor:
        agent = DeviceAgent(config, executor)  # never started: no broker is needed to save state

        def save(worker: int) -> None:
            try:
                for round_ in range(150):
                    agent.state[f"worker-{worker}"] = round_
                    agent.save_state()
            except BaseException as exc:  # a lost rename (FileNotFoundError) is what this test looks for
                errors.append(exc)

        threads = [threading.Thread(target=save, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    saved = json.loads((tmp_path / "state-01" / "state.json").read_text())
    assert {saved[f"worker-{n}"] for n in range(6)} == {149}
