"""FleetHealthTable: one row per device (online, model version, p95 latency, errors, sync backlog)."""

from __future__ import annotations

import html
import math
from typing import Any

import ipywidgets as w

from widgets._snapshot import Snapshotting

_COLUMNS = [("device_id", "device"), ("online", "online"), ("model", "model"), ("model_version", "version"),
            ("latency_p95_ms", "p95 ms"), ("throughput", "inf/s"), ("errors", "errors"),
            ("missing_batches", "lost batches"), ("sync_backlog", "sync backlog")]
# Columns a phone-wide page (under 600 px) leaves out, so the rest fits without cutting the table off.
_WIDE_ONLY = {"model", "model_version", "errors", "missing_batches"}
_STYLE = ("<style>.wb-health td,.wb-health th{padding:2px 6px;text-align:left}"
          "@media (max-width:600px){.wb-health .wb-wide{display:none}}</style>")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "●" if value else "○"
    if isinstance(value, float):
        return f"{value:.3g}"
    return html.escape(str(value))


class FleetHealthTable(Snapshotting, w.HTML):
    """The fleet health table as HTML, re-rendered by :meth:`refresh`.

    The sync backlog column is each device's queued outbox items as last reported ("—" before its first report).

    Example:
        >>> table = FleetHealthTable(fleet)   # doctest: +SKIP
        >>> table.refresh()                   # doctest: +SKIP
    """

    def __init__(self, fleet: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fleet = fleet
        self.add_class("wb-health-table")
        self.refresh()

    def snapshot(self) -> dict[str, Any]:
        """The table as drawn now, as ``text/html``."""
        return {"text/html": self.value}

    @property
    def snapshot_live(self) -> bool:
        return bool(self.fleet.connected)

    def refresh(self) -> None:
        if not self.fleet.connected:  # keep the last table: a closed fleet has nothing newer to tell
            return
        frame = self.fleet.telemetry.health()
        wide = {key: " class='wb-wide'" if key in _WIDE_ONLY else "" for key, _ in _COLUMNS}
        head = "".join(f"<th{wide[key]}>{label}</th>" for key, label in _COLUMNS)
        rows = "".join("<tr>" + "".join(f"<td{wide[key]}>{_cell(row.get(key))}</td>" for key, _ in _COLUMNS)
                       + "</tr>" for row in frame.to_dict("records"))
        self.value = (f"{_STYLE}<div style='max-width:100%;overflow-x:auto'>"
                      f"<table class='wb-health' style='border-collapse:collapse;font-size:12px'>"
                      f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")
