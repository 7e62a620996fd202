"""`workbench demo`'s wall-time line for the quickstart: within its five-minute budget, or flagged."""

from __future__ import annotations

from workbench.runs import QUICKSTART, QUICKSTART_BUDGET_S, NotebookRun, RunSummary, wall_time_line


def _summary(duration_s: float | None, name: str = QUICKSTART, status: str = "ok") -> RunSummary:
    return RunSummary("runs/x", [NotebookRun(name, "", name, None, status, duration_s)])


def test_wall_time_line_says_within_budget_when_quickstart_is_faster_than_budget() -> None:
    line = wall_time_line(_summary(QUICKSTART_BUDGET_S - 0.5))
    assert line is not None and not line.startswith("OVER BUDGET")
    assert f"{QUICKSTART_BUDGET_S - 0.5:.1f} s" in line and "within budget" in line


def test_wall_time_line_is_flagged_when_quickstart_exceeds_budget() -> None:
    line = wall_time_line(_summary(QUICKSTART_BUDGET_S + 12.0))
    assert line is not None and line.startswith("OVER BUDGET") and "over by 12.0 s" in line


def test_wall_time_line_uses_given_budget_when_one_is_passed() -> None:
    assert wall_time_line(_summary(61.0), budget_s=60).startswith("OVER BUDGET")  # type: ignore[union-attr]
    assert "within budget" in (wall_time_line(_summary(59.0), budget_s=60) or "")


def test_wall_time_line_is_none_when_quickstart_did_not_run() -> None:
    assert wall_time_line(_summary(10.0, name="01_connect_fleet.ipynb")) is None


def test_wall_time_line_says_unknown_when_no_duration_was_recorded() -> None:
    line = wall_time_line(_summary(None, status="failed"))
    assert line is not None and "unknown" in line and "failed" in line
