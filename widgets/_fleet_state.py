"""The fleet's state at a glance: how many devices serve inferences, sit idle, or are offline."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

# A device serves while its inference metrics keep arriving; a few publish intervals without one make it idle.
SERVING_METRICS = ("latency_p95_ms", "throughput")
FRESH_S = 15.0

STATE_COLORS = {"serving": "#1a7f37", "idle": "#9a6700", "offline": "#6e7781"}


@dataclass(frozen=True)
class FleetState:
    """Each device's state ("serving", "idle" or "offline") and the counts per state.

    Example:
        >>> FleetState({"sim-01": "serving", "sim-02": "offline"}).counts
        {'serving': 1, 'idle': 0, 'offline': 1}
    """

    devices: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {state: sum(1 for s in self.devices.values() if s == state) for state in STATE_COLORS}

    @property
    def summary(self) -> str:
        """One line for people: "2 serving · 1 idle · 0 offline" (or "no devices")."""
        if not self.devices:
            return "no devices"
        return " · ".join(f"{n} {state}" for state, n in self.counts.items())


def device_state(online: bool, latest: dict[str, tuple[float, float]], now: float, fresh_s: float = FRESH_S) -> str:
    """A device's state from its online flag and the newest (time, value) of each metric it reported.

    Serving means inference metrics arrived in the last ``fresh_s`` seconds (a throughput of 0 is not serving).

    Example:
        >>> device_state(True, {"throughput": (99.0, 10.0)}, now=100.0)
        'serving'
        >>> device_state(True, {"cpu_percent": (99.0, 3.0)}, now=100.0), device_state(False, {}, now=100.0)
        ('idle', 'offline')
    """
    if not online:
        return "offline"
    for metric in SERVING_METRICS:
        entry = latest.get(metric)
        if entry is None or now - entry[0] > fresh_s:
            continue
        if metric == "throughput" and not entry[1] > 0:  # NaN or 0: reported, but nothing served
            continue
        return "serving"
    return "idle"


def fleet_state(fleet: Any, *, now: float | None = None, fresh_s: float = FRESH_S) -> FleetState:
    """The state of every device of ``fleet`` now, from its presence and its telemetry feeds.

    Example:
        >>> fleet_state(fleet).summary   # doctest: +SKIP
        '2 serving · 0 idle · 1 offline'
    """
    now = time.time() if now is None else now
    feeds = fleet.telemetry.feeds()
    states = {}
    for device in fleet.devices:
        feed = feeds.get(device.device_id)
        states[device.device_id] = device_state(bool(device.online), feed.latest if feed else {}, now, fresh_s)
    return FleetState(dict(sorted(states.items())))


def state_html(state: FleetState) -> str:
    """The fleet state as a row of coloured counts, then each device's state.

    Example:
        >>> "1 serving" in state_html(FleetState({"sim-01": "serving"}))
        True
    """
    chips = "".join(
        f'<span class="wb-state wb-state-{name}" style="display:inline-block;margin:0 12px 4px 0;'
        f'color:{color};font-weight:bold">● {count} {name}</span>'
        for name, color in STATE_COLORS.items() for count in [state.counts[name]])
    devices = ", ".join(f'{html.escape(device)}: <span style="color:{STATE_COLORS[s]}">{s}</span>'
                        for device, s in state.devices.items())
    return (f'<div class="wb-fleet-state" style="font-size:14px;overflow-wrap:anywhere"><b>Fleet</b> '
            f"{chips}<div style='font-size:12px;color:#57606a'>{devices or 'no devices yet'}</div></div>")
