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


__all__ = sorted(_LAZY)
