"""An executed notebook as one HTML page that reads without a kernel: widget snapshots drawn, one plotly.js.

The widgets (see ``widgets._snapshot``) put a static snapshot beside their live view:
``text/html`` for tables and plotly's ``application/vnd.plotly.v1+json`` for charts. No kernel
and no widget manager reach a saved page, so here each snapshot replaces its widget view, each
chart becomes a ``Plotly.newPlot`` call where its snapshot marks it, and plotly.js goes into the
page once, inline (the page works offline and as a single file: nothing is fetched from a CDN).
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"
CHART_MARKER = "<!--wb-snapshot-chart-->"  # where a widget's text/html wants its chart (widgets._snapshot)


def _script_json(value: Any) -> str:
    # Inside <script>, "</" could end the element early.
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def _chart_html(figure: dict[str, Any], index: int) -> str:
    layout = dict(figure.get("layout") or {})
    height = int(layout.get("height") or 450)
    div = f"wb-chart-{index}"
    return (f'<div id="{div}" class="wb-snapshot-chart" style="width:100%;height:{height}px"></div>'
            f'<script>Plotly.newPlot("{div}", {_script_json(figure.get("data") or [])}, {_script_json(layout)}, '
            '{"displaylogo": false, "responsive": true});</script>')


def draw_snapshots(nb: Any) -> tuple[Any, int]:
    """A copy of ``nb`` whose widget outputs show their snapshots as HTML; and how many charts it draws.

    Example:
        >>> import nbformat
        >>> draw_snapshots(nbformat.v4.new_notebook())[1]
        0
    """
    nb = copy.deepcopy(nb)
    charts = 0
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = output.get("data")
            if not data or output.get("output_type") not in ("display_data", "execute_result"):
                continue
            figure = data.get(PLOTLY_MIMETYPE)
            if figure is None and not (WIDGET_VIEW_MIMETYPE in data and "text/html" in data):
                continue  # not a snapshot: leave it to nbconvert
            markup = str(data.get("text/html") or "")
            if figure is not None:
                chart = _chart_html(figure, charts)
                charts += 1
                markup = markup.replace(CHART_MARKER, chart, 1) if CHART_MARKER in markup else markup + chart
            output["data"] = {"text/html": markup, "text/plain": data.get("text/plain", "")}
    return nb, charts


def plotly_js() -> str:
    """plotly.js as plotly's Python package ships it (the version its figures were made for).

    Example:
        >>> "plotly" in plotly_js()[:2000].lower()
        True
    """
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _with_plotly(page: str) -> str:
    # nbconvert's page loads require.js (when online): plotly.js then registers as an AMD module instead of
    # window.Plotly, and the inline charts find nothing. Hide `define` while plotly.js runs.
    script = ("<script>window.__wbDefine = window.define; window.define = undefined;</script>\n"
              f'<script class="wb-plotly-js">{plotly_js()}</script>\n'
              "<script>window.define = window.__wbDefine;</script>\n")
    head_end = page.find("</head>")
    return page[:head_end] + script + page[head_end:] if head_end >= 0 else script + page


def _without_cdn(page: str, urls: list[str]) -> str:
    # nbconvert's page loads require.js and MathJax from a CDN. The page needs neither (the charts are plain
    # plotly.js, the notebooks have no LaTeX), and offline (a CI runner, an edge site) each is a failed request and a
    # console error. MathJax's inline configuration stays: it does nothing without MathJax.
    for url in urls:
        page = re.sub(r'<script src="' + re.escape(url) + r'">\s*</script>\n?', "", page)
    return page


def render_html(nb: Any, target: Path) -> None:
    """Write ``nb`` as an HTML page to ``target`` (atomically), with widget snapshots and at most one plotly.js.

    Example:
        >>> render_html(nbformat.read("runs/x/00_quickstart.ipynb", 4),
        ...             Path("runs/x/00_quickstart.html"))   # doctest: +SKIP
    """
    from nbconvert import HTMLExporter

    drawn, charts = draw_snapshots(nb)
    exporter = HTMLExporter()
    body, _ = exporter.from_notebook_node(drawn)
    body = _without_cdn(body, [exporter.require_js_url, exporter.mathjax_url])
    if charts:
        body = _with_plotly(body)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, target)
