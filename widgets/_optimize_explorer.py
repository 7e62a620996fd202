"""OptimizeExplorer: the Pareto scatter of an optimize() result, its table, and the details of a picked point."""

from __future__ import annotations

import html
import json
from typing import Any

import ipywidgets

from widgets._snapshot import CHART_MARKER, PLOTLY_MIMETYPE, Snapshotting, figure_json
from workbench import ConfigError


class OptimizeExplorer(Snapshotting, ipywidgets.VBox):
    """Latency against quality (marker size = model size), the candidate table, and the picked variant's details.

    Clicking a point (or calling :meth:`select`) shows that variant's recipe, metrics, why it
    was or was not chosen, and its per-layer quantization errors where they were measured.

    Example:
        >>> result = workbench.optimize(model, target="raspberry-pi-5", ...)   # doctest: +SKIP
        >>> explorer = widgets.OptimizeExplorer(result)                         # doctest: +SKIP
        >>> explorer.select("int8-static-minmax")                               # doctest: +SKIP
    """

    def __init__(self, result: Any) -> None:
        import plotly.graph_objects as go

        from workbench.optimize._report import compact_html, pareto_figure

        if not getattr(result, "rows", None):
            raise ConfigError("OptimizeExplorer needs the result of workbench.optimize(...) with candidates")
        self.result = result
        self.figure = go.FigureWidget(pareto_figure(result))
        self.figure.data[0].on_click(self._on_click)
        self.table = ipywidgets.HTML(compact_html(result))
        self.details = ipywidgets.HTML()
        self.selected: str | None = None
        header = ipywidgets.HTML(f"<b>Chosen:</b> {html.escape(str(result.best.variant))}: "
                                 f"{html.escape(result.best.reason)}")
        self.header = header
        super().__init__([header, self.figure, self.table, self.details])
        self.select(result.best.variant or "fp32")

    def snapshot(self) -> dict[str, Any]:
        """The Pareto chart as plotly's mimetype, and the header, table and picked variant as ``text/html``."""
        return {PLOTLY_MIMETYPE: figure_json(self.figure),
                "text/html": f"{self.header.value}{CHART_MARKER}{self.table.value}{self.details.value}"}

    @property
    def snapshot_live(self) -> bool:
        return False  # a finished result: the snapshot at display is the final one

    def _on_click(self, trace: Any, points: Any, _state: Any) -> None:
        if points.point_inds:
            self.select(trace.customdata[points.point_inds[0]])

    def select(self, variant: str) -> None:
        """Show one variant's recipe, metrics, choice reasoning and per-layer details."""
        row = self.result.row(variant)  # raises ConfigError naming the known variants
        self.selected = variant
        failures = self.result.best.failures.get(variant) or []
        if variant == self.result.best.variant:
            verdict = "chosen (the reason is above)"  # the header already says why, once
        else:
            verdict = "not chosen" + (": " + "; ".join(failures) if failures else " (another variant was faster)")
        metrics = {k: row.get(k) for k in ("quality_name", "quality", "agreement_top1", "sqnr_db", "p50_ms",
                                           "p95_ms", "p99_ms", "speedup", "size_mb", "load_ms", "rss_growth_mb",
                                           "measured_on")}
        layers = self.result.layers.get(variant) or self.result.layers.get(variant.split("-excl")[0]) or []
        layer_rows = "".join(
            f"<tr><td>{html.escape(r['node'])}</td><td>{html.escape(r['op'])}</td><td>{r['sqnr_db']}</td>"
            f"<td>{r['added_error_db']}</td></tr>" for r in layers)
        layer_html = (f"<p><b>Per-layer quantization error</b> (worst first)</p><table><tr><th>node</th><th>op</th>"
                      f"<th>SQNR dB</th><th>added error dB</th></tr>{layer_rows}</table>" if layers
                      else "<p>No per-layer details: layers are ranked only when INT8 broke the quality "
                      "constraint.</p>")
        self.details.value = (
            f"<h4>{html.escape(variant)}</h4><p>{html.escape(verdict)}</p>"
            f"<p><b>Recipe</b></p><pre>{html.escape(json.dumps(row['recipe'], indent=2, default=str))}</pre>"
            f"<p><b>Metrics</b></p><pre>{html.escape(json.dumps(metrics, indent=2, default=str))}</pre>{layer_html}"
        )
