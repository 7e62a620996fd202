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
from workbench.deploy._rollout import rollout_summary

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


# Device rows drawn at most: a wave of 500 is read from the per-wave table, and the rows shown are the ones to act on.
MAX_DEVICE_ROWS = 50
# Shown first when the device table is cut: failures, then devices still on their way, then the rest.
_ORDER = {"failed": 0, "rejected": 0, "rolled_back": 1, "rolling_back": 1, "pending_offline": 2, "active": 4,
          "planned": 5, "not_started": 5, "skipped": 3}
_WAVE_COLUMNS = (("index", "wave"), ("devices_n", "devices"), ("activated", "activated"), ("failed", "failed"),
                 ("rolled_back", "rolled back"), ("pending_offline", "offline"), ("activate_p50_s", "activate p50 s"),
                 ("activate_p95_s", "activate p95 s"), ("duration_s", "wave s"))


def render_html(rollout: Rollout) -> str:
    """The rollout as an HTML block: status line, one row per wave with its figures, devices, latest gate values.

    With more than ``MAX_DEVICE_ROWS`` devices the device table shows that many, failures and devices in flight
    first, and says how many it left out.

    Example:
        >>> "wave 2" in render_html(rollout)   # doctest: +SKIP
        True
    """
    summary = rollout_summary(rollout)  # a Rollout of this process or a HubRollout alike
    wave = "" if rollout.current_wave is None else f" · wave {rollout.current_wave + 1}"
    if summary["waves"] and rollout.current_wave is not None:
        wave += f" of {len(summary['waves'])} started"
    reason = f" — {html.escape(rollout.reason)}" if rollout.reason else ""
    counts = " · ".join(f"{n} {html.escape(state)}" for state, n in sorted(summary["counts"].items()))
    parts = [f"<div><b>Rollout {html.escape(rollout.id)}</b> of {html.escape(rollout.package.name)} "
             f"{html.escape(rollout.package.version)}: <b>{html.escape(rollout.status)}</b>{wave}{reason}</div>",
             f"<div class='wb-rollout-counts'>{summary['devices']} devices: {counts}</div>"]
    if summary["waves"]:
        parts.append("<table class='wb-rollout-waves'><tr>" + "".join(f"<th>{title}</th>" for _, title in _WAVE_COLUMNS)
                     + "</tr>")
        for info in summary["waves"]:
            parts.append(f"<tr data-wave='{int(info['index']) + 1}'>" + "".join(
                f"<td>{_cell(info.get(key), 1 if key == 'index' else 0)}</td>" for key, _ in _WAVE_COLUMNS) + "</tr>")
        parts.append("</table>")
    rows = rollout.rows()
    shown = rows if len(rows) <= MAX_DEVICE_ROWS else sorted(
        rows, key=lambda r: (_ORDER.get(r["state"], 2), r["device_id"]))[:MAX_DEVICE_ROWS]
    parts.append("<table><tr><th>device</th><th>wave</th><th>state</th><th>model</th><th>reason</th></tr>")
    for row in shown:
        color = _COLORS.get(row["state"], "#0969da")
        parts.append(
            f"<tr><td>{html.escape(row['device_id'])}</td><td>{_cell(row['wave'], 1)}</td>"
            f"<td style='color:{color}'>{html.escape(row['state'])}</td><td>{_cell(row['model'])}</td>"
            f"<td>{_cell(row['reason'])}</td></tr>")
    parts.append("</table>")
    if len(shown) < len(rows):
        parts.append(f"<div class='wb-rollout-more'>{len(rows) - len(shown)} more devices not shown "
                     "(rollout.rows() has them all)</div>")
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
