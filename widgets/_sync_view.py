"""SyncView: every device's sync state, live, with a backlog chart per device."""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from typing import Any

import ipywidgets

from widgets._snapshot import CHART_MARKER, PLOTLY_MIMETYPE, Snapshotting, disconnected_banner, figure_json
from workbench import Fleet

_SHOWN = ("device_id", "priority", "queued_items", "queued_bytes", "oldest_unsent_age_s", "throughput_bps",
          "compression_ratio", "dropped", "deduplicated", "link", "link_up")


class SyncView(Snapshotting, ipywidgets.VBox):
    """The sync state table of ``fleet.sync_state()`` plus queued items over time per device.

    Redraws every ``interval`` seconds from an asyncio task on the kernel's loop (made
    outside a running loop, call :meth:`refresh` yourself). Keeps ``history`` samples. Once the
    fleet is disconnected (``fleet.close()``, a lost connection) or the view closed, it says
    "disconnected at HH:MM:SS", greys out and stops sampling; an empty chart says why.

    Example:
        >>> widgets.SyncView(fleet)   # doctest: +SKIP
    """

    def __init__(self, fleet: Fleet, *, interval: float = 1.0, history: int = 600) -> None:
        self.fleet = fleet
        self.interval = interval
        self.history_len = history
        self.history: dict[str, list[tuple[float, int]]] = {}
        self.disconnected_at: float | None = None
        self._closed = False
        self.table = ipywidgets.HTML()
        self.chart = _chart()
        self._rows_html = ""
        super().__init__([self.table, self.chart] if self.chart is not None else [self.table])
        self._task: asyncio.Task[None] | None = None
        with contextlib.suppress(RuntimeError):
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="SyncView")
        self.refresh()

    def refresh(self) -> None:
        """Read the fleet's sync state now and redraw (once disconnected: the last state, greyed out)."""
        now = time.time()
        if self._closed or not self.fleet.connected:
            if self.disconnected_at is None:
                self.disconnected_at = now
                self.table.value = _greyed(self.disconnected_at, self._rows_html)
                if self.chart is not None:
                    self.chart.update_traces(opacity=0.35)
            return
        self.disconnected_at = None
        frame = self.fleet.sync_state()
        for device, items in frame.groupby("device_id")["queued_items"].sum().items():
            samples = self.history.setdefault(str(device), [])
            samples.append((now, int(items)))
            del samples[:-self.history_len]
        self._rows_html = render_html(frame[list(_SHOWN)].to_dict("records"))
        self.table.value = self._rows_html
        if self.chart is not None:
            with self.chart.batch_update():
                self.chart.data = ()
                for device, samples in sorted(self.history.items()):
                    self.chart.add_scatter(x=[t - now for t, _ in samples], y=[n for _, n in samples], name=device,
                                           mode="lines+markers", marker={"size": 4})  # one sample shows too
                empty = not self.history or all(n == 0 for samples in self.history.values() for _, n in samples)
                note = "no data yet" if not self.history else "nothing queued: every outbox is empty"
                self.chart.layout.annotations = ([{"text": note, "showarrow": False, "font": {"color": "#888"},
                                                   "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}]
                                                 if empty else [])

    def snapshot(self) -> dict[str, Any]:
        """The table as ``text/html`` and the backlog chart as plotly's mimetype, as drawn now."""
        bundle: dict[str, Any] = {"text/html": f"{self.table.value}{CHART_MARKER if self.chart is not None else ''}"}
        if self.chart is not None:
            bundle[PLOTLY_MIMETYPE] = figure_json(self.chart)
        return bundle

    @property
    def snapshot_live(self) -> bool:
        return not self._closed and self._task is not None and self.fleet.connected

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.refresh()
            except Exception:  # the view must outlive one bad refresh (e.g. a device mid-restart)
                continue

    def close(self) -> None:
        """Stop refreshing, show the last state as disconnected, and close the widget."""
        if self._closed:
            super().close()
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self.refresh()
        super().close()
        self.final_snapshot()


def _chart() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        return None
    # rangemode tozero: an all-zero backlog sits on the floor of a 0-based axis, not mid-way on -1..1.
    figure = go.FigureWidget(layout={"height": 260, "title": "queued items per device",
                                     "xaxis": {"title": "seconds ago"},
                                     "yaxis": {"title": "items queued", "rangemode": "tozero"}})
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


def _greyed(since: float, rows_html: str) -> str:
    return f'{disconnected_banner(since)}<div style="opacity:0.55">{rows_html}</div>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if value != value else f"{value:,.3g}"
    return "—" if value is None else str(value)
