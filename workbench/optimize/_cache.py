"""The optimize cache: built models and measurements keyed by what decides them, with a diff on change."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from workbench._settings import settings


def default_cache_dir() -> Path:
    """``$WORKBENCH_CACHE_DIR/optimize`` or ``~/.cache/workbench/optimize``."""
    root = settings().cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "workbench")
    return Path(root) / "optimize"


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shape a built model or a measurement."""
    import onnx
    import onnxruntime

    from workbench import __version__

    versions = {"workbench": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import torch

        versions["torch"] = str(torch.__version__)
    except ImportError:
        pass
    return versions


def key_of(parts: dict[str, Any]) -> str:
    """A stable hash of JSON-ready parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class OptimizeCache:
    """Built model files and measured rows on disk; a disabled cache stores nothing.

    Example:
        >>> cache = OptimizeCache(None)
        >>> cache.get_row("abc") is None
        True
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def model_path(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        path = self.directory / "models" / f"{key}.onnx"
        return path if path.is_file() else None

    def put_model(self, key: str, path: Path) -> Path:
        if self.directory is None:
            return path
        target = self.directory / "models" / f"{key}.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
        return target

    def get_row(self, key: str) -> dict[str, Any] | None:
        if self.directory is None:
            return None
        try:
            data = json.loads((self.directory / "rows" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put_row(self, key: str, row: dict[str, Any]) -> None:
        if self.directory is not None:
            _atomic_write(self.directory / "rows" / f"{key}.json", json.dumps(row, default=str))

    def diff_against_last(self, run_key: str, parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """What changed, per variant, in the key parts since the last run of this model on this target.

        Returns ``{variant: {field: [old, new]}}`` (``"new variant"`` for one not seen before); the
        current parts become the "last run".
        """
        if self.directory is None:
            return {}
        index = self.directory / "runs" / f"{run_key}.json"
        try:
            last = json.loads(index.read_text())
        except (OSError, ValueError):
            last = None
        _atomic_write(index, json.dumps(parts, sort_keys=True, default=str))
        if not isinstance(last, dict):
            return {}
        diff: dict[str, dict[str, Any]] = {}
        for variant, current in parts.items():
            before = last.get(variant)
            if before is None:
                diff[variant] = {"variant": ["(absent)", "new variant"]}
                continue
            changes = _flat_diff(before, json.loads(json.dumps(current, default=str)))
            if changes:
                diff[variant] = changes
        return diff


def _flat_diff(old: Any, new: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, Any] = {}
        for key in sorted(set(old) | set(new)):
            out |= _flat_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return {} if old == new else {prefix.rstrip("."): [old, new]}
