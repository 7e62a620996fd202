"""What FleetPanel shows of a large fleet: each device's state, the counts per state, a filter, and one page.

At 2,000 devices a table of every device is unreadable and slow to draw; the panel shows counts for the
whole fleet and one page of the rows that match a filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from widgets._fleet_state import device_state
from workbench.protocol.states import TERMINAL

# Every state a device can be in, in the order the counts are shown.
STATES = ("serving", "idle", "updating", "failed", "offline")
STATE_COLORS = {"serving": "#1a7f37", "idle": "#9a6700", "updating": "#0969da", "failed": "#cf222e",
                "offline": "#6e7781"}
_FAILED = ("failed", "rejected")


def panel_state(online: bool, deploy_state: str | None, latest: dict[str, tuple[float, float]], now: float) -> str:
    """A device's state for the panel: offline, else updating or failed by its last deployment, else serving or idle.

    ``deploy_state`` is the state the device last reported for a deployment (None: never deployed); a
    device whose last deployment failed keeps serving its previous model, but is counted as failed
    until a deployment succeeds.

    Example:
        >>> panel_state(True, "downloading", {}, now=0.0), panel_state(True, "rejected", {}, now=0.0)
        ('updating', 'failed')
        >>> panel_state(True, "active", {}, now=0.0), panel_state(False, "downloading", {}, now=0.0)
        ('idle', 'offline')
    """
    if not online:
        return "offline"
    if deploy_state in _FAILED:
        return "failed"
    if deploy_state is not None and deploy_state not in TERMINAL:
        return "updating"
    return device_state(True, latest, now)


def count_states(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many rows are in each of ``STATES`` (every state listed, zeros included).

    Example:
        >>> count_states([{"state": "idle"}, {"state": "offline"}, {"state": "idle"}])["idle"]
        2
    """
    counts = dict.fromkeys(STATES, 0)
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


def matches(row: dict[str, Any], words: list[str]) -> bool:
    """True when every word is a substring of the row's device id, profile, active model or state (any case).

    Example:
        >>> row = {"device_id": "sim-07", "profile": "jetson-orin-nano", "active_model": "digits", "state": "idle"}
        >>> matches(row, ["jetson", "idle"]), matches(row, ["jetson", "offline"])
        (True, False)
    """
    text = " ".join(str(row.get(key) or "") for key in ("device_id", "profile", "active_model", "state")).lower()
    return all(word in text for word in words)


def filter_words(text: str) -> list[str]:
    """The filter box's text as lower-case words, at most 16 of at most 100 characters (what a person types).

    Example:
        >>> filter_words("  Jetson   IDLE ")
        ['jetson', 'idle']
    """
    return [word[:100] for word in text.lower().split()[:16]]


@dataclass(frozen=True)
class Page:
    """One page of ``total`` matching rows: ``start`` (0-based) to ``stop`` (exclusive), ``number`` of ``pages``.

    Example:
        >>> page = Page.of(total=1873, number=0, size=50)
        >>> page.label(filtered=True)
        'rows 1-50 of 1,873 matching'
        >>> Page.of(total=1873, number=99, size=50).number   # past the end: the last page
        37
    """

    number: int
    pages: int
    start: int
    stop: int
    total: int

    @classmethod
    def of(cls, *, total: int, number: int, size: int) -> Page:
        pages = max(1, -(-total // size))
        number = min(max(0, number), pages - 1)
        start = number * size
        return cls(number, pages, start, min(total, start + size), total)

    def label(self, *, filtered: bool) -> str:
        if not self.total:
            return "no devices match" if filtered else "no devices seen yet"
        return f"rows {self.start + 1:,}-{self.stop:,} of {self.total:,}" + (" matching" if filtered else "")
