"""One agent process hosting one or more devices, each with its own MQTT connection."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from workbench.agent._device import AgentConfig, DeviceAgent
from workbench.agent._watchdog import Watchdog

log = logging.getLogger("workbench.agent")

EXIT_OK = 0
EXIT_REFUSED = 3  # duplicate device id, bad credentials: restarting will not help


def run_agents(configs: list[AgentConfig], *, stop: threading.Event | None = None) -> int:
    """Run the devices' agents until SIGTERM/SIGINT (or ``stop``); return the exit code.

    Example:
        >>> run_agents([AgentConfig("pi-1", broker, Path("/var/lib/workbench"))])  # doctest: +SKIP
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: shutting down", signum)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # Commands run off the shared network loop; a few workers serve every device in the process.
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="wb-cmd") as executor:
        agents = [DeviceAgent(config, executor) for config in configs]
        for agent in agents:
            agent.start()
        # READY once connecting runs in the background: waiting for the broker here would let
        # systemd's start timeout kill an agent whose broker is merely down.
        watchdog = Watchdog(lambda: [a.device_id for a in agents if not a.network_alive()])
        watchdog.ready(f"{len(agents)} device(s) connecting to {configs[0].broker.url}" if configs else "no devices")
        refused = 0
        while agents and not stop.is_set():
            for agent in [a for a in agents if a.fatal]:
                agent.stop()
                agents.remove(agent)
                refused += 1
            watchdog.tick()
            stop.wait(watchdog.poll_seconds)
        watchdog.stopping()
        for agent in agents:
            agent.stop()
    return EXIT_REFUSED if refused else EXIT_OK
