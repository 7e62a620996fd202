"""The Voila dashboard in Debian's headless Chromium (driven over the DevTools protocol) against a real fleet."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _chromium import CHROMIUM, DevTools, _free_port, _wait_http, _wait_port
from conftest import deploy_model, run_cli

import workbench
from workbench.sim import down, up
from workbench.telemetry import build_digits_model

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


METRICS = ("latency_p95_ms", "throughput", "cpu_percent")
# The earliest x (epoch ms) of any line the page's plotly charts hold.
EARLIEST_X = ("Math.min(...Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(gd => (gd.data || [])"
              ".flatMap(t => Array.from(t.x || []).map(Number)).filter(Number.isFinite)))")
TICKS = "Array.from(document.querySelectorAll('.js-plotly-plot .xaxislayer-above text')).map(t => t.textContent)"
LINES = "Array.from(document.querySelectorAll('.js-plotly-plot .scatterlayer .trace path.js-line'))"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (apt-get install chromium)")
def test_voila_dashboard_renders_changing_charts_without_console_errors(tmp_path: Path) -> None:
    run_dir = tmp_path / "fleet"
    port, debug_port = _free_port(), _free_port()
    # Voila, Chromium and the fleet start side by side: Voila reads the run dir only when the page runs the notebook.
    # A first chart no device reports (as on a fleet that serves no model, e.g. after `workbench demo --idle`): an
    # empty chart's axis is not in plotly.js's full layout, and an update naming it used to fail in the page.
    voila = subprocess.Popen([sys.executable, "-m", "workbench.cli", "dashboard", "--port", str(port), "--run-dir",
                              str(run_dir), "--no-browser", "--metrics", f"not_reported,{','.join(METRICS)}"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                                "--disable-background-networking", "--disable-dev-shm-usage",
                                f"--remote-debugging-port={debug_port}", f"--user-data-dir={tmp_path / 'chrome'}",
                                "--window-size=1280,1400", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tools: DevTools | None = None
    try:
        with ThreadPoolExecutor(1) as pool:  # training the model overlaps the fleet's start
            built = pool.submit(build_digits_model, tmp_path / "digits.onnx")
            up(devices=2, run_dir=run_dir)
            model = built.result()
        with workbench.connect(run_dir=run_dir) as fleet:
            fleet.wait_for(2)
            deploy_model(fleet, model, ["sim-01", "sim-02"], tmp_path / "digits-pkg")
            for device in ("sim-01", "sim-02"):
                fleet[device].call("telemetry.configure",
                                   {"source": "digits", "rate_hz": 30, "publish_interval_s": 0.25})
            # History before the page opens: the hub stores it, and the page must show it at once.
            fleet.telemetry.wait_for("latency_p95_ms", devices=["sim-01", "sim-02"], count=3, timeout=60)
        _wait_port(port, timeout=60)
        targets = json.loads(_wait_http(f"http://127.0.0.1:{debug_port}/json", timeout=30))
        page = next(t for t in targets if t.get("type") == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            tools.call(domain)
        opened_ms = time.time() * 1000.0
        tools.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        # One line per device in each of the three charts.
        tools.poll(f"{LINES}.filter(p => (p.getAttribute('d') || '').length > 20).length >= 6", 45,
                   "the dashboard drew no line per device and chart")
        oldest_ms = tools.evaluate(EARLIEST_X)
        assert oldest_ms is not None and oldest_ms < opened_ms - 500, (oldest_ms, opened_ms)  # history on open
        first = tools.evaluate(f"{LINES}.map(p => p.getAttribute('d')).join('|')")
        tools.poll(f"{LINES}.map(p => p.getAttribute('d')).join('|') !== {json.dumps(first)}", 10,
                   "the charts did not change while telemetry arrived")
        # Epoch milliseconds on an axis plotly.js autotyped as linear read "1.79T"; on a date axis, clock times.
        ticks = tools.poll(f"{TICKS}.length && {TICKS}", 10, "the charts drew no x tick labels")
        assert all(re.match(r"\d{2}:\d{2}", tick) for tick in ticks), ticks
        body = tools.evaluate("document.body.innerText")
        assert "sim-01" in body and "sim-02" in body and "sync backlog" in body and "not_reported" in body
        shot = base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"])
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "dashboard.png").write_bytes(shot)
        assert tools.errors() == []
    finally:
        if tools is not None:
            tools.close()
        browser.terminate()
        voila.terminate()
        browser.wait(timeout=10)
        voila.wait(timeout=20)
        with contextlib.suppress(Exception):  # never came up
            down(run_dir)


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
        deadline = time.monotonic() + 30
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
