"""Compare the figures of two runs side by side and flag what moved beyond its tolerance."""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Any, TypeGuard

from workbench.runs._record import Figure, format_value
from workbench.runs._summary import RunSummary, read_run

# What a row's state means for the exit code of `workbench runs diff`.
FLAGGED = {"moved", "removed", "failed"}


@dataclass(frozen=True)
class FigureChange:
    """One figure in two runs: its values, the change, and whether that is beyond its tolerance.

    ``state`` is ``same`` (within tolerance), ``moved`` (beyond it), ``added`` (only in B),
    ``removed`` (only in A) or ``failed`` (the notebook failed in B).
    """

    notebook: str
    name: str
    before: Figure | None
    after: Figure | None
    state: str

    @property
    def flagged(self) -> bool:
        return self.state in FLAGGED

    @property
    def change(self) -> str:
        """The relative change for numbers (``+12.5%``), ``changed``/empty for the rest."""
        a = self.before.value if self.before else None
        b = self.after.value if self.after else None
        if _number(a) and _number(b):
            if a == b:
                return "0%"
            return f"{(b - a) / abs(a) * 100:+.1f}%" if a else f"{b - a:+g}"
        if self.before and self.after:
            return "" if a == b else "changed"
        return ""


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def within(before: Figure, after: Figure) -> bool:
    """Whether ``after`` stays within the tolerance around ``before`` (B's tolerance, else A's).

    Example:
        >>> within(Figure("p", 10.0, 0.1), Figure("p", 10.9, 0.1))
        True
        >>> within(Figure("p", 10.0, 0.1), Figure("p", 11.5, 0.1))
        False
    """
    tolerance = after.tolerance if after.tolerance is not None else before.tolerance
    a, b = before.value, after.value
    if tolerance is None or not (_number(a) and _number(b)):
        return a == b
    # Relative to the baseline; around zero fall back to an absolute band of the same size.
    return abs(b - a) <= tolerance * (abs(a) if a else 1.0) + 1e-12


@dataclass
class RunDiff:
    """The figures of two runs side by side.

    Example:
        >>> result = diff_runs("runs/A", "runs/B")   # doctest: +SKIP
        >>> result.flagged                            # doctest: +SKIP
        []
    """

    before: RunSummary
    after: RunSummary
    changes: list[FigureChange]

    @property
    def flagged(self) -> list[FigureChange]:
        return [change for change in self.changes if change.flagged]

    def table(self) -> str:
        """A plain-text table: notebook, figure, A, B, change, state (flagged ones marked with !)."""
        rows = [("", "notebook", "figure", "A", "B", "change", "state")]
        for c in self.changes:
            rows.append(("!" if c.flagged else "", c.notebook, c.name, _cell(c.before), _cell(c.after), c.change,
                         c.state))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        flagged = self.flagged
        lines.append(f"{len(flagged)} of {len(self.changes)} figures flagged" if flagged
                     else f"all {len(self.changes)} figures within tolerance")
        return "\n".join(lines)


def _cell(figure: Figure | None) -> str:
    if figure is None:
        return "-"
    return format_value(figure.value) + (f" {figure.unit}" if figure.unit else "")


def diff_runs(before: str | os.PathLike[str] | RunSummary, after: str | os.PathLike[str] | RunSummary) -> RunDiff:
    """Compare every figure of run ``before`` (A, the baseline) with run ``after`` (B).

    A figure moved beyond its tolerance, a figure B lost, or a notebook that failed in B is
    flagged; a figure only B has is listed as added.

    Example:
        >>> print(diff_runs("runs/A", "runs/B").table())   # doctest: +SKIP
    """
    a = before if isinstance(before, RunSummary) else read_run(before)
    b = after if isinstance(after, RunSummary) else read_run(after)
    a_runs = {run.name: run for run in a.runs}
    b_runs = {run.name: run for run in b.runs}
    changes: list[FigureChange] = []
    for notebook in [*a_runs, *(n for n in b_runs if n not in a_runs)]:
        a_figs = a_runs[notebook].figures if notebook in a_runs else {}
        b_run = b_runs.get(notebook)
        b_figs = b_run.figures if b_run else {}
        if b_run is not None and not b_run.ok:
            changes.append(FigureChange(notebook, f"(notebook: {b_run.error or 'failed'})", None, None, "failed"))
        for name in [*a_figs, *(n for n in b_figs if n not in a_figs)]:
            fa, fb = a_figs.get(name), b_figs.get(name)
            if fa is None:
                state = "added"
            elif fb is None:
                state = "removed"
            else:
                state = "same" if within(fa, fb) else "moved"
            changes.append(FigureChange(notebook, name, fa, fb, state))
    return RunDiff(a, b, changes)
