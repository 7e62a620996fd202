"""AlertList: the newest fired alerts, newest first."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from widgets._snapshot import Snapshotting


class AlertList(Snapshotting, w.HTML):
    """Fired alerts of ``fleet.telemetry`` as a list, re-rendered by :meth:`refresh`.

    Example:
        >>> AlertList(fleet, limit=20)   # doctest: +SKIP
    """

    def __init__(self, fleet: Any, *, limit: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fleet = fleet
        self.limit = limit
        self.add_class("wb-alert-list")
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
        frame = self.fleet.telemetry.alerts()
        if frame.empty:
            self.value = "<div class='wb-alerts'><i>no alerts</i></div>"
            return
        items = "".join(
            f"<li><b>{row.time:%H:%M:%S}</b> [{html.escape(row.rule)}] {html.escape(row.message)}</li>"
            for row in frame.tail(self.limit).iloc[::-1].itertuples())
        self.value = f"<div class='wb-alerts'><b>{len(frame)} alerts</b><ul>{items}</ul></div>"
