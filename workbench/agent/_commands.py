"""The commands an agent answers, in a registry later capabilities extend."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.agent._device import DeviceAgent

CommandHandler = Callable[["DeviceAgent", dict[str, Any]], dict[str, Any]]

_COMMANDS: dict[str, CommandHandler] = {}
_INLINE: set[str] = set()


def register_command(name: str, *, inline: bool = False) -> Callable[[CommandHandler], CommandHandler]:
    """Register a handler for command ``name``; it gets the agent and the request's args.

    A handler returns a JSON-ready dict or raises; a raised
    :class:`~workbench.errors.WorkbenchError` reaches the caller with its message.
    Handlers run on a worker thread; ``inline=True`` runs a handler that never blocks
    (microseconds, no I/O) right on the network thread, saving two thread hand-offs
    per round trip.

    Example:
        >>> @register_command("echo")  # doctest: +SKIP
        ... def _echo(agent, args):
        ...     return {"echo": args}
    """

    def decorator(handler: CommandHandler) -> CommandHandler:
        _COMMANDS[name] = handler
        if inline:
            _INLINE.add(name)
        else:
            _INLINE.discard(name)
        return handler

    return decorator


def get_command(name: str) -> CommandHandler | None:
    return _COMMANDS.get(name)


def is_inline(name: str) -> bool:
    return name in _INLINE


def command_names() -> list[str]:
    return sorted(_COMMANDS)


@register_command("ping", inline=True)
def _ping(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    return {"device_time": time.time(), "instance": agent.instance}


@register_command("inventory")
def _inventory(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    return agent.inventory(refresh=True)


@register_command("stats", inline=True)
def _stats(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    return agent.stats()
