"""TelemetryDashboard: live plotly lines per device and metric, fed from the ingestion's ring buffers.

Points reach ring buffers on the ingestion's writer thread (appends only). The figure is
changed only from an asyncio task on the kernel's event loop (ipykernel 7 drops widget
updates from other threads), at most every ``refresh_s``, inside one ``batch_update``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import threading
import time
from collections import deque
from typing import Any

import ipywidgets as w
import numpy as np
import pandas  # noqa: F401  (before plotly: its validators probe pandas, which must be fully imported by then)
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from widgets._alert_list import AlertList
from widgets._health_table import FleetHealthTable
from widgets._snapshot import CHART_MARKER, PLOTLY_MIMETYPE, Snapshotting, disconnected_banner, figure_json

PALETTE: list[str] = list(qualitative.Plotly) + list(qualitative.D3)
_X_AXIS = re.compile(r"x(\d*)")


def _axis_name(ref: str | None) -> str:
    """The layout key of a trace's x axis reference: 'x' -> 'xaxis', 'x2' -> 'xaxis2' (unset means 'x')."""
    match = _X_AXIS.fullmatch(ref or "x")
    return f"xaxis{match.group(1)}" if match else ""


def _suffix(row: int) -> str:
    """The subplot axis suffix of a row: '' for the first ('x', 'y'), then '2', '3', ..."""
    return "" if row == 1 else str(row)


class _DateAxesFigure(go.FigureWidget):
    """A FigureWidget whose date x axes stay dates when the data on them changes.

    plotly.js resets the type of every axis whose data a restyle changes (``clearAxisTypes``) unless the same
    update names that type, and then autotypes a float array as linear: epoch milliseconds read "1.79T". plotly
    sends only layout values that changed, so an unchanged ``type="date"`` never goes along; this adds it to
    every update that changes x. The synced layout keeps it too, for pages that attach later.
    """

    def _date_axes(self) -> dict[str, str]:
        # Only axes that carry a trace: plotly.js leaves a trace-less axis out of its full layout, and a
        # relayout naming it fails the whole update ("Cannot read properties of undefined (reading 'type')").
        used = {_axis_name(trace.get("xaxis")) for trace in self._data}
        return {f"{name}.type": "date" for name, axis in self._layout.items()
                if name in used and isinstance(axis, dict) and axis.get("type") == "date"}

    def _send_update_msg(self, restyle_data: dict[str, Any], relayout_data: dict[str, Any],
                         trace_indexes: Any = None, source_view_id: str | None = None) -> None:
        if "x" in restyle_data:
            relayout_data = {**self._date_axes(), **relayout_data}
        super()._send_update_msg(restyle_data, relayout_data, trace_indexes, source_view_id)

    def _send_restyle_msg(self, restyle_data: dict[str, Any], trace_indexes: Any = None,
                          source_view_id: str | None = None) -> None:
        if "x" in restyle_data:
            self._send_update_msg(restyle_data, {}, trace_indexes, source_view_id)
        else:
            super()._send_restyle_msg(restyle_data, trace_indexes, source_view_id)


class TelemetryDashboard(Snapshotting, w.VBox):
    """Live charts of ``metrics`` for every device, with the fleet health table and the alert list.

    A chart with nothing to draw says why ("no data yet", "device idle"). Once the fleet is
    disconnected (``fleet.close()`` or a lost connection), a "disconnected at HH:MM:SS" line
    shows and the lines grey out.

    Example:
        >>> widgets.TelemetryDashboard(fleet, metrics=["latency_p95_ms", "throughput", "cpu_percent"])  # doctest: +SKIP
    """

    def __init__(self, fleet: Any, metrics: list[str] | None = None, *, window_s: float = 120.0,
                 refresh_s: float = 0.5, max_points: int = 600, start: bool = True) -> None:
        self.fleet = fleet
        self.metrics = list(metrics or ["latency_p95_ms", "throughput", "cpu_percent"])
        self.window_s = window_s
        self.refresh_s = refresh_s
        self.max_points = max_points
        self.refreshes = 0
        self.disconnected_at: float | None = None
        self.empty_reasons: dict[str, str] = {}  # metric -> why its chart is empty, as shown
        self._buffers: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        self._dirty = True
        self._traces: dict[tuple[str, str], int] = {}
        self._colors: dict[str, str] = {}
        layout = make_subplots(rows=len(self.metrics), cols=1, shared_xaxes=True, subplot_titles=self.metrics,
                               vertical_spacing=0.08)
        # Laid out before wrapping: a FigureWidget's synced state keeps only what it was built with (see _add_traces).
        layout.update_layout(height=220 * len(self.metrics) + 60, margin={"l": 50, "r": 10, "t": 40, "b": 30},
                             legend={"orientation": "h"}, uirevision="keep")
        layout.update_xaxes(type="date")
        self._titles = list(layout.layout.annotations)
        self.figure = _DateAxesFigure(layout)
        self.health = FleetHealthTable(fleet)
        self.alert_list = AlertList(fleet)
        self.banner = w.HTML()
        super().__init__([self.banner, self.health, self.figure, self.alert_list])
        self.add_class("wb-telemetry-dashboard")
        telemetry = fleet.telemetry
        self._seed(telemetry)
        self._unsubscribe = telemetry.subscribe(self.metrics, self._on_points)
        self._task: asyncio.Task[None] | None = None
        self.refresh()
        if start:
            self.start()

    # -- data (writer thread) -------------------------------------------------------------------

    def _seed(self, telemetry: Any) -> None:
        frame = telemetry.query(self.metrics, since=self.window_s)
        for (device, metric), group in frame.groupby(["device_id", "metric"]):
            times = group["time"].astype("int64").to_numpy() / 1e9
            self._on_points(device, metric, times, group["value"].to_numpy())

    def _on_points(self, device: str, metric: str, ts: np.ndarray, values: np.ndarray) -> None:
        if metric not in self.metrics:
            return
        with self._lock:
            buffer = self._buffers.get((device, metric))
            if buffer is None:
                buffer = self._buffers[(device, metric)] = deque(maxlen=self.max_points)
            buffer.extend(zip(ts.tolist(), values.tolist(), strict=True))
            self._dirty = True

    # -- drawing (kernel loop) -------------------------------------------------------------------

    def refresh(self) -> float:
        """Redraw changed series now, in one batch update; returns the cost in milliseconds."""
        start = time.perf_counter()
        with self._lock:
            dirty, self._dirty = self._dirty, False
            snapshot = {key: list(buffer) for key, buffer in self._buffers.items()} if dirty else {}
        self._show_connection()
        if snapshot:
            self._add_traces(sorted(k for k in snapshot if k not in self._traces))
            horizon = time.time() - self.window_s
            with self.figure.batch_update():
                for key, points in snapshot.items():
                    trace = self.figure.data[self._traces[key]]
                    columns = np.array(points, dtype=np.float64).reshape(-1, 2)
                    # Points arrive out of time order (a device's backlog drains after a partition or before the
                    # dashboard connected, and the seed from the store overlaps what the ingestion delivers): in
                    # arrival order a line zigzags back in time. Sorted by time, each instant once, window only.
                    if not np.all(np.diff(columns[:, 0]) > 0):  # in order is the common case: skip the sort
                        _, first = np.unique(columns[:, 0], return_index=True)
                        columns = columns[first]
                    columns = columns[columns[:, 0] >= horizon]
                    # Epoch milliseconds on a date axis: plotly validates a float array in microseconds, where
                    # timestamps or lists cost milliseconds per trace (50 devices x 3 charts did not keep up).
                    trace.x = columns[:, 0] * 1000.0
                    trace.y = columns[:, 1]
        self._explain_empty()
        self.refreshes += 1
        return (time.perf_counter() - start) * 1000.0

    def _show_connection(self) -> None:
        if self.fleet.connected:
            if self.disconnected_at is not None:
                self.disconnected_at = None
                self.banner.value = ""
                self.figure.update_traces(opacity=1.0)
            return
        if self.disconnected_at is None:
            self.disconnected_at = time.time()
            self.banner.value = disconnected_banner(self.disconnected_at)
            self.figure.update_traces(opacity=0.35)

    def _explain_empty(self) -> None:
        with self._lock:
            reported = {metric for (_, metric), buffer in self._buffers.items() if buffer}
        reasons: dict[str, str] = {}
        for metric in self.metrics:
            if metric in reported:
                continue
            if not any(device.online for device in self.fleet.devices):
                reasons[metric] = "no device online"
            elif reported:  # devices report, just not this: nothing is being served or measured
                reasons[metric] = "device idle: nothing reported for this metric"
            else:
                reasons[metric] = "no data yet"
        if reasons == self.empty_reasons:
            return
        self.empty_reasons = reasons
        # Paper coordinates at the middle of the row: plotly.js drops a trace-less axis from its full layout, so a
        # note placed on that axis's domain would land elsewhere.
        notes = [
            {"text": reason, "showarrow": False, "font": {"color": "#888", "size": 14}, "name": f"wb-empty-{metric}",
             "xref": "paper", "yref": "paper", "x": 0.5, "y": self._row_middle(row)}
            for row, metric in enumerate(self.metrics, start=1) if (reason := reasons.get(metric))
        ]
        self.figure.layout.annotations = [*self._titles, *notes]

    def _row_middle(self, row: int) -> float:
        domain = self.figure.layout[f"yaxis{_suffix(row)}"].domain or (0.0, 1.0)
        return float(domain[0] + domain[1]) / 2.0

    # -- snapshot (what an executed notebook shows without a kernel) ------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The charts as plotly's mimetype and the tables as ``text/html``, as drawn now."""
        figure = figure_json(self.figure)
        with self._lock:
            times = [t for buffer in self._buffers.values() for t, _ in buffer]
        if times:
            # Shared x axes follow the bottom one, which a chart without data leaves unranged: fix the data's span
            # on every axis, so a page without a kernel draws the lines across the chart with clock ticks.
            first, last = min(times) * 1000.0, max(times) * 1000.0
            span = [first, max(last, first + 1000.0)]
            for name, axis in figure["layout"].items():
                if name.startswith("xaxis") and isinstance(axis, dict):
                    axis.update(range=span, autorange=False, showticklabels=True)
        return {PLOTLY_MIMETYPE: figure,
                "text/html": (f'<div class="wb-telemetry-dashboard">{disconnected_banner(self.disconnected_at)}'
                              f"{self.health.value}{CHART_MARKER}{self.alert_list.value}</div>")}

    @property
    def snapshot_live(self) -> bool:
        return self._task is not None and self.fleet.connected

    def _add_traces(self, keys: list[tuple[str, str]]) -> None:
        if not keys:
            return
        for device, metric in keys:
            row = self.metrics.index(metric) + 1
            # One colour per device across all charts, so a device reads the same in every row.
            color = self._colors.setdefault(device, PALETTE[len(self._colors) % len(PALETTE)])
            self.figure.add_scatter(x=[], y=[], mode="lines", name=device, legendgroup=device, line={"color": color},
                                    showlegend=row == 1, row=row, col=1)
            self._traces[(device, metric)] = len(self.figure.data) - 1
        # plotly sends new traces as one-shot messages and never updates the synced `_widget_data`, so a page that
        # connects later (Voila runs the notebook before the browser attaches) gets no traces and every restyle
        # then points at a trace it does not have. Live views ignore this state change; late ones build from it.
        self.figure._widget_data = copy.deepcopy(self.figure._data)

    async def _run(self) -> None:
        tick = 0
        while True:
            self.refresh()
            tick += 1
            if self.disconnected_at is None and tick % max(1, round(2.0 / self.refresh_s)) == 0:
                self.health.refresh()  # tables change slower than lines; a disconnected fleet has nothing new
                self.alert_list.refresh()
            await asyncio.sleep(self.refresh_s)

    def start(self) -> None:
        """Start the refresh task on the running event loop (the kernel's); without one, refresh() by hand."""
        with contextlib.suppress(RuntimeError):  # no running loop: a script, not a kernel
            loop = asyncio.get_running_loop()
            if self._task is None:
                self._task = loop.create_task(self._run())

    def stop(self) -> None:
        """Stop the refresh task and the subscription; the snapshot is retaken when the cell ends."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._unsubscribe()
