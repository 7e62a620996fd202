"""The names of a deployment's states, as devices report them and the workbench reads them.

A device moves through ``STATES`` in order; :data:`TERMINAL` ones end a deployment.

Example:
    >>> "rolled_back" in TERMINAL
    True
"""

from __future__ import annotations

TERMINAL = ("active", "failed", "rejected", "rolled_back", "shadowed")
# A shadow run holds a second model in memory and doubles the inference work: devices refuse longer ones
# (issue 12, item 6), and workbench.Shadow refuses to ask for them.
MAX_SHADOW_S = 3600.0
STATES = ("pending", "downloading", "verifying", "loading", "health_checking", "activating", "shadowing", *TERMINAL)
