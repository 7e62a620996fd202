"""The result of running notebooks: one NotebookRun each, gathered in a RunSummary (summary.json)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import ConfigError
from workbench.runs._collect import read_outcome
from workbench.runs._record import Figure

if TYPE_CHECKING:
    import pandas as pd

SUMMARY_FILE = "summary.json"
SUMMARY_VERSION = 1


@dataclass
class NotebookRun:
    """One notebook's headless run: where its outputs are, how long it took, how it ended.

    Example:
        >>> run = summary.runs[0]                  # doctest: +SKIP
        >>> run.status, run.figures["devices_online"].value   # doctest: +SKIP
        ('ok', 3)
    """

    name: str
    source: str
    output: str
    html: str | None
    status: str  # "ok" or "failed"
    duration_s: float | None
    error: str | None = None
    error_cell: int | None = None
    figures: dict[str, Figure] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "output": self.output, "html": self.html,
                "status": self.status, "duration_s": self.duration_s, "error": self.error,
                "error_cell": self.error_cell, "figures": [f.to_dict() for f in self.figures.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NotebookRun:
        figures = [Figure.from_dict(f) for f in data.get("figures", [])]
        return cls(name=data["name"], source=data.get("source", ""), output=data["output"], html=data.get("html"),
                   status=data["status"], duration_s=data.get("duration_s"), error=data.get("error"),
                   error_cell=data.get("error_cell"), figures={f.name: f for f in figures})


@dataclass
class RunSummary:
    """Every notebook of one run directory, in the order they ran.

    Example:
        >>> summary = run_notebooks(["notebooks/01_connect_fleet.ipynb"], "runs/now")   # doctest: +SKIP
        >>> summary.ok, summary.failed                                                  # doctest: +SKIP
        (True, [])
        >>> print(summary.table())                                                      # doctest: +SKIP
    """

    out_dir: str
    runs: list[NotebookRun] = field(default_factory=list)
    started: float | None = None
    finished: float | None = None

    @property
    def ok(self) -> bool:
        """True when every notebook ran to the end (and there was at least one)."""
        return bool(self.runs) and all(run.ok for run in self.runs)

    @property
    def failed(self) -> list[NotebookRun]:
        return [run for run in self.runs if not run.ok]

    def __getitem__(self, name: str) -> NotebookRun:
        for run in self.runs:
            if name in (run.name, Path(run.name).stem):
                return run
        known = ", ".join(run.name for run in self.runs) or "none"
        raise KeyError(f"no notebook {name!r} in the run at {self.out_dir} (ran: {known})")

    def to_dict(self) -> dict[str, Any]:
        return {"version": SUMMARY_VERSION, "out_dir": self.out_dir, "started": self.started,
                "finished": self.finished, "notebooks": [run.to_dict() for run in self.runs]}

    def write(self) -> Path:
        """Write ``summary.json`` into the run directory atomically."""
        path = Path(self.out_dir) / SUMMARY_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)
        return path

    def to_frame(self) -> pd.DataFrame:
        """One row per notebook: name, status, duration, error, figures."""
        import pandas as pd

        return pd.DataFrame([{"notebook": r.name, "status": r.status, "duration_s": r.duration_s,
                              "error": r.error, "figures": _figures_text(r)} for r in self.runs])

    def table(self) -> str:
        """A plain-text table: notebook, duration, status, key figures."""
        rows = [("notebook", "duration", "status", "key figures")]
        for run in self.runs:
            duration = "-" if run.duration_s is None else f"{run.duration_s:.1f} s"
            status = run.status if run.ok else f"FAILED ({run.error or 'no error captured'})"
            rows.append((run.name, duration, status, _figures_text(run)))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join(
            "  ".join([*(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)), row[3]]).rstrip()
            for row in rows
        )


def _figures_text(run: NotebookRun) -> str:
    return ", ".join(f"{f.name}={f.describe()}" for f in run.figures.values()) or "-"


def read_run(out_dir: str | os.PathLike[str]) -> RunSummary:
    """The run in ``out_dir``, with figures and errors read again from its executed notebooks.

    The executed notebooks are the record; ``summary.json`` adds the order and the paths.
    A directory of notebooks executed elsewhere (no summary.json) is read from papermill's metadata.

    Example:
        >>> read_run("runs/20250101-120000").ok   # doctest: +SKIP
        True
    """
    path = Path(out_dir)
    if not path.is_dir():
        raise ConfigError(f"no run directory at {path}; pass a directory written by `workbench demo` "
                          "or run_notebooks(..., out_dir)")
    summary_file = path / SUMMARY_FILE
    if summary_file.exists():
        try:
            data = json.loads(summary_file.read_text())
            summary = RunSummary(str(path), [NotebookRun.from_dict(n) for n in data["notebooks"]],
                                 data.get("started"), data.get("finished"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{summary_file} is not a run summary ({exc}); "
                              "delete it to read the executed notebooks alone") from None
    else:
        summary = RunSummary(str(path), [
            NotebookRun(name=nb.name, source="", output=nb.name, html=None, status="ok", duration_s=None)
            for nb in sorted(path.glob("*.ipynb")) if not nb.name.startswith(".")
        ])
        if not summary.runs:
            raise ConfigError(f"{path} holds no executed notebooks (*.ipynb) and no {SUMMARY_FILE}")
    for run in summary.runs:
        notebook = path / run.output
        if not notebook.exists():
            continue  # never written: the summary's own status stands
        outcome = read_outcome(notebook)
        run.figures = outcome.figures
        if outcome.failed:
            run.status, run.error, run.error_cell = "failed", outcome.error or run.error, outcome.error_cell
        if run.duration_s is None:
            run.duration_s = outcome.duration_s
    return summary
