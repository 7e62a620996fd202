"""FleetPanel: a live table of the fleet's devices for Jupyter, updated from the kernel's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets

from widgets._snapshot import Snapshotting, disconnected_banner
from workbench import ConfigError, Device, Fleet

log = logging.getLogger("widgets.fleet_panel")

# (row key, header). p95 latency and sync backlog come from fleet.telemetry and fleet.sync (or set_metric()).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("device_id", "device"),
    ("online", "state"),
    ("profile", "profile"),
    ("active_model", "active model"),
    ("last_seen", "last seen"),
    ("p95_ms", "p95 latency"),
    ("sync_backlog", "sync backlog"),
)
METRICS = ("p95_ms", "sync_backlog")
_EMPTY = "—"


class FleetPanel(Snapshotting, ipywidgets.VBox):
    """A live table of the fleet's devices: state, profile, active model, last seen, p95 latency, sync backlog.

    Fleet events arrive on the MQTT network thread, and ipykernel 7 drops widget updates made
    there, so the panel's listener only wakes an asyncio task on the loop the panel was made
    in (the kernel's); that task redraws at most ``max_rate`` times a second, and every
    ``tick`` seconds so "last seen" ages. Made outside a running loop (a plain script), the
    panel updates only when :meth:`refresh` is called. :meth:`close` stops the task and
    removes the listener. After :meth:`close`, ``fleet.close()`` or a lost broker connection, the
    panel says "disconnected at HH:MM:SS", greys out, and no longer shows any device as online.

    Once the fleet's telemetry (and with it its sync) is in use, every redraw reads each
    device's newest ``latency_p95_ms`` and its reported sync backlog into the p95 and
    backlog columns; the panel does not start them itself. The reading happens in the
    redraw, on the kernel's loop, never on a background thread.

    Example:
        >>> fleet = workbench.connect()              # doctest: +SKIP
        >>> panel = widgets.FleetPanel(fleet)        # doctest: +SKIP
        >>> display(panel)                           # doctest: +SKIP
        >>> panel.set_metric("sim-01", "p95_ms", 4.2)   # doctest: +SKIP
        >>> panel.close()                            # doctest: +SKIP
    """

    def __init__(self, fleet: Fleet, *, max_rate: float = 4.0, tick: float = 5.0) -> None:
        if max_rate <= 0 or tick <= 0:
            raise ConfigError(f"FleetPanel needs max_rate > 0 and tick > 0 (got max_rate={max_rate}, tick={tick})")
        self._view = ipywidgets.HTML()
        super().__init__([self._view])
        self.fleet = fleet
        self.shown_rows: list[dict[str, Any]] = []  # what the table shows now, for code and tests to read
        self.renders = 0
        self.disconnected_at: float | None = None  # when the panel first saw its fleet disconnected
        self._interval = 1.0 / max_rate
        self._tick = tick
        self._metrics: dict[str, dict[str, Any]] = {}
        self._metrics_lock = threading.Lock()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop = _running_loop()  # None in a plain script: refresh() by hand
        if self._loop is not None:
            self._wake = asyncio.Event()
            self._task = self._loop.create_task(self._follow(), name="FleetPanel")
        self._remove_listener: Callable[[], None] | None = fleet.on(self._on_event)
        self.refresh()

    # -- state -------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """True while an asyncio task keeps the panel current."""
        return self._task is not None and not self._task.done()

    def rows(self) -> list[dict[str, Any]]:
        """The fleet's devices as the panel's rows, read now (``shown_rows`` is what is drawn)."""
        with self._metrics_lock:
            metrics = {key: dict(value) for key, value in self._metrics.items()}
        return [_row(device, metrics.get(device.device_id, {})) for device in self.fleet.devices]

    def set_metric(self, device_id: str, column: str, value: Any) -> None:
        """Fill a placeholder column (``p95_ms`` or ``sync_backlog``) for one device; safe from any thread.

        Example:
            >>> panel.set_metric("sim-01", "sync_backlog", 12)   # doctest: +SKIP
        """
        if column not in METRICS:
            raise ConfigError(f"FleetPanel has no metric column {column!r}; use one of {', '.join(METRICS)}")
        with self._metrics_lock:
            self._metrics.setdefault(device_id, {})[column] = value
        self._signal()

    # -- drawing ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Redraw the table now from the fleet's current state.

        Example:
            >>> panel.refresh()   # doctest: +SKIP
        """
        now = time.time()
        if self.fleet.connected and not self._closed:
            self.disconnected_at = None
            self._read_metrics()
        elif self.disconnected_at is None:
            self.disconnected_at = now
        rows = self.rows()
        markup = render_html(rows, self.fleet.address.url, now=now, disconnected_at=self.disconnected_at)
        with self.hold_sync():
            self._view.value = markup
        self.shown_rows = rows
        self.renders += 1

    def snapshot(self) -> dict[str, Any]:
        """The table as drawn now, as ``text/html`` (what an executed notebook's HTML shows)."""
        return {"text/html": self._view.value}

    @property
    def snapshot_live(self) -> bool:
        return not self._closed and self.fleet.connected

    def _read_metrics(self) -> None:
        found: dict[str, dict[str, Any]] = {}
        telemetry = self.fleet.running_telemetry  # shown when running; never started by a panel
        if telemetry is not None:
            for device_id, feed in telemetry.feeds().items():
                latest = feed.latest_value("latency_p95_ms")
                if latest is not None:
                    found.setdefault(device_id, {})["p95_ms"] = latest
        sync = self.fleet.running_sync
        if sync is not None:
            for device_id, items in sync.backlog().items():
                found.setdefault(device_id, {})["sync_backlog"] = items
        if found:
            with self._metrics_lock:
                for device_id, values in found.items():
                    self._metrics.setdefault(device_id, {}).update(values)

    async def _follow(self) -> None:
        assert self._wake is not None
        while not self._closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._tick)
            if self._closed:
                break
            self._wake.clear()
            try:
                self.refresh()
            except Exception:  # a drawing bug must not end the live updates
                log.exception("FleetPanel could not redraw")
            # Throttle: a burst of events (a fleet coming up) becomes one redraw per interval.
            await asyncio.sleep(self._interval)

    def _signal(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or self._closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to update
            loop.call_soon_threadsafe(wake.set)

    def _on_event(self, _event: str, _device: Device) -> None:
        # Runs on paho's network thread: only signal, never touch widgets here.
        self._signal()

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the live updates, remove the fleet listener, and close the widget.

        Example:
            >>> panel.close()   # doctest: +SKIP
        """
        if not getattr(self, "_closed", True):
            self._closed = True
            if self._remove_listener is not None:
                self._remove_listener()
                self._remove_listener = None
            task, loop = self._task, self._loop
            if task is not None and loop is not None and not task.done():
                if _running_loop() is loop:
                    task.cancel()
                else:  # closed from another thread: the task belongs to its loop
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(task.cancel)
            with contextlib.suppress(Exception):  # the fleet may be half gone; the snapshot below still goes
                self.refresh()
            super().close()
            self.final_snapshot()
        else:
            super().close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _row(device: Device, metrics: dict[str, Any]) -> dict[str, Any]:
    base = device.row()
    return {
        "device_id": device.device_id,
        "online": bool(device.online),
        "offline_reason": device.offline_reason,
        "profile": base.get("profile"),
        "active_model": base.get("active_model"),
        "last_seen": device.last_seen,
        **{name: metrics.get(name) for name in METRICS},
    }


def _age(seen: float | None, now: float) -> str:
    if seen is None:
        return _EMPTY
    age = max(0.0, now - seen)
    if age < 60:
        return f"{age:.0f} s ago"
    if age < 3600:
        return f"{age / 60:.0f} min ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seen))


def _cell(row: dict[str, Any], key: str, now: float, disconnected: bool = False) -> str:
    value = row.get(key)
    if key == "online" and disconnected:  # nothing is known any more: never show a stale state as live
        return f'<span style="color:#888">? {"was online" if value else "was offline"}</span>'
    if key == "online":
        if value:
            return '<span style="color:#1a7f37">● online</span>'
        reason = html.escape(str(row.get("offline_reason") or "no status yet"), quote=True)
        return f'<span style="color:#888" title="{reason}">○ offline</span>'
    if key == "last_seen":
        return _age(value, now)
    if key == "p95_ms" and isinstance(value, (int, float)):
        return f"{value:.1f} ms"
    return _EMPTY if value is None else html.escape(str(value))


def render_html(rows: list[dict[str, Any]], broker: str, *, now: float, disconnected_at: float | None = None) -> str:
    """The panel's HTML: a one-line summary, then one table row per device (``data-device``/``data-online``).

    With ``disconnected_at`` set, a "disconnected at" line comes first and the table is greyed out.

    Example:
        >>> "0 of 0 devices online" in render_html([], "mqtt://127.0.0.1:1883", now=0.0)
        True
    """
    disconnected = disconnected_at is not None
    online = sum(1 for row in rows if row["online"])
    head = "".join(f'<th style="text-align:left;padding:2px 8px">{html.escape(title)}</th>' for _, title in COLUMNS)
    body = "".join(
        f'<tr data-device="{html.escape(row["device_id"], quote=True)}" '
        f'data-online="{str(bool(row["online"])).lower()}">'
        + "".join(f'<td style="padding:2px 8px">{_cell(row, key, now, disconnected)}</td>' for key, _ in COLUMNS)
        + "</tr>"
        for row in rows
    )
    if not rows:
        body = f'<tr><td colspan="{len(COLUMNS)}" style="padding:2px 8px;color:#888">no devices seen yet</td></tr>'
    if disconnected:
        summary = f"<b>{online} of {len(rows)} devices were online</b> · broker {html.escape(broker)}"
    else:
        summary = (f"<b>{online} of {len(rows)} devices online</b> · broker {html.escape(broker)} · "
                   f"updated {time.strftime('%H:%M:%S', time.localtime(now))}")
    style = ' style="opacity:0.55"' if disconnected else ""
    return (f'<div class="wb-fleet-panel{" wb-stale" if disconnected else ""}">{disconnected_banner(disconnected_at)}'
            f'<div{style}><div style="margin-bottom:4px">{summary}</div>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></div>")
