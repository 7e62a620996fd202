"""Run notebooks headless (papermill), record their key figures, and compare runs.

Example:
    >>> from workbench.runs import run_notebooks, diff_runs
    >>> summary = run_notebooks(["notebooks/01_connect_fleet.ipynb"], "runs/A")   # doctest: +SKIP
    >>> print(diff_runs("runs/A", "runs/B").table())                              # doctest: +SKIP

In a notebook, ``workbench.record("median_ping_ms", 1.8, tolerance=1.0, unit="ms")``.
"""

from workbench.runs._budget import QUICKSTART, QUICKSTART_BUDGET_S, wall_time_line
from workbench.runs._collect import Outcome, collect_figures, read_outcome
from workbench.runs._demo import (
    LIVE_RATE_HZ,
    DemoFleet,
    curated_notebooks,
    demo_parameters,
    ensure_fleet,
    leave_serving,
    new_run_dir,
)
from workbench.runs._diff import FigureChange, RunDiff, diff_runs, within
from workbench.runs._harness import declared_parameters, run_notebooks
from workbench.runs._kernel import kernel_for_this_python
from workbench.runs._record import RECORD_MIMETYPE, Figure, record, recorded
from workbench.runs._summary import NotebookRun, RunSummary, read_run

__all__ = [
    "LIVE_RATE_HZ",
    "QUICKSTART",
    "QUICKSTART_BUDGET_S",
    "RECORD_MIMETYPE",
    "DemoFleet",
    "Figure",
    "FigureChange",
    "NotebookRun",
    "Outcome",
    "RunDiff",
    "RunSummary",
    "collect_figures",
    "curated_notebooks",
    "declared_parameters",
    "demo_parameters",
    "diff_runs",
    "ensure_fleet",
    "kernel_for_this_python",
    "leave_serving",
    "new_run_dir",
    "read_outcome",
    "read_run",
    "record",
    "recorded",
    "run_notebooks",
    "wall_time_line",
    "within",
]
