"""ONNX files that may keep their weights in external data files: copy, move, hash and size them as one model."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

# Tensors smaller than this stay inside the .onnx file when a model is saved with external data.
_EXTERNAL_THRESHOLD = 1024


def external_files(path: Path) -> list[Path]:
    """The external data files a model file refers to (none for a self-contained model).

    Example:
        >>> external_files(Path("model.onnx"))   # doctest: +SKIP
        [PosixPath('model.onnx.data')]
    """
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(str(path), load_external_data=False)
    found: list[Path] = []
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location:
            file = path.parent / location
            if file not in found:
                found.append(file)
    return found


def has_external_data(path: Path) -> bool:
    """Whether the model keeps any weights outside its .onnx file."""
    return bool(external_files(path))


def data_location(path: Path) -> str:
    """The external data file name a model saved at ``path`` uses (next to it)."""
    return f"{path.name}.data"


def save_model(model: Any, dst: Path, *, external: bool) -> None:
    """Save a ModelProto to ``dst``; with ``external`` its weights go to ``dst.name + '.data'`` next to it."""
    import onnx

    (dst.parent / data_location(dst)).unlink(missing_ok=True)  # onnx appends to an existing data file
    if external:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_location(dst), size_threshold=_EXTERNAL_THRESHOLD)
    else:
        onnx.save_model(model, str(dst))


def copy_model(src: Path, dst: Path) -> Path:
    """Copy a model and its external data (re-pointed at ``dst.name + '.data'``) to ``dst``.

    Example:
        >>> copy_model(Path("big.onnx"), Path("out/model.onnx"))   # doctest: +SKIP
        PosixPath('out/model.onnx')
    """
    import onnx

    if not has_external_data(src):
        shutil.copyfile(src, dst)
        return dst
    save_model(onnx.load(str(src)), dst, external=True)
    return dst


def move_model(src: Path, dst: Path) -> Path:
    """Move a model (and its external data) to ``dst``."""
    if not has_external_data(src):
        os.replace(src, dst)
        return dst
    copy_model(src, dst)
    remove_model(src)
    return dst


def remove_model(path: Path) -> None:
    """Delete a model file and its external data files, if present."""
    if path.is_file():
        for extra in external_files(path):
            extra.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def model_bytes(path: Path) -> int:
    """Bytes on disk of the model file and its external data."""
    return path.stat().st_size + sum(f.stat().st_size for f in external_files(path) if f.is_file())


def model_sha256(path: Path) -> str:
    """sha256 over the model file and then each of its external data files, in the order the model names them."""
    digest = hashlib.sha256()
    for file in [path, *external_files(path)]:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
