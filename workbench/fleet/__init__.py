"""The fleet: connection, topic schema, inventory and commands.

Example:
    >>> import workbench
    >>> fleet = workbench.connect("mqtt://localhost:1883")   # doctest: +SKIP
    >>> fleet["sim-01"].ping()                                # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench._lazy import lazy_getattr
from workbench.protocol._mqtt import BrokerAddress

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


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["BrokerAddress", "Device", "Fleet", "connect"]
