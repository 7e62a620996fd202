"""The data a simulated device replays: digits images (camera frames) and BasicMotions (sensors).

Both come from files in the repository's ``datasets/`` (or ``$WORKBENCH_DATASETS``); the
digits fall back to scikit-learn's bundled copy, which needs no download.

Example:
    >>> frames, labels = load_digits_frames()
    >>> frames.shape[1:], frames.dtype
    ((64,), dtype('float32'))
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from workbench._settings import settings
from workbench.errors import ConfigError

SENSOR_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
SENSOR_CLASSES = ("Standing", "Walking", "Running", "Badminton")
# BasicMotions is sampled at 10 Hz: replaying it at 10 Hz is real time.
SENSOR_HZ = 10.0


def datasets_dir() -> Path:
    """Where the shipped data sets live: ``$WORKBENCH_DATASETS`` or the repository's ``datasets/``."""
    return settings().datasets or Path(__file__).resolve().parents[1] / "datasets"


@lru_cache(maxsize=1)
def load_digits_frames() -> tuple[np.ndarray, np.ndarray]:
    """8x8 digit images as float32 rows of 64 pixels scaled to 0..1, with their labels.

    Uses ``datasets/digits/*.npz`` (its test split) when present, else scikit-learn's copy.
    """
    for path in sorted((datasets_dir() / "digits").glob("*.npz")):
        with np.load(path) as data:
            for x_key, y_key in (("x_test", "y_test"), ("X_test", "y_test"), ("x", "y"), ("X", "y")):
                if x_key in data and y_key in data:
                    x = np.asarray(data[x_key], dtype=np.float32).reshape(len(data[x_key]), -1)
                    return (x / max(float(x.max()), 1.0)).astype(np.float32), np.asarray(data[y_key])
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target


@lru_cache(maxsize=1)
def load_sensor_recordings() -> dict[str, np.ndarray]:
    """BasicMotions smartwatch recordings by activity: ``{class: array (cases, 100 samples, 6 channels)}``."""
    path = datasets_dir() / "sensors" / "basicmotions.npz"
    if not path.exists():
        raise ConfigError(f"sensor data set {path} is missing; restore datasets/sensors/ from the repository "
                          "or set WORKBENCH_DATASETS to a folder that has it")
    with np.load(path) as data:
        x = np.concatenate([data["x_train"], data["x_test"]]).transpose(0, 2, 1)  # (cases, time, channel)
        y = np.concatenate([data["y_train"], data["y_test"]])
    return {name: x[y == name].astype(np.float32) for name in SENSOR_CLASSES}


def sensor_stream(classes: tuple[str, ...] | list[str]) -> np.ndarray:
    """One continuous (samples, 6) stream: every recording of ``classes``, back to back."""
    recordings = load_sensor_recordings()
    unknown = [c for c in classes if c not in recordings]
    if unknown or not classes:
        raise ConfigError(f"unknown sensor activity {unknown or classes}: choose from {', '.join(SENSOR_CLASSES)}")
    return np.concatenate([recordings[c].reshape(-1, len(SENSOR_CHANNELS)) for c in classes])
