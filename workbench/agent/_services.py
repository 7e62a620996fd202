"""Agent services: long-running parts of an agent that later capabilities plug in.

A service (telemetry publisher, deployment slots, sync outbox) is made per device by a
factory registered here. The agent subscribes to the service's topics, routes matching
messages to it, starts it once the device is online and stops it on shutdown, so no
capability needs to edit the agent's core.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from workbench.errors import PayloadError, WorkbenchError
from workbench.protocol import schema

if TYPE_CHECKING:
    from workbench.agent._device import DeviceAgent


class AgentService(Protocol):
    """What the agent expects of a service."""

    def topics(self) -> list[str]:
        """MQTT topic filters the service wants (subscribed on every connect)."""
        ...

    def start(self) -> None:
        """Called once the device holds its id and is online."""
        ...

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message on one of the service's topics (on the process's shared network loop: keep it short)."""
        ...

    def stop(self) -> None:
        """Called on shutdown, before the agent announces it is offline."""
        ...


ServiceFactory = Callable[["DeviceAgent"], "AgentService | None"]

log = logging.getLogger("workbench.agent")

_FACTORIES: dict[str, ServiceFactory] = {}


def register_service(name: str, factory: ServiceFactory) -> None:
    """Register a per-device service factory; returning None skips the service for that device.

    Example:
        >>> register_service("heartbeat", lambda agent: None)   # doctest: +SKIP
    """
    _FACTORIES[name] = factory


def service_factories() -> dict[str, ServiceFactory]:
    return dict(_FACTORIES)


def apply_desired(agent: DeviceAgent, payload: bytes, what: str, apply: Callable[[dict[str, Any]], Any]) -> str | None:
    """Decode a retained desired-state message and ``apply`` its body; count and log what is rejected.

    An empty payload (the retained state was cleared) changes nothing. A payload that is not a
    versioned JSON object is counted by its kind, one that ``apply`` refuses as ``malformed``; the
    device keeps its settings either way. Returns the reason for a rejection, else None.

    Example:
        >>> apply_desired(agent, payload, "telemetry", service.configure)   # doctest: +SKIP
    """
    if not payload:
        return None
    try:
        body = schema.decode(payload)
        body.pop("v", None)
        apply(body)
        return None
    except (ValueError, WorkbenchError) as exc:
        if isinstance(exc, PayloadError):
            agent.rejected.reject(exc)
        else:
            agent.rejected["malformed"] += 1
        agent.reject_log.count(agent.device_id, f"desired_{what}", f"ignored desired {what} state: {exc}")
        return str(exc)
