"""A metered link's daily budget, spent by priority.

Bytes on the wire count against the budget of the current UTC day. Critical items
are always sent; high items until the budget is spent; normal items until 80 % of it;
bulk items until 50 % (bulk only ever uses spare capacity). With no budget set,
everything may be sent.
"""

from __future__ import annotations

import math
import time
from typing import Any

from workbench.errors import ConfigError
from workbench.protocol.priority import PRIORITIES

# The share of the day's budget after which a priority stops being sent (critical: never stops).
SHARE = {"critical": math.inf, "high": 1.0, "normal": 0.8, "bulk": 0.5}


class Budget:
    """Bytes sent today against ``mb_per_day`` (None: unmetered).

    Example:
        >>> budget = Budget(1.0)
        >>> budget.spend(600_000, now=0.0); budget.max_rank(now=0.0)   # normal stops at 80 %, bulk at 50 %
        2
    """

    def __init__(self, mb_per_day: float | None = None, *, day: int = -1, used: int = 0) -> None:
        self.mb_per_day = check_budget(mb_per_day)
        self.day = day
        self.used = used

    def _roll(self, now: float) -> None:
        day = int(now // 86_400)
        if day != self.day:
            self.day, self.used = day, 0

    def spend(self, nbytes: int, now: float | None = None) -> None:
        self._roll(time.time() if now is None else now)
        self.used += int(nbytes)

    def max_rank(self, now: float | None = None) -> int:
        """The lowest priority (highest rank) that may be sent now."""
        if self.mb_per_day is None:
            return len(PRIORITIES) - 1
        self._roll(time.time() if now is None else now)
        share = self.used / (self.mb_per_day * 1e6)
        allowed = [rank for rank, name in enumerate(PRIORITIES) if share < SHARE[name]]
        return max(allowed)

    def to_dict(self) -> dict[str, Any]:
        return {"mb_per_day": self.mb_per_day, "used_mb": self.used / 1e6, "day": self.day,
                "sending": PRIORITIES[: self.max_rank() + 1]}


def check_budget(mb_per_day: Any) -> float | None:
    """Validate a budget in MB per day (None for unmetered); raise :class:`ConfigError` naming the problem."""
    if mb_per_day is None:
        return None
    if isinstance(mb_per_day, bool) or not isinstance(mb_per_day, (int, float)) or not math.isfinite(mb_per_day) \
            or mb_per_day <= 0:
        raise ConfigError(f"mb_per_day must be a positive number (or None for no budget), got {mb_per_day!r}")
    return float(mb_per_day)
