"""The edge agent: the long-running process on each device (or many simulated ones).

Example:
    $ workbench agent --device-id pi-kitchen --broker mqtt://gateway.local:1883
"""

from workbench.agent import (
    _benchmark,  # noqa: F401  (registers the command)
    _deploy_service,  # noqa: F401  (registers the deploy service and its commands)
    _health,  # noqa: F401  (registers each device with the health endpoint)
    _sync_service,  # noqa: F401  (registers the sync service and its commands)
    _telemetry_service,  # noqa: F401  (registers the service)
)
from workbench.agent._commands import command_names, register_command
from workbench.agent._device import AgentConfig, DeviceAgent
from workbench.agent._host import EXIT_REFUSED, run_agents
from workbench.agent._limits import DeviceLimits
from workbench.agent._outbox import Item, Outbox
from workbench.agent._runtime import LoadedModel, ModelLoadError, ModelRuntime, sha256_file
from workbench.agent._sender import Sender
from workbench.agent._services import AgentService, register_service
from workbench.agent._shaper import LinkShaper

__all__ = [
    "EXIT_REFUSED",
    "AgentConfig",
    "AgentService",
    "DeviceAgent",
    "DeviceLimits",
    "Item",
    "LinkShaper",
    "LoadedModel",
    "ModelLoadError",
    "ModelRuntime",
    "Outbox",
    "Sender",
    "command_names",
    "register_command",
    "register_service",
    "run_agents",
    "sha256_file",
]
