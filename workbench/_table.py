"""Tables for people: a DataFrame that displays a few columns, with units and clock times, and keeps them all.

Code reads every column as before (``frame["out_of_order"]``); only the display is compact.
Selecting from the table, or :meth:`Table.full`, gives a plain DataFrame that shows everything.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd


def epoch_seconds(values: pd.Series) -> pd.Series:
    """Epoch seconds (or datetimes) as UTC datetimes to the second.

    Example:
        >>> str(epoch_seconds(pd.Series([0.4]))[0])
        '1970-01-01 00:00:00+00:00'
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.floor("s")
    return pd.to_datetime(pd.to_numeric(values, errors="coerce"), unit="s", utc=True).dt.floor("s")


def seconds_to_ms(values: pd.Series) -> pd.Series:
    """Seconds as milliseconds, rounded to 0.1 ms.

    Example:
        >>> float(seconds_to_ms(pd.Series([0.01234]))[0])
        12.3
    """
    return (pd.to_numeric(values, errors="coerce") * 1000.0).round(1)


def bytes_to_kb(values: pd.Series) -> pd.Series:
    """Bytes as kilobytes (1000 bytes), rounded to 0.1.

    Example:
        >>> float(bytes_to_kb(pd.Series([1536]))[0])
        1.5
    """
    return (pd.to_numeric(values, errors="coerce") / 1000.0).round(1)


@dataclass(frozen=True)
class Column:
    """One shown column: the source column(s), its header with units, and how values are converted."""

    source: str | tuple[str, ...]
    header: str
    convert: Callable[[pd.Series], pd.Series] | None = None


@dataclass(frozen=True)
class View:
    """The compact view of a table: its columns, and a note under it that explains what may look alarming."""

    columns: tuple[Column, ...]
    note: str = ""
    hint: str = field(default="all columns: .full() or wide=True")


class Table(pd.DataFrame):
    """A DataFrame shown compactly (``view``'s columns, units in headers, clock times); every column stays.

    Example:
        >>> table = Table.of(pd.DataFrame({"device_id": ["sim-01"], "last": [0.0], "extra": [1]}),
        ...                  View((Column("device_id", "device"), Column("last", "last (UTC)", epoch_seconds))))
        >>> list(table.compact().columns), list(table.full().columns)
        (['device', 'last (UTC)'], ['device_id', 'last', 'extra'])
    """

    _metadata: ClassVar[list[str]] = ["_view"]

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        # What is derived from the table (a selection, a sum) is the caller's own frame: shown whole.
        return pd.DataFrame

    @classmethod
    def of(cls, frame: pd.DataFrame, view: View) -> Table:
        """``frame`` as a Table shown through ``view``."""
        table = cls(frame)
        table._view = view
        return table

    def full(self) -> pd.DataFrame:
        """Every column, as a plain DataFrame.

        Example:
            >>> fleet.telemetry.stats().full()   # doctest: +SKIP
        """
        return pd.DataFrame(self)

    def compact(self) -> pd.DataFrame:
        """The shown columns: units in headers, epoch seconds as datetimes, sums where a column adds several."""
        view: View | None = getattr(self, "_view", None)
        if view is None:
            return self.full()
        shown: dict[str, Any] = {}
        for column in view.columns:
            names = (column.source,) if isinstance(column.source, str) else column.source
            present = [name for name in names if name in self.columns]
            if not present:
                continue
            values = (self[present[0]] if len(present) == 1 and isinstance(column.source, str)
                      else self[present].apply(pd.to_numeric, errors="coerce").sum(axis=1))
            shown[column.header] = column.convert(values) if column.convert else values
        return pd.DataFrame(shown, index=self.index)

    def _footer(self) -> str:
        view: View | None = getattr(self, "_view", None)
        if view is None:
            return ""
        return " ".join(part for part in (view.note, f"({view.hint}; {len(self.columns)} columns)") if part)

    def _repr_html_(self) -> str:
        body = self.compact()._repr_html_() or ""
        return f'{body}<p style="color:#666;font-size:smaller">{html.escape(self._footer())}</p>'

    def __repr__(self) -> str:
        # to_string: the few shown columns, never cut off with "..." at a terminal width.
        return f"{self.compact().to_string()}\n{self._footer()}"
