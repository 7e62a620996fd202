"""The commands an agent answers, in a registry later capabilities extend."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.agent._device import DeviceAgent

CommandHandler = Callable[["DeviceAgent", dict[str, Any]], dict[str, Any]]

_COMMANDS: dict[str, CommandHandler] = {}


def register_command(name: str) -> Callable[[CommandHandler], CommandHandler]:
    """Register a handler for command ``name``; it gets the agent and the request's args.

    A handler returns a JSON-ready dict or raises; a raised
    :class:`~workbench.errors.WorkbenchError` reaches the caller with its message.

    Example:
        >>> @register_command("echo")  # doctest: +SKIP
        ... def _echo(agent, args):
        ...     return {"echo": args}
    """

    def decorator(handler: CommandHandler) -> CommandHandler:
        _COMMANDS[name] = handler
        return handler

    return decorator


def get_command(name: str) -> CommandHandler | None:
    return _COMMANDS.get(name)


def command_names() -> list[str]:
    return sorted(_COMMANDS)


@register_command("ping")
def _ping(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    return {"device_time": time.time(), "instance": agent.instance}


@register_command("inventory")
def _inventory(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    return agent.inventory(refresh=True)


@register_command("stats")
def _stats(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    return agent.stats()
