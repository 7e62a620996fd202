"""Executed notebooks read without a kernel: widget snapshots (charts and tables) in the HTML a run writes."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from _chromium import CHROMIUM, Chromium

from widgets._snapshot import PLOTLY_MIMETYPE, WIDGET_VIEW_MIMETYPE
from workbench._settings import settings
from workbench.runs import declared_parameters, run_notebooks
from workbench.runs._html import plotly_js

MAX_NOTEBOOK_BYTES = 3 * 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
DOCS_IMG = REPO / "docs" / "img"
CELLS = [
    "run_dir = None",
    "import asyncio\nimport workbench, widgets\nfleet = workbench.connect(run_dir=run_dir)\n"
    "fleet.wait_for(2, timeout=60)\nwidgets.FleetPanel(fleet)",
    "fleet.telemetry.configure('all', publish_interval_s=0.2)\n"
    # Both devices, not either: the HTML test below needs a line per device (wait_for on "all" means any one).
    "fleet.telemetry.wait_for('cpu_percent', devices=['sim-01', 'sim-02'], count=3, timeout=60)\n"
    "dashboard = widgets.TelemetryDashboard(fleet, metrics=['cpu_percent', 'uptime_s', 'latency_p95_ms'])\n"
    "dashboard",
    "await asyncio.sleep(4.0)  # the charts grow meanwhile\ndashboard.stop()",
    "widgets.SyncView(fleet)",
    "fleet.close()",
]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from workbench.sim import down, up

    root = tmp_path_factory.mktemp("views")
    record = up(devices=2, run_dir=root / "fleet")  # with a hub, as `workbench up` starts it
    try:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
        nb.cells[0].metadata["tags"] = ["parameters"]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        source = root / "widgets.ipynb"
        nbformat.write(nb, str(source))
        summary = run_notebooks([source], root / "run", parameters={"run_dir": str(record["run_dir"])},
                                cell_timeout=120)
    finally:
        down(root / "fleet")
    run = summary.runs[0]
    assert run.status == "ok", run.error
    return {"ipynb": root / "run" / "widgets.ipynb", "html": root / "run" / "widgets.html"}


def _points(values: Any) -> int:
    """How many values a plotly JSON array holds, plain or base64-typed (``{"bdata": ..., "dtype": "f8"}``)."""
    if isinstance(values, dict):
        return len(base64.b64decode(values["bdata"])) // int(values["dtype"][1:])
    return len(values)


def _outputs(path: Path) -> list[dict[str, Any]]:
    nb = nbformat.read(str(path), as_version=4)
    return [output for cell in nb.cells for output in cell.get("outputs", [])]


def test_executed_notebook_keeps_snapshots_and_no_widget_state_when_widgets_were_displayed(
    executed: dict[str, Any],
) -> None:
    path = executed["ipynb"]
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{path.stat().st_size} bytes"
    assert "widgets" not in nbformat.read(str(path), as_version=4).metadata  # no plotly bundle in saved state
    views = [o["data"] for o in _outputs(path) if WIDGET_VIEW_MIMETYPE in o.get("data", {})
             or "see it live" in str(o.get("data", {}).get("text/plain"))]
    assert len(views) == 3, [sorted(v) for v in views]
    panel, dashboard, sync = views
    # Retaken when its work ended: the panel saw the fleet closed, the dashboard's lines grew after display.
    assert "disconnected at" in panel["text/html"] and 'data-device="sim-01"' in panel["text/html"]
    traces = dashboard[PLOTLY_MIMETYPE]["data"]
    assert {t["name"] for t in traces} == {"sim-01", "sim-02"}
    assert min(_points(t["x"]) for t in traces) >= 10, [_points(t["x"]) for t in traces]
    # An empty chart says why: no model serves, so no latency.
    notes = [a.get("text") for a in dashboard[PLOTLY_MIMETYPE]["layout"]["annotations"]]
    assert any("idle" in str(note) for note in notes), notes
    assert "<table" in dashboard["text/html"] and "no alerts" in dashboard["text/html"]
    assert PLOTLY_MIMETYPE in sync and "disconnected at" in sync["text/html"]


def test_executed_html_has_one_plotly_js_and_tables_when_rendered(executed: dict[str, Any]) -> None:
    page = executed["html"].read_text(encoding="utf-8")
    assert page.count('class="wb-plotly-js"') == 1
    assert page.count("Plotly.newPlot(") == 2  # the dashboard's charts and the sync backlog chart
    assert 'data-device="sim-02"' in page and "cpu_percent" in page and "queued items per device" in page
    assert len(page.encode()) <= len(plotly_js().encode()) + MAX_NOTEBOOK_BYTES


# Per line of every plotly chart on the page, from plotly's own data (gd.data): its name and its finite points.
# _fullData: gd.data keeps a typed array as plotly's JSON wrote it ({bdata, dtype}); plotly.js decodes it there.
LINES = ("Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(gd => (gd._fullData || [])"
         ".map(t => ({name: t.name, n: Array.from(t.y || []).filter(v => v !== null && Number.isFinite(Number(v)))"
         ".length})))")


def _save(page: Any, tmp_path: Path, name: str, *, full_page: bool = True) -> None:
    """The page's screenshot under the test's tmp path and test-artifacts/ (and docs/img/ when asked)."""
    shot = page.screenshot(tmp_path / "screenshots" / name, full_page=full_page)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / name)
    if settings().docs_screenshots:
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG / name)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (apt-get install chromium)")
def test_executed_html_draws_charts_with_data_when_opened_without_a_kernel(
    executed: dict[str, Any], tmp_path: Path,
) -> None:
    with Chromium(tmp_path / "chrome", offline=True) as page:
        page.call("Page.navigate", url=executed["html"].as_uri())
        # Two devices in two charts at least (cpu_percent, uptime_s); plotly draws chart after chart.
        page.poll(f"{LINES}.filter(t => t.n >= 2).length >= 4", 30,
                  "the executed notebook's HTML drew no line with data per device in its two charts with data")
        assert {line["name"] for line in page.evaluate(LINES) if line["n"] >= 2} >= {"sim-01", "sim-02"}
        tables = page.evaluate("document.querySelectorAll('.wb-fleet-panel table tr[data-device]').length")
        assert tables == 2
        assert page.evaluate("typeof window.Plotly") == "object"
        assert page.remote_requests() == [] and page.errors() == []
        _save(page, tmp_path, "executed-notebook.png")


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (apt-get install chromium)")
def test_executed_quickstart_html_shows_charts_with_data_offline_when_opened_without_a_kernel(
    tmp_path: Path,
) -> None:
    from workbench.sim import down, up

    quickstart = REPO / "notebooks" / "00_quickstart.ipynb"
    record = up(devices=3, run_dir=tmp_path / "fleet")
    try:
        parameters = {"expected_devices": 3, "smoke": True}
        if "run_dir" in declared_parameters(quickstart):
            parameters["run_dir"] = str(record["run_dir"])
        summary = run_notebooks([quickstart], tmp_path / "run", notebook_parameters={quickstart.name: parameters},
                                cell_timeout=300)
    finally:
        down(tmp_path / "fleet")
    run = summary.runs[0]
    assert run.ok and run.html is not None, run.error
    executed_nb, html = tmp_path / "run" / run.output, tmp_path / "run" / run.html
    assert executed_nb.stat().st_size <= MAX_NOTEBOOK_BYTES, executed_nb.stat().st_size
    assert html.read_text(encoding="utf-8").count('class="wb-plotly-js"') == 1
    with Chromium(tmp_path / "chrome", offline=True) as page:
        page.call("Page.navigate", url=html.as_uri())
        page.poll(f"{LINES}.some(t => t.n >= 2)", 120, "the quickstart's HTML drew no chart with data")
        assert page.evaluate("document.querySelectorAll('table').length") >= 1
        assert page.remote_requests() == [] and page.errors() == []
        # The page is ~9000 px tall: the shot is one screen, from the live telemetry dashboard's snapshot on.
        page.evaluate("document.querySelector('.wb-telemetry-dashboard').scrollIntoView()")
        _save(page, tmp_path, "executed-quickstart.png", full_page=False)
