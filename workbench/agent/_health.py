"""The agent's health endpoint: ``GET /healthz`` on ``--health-port``, for a Kubernetes liveness probe.

It answers 200 when every device of the process is connected to its broker and serves a
verified model (one from a signed package, or the ``--model`` its operator gave it), or
needs none (it was never asked to serve one); 503 otherwise. The body is the JSON state of
each device either way, so a person can read why.
"""

from __future__ import annotations

import logging
import threading
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from workbench.agent._http import JSONHandler
from workbench.agent._services import register_service
from workbench.errors import ConfigError

if TYPE_CHECKING:
    from workbench.agent._device import DeviceAgent

log = logging.getLogger("workbench.agent")

_AGENTS: dict[str, DeviceAgent] = {}
_LOCK = threading.Lock()


def device_health(agent: DeviceAgent) -> dict[str, Any]:
    """One device's health: connected, what it serves, whether that is verified, and any problem.

    Example:
        >>> device_health(agent)["healthy"]   # doctest: +SKIP
        True
    """
    service: Any = agent.services.get("deploy")
    installer = getattr(service, "installer", None)
    active = agent.runtime.active
    from_package = installer is not None and installer.package is not None
    from_operator = active is not None and agent.config.model is not None and not from_package
    deploy_state = agent.state.get("deploy") or {}
    needed = bool(deploy_state.get("handled")) or agent.config.model is not None
    problem = getattr(installer, "boot_problem", None)
    serving_ok = (active is not None and (from_package or from_operator)) or (active is None and not needed)
    listening = agent.network_alive()
    healthy = bool(agent.online) and serving_ok and listening
    reasons = []
    if not agent.online:
        reasons.append("not connected to the broker")
    if not listening:
        reasons.append("its network thread died: it no longer hears commands; restart the agent")
    if not serving_ok:
        reasons.append("no verified model is serving" if needed else "serves a model that was not verified")
    return {"device_id": agent.device_id, "healthy": healthy, "connected": bool(agent.online),
            "model": active.describe()["name"] if active else None,
            "version": active.version if active else None, "verified": from_package or from_operator,
            "model_needed": needed, "boot_problem": problem, "reasons": reasons}


def health() -> tuple[bool, dict[str, Any]]:
    """Every device of this process: ``(all healthy, JSON body)``."""
    with _LOCK:
        agents = list(_AGENTS.values())
    devices = [device_health(a) for a in agents]
    healthy = bool(devices) and all(d["healthy"] for d in devices)
    return healthy, {"healthy": healthy, "devices": devices}


class HealthServer:
    """Serves ``/healthz`` in a background thread.

    Example:
        >>> server = serve_health(8081)    # doctest: +SKIP
        >>> server.stop()                  # doctest: +SKIP
    """

    def __init__(self, host: str, port: int) -> None:
        class Handler(JSONHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/healthz":
                    self.reply(HTTPStatus.NOT_FOUND, {"error": "unknown path; GET /healthz"})
                    return
                healthy, body = health()
                self.reply(HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE, body)

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve the health endpoint on {host}:{port}: {exc}; choose another "
                              "--health-port") from None
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve_health(port: int, host: str = "127.0.0.1") -> HealthServer:
    """Start the health endpoint for the devices this process runs (``port=0``: a free one).

    Example:
        >>> serve_health(8081).port   # doctest: +SKIP
        8081
    """
    server = HealthServer(host, port)
    log.info("health endpoint on http://%s:%d/healthz", host, server.port)
    return server


class _Registration:
    """Adds its device to the endpoint's view while the agent runs."""

    def __init__(self, agent: DeviceAgent) -> None:
        self.agent = agent
        with _LOCK:
            _AGENTS[agent.device_id] = agent

    def topics(self) -> list[str]:
        return []

    def on_message(self, topic: str, payload: bytes) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        with _LOCK:
            if _AGENTS.get(self.agent.device_id) is self.agent:
                del _AGENTS[self.agent.device_id]


register_service("health", _Registration)
