"""Lazy exports: a package names what it offers without importing it until first use.

The agent runs on small devices and imports only the light parts of `workbench`; the notebook
side pulls in pandas, torch and plotly. Packages export their heavy names through this.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str], submodules: Iterable[str] = ()) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` importing ``exports[name]`` (a module path) on first use.

    Example:
        >>> __getattr__ = lazy_getattr("mypkg", {"Thing": "mypkg._thing"})   # doctest: +SKIP
    """
    subpackages = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        if name in subpackages:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
