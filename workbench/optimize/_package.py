"""The model package: model.onnx + manifest.json, written atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError
from workbench.protocol.artifacts import sha256_file

PACKAGE_FORMAT = 1


def write_directory_atomically(out_dir: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Call ``fill(tmp_dir)`` and then swap ``tmp_dir`` into ``out_dir``; on failure nothing is left half-written.

    An existing ``out_dir`` is replaced only after the new one is complete.

    Example:
        >>> write_directory_atomically("/tmp/pkg", lambda d: (d / "a.txt").write_text("x"))  # doctest: +SKIP
    """
    target = Path(out_dir).resolve()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} exists and is not a directory; choose another output directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a package is meant to be read and served
        fill(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_package(directory: Path, model: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Put ``model`` and a manifest with its hash and size into ``directory`` (already a temp dir)."""
    from workbench.optimize._files import copy_model, external_files

    target = copy_model(model, directory / "model.onnx")  # with model.onnx.data where the weights are external
    listed = [target, *external_files(target)]
    full = {
        "format": "edge-workbench-model-package",
        "format_version": PACKAGE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {f.name: {"sha256": sha256_file(f), "size": f.stat().st_size} for f in listed},
        **manifest,
    }
    (directory / "manifest.json").write_text(json.dumps(full, indent=2, default=_json_default))
    return full


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
