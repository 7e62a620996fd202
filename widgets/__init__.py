"""Jupyter UI for Edge Workbench, built only on the public `workbench` API.

Example:
    >>> import workbench, widgets
    >>> fleet = workbench.connect()     # doctest: +SKIP
    >>> widgets.FleetPanel(fleet)       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# Importing a widget pulls in ipywidgets/plotly; do it only for the widget asked for.
_LAZY = {
    "FleetPanel": "widgets._fleet_panel",
    "OptimizeExplorer": "widgets._optimize_explorer",
    "TelemetryDashboard": "widgets._telemetry_dashboard",
    "FleetHealthTable": "widgets._health_table",
    "AlertList": "widgets._alert_list",
    "RolloutProgress": "widgets._rollout_progress",
    "SyncView": "widgets._sync_view",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'widgets' has no attribute {name!r}")


def _display_rollout(rollout: Any) -> None:
    from IPython.display import display

    from widgets._rollout_progress import RolloutProgress

    display(RolloutProgress(rollout))


def register_formatters(shell: Any = None) -> bool:
    """Show core objects as widgets in IPython: a displayed ``Rollout`` becomes its live ``RolloutProgress``.

    Called when ``widgets`` is imported; registers with ``shell`` (default: the running IPython),
    by type name, so nothing of the core is imported here. Returns False outside IPython.

    Example:
        >>> import widgets
        >>> widgets.register_formatters()   # in plain Python there is no IPython shell to register with
        False
    """
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
        if shell is None:
            return False
    formatter = shell.display_formatter.ipython_display_formatter
    formatter.for_type_by_name("workbench.deploy._rollout", "Rollout", _display_rollout)
    formatter.for_type_by_name("workbench.hub._remote_rollout", "HubRollout", _display_rollout)
    return True


register_formatters()

__all__ = [*sorted(_LAZY), "register_formatters"]
