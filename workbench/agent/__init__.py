"""The edge agent: the long-running process on each device (or many simulated ones).

Example:
    $ workbench agent --device-id pi-kitchen --broker mqtt://gateway.local:1883
"""

from workbench.agent._commands import command_names, register_command
from workbench.agent._device import AgentConfig, DeviceAgent
from workbench.agent._host import EXIT_REFUSED, run_agents
from workbench.agent._limits import DeviceLimits

__all__ = ["EXIT_REFUSED", "AgentConfig", "DeviceAgent", "DeviceLimits", "command_names", "register_command",
           "run_agents"]
