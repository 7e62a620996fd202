"""``index.html`` of a run directory: every notebook with its status, duration, figures and links."""

from __future__ import annotations

import html
import os
import time
from pathlib import Path

from workbench.runs._summary import RunSummary

INDEX_FILE = "index.html"


def write_index(summary: RunSummary) -> Path:
    """Write ``index.html`` into the run directory (atomically) and return its path.

    Example:
        >>> write_index(summary).name   # doctest: +SKIP
        'index.html'
    """
    rows = []
    for run in summary.runs:
        name = html.escape(run.name)
        link = f'<a href="{html.escape(run.html)}">{name}</a>' if run.html else name
        status = ("ok" if run.ok else f"FAILED: {html.escape(run.error or 'no error captured')}")
        color = "#1a7f37" if run.ok else "#cf222e"
        duration = "–" if run.duration_s is None else f"{run.duration_s:.1f} s"
        figures = ", ".join(f"{html.escape(f.name)}={html.escape(str(f.value))}" for f in run.figures.values())
        rows.append(f'<tr><td>{link}</td><td style="color:{color}">{status}</td><td>{duration}</td>'
                    f'<td>{figures or "–"}</td><td><a href="{html.escape(run.output)}">.ipynb</a></td></tr>')
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary.started)) if summary.started else ""
    ok = sum(run.ok for run in summary.runs)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        f"<title>Notebook run {html.escape(Path(summary.out_dir).name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
        "td,th{padding:4px 10px;text-align:left;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>Notebook run {html.escape(Path(summary.out_dir).name)}</h1>"
        f"<p>{ok} of {len(summary.runs)} notebooks ok{', started ' + when if when else ''}."
        " Each name opens the executed notebook as HTML (charts and tables as they were; no kernel needed).</p>"
        "<table><thead><tr><th>notebook</th><th>status</th><th>duration</th><th>key figures</th><th></th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table></body></html>")
    path = Path(summary.out_dir) / INDEX_FILE
    tmp = path.with_name(f".{INDEX_FILE}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
