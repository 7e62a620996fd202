"""The fleet: connection, topic schema, inventory and commands.

Example:
    >>> import workbench
    >>> fleet = workbench.connect("mqtt://localhost:1883")   # doctest: +SKIP
    >>> fleet["sim-01"].ping()                                # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.fleet._mqtt import BrokerAddress

if TYPE_CHECKING:
    from workbench.fleet._connect import connect
    from workbench.fleet._device import Device
    from workbench.fleet._fleet import Fleet

# The agent imports workbench.fleet for the topic schema; keep that import free of pandas.
_LAZY = {
    "connect": "workbench.fleet._connect",
    "Fleet": "workbench.fleet._fleet",
    "Device": "workbench.fleet._device",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench.fleet' has no attribute {name!r}")


__all__ = ["BrokerAddress", "Device", "Fleet", "connect"]
