"""RolloutProgress: a live view of a rollout in Jupyter: per-device state, current wave, gate values."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from typing import Any

import ipywidgets

from widgets._snapshot import Snapshotting
from workbench.deploy import Rollout

log = logging.getLogger("widgets.rollout_progress")

_COLORS = {"active": "#1a7f37", "rolled_back": "#9a6700", "failed": "#cf222e", "rejected": "#cf222e",
           "skipped": "#6e7781", "pending_offline": "#6e7781", "not_started": "#6e7781"}


class RolloutProgress(Snapshotting, ipywidgets.VBox):
    """Per-device state, the current wave and the gate values of a rollout, updated live.

    The rollout changes on its own thread; as in :class:`widgets.FleetPanel`, the listener
    only wakes a task on the kernel's event loop, which redraws (outside a loop, call
    :meth:`refresh`).

    Example:
        >>> rollout = fleet.deploy("out/digits-int8", strategy=workbench.Canary())   # doctest: +SKIP
        >>> widgets.RolloutProgress(rollout)                                        # doctest: +SKIP
    """

    def __init__(self, rollout: Rollout, *, max_rate: float = 4.0) -> None:
        self._view = ipywidgets.HTML()
        super().__init__([self._view])
        self.rollout = rollout
        self.renders = 0
        self._interval = 1.0 / max_rate
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if self._loop is not None:
            self._wake = asyncio.Event()
            self._task = self._loop.create_task(self._follow(), name="RolloutProgress")
        rollout.on_change(self._on_change)
        self.refresh()

    def snapshot(self) -> dict[str, Any]:
        """The rollout as drawn now, as ``text/html`` (retaken once the rollout is done)."""
        return {"text/html": self._view.value}

    @property
    def snapshot_live(self) -> bool:
        return not self.rollout.done

    def refresh(self) -> None:
        """Redraw now from the rollout's current state."""
        markup = render_html(self.rollout)
        with self.hold_sync():
            self._view.value = markup
        self.renders += 1

    async def _follow(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=2.0)
            self._wake.clear()
            try:
                self.refresh()
            except Exception:  # a drawing bug must not end the live updates
                log.exception("RolloutProgress could not redraw")
            if self.rollout.done:
                self.refresh()
                return
            await asyncio.sleep(self._interval)

    def _on_change(self, _rollout: Rollout) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)


def render_html(rollout: Rollout) -> str:
    """The rollout as an HTML block (status line, device table, latest gate values)."""
    wave = "" if rollout.current_wave is None else f" · wave {rollout.current_wave + 1}"
    reason = f" — {html.escape(rollout.reason)}" if rollout.reason else ""
    parts = [f"<div><b>Rollout {html.escape(rollout.id)}</b> of {html.escape(rollout.package.name)} "
             f"{html.escape(rollout.package.version)}: <b>{html.escape(rollout.status)}</b>{wave}{reason}</div>",
             "<table><tr><th>device</th><th>wave</th><th>state</th><th>model</th><th>reason</th></tr>"]
    for row in rollout.rows():
        color = _COLORS.get(row["state"], "#0969da")
        parts.append(
            f"<tr><td>{html.escape(row['device_id'])}</td><td>{_cell(row['wave'], 1)}</td>"
            f"<td style='color:{color}'>{html.escape(row['state'])}</td><td>{_cell(row['model'])}</td>"
            f"<td>{_cell(row['reason'])}</td></tr>")
    parts.append("</table>")
    latest: dict[str, dict[str, Any]] = {}
    for entry in list(rollout.gate_values):
        latest[entry["gate"]] = entry
    if latest:
        parts.append("<div>gates: " + ", ".join(
            f"{html.escape(name)}: {_cell(entry['value'])} {'✔' if entry['passed'] else '✘'}"
            f" <small>({html.escape(', '.join(sorted(set((entry.get('sources') or {}).values()))))})</small>"
            for name, entry in latest.items()) + "</div>")
    shadow = rollout.shadow
    if shadow:
        parts.append(f"<div>shadow: {_cell(shadow.get('decision', 'running'))}</div><table><tr><th>device</th>"
                     "<th>inputs</th><th>agreement</th><th>active p95 ms</th><th>candidate p95 ms</th></tr>")
        for device, stats in (shadow.get("devices") or {}).items():
            parts.append(f"<tr><td>{html.escape(device)}</td><td>{_cell(stats.get('samples'))}</td>"
                         f"<td>{_cell(stats.get('agreement'))}</td><td>{_cell(stats.get('active_p95_ms'))}</td>"
                         f"<td>{_cell(stats.get('candidate_p95_ms'))}</td></tr>")
        parts.append("</table>")
    return "".join(parts)


def _cell(value: Any, offset: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int) and offset:
        return str(value + offset)
    return html.escape(str(value))
