"""The curated notebooks: committed without outputs, one `parameters` cell, and each runs headless under papermill.

A new notebook in notebooks/ is tested by adding an entry to NOTEBOOKS below: the parameters it runs
with (besides `run_dir`, given to every notebook that declares it) and a check of the figures it records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import REPO, FleetFactory

from workbench.runs import Figure, NotebookRun, declared_parameters, run_notebooks
from workbench.sim import down, up

NOTEBOOK_DIR = REPO / "notebooks"
ALL_NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# Voila apps are served, not executed top to bottom.
NOT_EXECUTED = {"dashboard.ipynb"}
FLEET_DEVICES = 3


@dataclass(frozen=True)
class Entry:
    """How one curated notebook is run in the tests and what its recorded figures must satisfy."""

    parameters: dict[str, Any] = field(default_factory=dict)
    check: Callable[[dict[str, Figure]], None] | None = None


def _check_connect_fleet(figures: dict[str, Figure]) -> None:
    assert figures["devices_online"].value == FLEET_DEVICES
    ping = figures["median_ping_ms"]
    assert isinstance(ping.value, float) and 0 < ping.value < 2000, ping
    assert ping.unit == "ms" and ping.tolerance is not None


def _check_deploy(figures: dict[str, Figure]) -> None:
    assert figures["canary_status"].value == "succeeded"
    assert figures["bad_package_status"].value == "aborted"
    assert figures["devices_rolled_back"].value == 1
    assert figures["bad_package_caught_in_wave"].value == 0  # the canary's own soak, not a later wave
    assert figures["devices_on_good_version"].value == FLEET_DEVICES


def _check_optimize(figures: dict[str, Figure]) -> None:
    assert figures["test_accuracy"].value >= 0.97
    assert str(figures["device_measured_on"].value).startswith("simulated device")
    assert all(figures[name].value != "none" for name in figures if name.startswith("chosen_"))


def _check_live_telemetry(figures: dict[str, Figure]) -> None:
    assert figures["devices_reporting"].value == FLEET_DEVICES
    assert figures["alerts_fired"].value == 1 and figures["alerted_device"].value == "sim-02"
    points = figures["points_stored"].value
    assert isinstance(points, int) and points > 0


def _check_quickstart(figures: dict[str, Figure]) -> None:
    # Smoke mode trains 2 epochs: well above chance (0.1), below the full run's ~0.95.
    assert figures["test_accuracy"].value >= 0.8
    assert figures["chosen_variant"].value not in (None, "none")
    speedup = figures["speedup_vs_fp32"].value
    assert isinstance(speedup, float) and speedup > 0
    assert figures["canary_status"].value == "succeeded"
    assert figures["devices_on_new_model"].value == FLEET_DEVICES
    points = figures["telemetry_points"].value
    assert isinstance(points, int) and points > 0
    backlog = figures["sync_backlog_items"].value
    assert isinstance(backlog, int) and backlog >= 0


def _check_sync_state(figures: dict[str, Figure]) -> None:
    assert figures["critical_before_bulk"].value is True
    assert figures["counts_add_up"].value is True
    assert figures["items_dropped"].value == 0  # far below the outbox's disk bound


NOTEBOOKS: dict[str, Entry] = {
    "00_quickstart.ipynb": Entry({"expected_devices": FLEET_DEVICES, "smoke": True}, _check_quickstart),
    "02_optimize_model.ipynb": Entry({"smoke": True, "out_dir": "/tmp/wb-test-optimized"}, _check_optimize),
    "03_deploy.ipynb": Entry({"expected_devices": FLEET_DEVICES, "timeout": 120, "smoke": True}, _check_deploy),
    "01_connect_fleet.ipynb": Entry({"expected_devices": FLEET_DEVICES, "timeout": 60, "smoke": True},
                                    _check_connect_fleet),
    "04_live_telemetry.ipynb": Entry({"expected_devices": FLEET_DEVICES, "duration_s": 3.0, "smoke": True},
                                     _check_live_telemetry),
    "05_sync_state.ipynb": Entry({"expected_devices": FLEET_DEVICES, "smoke": True}, _check_sync_state),
}


@pytest.fixture(scope="module")
def notebook_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A fleet of its own, since notebooks may change device state (deploy models)."""
    run_dir = tmp_path_factory.mktemp("notebook-fleet")
    record = up(devices=FLEET_DEVICES, run_dir=run_dir, keepalive=5)
    yield record
    down(run_dir)


def _param(paths: list[Path]) -> list[Any]:
    return [pytest.param(path, id=path.name) for path in paths]


def test_notebooks_directory_has_notebooks_when_checked_out() -> None:
    assert ALL_NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", _param(ALL_NOTEBOOKS))
def test_notebook_has_no_outputs_when_committed(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing "
                       f"(jupyter nbconvert --clear-output --inplace {path.relative_to(REPO)})")
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in its metadata; clear it before committing"
    assert "papermill" not in nb.metadata, f"{path.name}: is an executed copy (papermill metadata); commit the source"


# A Voila app takes its settings from the environment, not from papermill.
@pytest.mark.parametrize("path", _param(ALL_NOTEBOOKS))
def test_notebook_has_exactly_one_parameters_cell_when_committed(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters' (cells {tagged}); tag exactly one"
    assert nb.cells[tagged[0]].cell_type == "code", f"{path.name}: the 'parameters' cell must be a code cell"


@pytest.mark.parametrize("path", _param([p for p in ALL_NOTEBOOKS if p.name not in NOT_EXECUTED]))
def test_notebook_runs_headless_and_records_sane_figures_when_fleet_is_up(
    path: Path, notebook_fleet: dict[str, Any], tmp_path: Path
) -> None:
    entry = NOTEBOOKS.get(path.name)
    if entry is None:
        pytest.fail(f"{path.name} has no entry in NOTEBOOKS in tests/test_notebooks.py: add the parameters it runs "
                    "with in the tests and a check of the figures it records")
    parameters = dict(entry.parameters)
    if "run_dir" in declared_parameters(path):
        parameters.setdefault("run_dir", notebook_fleet["run_dir"])
    summary = run_notebooks([path], tmp_path, notebook_parameters={path.name: parameters}, cell_timeout=300)
    run: NotebookRun = summary.runs[0]
    assert run.ok, f"{path.name} failed in cell {run.error_cell}: {run.error} (executed copy: {tmp_path / run.output})"
    assert run.html is not None and (tmp_path / run.html).stat().st_size > 0
    assert run.figures, f"{path.name} recorded no figures; call workbench.record(...) for its key results"
    if entry.check is not None:
        entry.check(run.figures)


# The deploy notebook's bad model is slow_layers matmuls deep. What a latency gate sees is the model's cost over the
# CPU's speed, so a model 4x lighter stands for a CPU 4x faster than this one, and 4x heavier for one 4x slower:
# together with the regular run (16 layers) that spans a 16x range of CPU speed. The canary must catch it either way.
@pytest.mark.parametrize("slow_layers", [pytest.param(4, id="cpu-4x-faster"), pytest.param(64, id="cpu-4x-slower")])
def test_deploy_notebook_rolls_back_only_the_canary_when_the_cpu_is_faster_or_slower(
        slow_layers: int, fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=FLEET_DEVICES, keepalive=5)
    path = NOTEBOOK_DIR / "03_deploy.ipynb"
    parameters = {**NOTEBOOKS[path.name].parameters, "run_dir": record["run_dir"], "slow_layers": slow_layers}
    summary = run_notebooks([path], tmp_path, notebook_parameters={path.name: parameters}, cell_timeout=300)
    run = summary.runs[0]
    assert run.ok, f"{path.name} failed in cell {run.error_cell}: {run.error} (executed copy: {tmp_path / run.output})"
    _check_deploy(run.figures)


def test_notebook_entries_name_existing_notebooks_when_listed() -> None:
    names = {path.name for path in ALL_NOTEBOOKS}
    stale = sorted(set(NOTEBOOKS) - names)
    assert not stale, f"NOTEBOOKS lists notebooks that are not in notebooks/: {stale}"
