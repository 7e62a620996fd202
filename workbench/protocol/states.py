"""The names of a deployment's states, as devices report them and the workbench reads them.

A device moves through ``STATES`` in order; :data:`TERMINAL` ones end a deployment.

Example:
    >>> "rolled_back" in TERMINAL
    True
"""

from __future__ import annotations

TERMINAL = ("active", "failed", "rejected", "rolled_back", "shadowed")
STATES = ("pending", "downloading", "verifying", "loading", "health_checking", "activating", "shadowing", *TERMINAL)
