"""Durations and instants as users write them: ``"10m"``, ``"5s"``, ``90``, timedelta, datetime."""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timedelta

from workbench.errors import ConfigError

Duration = str | float | int | timedelta
Instant = str | float | int | timedelta | datetime | None
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*$")


def seconds(value: Duration, what: str = "duration") -> float:
    """A duration in seconds; a number that is not finite (NaN, infinity) is a :class:`ConfigError`.

    Example:
        >>> seconds("10m"), seconds("500ms"), seconds(5)
        (600.0, 0.5, 5.0)
    """
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            result = float(value)
        except OverflowError:  # an integer beyond any float
            result = math.inf
        if not math.isfinite(result):
            raise ConfigError(f"{what} {value!r} is not a finite number of seconds; write e.g. '5s', '10m' or 90")
        return result
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f"{what} {value!r} is not a duration; write e.g. '500ms', '5s', '10m', '2h', '1d' or seconds")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def epoch(value: Instant, *, now: float | None = None, what: str = "time") -> float | None:
    """An instant as epoch seconds: a datetime, epoch seconds, or a duration meaning that long ago.

    Example:
        >>> epoch("10s", now=100.0)
        90.0
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1e9:
        return float(value)  # already epoch seconds
    return (time.time() if now is None else now) - seconds(value, what)
