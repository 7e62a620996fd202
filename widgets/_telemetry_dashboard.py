"""TelemetryDashboard: live plotly lines per device and metric, fed from the ingestion's ring buffers.

Points reach ring buffers on the ingestion's writer thread (appends only). The figure is
changed only from an asyncio task on the kernel's event loop (ipykernel 7 drops widget
updates from other threads), at most every ``refresh_s``, inside one ``batch_update``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
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
from widgets._fleet_state import FleetState, fleet_state, state_html
from widgets._health_table import FleetHealthTable
from widgets._snapshot import CHART_MARKER, PLOTLY_MIMETYPE, Snapshotting, disconnected_banner, figure_json

log = logging.getLogger("widgets.telemetry_dashboard")
PALETTE: list[str] = list(qualitative.Plotly) + list(qualitative.D3)
_X_AXIS = re.compile(r"x(\d*)")
ALERT_COLOR = "#cf222e"
# The windows a viewer can choose (label, seconds) and the step each is drawn at: raw points for 15 min, means
# over a step beyond, so a day of 1 Hz telemetry is ~700 points a line rather than 86,400.
WINDOWS: list[tuple[str, float]] = [("15 min", 900.0), ("1 h", 3600.0), ("24 h", 86400.0)]
_POINTS_PER_WINDOW = 720
# Titles for people; other metrics get one from their name and unit suffix (see metric_title).
TITLES = {"latency_p95_ms": "Latency p95 (ms)", "latency_p50_ms": "Latency p50 (ms)",
          "throughput": "Throughput (inferences/s)", "cpu_percent": "CPU (%)", "memory_mb": "Memory (MB)",
          "uptime_s": "Uptime (s)", "errors": "Errors (count)", "anomaly_score": "Anomaly score (0-1)"}
_UNITS = {"ms": "ms", "s": "s", "percent": "%", "mb": "MB", "bytes": "bytes", "hz": "Hz", "c": "°C"}


def metric_title(metric: str) -> str:
    """A chart title for people, with the unit: "latency_p95_ms" -> "Latency p95 (ms)".

    Example:
        >>> metric_title("throughput"), metric_title("queue_depth_s"), metric_title("odd")
        ('Throughput (inferences/s)', 'Queue depth (s)', 'Odd')
    """
    if metric in TITLES:
        return TITLES[metric]
    words = [word for word in re.split(r"[_.:-]+", metric) if word]
    unit = _UNITS.get(words[-1].lower()) if len(words) > 1 else None
    if unit is not None:
        words = words[:-1]
    title = " ".join(words).capitalize() or metric
    return f"{title} ({unit})" if unit else title


def window_step(window_s: float) -> float | None:
    """The step (s) history over ``window_s`` is averaged at, or None for raw points (15 min and less).

    Example:
        >>> window_step(900.0), window_step(3600.0), window_step(86400.0)
        (None, 5.0, 120.0)
    """
    return None if window_s <= 900.0 else window_s / _POINTS_PER_WINDOW


def with_gaps(columns: np.ndarray, factor: float = 3.0, min_gap_s: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """x and y of time-sorted ``columns`` (t, value) with a NaN wherever the data pauses, so the line breaks there.

    A pause is a spacing over ``factor`` times both neighbouring spacings (and over ``min_gap_s``): the local
    sampling interval, so a coarser stretch (averaged history) next to raw points is not a gap.

    Example:
        >>> x, y = with_gaps(np.array([[0.0, 1], [1, 1], [2, 1], [60, 1], [61, 1], [62, 1]]))
        >>> y.tolist()[3], len(x)
        (nan, 7)
    """
    x, y = columns[:, 0], columns[:, 1]
    if len(x) < 3:
        return x, y
    spacing = np.diff(x)
    before = np.concatenate([spacing[:1], spacing[:-1]])
    after = np.concatenate([spacing[1:], spacing[-1:]])
    gaps = np.flatnonzero((spacing > factor * np.maximum(before, after)) & (spacing > min_gap_s))
    if not len(gaps):
        return x, y
    middle = (x[gaps] + x[gaps + 1]) / 2.0
    return np.insert(x, gaps + 1, middle), np.insert(y, gaps + 1, np.nan)


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
    """Live charts of ``metrics`` for every device, with the fleet state, health table and alert list.

    On top, the fleet's state: how many devices serve, sit idle or are offline (see
    ``widgets._fleet_state``). One chart per metric, titled with its unit, one legend for all;
    a line breaks where a device paused for several intervals; a red dotted line marks each
    fired alert on its metric's chart. The window buttons (15 min, 1 h, 24 h; ``window_s``
    to start with) query the history again, as averages beyond 15 min; each chart spans the
    window. A chart with nothing to draw says why ("no data yet", "device idle"). Once the
    fleet is disconnected (``fleet.close()`` or a lost connection), a "disconnected at
    HH:MM:SS" line shows and the lines grey out.

    Example:
        >>> widgets.TelemetryDashboard(fleet, metrics=["latency_p95_ms", "throughput", "cpu_percent"])  # doctest: +SKIP
    """

    def __init__(self, fleet: Any, metrics: list[str] | None = None, *, window_s: float = 900.0,
                 refresh_s: float = 0.5, max_points: int = 4000, start: bool = True) -> None:
        self.fleet = fleet
        self.metrics = list(metrics or ["latency_p95_ms", "throughput", "cpu_percent"])
        self.window_s = float(window_s)
        self.refresh_s = refresh_s
        self.max_points = max_points
        self.refreshes = 0
        self.refresh_errors = 0
        self.disconnected_at: float | None = None
        self.empty_reasons: dict[str, str] = {}  # metric -> why its chart is empty, as shown
        self.state = FleetState()
        self.alert_marks: list[tuple[str, str, float]] = []  # (metric, device, epoch s) of each alert drawn
        self._buffers: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        self._dirty = True
        self._traces: dict[tuple[str, str], int] = {}
        self._colors: dict[str, str] = {}
        layout = make_subplots(rows=len(self.metrics), cols=1, shared_xaxes=True,
                               subplot_titles=[metric_title(metric) for metric in self.metrics],
                               vertical_spacing=0.1)
        # Laid out before wrapping: a FigureWidget's synced state keeps only what it was built with (see _add_traces).
        # One legend for all charts (a device has one colour everywhere), under them, whatever the page's width.
        layout.update_layout(height=200 * len(self.metrics) + 90, margin={"l": 50, "r": 10, "t": 30, "b": 70},
                             showlegend=True, uirevision="keep",
                             legend={"orientation": "h", "yref": "container", "y": 0.0, "yanchor": "bottom",
                                     "x": 0.0, "title": {"text": "device "}})
        layout.update_xaxes(type="date")
        for row, metric in enumerate(self.metrics, start=1):
            if metric in TITLES or metric.endswith(("_ms", "_s", "_percent")):  # never below 0: an idle 0 sits on
                layout.update_yaxes(rangemode="nonnegative", row=row, col=1)  # the floor, not mid-axis on -1..1
        self._titles = list(layout.layout.annotations)
        self.figure = _DateAxesFigure(layout)
        # No mode bar: on a phone-wide page it sits on the first chart's title; dragging still zooms.
        self.figure._config = {"displayModeBar": False, "responsive": True}
        self.health = FleetHealthTable(fleet)
        self.alert_list = AlertList(fleet)
        self.banner = w.HTML()
        self.state_view = w.HTML()
        self.state_view.add_class("wb-fleet-state-view")
        options = list(WINDOWS) if any(s == self.window_s for _, s in WINDOWS) else \
            [*WINDOWS, (f"{self.window_s:g} s", self.window_s)]
        self.window_chooser = w.ToggleButtons(options=options, value=self.window_s, description="window",
                                              style={"button_width": "76px", "description_width": "52px"},
                                              layout=w.Layout(width="auto", max_width="100%"))
        self.window_chooser.observe(lambda change: self.set_window(change["new"]), names="value")
        super().__init__([self.banner, self.state_view, self.health, self.window_chooser, self.figure,
                          self.alert_list], layout=w.Layout(max_width="100%", overflow="hidden"))
        self.add_class("wb-telemetry-dashboard")
        telemetry = fleet.telemetry
        self._seed(telemetry)
        self._unsubscribe = telemetry.subscribe(self.metrics, self._on_points)
        self._show_state()
        self._mark_alerts()
        self._task: asyncio.Task[None] | None = None
        self.refresh()
        self._sync_layout()  # the ranges drawn so far, for the page that attaches (Voila: later)
        if start:
            self.start()

    # -- data (writer thread) -------------------------------------------------------------------

    def _seed(self, telemetry: Any) -> None:
        step = window_step(self.window_s)
        frame = telemetry.query(self.metrics, since=self.window_s, every=step)
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

    def set_window(self, window_s: float) -> None:
        """Show the last ``window_s`` seconds: history is queried again from the store (the hub's, if any).

        Example:
            >>> dashboard.set_window(3600)   # doctest: +SKIP
        """
        window_s = float(window_s)
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s:g}")
        with self._lock:
            self.window_s = window_s
            for buffer in self._buffers.values():
                buffer.clear()
            self._dirty = True
        if self.fleet.connected:
            self._seed(self.fleet.telemetry)
        if self.window_chooser.value != window_s and window_s in dict(self.window_chooser.options).values():
            self.window_chooser.value = window_s
        self.refresh()
        self._mark_alerts()

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
                    x, y = with_gaps(columns)
                    # Epoch milliseconds on a date axis: plotly validates a float array in microseconds, where
                    # timestamps or lists cost milliseconds per trace (50 devices x 3 charts did not keep up).
                    trace.x = x * 1000.0
                    trace.y = y
                # The chosen window spans each chart, so "24 h" of ten minutes' data reads as such (and a viewer's
                # zoom lasts until the next points). Only axes with a trace: see _DateAxesFigure._date_axes.
                span = [horizon * 1000.0, time.time() * 1000.0]
                for name in {_axis_name(trace.xaxis) for trace in self.figure.data}:
                    self.figure.layout[name].range = span
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

    def _show_state(self) -> None:
        if not self.fleet.connected:  # keep the last state: a closed fleet has nothing newer to tell
            return
        self.state = fleet_state(self.fleet)
        self.state_view.value = state_html(self.state)

    def _mark_alerts(self) -> None:
        """A red dotted line at each fired alert, on the chart of the alert's metric (newest 50 in the window)."""
        if not self.fleet.connected:
            return
        frame = self.fleet.telemetry.alerts(since=self.window_s)
        drawn = {trace.yaxis for trace in self.figure.data}
        marks: list[tuple[str, str, float]] = []
        if not frame.empty:
            for row in frame.tail(50).itertuples():
                if row.metric in self.metrics:
                    marks.append((str(row.metric), str(row.device_id), row.time.timestamp()))
        if marks == self.alert_marks:
            return
        self.alert_marks = marks
        shapes = []
        for metric, _, at in marks:
            suffix = _suffix(self.metrics.index(metric) + 1)
            if f"y{suffix}" not in drawn:  # an axis without a trace is not in plotly.js's layout (see _date_axes)
                continue
            shapes.append({"type": "line", "xref": f"x{suffix}", "yref": f"y{suffix} domain", "x0": at * 1000.0,
                           "x1": at * 1000.0, "y0": 0, "y1": 1, "name": "wb-alert",
                           "line": {"color": ALERT_COLOR, "width": 2, "dash": "dot"}})
        self.figure.layout.shapes = shapes
        self._sync_layout()

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
        self._sync_layout()

    def _sync_layout(self) -> None:
        # As with traces (see _add_traces), plotly sends a layout change as a one-shot message and leaves the synced
        # `_widget_layout` as built: a page that attaches later would miss the notes and alert marks.
        self.figure._widget_layout = copy.deepcopy(self.figure._layout)

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
                              f"{self.state_view.value}{self.health.value}{CHART_MARKER}{self.alert_list.value}"
                              "</div>")}

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
            # The legend entry of a device's first line stands for all its lines (one legend group per device).
            first = not any(name == device for name, _ in self._traces)
            self.figure.add_scatter(x=[], y=[], mode="lines", name=device, legendgroup=device, line={"color": color},
                                    showlegend=first, connectgaps=False, row=row, col=1)
            self._traces[(device, metric)] = len(self.figure.data) - 1
        # plotly sends new traces as one-shot messages and never updates the synced `_widget_data`, so a page that
        # connects later (Voila runs the notebook before the browser attaches) gets no traces and every restyle
        # then points at a trace it does not have. Live views ignore this state change; late ones build from it.
        self.figure._widget_data = copy.deepcopy(self.figure._data)

    async def _run(self) -> None:
        tick = 0
        while True:
            # One slow or failed call (the hub busy past its HTTP timeout) must not end the task: the charts would
            # freeze for good, and a page opened meanwhile would show them empty.
            try:
                self.refresh()
                tick += 1
                if self.disconnected_at is None and tick % max(1, round(2.0 / self.refresh_s)) == 0:
                    self.health.refresh()  # tables change slower than lines; a disconnected fleet has nothing new
                    self.alert_list.refresh()
                    self._show_state()
                    self._mark_alerts()
            except Exception as exc:
                self.refresh_errors += 1
                log.warning("dashboard refresh failed (%d so far): %s", self.refresh_errors, exc)
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
