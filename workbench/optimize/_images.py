"""A directory of images as model input: decoded, resized to the input's height and width, scaled to [0, 1]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import ConfigError
from workbench.protocol.spec import ModelSpec

_DECODED = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_MAX_IMAGES = 1024


def _layout(shape: tuple[Any, ...]) -> tuple[str, int, int, int]:
    """``("nchw" | "nhwc", channels, height, width)`` of a rank-4 image input with every dim filled."""
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise ConfigError(f"a directory of images needs a rank-4 image input with known sizes, not {list(shape)}; "
                          "give the size with --input-shape NAME=1,3,H,W (input_shapes= in Python)")
    if shape[1] in (1, 3, 4):
        return "nchw", int(shape[1]), int(shape[2]), int(shape[3])
    return "nhwc", int(shape[3]), int(shape[1]), int(shape[2])


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HxWxC float image (no image library needed)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _read(path: Path) -> np.ndarray:
    """One image as HxWxC float32 in [0, 1]."""
    if path.suffix.lower() == ".npy":
        array = np.load(path).astype(np.float32)
        if array.max(initial=0) > 1.0:
            array = array / 255.0
    else:
        try:
            from PIL import Image
        except ImportError:
            raise ConfigError(f"reading {path.name} needs Pillow (pip install pillow); or save the images as "
                              ".npy arrays (HxWxC)") from None
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"), np.float32) / 255.0
        except OSError as exc:
            raise ConfigError(f"cannot read image {path}: {exc}") from exc
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ConfigError(f"image {path} has shape {array.shape}; expected HxW or HxWxC")
    return array


def _channels(image: np.ndarray, channels: int, file: Path) -> np.ndarray:
    """Grey to RGB by repeating, RGB to grey by averaging, RGBA to RGB by dropping alpha."""
    have = image.shape[2]
    if have == channels:
        return image
    if channels == 1:
        return image[:, :, :3].mean(axis=2, keepdims=True)
    if have == 1:
        return np.repeat(image, channels, axis=2)
    if have > channels:
        return image[:, :, :channels]
    raise ConfigError(f"image {file} has {have} channels; the model's input takes {channels}")


def load_image_dir(directory: Path, spec: ModelSpec, *, what: str) -> tuple[np.ndarray, str]:
    """Every image in ``directory`` (sorted by name, at most 1024) as one batch for the model's single input.

    Images are resized to the input's height and width (bilinear), converted to its channel count
    and layout (NCHW or NHWC) and scaled to [0, 1].

    Example:
        >>> batch, origin = load_image_dir(Path("calib/"), spec, what="calibration data")   # doctest: +SKIP
        >>> batch.shape                                                                      # doctest: +SKIP
        (100, 3, 224, 224)
    """
    if len(spec.inputs) != 1:
        raise ConfigError(f"{what}: a directory of images feeds a model with one input; this model has "
                          f"{len(spec.inputs)} ({', '.join(t.name for t in spec.inputs)}): pass an .npz instead")
    tensor = spec.inputs[0]
    layout, channels, height, width = _layout(tensor.shape)
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in _DECODED | {".npy"})
    if not files:
        raise ConfigError(f"{what}: {directory} holds no images (.png, .jpg, .npy, ...)")
    files = files[:_MAX_IMAGES]
    images = []
    for file in files:
        images.append(_channels(_resize(_read(file), height, width), channels, file))
    batch = np.stack(images).astype(np.dtype(tensor.dtype))
    if layout == "nchw":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch), (f"{len(files)} images from {directory.name}/, resized to "
                                         f"{height}x{width}, scaled to [0, 1]")
