"""The outcome of optimize(): candidates, the choice and why, and the package writer."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import ConfigError, OptimizeError
from workbench.optimize._choice import Choice, Constraints
from workbench.optimize._package import _json_default, write_directory_atomically, write_package

if TYPE_CHECKING:
    import pandas as pd

# Columns of the candidate table, in order.
COLUMNS = ["variant", "recipe", "size_mb", "quality", "quality_name", "accuracy", "agreement_top1", "cosine",
           "sqnr_db", "p50_ms", "p95_ms", "p99_ms", "speedup", "load_ms", "rss_growth_mb", "spread", "threads",
           "provider", "measured_on", "pareto", "chosen", "cached"]


@dataclass
class OptimizeResult:
    """Every measured candidate, the chosen one and why, and what the run was based on.

    Example:
        >>> result = workbench.optimize("model.onnx", target="raspberry-pi-5")   # doctest: +SKIP
        >>> result.best.variant, result.best.reason                              # doctest: +SKIP
        >>> result.save("out/")                                                  # doctest: +SKIP
    """

    rows: list[dict[str, Any]]
    best: Choice
    files: dict[str, Path]
    target: dict[str, Any]
    constraints: Constraints
    spec: dict[str, Any]
    source: dict[str, Any]
    preflight: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    layers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    threads: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    _keepalive: Any = field(default=None, repr=False)  # the temp dir holding the files, while the result lives

    @property
    def candidates(self) -> pd.DataFrame:
        """One row per measured variant (see ``COLUMNS``), fastest first."""
        import pandas as pd

        frame = pd.DataFrame([{c: row.get(c) for c in COLUMNS} for row in self.rows], columns=COLUMNS)
        return frame.sort_values("p50_ms", kind="stable").reset_index(drop=True)

    def row(self, variant: str) -> dict[str, Any]:
        """The full row of one variant."""
        for row in self.rows:
            if row["variant"] == variant:
                return row
        known = ", ".join(r["variant"] for r in self.rows)
        raise ConfigError(f"no candidate {variant!r}; candidates are {known}")

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready data (report.json)."""
        return _clean({
            "best": self.best.to_dict(), "candidates": self.rows, "skipped": self.skipped, "target": self.target,
            "constraints": self.constraints.to_dict(), "model": {**self.source, **self.spec},
            "preflight": self.preflight, "layers": self.layers, "notes": self.notes, "data": self.data,
            "threads": self.threads,
            "cache": self.cache, "tool_versions": self.tool_versions,
        })

    def manifest(self, variant: str) -> dict[str, Any]:
        row = self.row(variant)
        return _clean({
            "name": f"{Path(str(self.source.get('name', 'model'))).stem}-{variant}",
            "variant": variant, "recipe": {**row["recipe"], "threads": self._threads_for(variant, row)},
            "metrics": {k: row.get(k) for k in ("quality", "quality_name", "accuracy", "agreement_top1", "cosine",
                                                "sqnr_db", "p50_ms", "p95_ms", "p99_ms", "load_ms", "rss_growth_mb",
                                                "size_mb", "speedup", "measured_on", "threads", "provider")},
            "chosen_because": self.best.reason if variant == self.best.variant else "picked by the user",
            "target": self.target, "inputs": self.spec.get("inputs"), "outputs": self.spec.get("outputs"),
            "opset": self.spec.get("opset"), "source_model": self.source, "tool_versions": self.tool_versions,
        })

    def _threads_for(self, variant: str, row: dict[str, Any]) -> Any:
        if self.threads.get("variant") == variant:
            return self.threads.get("best")
        return row.get("threads")

    def save(self, out_dir: str | os.PathLike[str], variant: str | None = None, *,
             report: bool = False) -> Path:
        """Write a model package (model.onnx + manifest.json) for the chosen (or given) variant.

        The directory appears complete or not at all. ``report=True`` adds report.json and report.html.

        Example:
            >>> result.save("out/raspberry-pi-5")   # doctest: +SKIP
            PosixPath('/home/me/out/raspberry-pi-5')
        """
        name = variant or self.best.variant
        if name is None:
            raise OptimizeError(f"nothing to save: {self.best.reason}. Relax a constraint or pass variant=... "
                                "to save a specific candidate")
        self.row(name)
        model = self.files.get(name)
        if model is None or not model.is_file():
            raise OptimizeError(f"the model file of {name} is gone ({model}); run optimize() again")

        def fill(directory: Path) -> None:
            write_package(directory, model, self.manifest(name))
            if report:
                from workbench.optimize._report import write_report

                write_report(self, directory)

        return write_directory_atomically(out_dir, fill)

    def __repr__(self) -> str:
        return f"OptimizeResult({len(self.rows)} candidates, best={self.best})"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _clean(value.item())
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return json.loads(json.dumps(value, default=_json_default))
