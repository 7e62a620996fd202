"""`workbench.record()`: a notebook states a key figure where papermill, CI and `runs diff` all read it."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from workbench.errors import ConfigError

# The figure travels inside the executed notebook as a display output of its own type, so the
# .ipynb file alone is the record: nothing on the side to get out of step with it.
RECORD_MIMETYPE = "application/vnd.workbench.record+json"

Value = int | float | str | bool | None

# Figures recorded outside a kernel (a plain script), newest last.
_recorded: list[Figure] = []


@dataclass(frozen=True)
class Figure:
    """One recorded figure: a name, its value, and how far it may move between runs.

    ``tolerance`` is relative to the baseline value (0.2 lets it move by 20 %); ``None``
    means the value must not change at all.

    Example:
        >>> Figure("median_ping_ms", 1.5, tolerance=0.5, unit="ms").describe()
        '1.5 ms (±50%)'
    """

    name: str
    value: Value
    tolerance: float | None = None
    unit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "tolerance": self.tolerance, "unit": self.unit}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        """The figure from its JSON form; raises ConfigError naming what is missing."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ConfigError(f"a recorded figure must be an object with a string 'name', got {data!r}")
        return cls(str(data["name"]), data.get("value"), data.get("tolerance"), data.get("unit"))

    def describe(self) -> str:
        """The value with its unit and tolerance, for tables."""
        text = format_value(self.value)
        if self.unit:
            text += f" {self.unit}"
        if self.tolerance is not None:
            text += f" (±{self.tolerance * 100:g}%)"
        return text


def format_value(value: Value) -> str:
    """A figure's value, short enough for a table cell.

    Example:
        >>> format_value(3.14159265)
        '3.142'
    """
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return str(value)


def _check(name: Any, value: Any, tolerance: Any, unit: Any) -> Figure:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"record() needs a non-empty string name, got {name!r}")
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # a numpy scalar: store the plain number
    if not isinstance(value, (numbers.Real, str, type(None))):
        raise ConfigError(
            f"record({name!r}, ...) got a {type(value).__name__}; record a number, string, bool or None "
            "(e.g. float(x) or str(x))"
        )
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
        if not math.isfinite(value):
            raise ConfigError(f"record({name!r}, ...) got {value}, which cannot be compared between runs; "
                              "record a finite number, or None when there is nothing to measure")
    if tolerance is not None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not float(tolerance) >= 0:
            raise ConfigError(f"record({name!r}, ...) tolerance must be a number >= 0 (a fraction: 0.2 = 20 %) "
                              f"or None, got {tolerance!r}")
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise ConfigError(f"record({name!r}, ...) has a tolerance, but its value {value!r} is not a number; "
                              "drop the tolerance (non-numbers must match exactly)")
        tolerance = float(tolerance)
    if unit is not None and not isinstance(unit, str):
        raise ConfigError(f"record({name!r}, ...) unit must be a string such as 'ms', got {unit!r}")
    return Figure(name.strip(), value, tolerance, unit)


def record(name: str, value: Value, tolerance: float | None = None, unit: str | None = None) -> Figure:
    """Record a key figure of this notebook run (devices online, median latency, ...).

    In a kernel the figure is displayed as an output of type ``RECORD_MIMETYPE`` (with a
    readable text line), so the executed notebook carries it and ``run_notebooks`` and
    ``workbench runs diff`` read it from there. ``tolerance`` is the fraction of the baseline
    value the figure may move by between runs before ``runs diff`` flags it; ``None`` means
    it must not change. Recording the same name again replaces the earlier value.

    Example:
        >>> import workbench
        >>> workbench.record("devices_online", 3)                                # doctest: +SKIP
        >>> workbench.record("median_ping_ms", 1.8, tolerance=1.0, unit="ms")    # doctest: +SKIP
    """
    figure = _check(name, value, tolerance, unit)
    shell = _ipython()
    if shell is None:
        _recorded.append(figure)
        return figure
    from IPython.display import display

    display({RECORD_MIMETYPE: figure.to_dict(), "text/plain": f"recorded {figure.name} = {figure.describe()}"},
            raw=True)
    return figure


def recorded() -> list[Figure]:
    """Figures recorded in this process outside a kernel (inside one they live in the notebook).

    Example:
        >>> [f.name for f in recorded()]   # doctest: +SKIP
        ['devices_online']
    """
    return list(_recorded)


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()
