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

from workbench.sync._budget import Budget
from workbench.sync._codec import Codec, WireItem, train_dictionary
from workbench.sync._links import LINKS, LinkProfile, link_profile
from workbench.sync._outbox import Item, Outbox
from workbench.sync._priority import PRIORITIES, priority_rank
from workbench.sync._sender import Sender
from workbench.sync._shaper import LinkShaper

if TYPE_CHECKING:
    from workbench.sync._client import Sync
    from workbench.sync._receiver import SyncReceiver
    from workbench.sync._store import SyncStore

# The agent imports the outbox side; pandas and the workbench side load on demand.
_LAZY = {"Sync": "workbench.sync._client", "SyncReceiver": "workbench.sync._receiver",
         "SyncStore": "workbench.sync._store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench.sync' has no attribute {name!r}")


__all__ = ["LINKS", "PRIORITIES", "Budget", "Codec", "Item", "LinkProfile", "LinkShaper", "Outbox", "Sender", "Sync",
           "SyncReceiver", "SyncStore", "WireItem", "link_profile", "priority_rank", "train_dictionary"]
