"""TelemetryDashboard against a real fleet: lines per device that change with new telemetry."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

import widgets
import widgets._telemetry_dashboard
import workbench


@contextlib.contextmanager
def _reporting_fleet(shared_fleet: dict[str, Any]) -> Iterator[Any]:
    """The shared fleet, once every device has stored a recent point."""
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        fleet.wait_for(3)
        # Recent points: a shared device may first drain a backlog older than the dashboard's window.
        fleet.telemetry.wait_for("cpu_percent", devices=["sim-01", "sim-02", "sim-03"], count=1, timeout=60,
                                 since=60)
        yield fleet


def test_dashboard_draws_a_line_per_device_that_grows_when_telemetry_arrives(shared_fleet: dict[str, Any]) -> None:
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        fleet.wait_for(3)
        fleet.telemetry.configure("all", publish_interval_s=0.2)
        # Recent points: a shared device may first drain a backlog older than the dashboard's window.
        fleet.telemetry.wait_for("cpu_percent", devices=["sim-01", "sim-02", "sim-03"], count=1, timeout=60,
                                 since=60)
        dashboard = widgets.TelemetryDashboard(fleet, metrics=["cpu_percent", "uptime_s"], start=False)
        dashboard.refresh()
        names = {(trace.name, trace.yaxis) for trace in dashboard.figure.data}
        assert {name for name, _ in names} == {"sim-01", "sim-02", "sim-03"} and len(names) == 6
        before = {trace.name: len(trace.x) for trace in dashboard.figure.data if trace.yaxis == "y2"}
        deadline = time.monotonic() + 15  # live points come from the hub's stream, a moment after it stores them
        while True:
            time.sleep(0.5)
            fleet.telemetry.flush(timeout=10.0)
            dashboard.refresh()
            after = {trace.name: len(trace.x) for trace in dashboard.figure.data if trace.yaxis == "y2"}
            if all(after[name] > before[name] for name in before) or time.monotonic() > deadline:
                break
        assert all(after[name] > before[name] for name in before), (before, after)
        assert "sim-02" in dashboard.health.value and "sync backlog" in dashboard.health.value
        assert "no alerts" in dashboard.alert_list.value
        dashboard.stop()
        fleet.telemetry.configure("all", publish_interval_s=1.0)


def test_dashboard_synced_state_holds_traces_and_layout_when_a_page_connects_after_drawing(
    shared_fleet: dict[str, Any],
) -> None:
    # Voila runs the notebook before the browser attaches: the page builds the figure from the synced
    # state alone, so the traces drawn before it attached must be in that state.
    with _reporting_fleet(shared_fleet) as fleet:
        dashboard = widgets.TelemetryDashboard(fleet, metrics=["cpu_percent", "uptime_s"], start=False)
        dashboard.refresh()
        synced = dashboard.figure._widget_data
        assert sorted({trace["name"] for trace in synced}) == ["sim-01", "sim-02", "sim-03"] and len(synced) == 6
        assert dashboard.figure._widget_layout["height"] == dashboard.figure.layout.height
        colors = {trace["name"]: set() for trace in synced}
        for trace in synced:
            colors[trace["name"]].add(trace["line"]["color"])
        assert all(len(found) == 1 for found in colors.values()) and len(set.union(*colors.values())) == 3
        dashboard.stop()


def test_dashboard_updates_name_date_type_of_each_axis_with_traces_only_when_a_chart_is_empty(
    shared_fleet: dict[str, Any],
) -> None:
    # plotly.js resets an axis' type when a restyle changes its x (then autotypes epoch ms as linear, "1.79T"),
    # unless the same update names the type: every message that changes x must carry type="date" for every x axis
    # that has a trace. An axis without one (a metric nobody reports yet) is not in plotly.js's full layout, and
    # naming it fails the whole update in the page (seen on an idle fleet: no latency yet).
    with _reporting_fleet(shared_fleet) as fleet:
        dashboard = widgets.TelemetryDashboard(fleet, metrics=["no_such_metric", "cpu_percent", "uptime_s"],
                                               start=False)
        sent: list[dict[str, Any]] = []
        dashboard.figure.observe(lambda change: sent.append(change["new"]), names=["_py2js_update", "_py2js_restyle"])
        deadline = time.monotonic() + 10
        while not sent and time.monotonic() < deadline:  # the first drawing happened in the constructor
            time.sleep(0.3)
            fleet.telemetry.flush(timeout=10.0)
            dashboard.refresh()
        state = dashboard.figure.get_state()["_widget_layout"]
        axes = sorted(name for name in state if name.startswith("xaxis"))
        assert axes == ["xaxis", "xaxis2", "xaxis3"]
        assert all(state[name]["type"] == "date" for name in axes)
        assert sorted({trace.xaxis for trace in dashboard.figure.data}) == ["x2", "x3"]
        updates = [message for message in sent if message and "x" in message["style_data"]]
        assert updates
        for message in updates:
            named = {key for key in message["layout_data"] if key.endswith(".type")}
            assert named == {"xaxis2.type", "xaxis3.type"}, message["layout_data"]
            assert all(message["layout_data"][key] == "date" for key in named)
        dashboard.stop()


def test_dashboard_lines_run_forward_in_time_once_per_instant_when_points_arrive_out_of_order(
    shared_fleet: dict[str, Any],
) -> None:
    # A backlog drained after a partition (or from before the dashboard connected) arrives after newer points,
    # and the seed from the store can overlap what the ingestion then delivers. Drawn in arrival order, a line
    # zigzags back in time (seen on the fleet `make demo` leaves serving).
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        fleet.wait_for(3)
        dashboard = widgets.TelemetryDashboard(fleet, metrics=["late_metric"], window_s=120, start=False)
        now = time.time()
        arrivals = [([now - 5, now - 4, now - 3], [5.0, 4.0, 3.0]),   # live points
                    ([now - 10, now - 9, now - 4], [10.0, 9.0, 4.0]),  # the backlog, overlapping at now - 4
                    ([now - 3600], [1.0])]                            # an hour old: outside the window
        for ts, values in arrivals:
            dashboard._on_points("sim-01", "late_metric", np.array(ts), np.array(values))  # the ingestion's callback
        dashboard.refresh()
        (trace,) = dashboard.figure.data
        drawn = [(x, y) for x, y in zip(trace.x, trace.y, strict=True) if not np.isnan(y)]  # a NaN marks a gap
        assert [x for x, _ in drawn] == [t * 1000.0 for t in (now - 10, now - 9, now - 5, now - 4, now - 3)]
        assert [y for _, y in drawn] == [10.0, 9.0, 5.0, 4.0, 3.0]
        dashboard.stop()


def test_dashboard_breaks_a_line_where_points_stop_for_several_intervals_when_a_device_pauses(
    shared_fleet: dict[str, Any],
) -> None:
    # Drawn across, a device that stopped for a minute looks as if it had reported a straight ramp meanwhile.
    with workbench.connect(run_dir=shared_fleet["run_dir"]) as fleet:
        fleet.wait_for(3)
        dashboard = widgets.TelemetryDashboard(fleet, metrics=["paused_metric"], window_s=900, start=False)
        now = time.time()
        ts = np.array([now - 90, now - 89, now - 88, now - 87, now - 20, now - 19, now - 18])  # 67 s without
        dashboard._on_points("sim-01", "paused_metric", ts, np.arange(len(ts), dtype=np.float64))
        dashboard.refresh()
        (trace,) = dashboard.figure.data
        assert trace.connectgaps is False
        y = np.asarray(trace.y, dtype=np.float64)
        assert np.flatnonzero(np.isnan(y)).tolist() == [4], y  # one break, between now - 87 and now - 20
        assert now - 87 < trace.x[4] / 1000.0 < now - 20
        assert np.nansum(y) == sum(range(len(ts)))  # every point is still drawn
        dashboard.stop()


def test_dashboard_titles_charts_for_people_with_units_when_given_metric_ids() -> None:
    assert [widgets._telemetry_dashboard.metric_title(m) for m in
            ("latency_p95_ms", "throughput", "cpu_percent", "queue_wait_ms", "anomaly_score", "odd")] == [
        "Latency p95 (ms)", "Throughput (inferences/s)", "CPU (%)", "Queue wait (ms)", "Anomaly score (0-1)", "Odd"]
