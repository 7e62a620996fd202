"""Edge-to-cloud sync: a durable outbox on each device, priorities, compression, link emulation and budgets.

Example:
    >>> fleet = workbench.connect()                      # doctest: +SKIP
    >>> fleet.sync_state()                               # doctest: +SKIP
    >>> fleet["sim-02"].set_link("satellite")            # doctest: +SKIP
    >>> with fleet.partition("sim-02", seconds=30):      # doctest: +SKIP
    ...     pass
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench.protocol.budget import Budget
from workbench.protocol.codec import Codec, WireItem, train_dictionary
from workbench.protocol.links import LINKS, LinkProfile, link_profile
from workbench.protocol.priority import PRIORITIES, priority_rank

if TYPE_CHECKING:
    from workbench.sync._client import Sync
    from workbench.sync._receiver import SyncReceiver
    from workbench.sync._store import SyncStore

# pandas and DuckDB load on demand. The outbox, its sender and the link shaper are the device side: workbench.agent.
_LAZY = {"Sync": "workbench.sync._client", "SyncReceiver": "workbench.sync._receiver",
         "SyncStore": "workbench.sync._store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench.sync' has no attribute {name!r}")


__all__ = ["LINKS", "PRIORITIES", "Budget", "Codec", "LinkProfile", "Sync",
           "SyncReceiver", "SyncStore", "WireItem", "link_profile", "priority_rank", "train_dictionary"]
