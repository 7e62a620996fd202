"""Wall-time budgets: the quickstart promises five minutes, and `workbench demo` says whether it kept it."""

from __future__ import annotations

from workbench.runs._summary import RunSummary

QUICKSTART = "00_quickstart.ipynb"
QUICKSTART_BUDGET_S = 300.0


def wall_time_line(summary: RunSummary, notebook: str = QUICKSTART,
                   budget_s: float = QUICKSTART_BUDGET_S) -> str | None:
    """One line with ``notebook``'s wall time in the run against its budget, or None when it did not run.

    The line starts with ``OVER BUDGET`` when the notebook took longer than ``budget_s``, so a reader (or a
    grep in CI) sees it apart from the table.

    Example:
        >>> from workbench.runs import NotebookRun, RunSummary
        >>> run = NotebookRun("00_quickstart.ipynb", "", "00_quickstart.ipynb", None, "ok", 92.4)
        >>> wall_time_line(RunSummary("runs/x", [run]))
        'quickstart wall time: 92.4 s (budget 300 s): within budget'
    """
    try:
        run = summary[notebook]
    except KeyError:
        return None
    name = notebook.removesuffix(".ipynb").split("_", 1)[-1]
    if run.duration_s is None:
        return f"{name} wall time: unknown ({run.status}; papermill recorded no duration)"
    verdict = "within budget" if run.duration_s <= budget_s else f"over by {run.duration_s - budget_s:.1f} s"
    line = f"{name} wall time: {run.duration_s:.1f} s (budget {budget_s:g} s): {verdict}"
    return line if run.duration_s <= budget_s else f"OVER BUDGET: {line}"
