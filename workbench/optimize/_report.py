"""report.json and a self-contained report.html (plotly inlined) for an optimize result."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.optimize._result import OptimizeResult


def pareto_figure(result: OptimizeResult) -> Any:
    """Latency (x) against quality (y), marker size by model size; the chosen variant is starred.

    Example:
        >>> pareto_figure(result).show()   # doctest: +SKIP
    """
    import plotly.graph_objects as go

    rows = result.rows
    sizes = [max(8.0, min(40.0, 8.0 + 30.0 * r["size_mb"] / max(x["size_mb"] for x in rows))) for r in rows]
    colors = ["#d62728" if r.get("chosen") else ("#1f77b4" if r.get("pareto") else "#aaaaaa") for r in rows]
    symbols = ["star" if r.get("chosen") else "circle" for r in rows]
    quality_name = rows[0].get("quality_name", "quality") if rows else "quality"
    # Only FP32 and the choice carry a label (alternately above and below): a dozen variants' names overlap
    # where their points cluster; every point names itself on hover.
    labelled = [bool(r.get("chosen")) or r["variant"] == "fp32" for r in rows]
    positions = ["top center" if i % 2 == 0 else "bottom center" for i in range(len(rows))]
    figure = go.Figure(go.Scatter(
        x=[r["p50_ms"] for r in rows], y=[r["quality"] for r in rows], mode="markers+text",
        text=[r["variant"] if shown else "" for r, shown in zip(rows, labelled, strict=True)],
        textposition=positions, customdata=[r["variant"] for r in rows],
        marker={"size": sizes, "color": colors, "symbol": symbols, "line": {"width": 1, "color": "#333"}},
        hovertemplate="%{customdata}<br>p50 %{x:.3f} ms<br>" + quality_name + " %{y:.4f}<extra></extra>",
    ))
    # A short title on two lines: one long line was clipped at the widget's width.
    figure.update_layout(title={"text": f"Candidates on {result.target.get('target')}<br><sup>measured on "
                                f"{result.target.get('where')}; red star = chosen, blue = Pareto front, "
                                "marker size = model size</sup>", "x": 0.01, "xanchor": "left"},
                         xaxis_title="p50 latency (ms)", yaxis_title=quality_name, height=480,
                         margin={"l": 70, "r": 30, "t": 90, "b": 50})
    return figure


def candidates_html(result: OptimizeResult) -> str:
    """The candidates as an HTML table (no recipe column), as the report and the OptimizeExplorer show it."""
    frame = result.candidates.drop(columns=["recipe"])
    return str(frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="candidates"))


_COMPACT = (("variant", "variant", "{}"), ("quality", "quality", "{:.4f}"), ("p50_ms", "p50 (ms)", "{:.3f}"),
            ("p95_ms", "p95 (ms)", "{:.3f}"), ("speedup", "vs FP32 (x)", "{:.2f}"), ("size_mb", "size (MB)", "{:.3f}"))


def compact_html(result: OptimizeResult) -> str:
    """The candidates in six columns with units, the chosen row in bold, and every column behind a toggle.

    Example:
        >>> "p50 (ms)" in compact_html(result)   # doctest: +SKIP
        True
    """
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in _COMPACT)
    body = []
    for row in result.rows:
        cells = []
        for key, _, form in _COMPACT:
            value = row.get(key)
            text = "" if value is None else (form.format(value) if isinstance(value, (int, float)) else str(value))
            cells.append(f"<td>{html.escape(text)}</td>")
        style = ' style="font-weight:bold"' if row.get("chosen") else ""
        body.append(f"<tr{style}>{''.join(cells)}</tr>")
    quality = html.escape(str(result.rows[0].get("quality_name", "quality"))) if result.rows else "quality"
    return (f'<table class="candidates compact"><tr>{head}</tr>{"".join(body)}</table>'
            f"<p style=\"font-size:12px;color:#555\">quality: {quality}; bold: chosen</p>"
            f"<details><summary>All columns</summary>{candidates_html(result)}</details>")


def render_html(result: OptimizeResult) -> str:
    """The whole report as one HTML page with plotly's JavaScript inlined (works offline)."""
    figure = pareto_figure(result).to_html(include_plotlyjs=True, full_html=False)
    skipped = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in result.skipped.items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    preflight = html.escape(result.preflight.get("summary", ""))
    name = html.escape(str(result.source.get("name")))
    target = html.escape(str(result.target.get("target")))
    data = result.data
    data_line = html.escape(f"eval: {data.get('eval')} ({data.get('eval_samples')} samples); calibration: "
                            f"{data.get('calibration')} ({data.get('calibration_samples')} samples); quality: "
                            f"{data.get('quality')}; input shapes: {data.get('input_shapes')}")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Optimize report</title>
<style>body{{font-family:sans-serif;margin:2em}} table.candidates{{border-collapse:collapse;font-size:13px}}
table.candidates td,table.candidates th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}}</style>
</head><body>
<h1>Optimize report: {name} for {target}</h1>
<p><b>Chosen:</b> {html.escape(str(result.best.variant))}: {html.escape(result.best.reason)}</p>
<p><b>Preflight:</b> {preflight}</p>
<p><b>Data:</b> {data_line}</p>
{figure}
<h2>Candidates</h2>{compact_html(result)}
<h2>Skipped</h2><ul>{skipped or '<li>none</li>'}</ul>
<h2>Notes</h2><ul>{notes or '<li>none</li>'}</ul>
<h2>Target</h2><pre>{html.escape(json.dumps(result.target, indent=2, default=str))}</pre>
</body></html>"""


def write_report(result: OptimizeResult, directory: Path) -> None:
    """Write report.json and report.html into ``directory``."""
    (directory / "report.json").write_text(json.dumps(result.to_dict(), indent=2))
    (directory / "report.html").write_text(render_html(result))
