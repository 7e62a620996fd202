"""The Voila dashboard in Debian's headless Chromium (driven over the DevTools protocol) against a real fleet.

The page is checked offline (no host name resolves), at a desktop's 1366x768 and a phone's 390 px: an idle fleet,
a serving one, one with an alert. Each state's screenshots are saved under the test's tmp path and in
test-artifacts/; with WORKBENCH_DOCS_SCREENSHOTS=1 the README's copies in docs/img/ are refreshed too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _chromium import (
    CHROMIUM,
    DESKTOP,
    OFFLINE_FLAGS,
    PHONE,
    DevTools,
    _free_port,
    _wait_http,
    _wait_port,
    layout_problems,
)
from conftest import deploy_model, run_cli

import workbench
from workbench._settings import settings
from workbench.sim import down, up
from workbench.telemetry import build_digits_model

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
DOCS_IMG = REPO / "docs" / "img"

METRICS = ("latency_p95_ms", "throughput", "cpu_percent")
# What each chart holds, read from plotly's own data (gd.data), not from the SVG it drew: per line, its device,
# its row's y axis and how many finite points it has (a gap is a null/NaN point).
POINTS = ("Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(gd => (gd.data || [])"
          ".filter(t => (t.mode || '').includes('lines')).map(t => ({name: t.name, axis: t.yaxis || 'y', "
          "n: Array.from(t.y || []).filter(v => v !== null && Number.isFinite(Number(v))).length})))")
# The earliest x (epoch ms) of any line the page's plotly charts hold.
EARLIEST_X = ("Math.min(...Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(gd => (gd.data || [])"
              ".flatMap(t => Array.from(t.x || []).map(Number)).filter(Number.isFinite)))")
SHAPES = ("Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(gd => "
          "((gd.layout || {}).shapes || []).map(s => ({name: s.name, yref: s.yref, x0: Number(s.x0)})))")
TICKS = "Array.from(document.querySelectorAll('.js-plotly-plot .xaxislayer-above text')).map(t => t.textContent)"
STATE = "(document.querySelector('.wb-fleet-state') || {}).innerText || ''"
X_RANGE = ("(() => { const gd = document.querySelector('.js-plotly-plot'); const axes = Object.keys(gd._fullLayout)"
           ".filter(k => /^xaxis\\d*$/.test(k)).map(k => gd._fullLayout[k].range.map(v => new Date(v).getTime()));"
           " return axes.map(r => r[1] - r[0]); })()")
# The blocks of the page that must not overlap or be cut off.
PARTS = {".wb-fleet-state": "fleet state", ".wb-health": "health table", ".widget-toggle-buttons": "window chooser",
         ".js-plotly-plot": "charts", ".wb-alerts": "alert list"}


class Dashboard:
    """A `workbench dashboard` server on a 2-device fleet, and an offline headless Chromium to open it with."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.log = base / "voila.log"
        self._closed = False
        self.run_dir = base / "fleet"
        self.port, self._debug_port = _free_port(), _free_port()
        # Voila, Chromium and the fleet start side by side: Voila reads the run dir when a page runs the notebook.
        with self.log.open("wb") as log:  # Voila writes to its own copy of the descriptor
            self.voila = subprocess.Popen(
                [sys.executable, "-m", "workbench.cli", "dashboard", "--port", str(self.port), "--run-dir",
                 str(self.run_dir), "--no-browser", "--metrics", ",".join(METRICS)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        self.browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", f"--remote-debugging-port={self._debug_port}",
             f"--user-data-dir={base / 'chrome'}", *OFFLINE_FLAGS, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with ThreadPoolExecutor(1) as pool:  # training the model overlaps the fleet's start
            built = pool.submit(build_digits_model, base / "digits.onnx")
            up(devices=2, run_dir=self.run_dir)
            self.model = built.result()
        _wait_port(self.port, timeout=60)
        self.fleet = workbench.connect(run_dir=self.run_dir)
        self.fleet.wait_for(2)
        deploy_model(self.fleet, self.model, ["sim-01", "sim-02"], base / "digits-pkg")  # only signed models serve

    def serve(self, source: str) -> None:
        """Both devices serve the digits model (``source="digits"``) or sit idle (``"none"``)."""
        for device in ("sim-01", "sim-02"):
            self.fleet[device].call("telemetry.configure", {"source": source, "rate_hz": 30,
                                                            "publish_interval_s": 0.25})

    @contextlib.contextmanager
    def page(self, size: tuple[int, int]) -> Iterator[DevTools]:
        """A fresh tab on the dashboard at ``size``; its kernel shuts down when it closes."""
        control = DevTools(json.loads(_wait_http(f"http://127.0.0.1:{self._debug_port}/json/version",
                                                 timeout=30))["webSocketDebuggerUrl"])
        target = control.call("Target.createTarget", url="about:blank")["targetId"]
        info = next(t for t in json.loads(_wait_http(f"http://127.0.0.1:{self._debug_port}/json", timeout=5))
                    if t.get("id") == target)
        tools = DevTools(info["webSocketDebuggerUrl"])
        try:
            for domain in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
                tools.call(domain)
            tools.resize(*size)
            tools.call("Page.navigate", url=f"http://127.0.0.1:{self.port}/")
            tools.poll(f"{STATE}.includes('serving') && document.querySelectorAll('.js-plotly-plot .subplot').length"
                       " >= 3", 240, "the dashboard showed no fleet state and charts")
            yield tools
        finally:
            with contextlib.suppress(Exception):
                tools.call("Page.close")
            tools.close()
            control.close()

    def close(self) -> None:
        """Stop everything."""
        if self._closed:
            return
        self._closed = True
        self.fleet.close()
        self.browser.terminate()
        self.voila.terminate()
        self.browser.wait(timeout=10)
        self.voila.wait(timeout=30)
        with contextlib.suppress(Exception):  # never came up
            down(self.run_dir)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    served = Dashboard(tmp_path_factory.mktemp("dashboard"))
    try:
        yield served
    finally:
        served.close()


def _save(tools: DevTools, tmp_path: Path, name: str) -> Path:
    """The page's screenshot under the test's tmp path and test-artifacts/ (and docs/img/ when asked)."""
    shot = tools.screenshot(tmp_path / "screenshots" / name)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / name)
    if settings().docs_screenshots:
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG / name)
    return shot


def _check_page(tools: DevTools) -> None:
    """Offline, quiet and laid out: no request leaves the machine, no console error, nothing overlaps."""
    assert tools.remote_requests() == []
    assert tools.errors() == []
    problems = layout_problems(tools, PARTS)
    assert problems == [], problems


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1366px", "390px"])
def test_dashboard_shows_the_fleet_idle_with_empty_charts_saying_why_when_nothing_is_served(
    dashboard: Dashboard, size: tuple[int, int], tmp_path: Path,
) -> None:
    dashboard.serve("none")
    with dashboard.page(size) as tools:
        state = tools.poll(f"{STATE}.includes('2 idle') && {STATE}", 40, "the fleet state did not say 2 idle")
        assert "0 serving" in state and "0 offline" in state, state
        tools.poll("document.body.innerText.includes('device idle')", 20, "the latency chart did not say why empty")
        # Human titles with units; the idle throughput (0) sits on the floor of a 0.. axis, not mid-way on -1..1.
        body = tools.evaluate("document.body.innerText")
        assert "Latency p95 (ms)" in body and "Throughput (inferences/s)" in body and "CPU (%)" in body, body[:800]
        assert "latency_p95_ms" not in body
        floor = tools.evaluate("document.querySelector('.js-plotly-plot')._fullLayout.yaxis2.range[0]")
        assert floor == 0, floor
        _check_page(tools)
        _save(tools, tmp_path, f"dashboard-idle-{size[0]}.png")


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1366px", "390px"])
def test_dashboard_draws_history_and_live_lines_with_one_legend_when_the_fleet_serves(
    dashboard: Dashboard, size: tuple[int, int], tmp_path: Path,
) -> None:
    dashboard.serve("digits")
    # History before the page opens: the hub stores it, and the page must show it at once.
    dashboard.fleet.telemetry.wait_for("latency_p95_ms", devices=["sim-01", "sim-02"], count=3, timeout=60,
                                       since=30)
    opened_ms = time.time() * 1000.0
    with dashboard.page(size) as tools:
        tools.poll(f"{STATE}.includes('2 serving')", 40, "the fleet state did not say 2 serving")
        # A line with data per device in each chart, from plotly's data.
        tools.poll(f"{POINTS}.filter(t => t.n >= 3).length >= 6", 45, "the dashboard drew no line per device/chart")
        lines = tools.evaluate(POINTS)
        assert {(line["name"], line["axis"]) for line in lines if line["n"] >= 3} == {
            (device, axis) for device in ("sim-01", "sim-02") for axis in ("y", "y2", "y3")}, lines
        oldest_ms = tools.evaluate(EARLIEST_X)
        assert oldest_ms is not None and oldest_ms < opened_ms - 500, (oldest_ms, opened_ms)  # history on open
        counts = {line["name"] + line["axis"]: line["n"] for line in lines}
        tools.poll(f"{POINTS}.some(t => t.n > ({json.dumps(counts)}[t.name + t.axis] || 0))", 15,
                   "no chart got a new point while telemetry arrived")
        # One legend, one entry per device (not one per chart).
        legend = tools.evaluate("Array.from(document.querySelectorAll('.js-plotly-plot .legend .traces'))"
                                ".map(t => t.textContent.trim())")
        assert sorted(legend) == ["sim-01", "sim-02"], legend
        # Epoch milliseconds on an axis plotly.js autotyped as linear read "1.79T"; on a date axis, clock times.
        ticks = tools.poll(f"{TICKS}.length && {TICKS}", 10, "the charts drew no x tick labels")
        assert all(re.match(r"\d{2}:\d{2}", tick) for tick in ticks), ticks
        _check_page(tools)
        _save(tools, tmp_path, f"dashboard-serving-{size[0]}.png")


def test_dashboard_requeries_its_history_when_a_longer_window_is_chosen(dashboard: Dashboard) -> None:
    dashboard.serve("digits")
    with dashboard.page(DESKTOP) as tools:
        spans = tools.poll(f"{X_RANGE}.length && {X_RANGE}", 30, "the charts have no x range")
        assert all(abs(span - 900_000) < 60_000 for span in spans), spans  # 15 min by default
        tools.evaluate("Array.from(document.querySelectorAll('.widget-toggle-button'))"
                       ".find(b => b.textContent.trim() === '24 h').click()")
        spans = tools.poll(f"{X_RANGE}.every(s => Math.abs(s - 86400000) < 600000) && {X_RANGE}", 30,
                           "the charts did not span 24 h after choosing it")
        tools.poll(f"{POINTS}.filter(t => t.n >= 1).length >= 6", 30, "the 24 h window lost the lines")
        _check_page(tools)


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1366px", "390px"])
def test_dashboard_marks_a_fired_alert_on_its_metric_chart_when_a_rule_fires(
    dashboard: Dashboard, size: tuple[int, int], tmp_path: Path,
) -> None:
    dashboard.serve("digits")
    # Rules live in the hub: one every busy device breaks at once (any CPU use at all).
    dashboard.fleet.telemetry.add_rule("cpu-busy", "cpu_percent", above=-1.0, for_points=1)
    deadline = time.monotonic() + 30
    while dashboard.fleet.telemetry.alerts(since=60).empty and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not dashboard.fleet.telemetry.alerts(since=60).empty, "the cpu-busy rule never fired"
    with dashboard.page(size) as tools:
        shapes = tools.poll(f"{SHAPES}.filter(s => s.yref === 'y3 domain' && s.name === 'wb-alert').length"
                            f" && {SHAPES}", 30, "no alert was marked on the CPU chart")
        # Each mark on the chart of a metric that has fired alerts (the notebook's own slow-inference rule on
        # latency fires too when this machine is busy), within the 15 min the charts show.
        fired = set(dashboard.fleet.telemetry.alerts(since=900)["metric"])
        axes = {f"y{'' if row == 1 else row} domain" for row, metric in enumerate(METRICS, start=1) if metric in fired}
        marks = [shape for shape in shapes if shape["name"] == "wb-alert"]
        assert {shape["yref"] for shape in marks} <= axes, (marks, fired)
        assert all(shape["x0"] > (time.time() - 960) * 1000.0 for shape in marks), marks
        assert "cpu-busy" in tools.evaluate("document.querySelector('.wb-alerts').innerText")
        _check_page(tools)
        _save(tools, tmp_path, f"dashboard-alert-{size[0]}.png")


def test_dashboard_server_logs_no_warning_when_serving_pages(dashboard: Dashboard) -> None:
    # Runs after the pages above: Voila's own log (and its kernels') for all their visits, while it still runs.
    logged = dashboard.log.read_text(errors="replace").splitlines()
    assert any("Kernel started" in line for line in logged), logged[-20:]
    noisy = [i for i, line in enumerate(logged) if re.search(r"Warning|WARNING|not trusted|Traceback|\[E ", line)]
    assert noisy == [], "\n".join(logged[noisy[0]:noisy[0] + 40])


def test_dashboard_cli_exits_naming_the_bad_name_when_metrics_are_malformed() -> None:
    result = run_cli("dashboard", "--no-browser", "--metrics", "latency_p95_ms,cpu percent")
    assert result.returncode != 0
    assert "'cpu percent'" in result.stderr and "--metrics" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _kernels(server: subprocess.Popen[bytes]) -> int:
    """Kernel processes the Voila server runs now (each visit of the page starts one)."""
    import psutil

    try:
        children = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    count = 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            if any("ipykernel" in part for part in child.cmdline()):
                count += 1
    return count


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (apt-get install chromium)")
def test_closing_the_dashboard_page_shuts_its_kernel_down_when_opened_and_closed_ten_times(tmp_path: Path) -> None:
    run_dir = tmp_path / "fleet"
    port, debug_port = _free_port(), _free_port()
    voila = subprocess.Popen([sys.executable, "-m", "workbench.cli", "dashboard", "--port", str(port), "--run-dir",
                              str(run_dir), "--no-browser"], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                                "--disable-background-networking", "--disable-dev-shm-usage",
                                f"--remote-debugging-port={debug_port}", f"--user-data-dir={tmp_path / 'chrome'}",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        up(devices=1, run_dir=run_dir)
        _wait_port(port, timeout=60)
        _wait_http(f"http://127.0.0.1:{debug_port}/json/version", timeout=30)
        browser_ws = json.loads(_wait_http(f"http://127.0.0.1:{debug_port}/json/version", timeout=5))
        control = DevTools(browser_ws["webSocketDebuggerUrl"])
        before = _kernels(voila)
        try:
            for visit in range(10):
                target = control.call("Target.createTarget", url="about:blank")["targetId"]
                page = next(t for t in json.loads(_wait_http(f"http://127.0.0.1:{debug_port}/json", timeout=5))
                            if t.get("id") == target)
                tools = DevTools(page["webSocketDebuggerUrl"])
                try:
                    tools.call("Page.enable")
                    tools.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
                    tools.poll("document.body && document.body.innerText.includes('sim-01')", 60,
                               f"visit {visit + 1}: the dashboard showed no device")
                    assert _kernels(voila) >= before + 1
                    tools.call("Page.close")  # runs the page's beforeunload, as closing a tab does
                finally:
                    tools.close()
        finally:
            control.close()
        # Shutting ten kernels down takes seconds on a quiet machine and more under CI's load; what matters is
        # that they all go, so the bound is generous.
        deadline = time.monotonic() + 90
        while _kernels(voila) > before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _kernels(voila) == before, f"{_kernels(voila) - before} of 10 closed pages left their kernel running"
    finally:
        browser.terminate()
        voila.terminate()
        browser.wait(timeout=10)
        _, errors = voila.communicate(timeout=20)
        with contextlib.suppress(Exception):  # never came up
            down(run_dir)
    assert b"_xsrf' argument missing" not in errors, errors.decode(errors="replace")[-2000:]
