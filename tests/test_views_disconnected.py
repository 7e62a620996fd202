"""Widgets say what they are: disconnected after fleet.close() (greyed, never stale-as-live); empty charts say why."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import widgets
import workbench
from workbench.sim import _procs

CLOCK = re.compile(r"disconnected at \d{2}:\d{2}:\d{2}")


def test_widgets_say_disconnected_and_grey_out_when_the_fleet_is_closed(fleet_factory: Any) -> None:
    record = fleet_factory(devices=1, hub=True)
    fleet = workbench.connect(run_dir=record["run_dir"])
    fleet.wait_for(1)
    panel = widgets.FleetPanel(fleet)
    view = widgets.SyncView(fleet)
    dashboard = widgets.TelemetryDashboard(fleet, metrics=["cpu_percent"], start=False)
    try:
        fleet.telemetry.wait_for("cpu_percent", devices=["sim-01"], count=1, timeout=60)
        dashboard.refresh()
        assert fleet.connected and panel.snapshot_live
        assert "● online" in panel.snapshot()["text/html"] and "disconnected" not in panel.snapshot()["text/html"]

        fleet.close()
        assert not fleet.connected
        panel.refresh()
        view.refresh()
        dashboard.refresh()

        shown = panel.snapshot()["text/html"]
        assert CLOCK.search(shown) and "opacity:0.55" in shown, shown
        assert "● online" not in shown and "was online" in shown  # the last state, not shown as live
        assert not panel.snapshot_live and panel.disconnected_at is not None
        assert CLOCK.search(view.table.value) and "opacity:0.55" in view.table.value
        assert not view.snapshot_live
        assert CLOCK.search(dashboard.banner.value)
        assert dashboard.figure.data and all(trace.opacity == 0.35 for trace in dashboard.figure.data)
        assert CLOCK.search(dashboard.snapshot()["text/html"])
    finally:
        for widget in (dashboard, view, panel):
            widget.close()
        fleet.close()


def test_empty_charts_say_why_when_nothing_reports_the_metric(fleet_factory: Any) -> None:
    record = fleet_factory(devices=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1)
        fresh = widgets.TelemetryDashboard(fleet, metrics=["latency_p95_ms"], start=False)
        assert fresh.empty_reasons == {"latency_p95_ms": "no data yet"}
        fleet.telemetry.wait_for("cpu_percent", devices=["sim-01"], count=1, timeout=60)
        idle = widgets.TelemetryDashboard(fleet, metrics=["cpu_percent", "latency_p95_ms"], start=False)
        idle.refresh()
        # The device reports its CPU but serves no model: no latency, and the chart says so where it is drawn.
        assert idle.empty_reasons == {"latency_p95_ms": "device idle: nothing reported for this metric"}
        notes = {a.text: a.y for a in idle.figure.layout.annotations if a.name == "wb-empty-latency_p95_ms"}
        assert list(notes) == ["device idle: nothing reported for this metric"]
        assert next(iter(notes.values())) < 0.5  # the lower of two rows
        for dashboard in (fresh, idle):
            dashboard.stop()
            dashboard.close()


def test_fleet_panel_shows_disconnected_while_the_broker_is_gone_and_live_again_when_it_returns(
    fleet_factory: Any,
) -> None:
    record = fleet_factory(devices=1)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(1)
        panel = widgets.FleetPanel(fleet)
        _procs.stop([record["broker"]])
        restarted = None
        try:
            deadline = time.monotonic() + 20
            while fleet.connected and time.monotonic() < deadline:
                time.sleep(0.1)
            panel.refresh()
            assert CLOCK.search(panel.snapshot()["text/html"]) and not panel.snapshot_live
            restarted = _procs.spawn(record["broker"]["argv"], Path(record["broker"]["log"]))
            assert _procs.wait_port("127.0.0.1", record["broker"]["port"], timeout=20)
            deadline = time.monotonic() + 30
            while not fleet.connected and time.monotonic() < deadline:
                time.sleep(0.2)
            panel.refresh()
            shown = panel.snapshot()["text/html"]
            assert "disconnected" not in shown and panel.disconnected_at is None and panel.snapshot_live, shown
        finally:
            panel.close()
            if restarted is not None:
                _procs.stop([restarted])
