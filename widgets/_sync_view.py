"""SyncView: every device's sync state, live, with a backlog chart per device."""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from typing import Any

import ipywidgets

from workbench import Fleet

_SHOWN = ("device_id", "priority", "queued_items", "queued_bytes", "oldest_unsent_age_s", "throughput_bps",
          "compression_ratio", "dropped", "deduplicated", "link", "link_up")


class SyncView(ipywidgets.VBox):
    """The sync state table of ``fleet.sync_state()`` plus queued items over time per device.

    Redraws every ``interval`` seconds from an asyncio task on the kernel's loop (made
    outside a running loop, call :meth:`refresh` yourself). Keeps ``history`` samples.

    Example:
        >>> widgets.SyncView(fleet)   # doctest: +SKIP
    """

    def __init__(self, fleet: Fleet, *, interval: float = 1.0, history: int = 600) -> None:
        self.fleet = fleet
        self.interval = interval
        self.history_len = history
        self.history: dict[str, list[tuple[float, int]]] = {}
        self.table = ipywidgets.HTML()
        self.chart = _chart()
        super().__init__([self.table, self.chart] if self.chart is not None else [self.table])
        self._task: asyncio.Task[None] | None = None
        with contextlib.suppress(RuntimeError):
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="SyncView")
        self.refresh()

    def refresh(self) -> None:
        """Read the fleet's sync state now and redraw."""
        frame = self.fleet.sync_state()
        now = time.time()
        for device, items in frame.groupby("device_id")["queued_items"].sum().items():
            samples = self.history.setdefault(str(device), [])
            samples.append((now, int(items)))
            del samples[:-self.history_len]
        self.table.value = render_html(frame[list(_SHOWN)].to_dict("records"))
        if self.chart is not None:
            with self.chart.batch_update():
                self.chart.data = ()
                for device, samples in sorted(self.history.items()):
                    self.chart.add_scatter(x=[t - now for t, _ in samples], y=[n for _, n in samples], name=device,
                                           mode="lines")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.refresh()
            except Exception:  # the view must outlive one bad refresh (e.g. a device mid-restart)
                continue

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        super().close()


def _chart() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        return None
    figure = go.FigureWidget(layout={"height": 260, "title": "queued items per device",
                                     "xaxis": {"title": "seconds ago"}, "yaxis": {"title": "items"}})
    return figure


def render_html(rows: list[dict[str, Any]]) -> str:
    """The sync state rows as an HTML table.

    Example:
        >>> "<table" in render_html([{"device_id": "sim-01", "queued_items": 3}])
        True
    """
    if not rows:
        return "<p>No device has reported its sync state yet.</p>"
    header = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if value != value else f"{value:,.3g}"
    return "—" if value is None else str(value)
