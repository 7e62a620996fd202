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

from widgets._fleet_page import STATE_COLORS, STATES, Page, count_states, filter_words, matches, panel_state
from widgets._snapshot import Snapshotting, disconnected_banner
from workbench import ConfigError, Device, Fleet
from workbench.fleet._inventory import model_label

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
    """A live, paged table of the fleet's devices, with counts by state and a filter box.

    The counts cover the whole fleet: serving, idle, updating, failed (its last deployment) and
    offline. The table shows one page (``page_size`` rows) of the devices matching the filter box
    (words matched against device id, profile, active model and state), with prev/next buttons and
    "rows 1-50 of 1,873 matching"; a fleet of thousands stays one screen and one cheap redraw.

    Fleet events arrive on the MQTT network thread, and ipykernel 7 drops widget updates made
    there, so the panel's listener only wakes an asyncio task on the loop the panel was made
    in (the kernel's); that task redraws at most ``max_rate`` times a second, and every
    ``tick`` seconds so "last seen" ages. Made outside a running loop (a plain script), the
    panel updates only when :meth:`refresh` is called (and when the filter or page changes).
    :meth:`close` stops the task and removes the listener. After :meth:`close`, ``fleet.close()``
    or a lost broker connection, the panel says "disconnected at HH:MM:SS", greys out, and no
    longer shows any device as online.

    Once the fleet's telemetry (and with it its sync) is in use, every redraw reads each
    device's newest ``latency_p95_ms`` and its reported sync backlog into the p95 and
    backlog columns, and tells serving devices from idle ones; the panel does not start them
    itself. Deployment states come from the devices' retained deployment reports. The reading
    happens in the redraw, on the kernel's loop, never on a background thread.

    Example:
        >>> fleet = workbench.connect()              # doctest: +SKIP
        >>> panel = widgets.FleetPanel(fleet)        # doctest: +SKIP
        >>> display(panel)                           # doctest: +SKIP
        >>> panel.filter_text = "jetson offline"     # doctest: +SKIP
        >>> panel.counts                             # doctest: +SKIP
        {'serving': 1210, 'idle': 590, 'updating': 0, 'failed': 3, 'offline': 197}
        >>> panel.close()                            # doctest: +SKIP
    """

    def __init__(self, fleet: Fleet, *, max_rate: float = 4.0, tick: float = 5.0, page_size: int = 50) -> None:
        if max_rate <= 0 or tick <= 0:
            raise ConfigError(f"FleetPanel needs max_rate > 0 and tick > 0 (got max_rate={max_rate}, tick={tick})")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ConfigError(f"FleetPanel needs page_size of at least 1 row, got {page_size!r}")
        self._view = ipywidgets.HTML()
        self._filter = ipywidgets.Text(placeholder="filter: device, profile, model or state",
                                       layout=ipywidgets.Layout(width="320px"))
        self._prev = ipywidgets.Button(description="‹ prev", layout=ipywidgets.Layout(width="80px"))
        self._next = ipywidgets.Button(description="next ›", layout=ipywidgets.Layout(width="80px"))
        super().__init__([self._view, ipywidgets.HBox([self._filter, self._prev, self._next])])
        self.fleet = fleet
        self.shown_rows: list[dict[str, Any]] = []  # the page the table shows now, for code and tests to read
        self.counts: dict[str, int] = dict.fromkeys(STATES, 0)  # devices per state, the whole fleet
        self.matching = 0  # devices matching the filter
        self.page_size = page_size
        self.renders = 0
        self.disconnected_at: float | None = None  # when the panel first saw its fleet disconnected
        self._page = 0
        self._interval = 1.0 / max_rate
        self._tick = tick
        self._metrics: dict[str, dict[str, Any]] = {}
        self._latest: dict[str, dict[str, tuple[float, float]]] = {}
        self._metrics_lock = threading.Lock()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop = _running_loop()  # None in a plain script: refresh() by hand
        if self._loop is not None:
            self._wake = asyncio.Event()
            self._task = self._loop.create_task(self._follow(), name="FleetPanel")
        self._deploy = _deploy_state(fleet)
        # A device's deployment report moves it between idle, updating and failed: redraw as for a fleet event.
        self._remove_deploy_listener: Callable[[], None] | None = (
            self._deploy.on(lambda _device, _report: self._signal()) if self._deploy is not None else None)
        self._remove_listener: Callable[[], None] | None = fleet.on(self._on_event)
        self._filter.observe(self._on_filter, names="value")
        self._prev.on_click(lambda _button: self.previous_page())
        self._next.on_click(lambda _button: self.next_page())
        self.refresh()

    # -- state -------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """True while an asyncio task keeps the panel current."""
        return self._task is not None and not self._task.done()

    def rows(self) -> list[dict[str, Any]]:
        """Every device of the fleet as the panel's rows, read now (``shown_rows`` is the page drawn)."""
        with self._metrics_lock:
            metrics = {key: dict(value) for key, value in self._metrics.items()}
            latest = dict(self._latest)
        now = time.time()
        deploy = self._deploy
        return [_row(device, metrics.get(device.device_id, {}),
                     panel_state(bool(device.online),
                                 deploy.reported(device.device_id).get("state") if deploy is not None else None,
                                 latest.get(device.device_id, {}), now))
                for device in self.fleet.devices]

    @property
    def filter_text(self) -> str:
        """The filter box's text; setting it shows the first page of the devices that match.

        Example:
            >>> panel.filter_text = "jetson offline"   # doctest: +SKIP
            >>> panel.matching                         # doctest: +SKIP
            12
        """
        return str(self._filter.value)

    @filter_text.setter
    def filter_text(self, text: str) -> None:
        self._filter.value = text  # the observer redraws

    @property
    def page(self) -> int:
        """The page shown, from 0.

        Example:
            >>> panel.next_page(); panel.page   # doctest: +SKIP
            1
        """
        return self._page

    def next_page(self) -> None:
        """Show the next page of matching devices (the last page stays).

        Example:
            >>> panel.next_page()   # doctest: +SKIP
        """
        self._go(self._page + 1)

    def previous_page(self) -> None:
        """Show the previous page of matching devices (the first page stays).

        Example:
            >>> panel.previous_page()   # doctest: +SKIP
        """
        self._go(self._page - 1)

    def last_page(self) -> None:
        """Show the last page of matching devices.

        Example:
            >>> panel.last_page()   # doctest: +SKIP
        """
        self._go(self.matching)  # clamped to the last page on redraw

    def _go(self, page: int) -> None:
        self._page = max(0, page)
        self.refresh()

    def _on_filter(self, _change: dict[str, Any]) -> None:
        # Runs on the kernel's thread (a comm message) or the caller's: the page restarts with the new matches.
        self._page = 0
        self.refresh()

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
        words = filter_words(self.filter_text)
        matching = [row for row in rows if matches(row, words)] if words else rows
        page = Page.of(total=len(matching), number=self._page, size=self.page_size)
        shown = matching[page.start:page.stop]
        counts = count_states(rows)
        markup = render_html(shown, self.fleet.address.url, now=now, disconnected_at=self.disconnected_at,
                             counts=counts, online=sum(1 for row in rows if row["online"]), total=len(rows),
                             page_label=page.label(filtered=bool(words)))
        with self.hold_sync():
            self._view.value = markup
            self._prev.disabled = page.number == 0
            self._next.disabled = page.number >= page.pages - 1
        self._page, self.matching, self.counts, self.shown_rows = page.number, len(matching), counts, shown
        self.renders += 1

    def snapshot(self) -> dict[str, Any]:
        """The table as drawn now, as ``text/html`` (what an executed notebook's HTML shows)."""
        return {"text/html": self._view.value}

    @property
    def snapshot_live(self) -> bool:
        return not self._closed and self.fleet.connected

    def _read_metrics(self) -> None:
        found: dict[str, dict[str, Any]] = {}
        newest: dict[str, dict[str, tuple[float, float]]] = {}
        telemetry = self.fleet.running_telemetry  # shown when running; never started by a panel
        if telemetry is not None:
            for device_id, feed in telemetry.feeds().items():
                newest[device_id] = dict(feed.latest)
                latest = feed.latest_value("latency_p95_ms")
                if latest is not None:
                    found.setdefault(device_id, {})["p95_ms"] = latest
        with self._metrics_lock:
            self._latest = newest
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
            if self._remove_deploy_listener is not None:
                self._remove_deploy_listener()
                self._remove_deploy_listener = None
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


def _deploy_state(fleet: Fleet) -> Any:
    """The fleet's deployment state watcher (retained reports of every device), shared with its rollouts."""
    try:
        from workbench.deploy._rollout import context

        return context(fleet).state
    except Exception:  # a panel without deployment states still shows presence and telemetry
        log.exception("FleetPanel cannot follow deployment states")
        return None


def _row(device: Device, metrics: dict[str, Any], state: str) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "online": bool(device.online),
        "state": state,
        "offline_reason": device.offline_reason,
        "profile": device.profile,
        "active_model": model_label(device.active_model),
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
            state = str(row.get("state") or "idle")
            return f'<span style="color:{STATE_COLORS.get(state, "#1a7f37")}">● online · {html.escape(state)}</span>'
        reason = html.escape(str(row.get("offline_reason") or "no status yet"), quote=True)
        return f'<span style="color:#888" title="{reason}">○ offline</span>'
    if key == "last_seen":
        return _age(value, now)
    if key == "p95_ms" and isinstance(value, (int, float)):
        return f"{value:.1f} ms"
    return _EMPTY if value is None else html.escape(str(value))


def render_html(rows: list[dict[str, Any]], broker: str, *, now: float, disconnected_at: float | None = None,
                counts: dict[str, int] | None = None, online: int | None = None, total: int | None = None,
                page_label: str | None = None) -> str:
    """The panel's HTML: counts by state, a summary line, the page's rows (``data-device``/``data-online``), its label.

    ``online`` and ``total`` count the whole fleet (default: ``rows``); with ``disconnected_at`` set, a
    "disconnected at" line comes first and the table is greyed out.

    Example:
        >>> "0 of 0 devices online" in render_html([], "mqtt://127.0.0.1:1883", now=0.0)
        True
    """
    disconnected = disconnected_at is not None
    online = sum(1 for row in rows if row["online"]) if online is None else online
    total = len(rows) if total is None else total
    head = "".join(f'<th style="text-align:left;padding:2px 8px">{html.escape(title)}</th>' for _, title in COLUMNS)
    body = "".join(
        f'<tr data-device="{html.escape(row["device_id"], quote=True)}" '
        f'data-online="{str(bool(row["online"])).lower()}">'
        + "".join(f'<td style="padding:2px 8px">{_cell(row, key, now, disconnected)}</td>' for key, _ in COLUMNS)
        + "</tr>"
        for row in rows
    )
    label = page_label or ("no devices seen yet" if not rows else f"rows 1-{len(rows):,} of {total:,}")
    if not rows:
        body = f'<tr><td colspan="{len(COLUMNS)}" style="padding:2px 8px;color:#888">{html.escape(label)}</td></tr>'
    if disconnected:
        summary = f"<b>{online} of {total} devices were online</b> · broker {html.escape(broker)}"
    else:
        summary = (f"<b>{online} of {total} devices online</b> · broker {html.escape(broker)} · "
                   f"updated {time.strftime('%H:%M:%S', time.localtime(now))}")
    chips = "".join(
        f'<span class="wb-state wb-state-{name}" data-count="{n}" style="display:inline-block;margin:0 12px 4px 0;'
        f'color:{STATE_COLORS[name]};font-weight:bold">● {n:,} {name}</span>'
        for name, n in (counts or {}).items() if name in STATE_COLORS)
    style = ' style="opacity:0.55"' if disconnected else ""
    return (f'<div class="wb-fleet-panel{" wb-stale" if disconnected else ""}">{disconnected_banner(disconnected_at)}'
            f'<div{style}><div class="wb-fleet-counts">{chips}</div><div style="margin-bottom:4px">{summary}</div>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f'<div class="wb-fleet-page" style="color:#57606a;font-size:smaller">{html.escape(label)}</div>'
            "</div></div>")
