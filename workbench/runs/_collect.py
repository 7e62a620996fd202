"""Read what an executed notebook says about its run: figures, status, error, duration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError
from workbench.runs._record import RECORD_MIMETYPE, Figure


@dataclass
class Outcome:
    """What an executed notebook holds: the figures it recorded and how its run ended.

    Example:
        >>> outcome = read_outcome("runs/20250101-120000/01_connect_fleet.ipynb")   # doctest: +SKIP
        >>> outcome.figures["devices_online"].value                                  # doctest: +SKIP
        3
    """

    figures: dict[str, Figure] = field(default_factory=dict)
    failed: bool = False
    error: str | None = None
    error_cell: int | None = None
    duration_s: float | None = None


def collect_figures(nb: Any) -> dict[str, Figure]:
    """Every figure the notebook's outputs carry, by name; a later record of a name wins.

    Example:
        >>> collect_figures(nbformat.read("out.ipynb", as_version=4))   # doctest: +SKIP
        {'devices_online': Figure(name='devices_online', value=3, tolerance=None, unit=None)}
    """
    figures: dict[str, Figure] = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) or []:
            data = output.get("data") or {}
            if RECORD_MIMETYPE in data:
                figure = Figure.from_dict(dict(data[RECORD_MIMETYPE]))
                figures[figure.name] = figure
    return figures


def _error(nb: Any) -> tuple[str | None, int | None]:
    for index, cell in enumerate(nb.get("cells", [])):
        for output in cell.get("outputs", []) or []:
            if output.get("output_type") == "error":
                return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".rstrip(": "), index
    return None, None


def outcome_of(nb: Any) -> Outcome:
    """The outcome held by an executed notebook node (papermill's metadata plus its outputs)."""
    meta = (nb.get("metadata") or {}).get("papermill") or {}
    error, cell = _error(nb)
    duration = meta.get("duration")
    return Outcome(
        figures=collect_figures(nb),
        failed=bool(meta.get("exception")) or error is not None,
        error=error,
        error_cell=cell,
        duration_s=float(duration) if isinstance(duration, (int, float)) else None,
    )


def read_outcome(path: str | Path) -> Outcome:
    """The outcome of the executed notebook at ``path``; ConfigError if it is not a notebook."""
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the executed notebook {path} ({exc}); "
                          "is it a run directory written by run_notebooks?") from None
    return outcome_of(nb)
