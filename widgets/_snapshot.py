"""Static snapshots beside live widgets, so an executed notebook reads without a kernel.

A widget's output carries, next to its live view, ``text/html`` (its tables) and, for a chart,
plotly's own ``application/vnd.plotly.v1+json``. Viewers with a widget manager show the live
view; an HTML rendering of the executed notebook (nbconvert, ``workbench demo``) shows the
snapshot. The snapshot is taken when the widget is displayed and retaken at the end of the
first cell after which the widget is no longer live (its work ended: a rollout done, a
dashboard stopped, a widget closed, the fleet disconnected). Retaking it only then keeps a
live JupyterLab view from being redrawn after every cell.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
import uuid
import weakref
from typing import Any

log = logging.getLogger("widgets.snapshot")

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"
# Where a snapshot's text/html wants its chart drawn; an HTML renderer replaces it (see workbench.runs).
CHART_MARKER = "<!--wb-snapshot-chart-->"

_DISPLAYED: weakref.WeakSet[Snapshotting] = weakref.WeakSet()
_hooked: set[int] = set()


def clock(ts: float) -> str:
    """A local wall-clock time as HH:MM:SS.

    Example:
        >>> len(clock(0.0))
        8
    """
    return time.strftime("%H:%M:%S", time.localtime(ts))


def disconnected_banner(since: float | None) -> str:
    """The line a widget shows above its (greyed) content once its source is gone; empty while live.

    Example:
        >>> disconnected_banner(None)
        ''
        >>> "disconnected at" in disconnected_banner(0.0)
        True
    """
    if since is None:
        return ""
    return (f'<div class="wb-disconnected" style="color:#cf222e;font-weight:bold;margin-bottom:4px">'
            f"● disconnected at {html.escape(clock(since))}: the values below are the last ones seen</div>")


def figure_json(figure: Any) -> dict[str, Any]:
    """A plotly figure as plotly's mimetype JSON (data, layout), with numpy arrays as plain lists.

    Example:
        >>> import plotly.graph_objects as go
        >>> figure_json(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])))["data"][0]["y"]
        [3, 4]
    """
    import plotly.io as pio

    loaded = json.loads(pio.to_json(figure, validate=False, remove_uids=True, engine="json"))
    return {"data": loaded.get("data", []), "layout": loaded.get("layout", {})}


class Snapshotting:
    """Mixin for an ipywidget that displays a static snapshot beside its live view.

    Subclasses implement :meth:`snapshot` (the mimetypes of the static view) and
    :attr:`snapshot_live` (False once the widget's work has ended).

    Example:
        >>> panel = widgets.FleetPanel(fleet)   # doctest: +SKIP
        >>> sorted(panel.snapshot())            # doctest: +SKIP
        ['text/html']
    """

    _snapshot_id: str | None = None
    _snapshot_final = False

    def snapshot(self) -> dict[str, Any]:
        """The static view now: ``text/html`` and, for a chart, plotly's mimetype.

        Example:
            >>> sorted(dashboard.snapshot())   # doctest: +SKIP
            ['application/vnd.plotly.v1+json', 'text/html']
        """
        raise NotImplementedError

    @property
    def snapshot_live(self) -> bool:
        """Whether the widget still follows its source (the snapshot is retaken once this turns False)."""
        return True

    def _snapshot_bundle(self) -> dict[str, Any]:
        try:
            bundle = dict(self.snapshot())
        except Exception:  # a snapshot bug must not hide the live widget
            log.exception("%s could not take its snapshot", type(self).__name__)
            bundle = {}
        bundle["text/plain"] = f"{type(self).__name__} (run the notebook to see it live)"
        if getattr(self, "comm", None) is not None:  # a closed widget has no live view left to show
            bundle[WIDGET_VIEW_MIMETYPE] = {"version_major": 2, "version_minor": 0, "model_id": self.model_id}  # type: ignore[attr-defined]
        return bundle

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if _served_live():
            display(super()._repr_mimebundle_(), raw=True)  # type: ignore[misc]
            return
        if self._snapshot_id is None:
            self._snapshot_id = uuid.uuid4().hex
        display(self._snapshot_bundle(), raw=True, display_id=self._snapshot_id)
        if not self.snapshot_live:  # finished already (a result, a done rollout): this snapshot is the last
            self._snapshot_final = True
            return
        _DISPLAYED.add(self)
        _hook_cells()

    def publish_snapshot(self) -> bool:
        """Retake the snapshot into the widget's displayed output now; False if it was never displayed.

        Example:
            >>> dashboard.publish_snapshot()   # doctest: +SKIP
            True
        """
        if self._snapshot_id is None:
            return False
        from IPython.display import update_display

        update_display(self._snapshot_bundle(), raw=True, display_id=self._snapshot_id)
        return True

    def final_snapshot(self) -> None:
        """Publish the snapshot once more, as the last one (a widget calls this when its work ends).

        Example:
            >>> view.final_snapshot()   # doctest: +SKIP
        """
        if not self._snapshot_final:
            self._snapshot_final = True
            self.publish_snapshot()
            _DISPLAYED.discard(self)

    def _after_cell(self) -> None:
        if self._snapshot_final or self.snapshot_live:
            return
        self._snapshot_final = True
        refresh = getattr(self, "refresh", None)
        if callable(refresh) and getattr(self, "comm", None) is not None:
            try:
                refresh()  # draw the final state (e.g. "disconnected at") before it is kept
            except Exception:
                log.exception("%s could not redraw before its snapshot", type(self).__name__)
        self.publish_snapshot()
        _DISPLAYED.discard(self)


def _served_live() -> bool:
    """Whether this kernel serves a Voila page: a live page only, never saved, so no snapshot to keep.

    Voila names itself in the kernel's environment (``SERVER_SOFTWARE=voila/<version>``).
    """
    return os.environ.get("SERVER_SOFTWARE", "").startswith("voila/")


def _after_cell(*_args: Any) -> None:
    for widget in list(_DISPLAYED):
        widget._after_cell()


def _hook_cells() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or id(shell) in _hooked:
        return
    shell.events.register("post_run_cell", _after_cell)
    _hooked.add(id(shell))
