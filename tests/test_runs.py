"""The papermill harness: run notebooks headless, collect recorded figures, diff runs, `workbench demo`."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import REPO, run_cli

import workbench
from workbench.errors import ConfigError
from workbench.runs import RECORD_MIMETYPE, Figure, diff_runs, read_run, recorded, run_notebooks, within
from workbench.sim import RunDir, down

FIXTURES = REPO / "tests" / "fixtures" / "notebooks"
RECORDS = FIXTURES / "records.ipynb"
RAISES = FIXTURES / "raises.ipynb"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four real runs of the fixture notebooks: a baseline, one moved, one within tolerance, one failing."""
    root = tmp_path_factory.mktemp("runs")
    plan: dict[str, tuple[list[Path], dict[str, dict[str, Any]]]] = {
        "A": ([RECORDS], {"records.ipynb": {"value": 10.0, "tolerance": 0.1}}),
        "B": ([RECORDS], {"records.ipynb": {"value": 12.0, "tolerance": 0.1}}),
        "C": ([RECORDS], {"records.ipynb": {"value": 10.5, "tolerance": 0.1}}),
        "F": ([RAISES, RECORDS], {"records.ipynb": {"value": 10.0, "fail": True}}),
    }
    for name, (paths, params) in plan.items():
        run_notebooks(paths, root / name, notebook_parameters=params, cell_timeout=120)
    return {name: root / name for name in plan}


def test_run_notebooks_collects_figures_when_notebook_records(runs: dict[str, Path]) -> None:
    summary = read_run(runs["A"])
    run = summary["records"]
    assert run.ok and summary.ok
    assert run.figures["latency_ms"] == Figure("latency_ms", 10.0, 0.1, "ms")  # the later record replaced -1
    assert run.figures["label"] == Figure("label", "a")
    assert (runs["A"] / "records.ipynb").exists()
    assert "latency_ms" in (runs["A"] / "records.html").read_text()
    written = json.loads((runs["A"] / "summary.json").read_text())
    assert [f["value"] for f in written["notebooks"][0]["figures"] if f["name"] == "latency_ms"] == [10.0]
    assert not list(runs["A"].glob(".*"))  # no partial files left behind


def test_run_notebooks_talks_to_kernel_over_unix_sockets_when_it_runs_a_notebook(
    tmp_path: Path, capfd: pytest.CaptureFixture[str],
) -> None:
    # Over loopback TCP each kernel warns that its traffic is unencrypted (and any local user may connect).
    summary = run_notebooks([RECORDS], tmp_path / "run", notebook_parameters={"records.ipynb": {"value": 1.0}},
                            cell_timeout=120)
    assert summary.ok
    assert "TCP without encryption" not in capfd.readouterr().err


def test_record_travels_as_custom_mimetype_when_in_a_kernel(runs: dict[str, Path]) -> None:
    nb = nbformat.read(runs["A"] / "records.ipynb", as_version=4)
    payloads = [o["data"][RECORD_MIMETYPE] for c in nb.cells for o in c.get("outputs", [])
                if RECORD_MIMETYPE in o.get("data", {})]
    assert [p["name"] for p in payloads] == ["latency_ms", "latency_ms", "label"]
    assert payloads[1] == {"name": "latency_ms", "value": 10.0, "tolerance": 0.1, "unit": "ms"}


def test_run_notebooks_marks_failed_with_error_when_notebook_raises(runs: dict[str, Path]) -> None:
    summary = read_run(runs["F"])
    assert not summary.ok
    raised = summary["raises"]
    assert raised.status == "failed"
    assert raised.error == "RuntimeError: the fixture failed on purpose"
    nb = nbformat.read(runs["F"] / raised.output, as_version=4)
    assert raised.error_cell is not None and "raise RuntimeError" in nb.cells[raised.error_cell].source
    assert set(raised.figures) == {"before_failure"}  # recorded before the error, nothing after
    # The run went on to the next notebook, which failed on its own terms.
    assert summary["records"].error == "ValueError: asked to fail with value=10.0"
    assert "FAILED (RuntimeError: the fixture failed on purpose)" in summary.table()


def test_diff_flags_figure_when_moved_beyond_tolerance(runs: dict[str, Path]) -> None:
    result = diff_runs(runs["A"], runs["B"])
    states = {c.name: c.state for c in result.changes}
    assert states == {"latency_ms": "moved", "label": "same"}
    assert [c.change for c in result.flagged] == ["+20.0%"]
    cli = run_cli("runs", "diff", str(runs["A"]), str(runs["B"]))
    assert cli.returncode == 1, cli.stderr
    assert "moved" in cli.stdout and "1 of 2 figures flagged" in cli.stdout


def test_diff_passes_when_figures_within_tolerance(runs: dict[str, Path]) -> None:
    result = diff_runs(runs["A"], runs["C"])
    assert {c.name: c.state for c in result.changes} == {"latency_ms": "same", "label": "same"}
    cli = run_cli("runs", "diff", str(runs["A"]), str(runs["C"]))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "all 2 figures within tolerance" in cli.stdout


def test_diff_flags_failed_notebook_and_lost_figures_when_b_failed(runs: dict[str, Path]) -> None:
    result = diff_runs(runs["A"], runs["F"])
    assert {(c.notebook, c.state) for c in result.flagged} == {("raises.ipynb", "failed"), ("records.ipynb", "failed")}
    assert [(c.name, c.state) for c in result.changes if c.notebook == "raises.ipynb"][1:] == [
        ("before_failure", "added")]
    # The other way round the figure disappears, which is flagged too.
    backwards = diff_runs(runs["F"], runs["A"])
    assert [(c.notebook, c.name) for c in backwards.flagged] == [("raises.ipynb", "before_failure")]
    assert backwards.flagged[0].state == "removed"


def test_read_run_reads_executed_notebooks_when_summary_missing(runs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(runs["F"] / "raises.ipynb", tmp_path / "raises.ipynb")
    summary = read_run(tmp_path)
    assert summary["raises"].status == "failed"
    assert summary["raises"].error == "RuntimeError: the fixture failed on purpose"
    assert summary["raises"].duration_s is not None and summary["raises"].duration_s > 0


def test_runs_show_exits_nonzero_when_run_has_failure(runs: dict[str, Path]) -> None:
    ok = run_cli("runs", "show", str(runs["A"]))
    failed = run_cli("runs", "show", str(runs["F"]))
    assert ok.returncode == 0 and "latency_ms=10 ms (±10%)" in ok.stdout
    assert failed.returncode == 1 and "FAILED" in failed.stdout


def test_run_notebooks_rejects_bad_input_when_paths_wrong(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="not a notebook file"):
        run_notebooks([tmp_path / "missing.ipynb"], out)
    with pytest.raises(ConfigError, match="got no notebooks"):
        run_notebooks([], out)
    with pytest.raises(ConfigError, match=r"names notebooks not being run: other\.ipynb"):
        run_notebooks([RECORDS], out, notebook_parameters={"other.ipynb": {}})
    with pytest.raises(ConfigError, match="share a file name"):
        run_notebooks([RECORDS, RECORDS], out)
    assert not out.exists()  # nothing half-written
    with pytest.raises(ConfigError, match="no run directory"):
        read_run(tmp_path / "nowhere")


def test_record_keeps_figure_in_process_when_outside_a_kernel() -> None:
    figure = workbench.record("plain_script_figure", 3, tolerance=0.5, unit="ms")
    assert figure == Figure("plain_script_figure", 3, 0.5, "ms")
    assert recorded()[-1] == figure


@pytest.mark.parametrize(("args", "message"), [
    (("", 1), "non-empty string name"),
    (("x", [1]), "got a list"),
    (("x", float("nan")), "cannot be compared"),
    (("x", 1, -0.1), "tolerance must be a number >= 0"),
    (("x", "text", 0.1), "not a number"),
])
def test_record_rejects_value_when_invalid(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        workbench.record(*args)


def test_within_uses_relative_tolerance_when_given() -> None:
    assert within(Figure("x", 100.0, 0.1), Figure("x", 109.0, 0.1))
    assert not within(Figure("x", 100.0, 0.1), Figure("x", 89.0, 0.1))
    assert not within(Figure("x", 3), Figure("x", 4))  # no tolerance: must match
    assert within(Figure("x", 0.0, 0.5), Figure("x", 0.4, 0.5))  # around zero: an absolute band


MAX_NOTEBOOK_BYTES = 3 * 1024 * 1024


def test_demo_starts_fleet_runs_notebooks_and_leaves_fleet_up_and_serving_when_none_running(tmp_path: Path) -> None:
    fleet_dir, out = tmp_path / "fleet", tmp_path / "runs"
    try:
        first = run_cli("demo", "--devices", "2", "--notebooks", "notebooks/01_connect_fleet.ipynb",
                        "--out", str(out), "--run-dir", str(fleet_dir), timeout=240)
        ended = time.time()
        assert first.returncode == 0, first.stdout + first.stderr
        assert "started 2 devices" in first.stdout and "left running" in first.stdout
        assert "01_connect_fleet.ipynb" in first.stdout and "devices_online=2" in first.stdout
        assert "sim-01, sim-02 left serving a digits model" in first.stdout
        # A line as the notebook starts, one per code cell as it completes, one as it ends.
        lines = first.stdout.splitlines()
        cell_line = re.compile(r"  01_connect_fleet\.ipynb cell (\d+)/(\d+) ok \(\d+\.\d s\)")
        cells = [line for line in lines if cell_line.fullmatch(line)]
        code = [c for c in nbformat.read(str(REPO / "notebooks" / "01_connect_fleet.ipynb"), as_version=4).cells
                if c.cell_type == "code"]
        total = len(code) + 1  # and the parameters cell papermill injects
        assert [cell_line.fullmatch(line).groups() for line in cells] == [  # type: ignore[union-attr]
            (str(n), str(total)) for n in range(1, total + 1)]
        assert lines.index("[1/1] 01_connect_fleet.ipynb: running") < lines.index(cells[0])
        assert any(re.fullmatch(r"\[1/1\] 01_connect_fleet\.ipynb: ok in \d+\.\d s", line) for line in lines)
        assert RunDir.resolve(fleet_dir).read() is not None  # still up
        (run_dir,) = out.iterdir()
        assert read_run(run_dir)["01_connect_fleet"].figures["devices_online"].value == 2
        # The closing summary links the run's index page, which links the notebook's HTML.
        index = run_dir / "index.html"
        assert f"open {index.resolve().as_uri()}" in first.stdout
        assert 'href="01_connect_fleet.html"' in index.read_text() and (run_dir / "01_connect_fleet.html").is_file()
        for path in run_dir.glob("*.ipynb"):  # executed notebooks stay small: no plotly bundle in widget state
            assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, (path, path.stat().st_size)
        for path in run_dir.glob("*.html"):
            assert path.read_text(encoding="utf-8").count('class="wb-plotly-js"') <= 1, path
        # Serving for the dashboard: the hub keeps storing each device's latency after the demo has ended.
        with workbench.connect(run_dir=fleet_dir) as fleet:
            fleet.wait_for(2)
            assert {fleet.call(d, "telemetry.status")["config"]["source"] for d in ("sim-01", "sim-02")} == {"digits"}
            deadline = time.monotonic() + 30
            while True:
                fleet.telemetry.flush(timeout=2.0)
                frame = fleet.telemetry.query("latency_p95_ms", since=ended)
                late = frame.groupby("device_id").size().to_dict() if not frame.empty else {}
                if all(late.get(device, 0) >= 3 for device in ("sim-01", "sim-02")):
                    break
                assert time.monotonic() < deadline, f"latency points stored after the demo ended: {late}"
                time.sleep(1.0)

        second = run_cli("demo", "--notebooks", str(RAISES.relative_to(REPO)), "--out", str(out),
                         "--run-dir", str(fleet_dir), "--idle", timeout=240)
        assert second.returncode == 1
        assert "using the fleet already up" in second.stdout and "left serving" not in second.stdout
        assert "FAILED (RuntimeError: the fixture failed on purpose)" in second.stdout
        assert len(list(out.iterdir())) == 2
    finally:
        if RunDir.resolve(fleet_dir).read() is not None:
            down(fleet_dir)


def test_demo_fails_clearly_when_no_notebook_matches(tmp_path: Path) -> None:
    result = run_cli("demo", "--notebooks", "nowhere/*.ipynb", "--run-dir", str(tmp_path / "fleet"))
    assert result.returncode == 1
    assert "no notebooks match 'nowhere/*.ipynb'" in result.stderr
    assert RunDir.resolve(tmp_path / "fleet").read() is None  # no fleet started for nothing
