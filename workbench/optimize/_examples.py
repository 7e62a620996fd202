"""The digits example: the shipped data set and a small CNN trained on it in seconds (for notebooks and demos)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import ConfigError

if TYPE_CHECKING:
    import torch

_ARRAYS = ("x_train", "y_train", "x_calib", "y_calib", "x_test", "y_test")


@dataclass(frozen=True)
class DigitsData:
    """The 8x8 handwritten digits, split into train, calibration and test sets (images float32 [N, 1, 8, 8]).

    Example:
        >>> data = load_digits()
        >>> data.x_test.shape
        (360, 1, 8, 8)
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, labels)`` of the test set, the shape ``workbench.optimize(eval_data=...)`` takes."""
        return self.x_test, self.y_test


@dataclass
class TrainedDigits:
    """A trained digits CNN, its accuracy on the test set and how long training took here (seconds)."""

    model: torch.nn.Module
    test_accuracy: float
    train_seconds: float

@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block (None: as they are), then restored."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)



def load_digits(path: str | os.PathLike[str] | None = None) -> DigitsData:
    """The digits data set shipped in ``datasets/digits/digits.npz`` (or ``path``).

    Raises :class:`~workbench.errors.ConfigError` when the file is missing or lacks a split.

    Example:
        >>> load_digits().x_train.shape[1:]
        (1, 8, 8)
    """
    from workbench._datasets import datasets_dir

    file = Path(path) if path is not None else datasets_dir() / "digits" / "digits.npz"
    if not file.is_file():
        raise ConfigError(f"digits data set {file} is missing; restore datasets/digits/ from the repository "
                          "(python datasets/digits/make_digits.py rebuilds it) or set WORKBENCH_DATASETS")
    with np.load(file) as npz:
        missing = [name for name in _ARRAYS if name not in npz.files]
        if missing:
            raise ConfigError(f"{file} lacks the arrays {missing}; rebuild it with datasets/digits/make_digits.py")
        arrays = {name: np.asarray(npz[name]) for name in _ARRAYS}
    return DigitsData(**arrays)


def digits_cnn() -> torch.nn.Module:
    """The untrained CNN of the examples: two 3x3 convolutions, a max-pool and two dense layers (about 40k weights).

    Example:
        >>> sum(p.numel() for p in digits_cnn().parameters()) > 10_000
        True
    """
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    )


CAMERA_SIZE = 96  # the side the camera-size CNN upsamples the 8x8 digits to, inside the model


def camera_cnn(size: int = CAMERA_SIZE) -> torch.nn.Module:
    """A CNN of a realistic size for a camera model: the 8x8 digit upsampled to ``size`` x ``size`` inside the
    model, five 3x3 conv-BN-ReLU blocks (32 to 128 channels, about 64M multiply-adds at 96 px) and a linear head.

    The upsampling is part of the graph, so devices that stream 8x8 digit frames can serve it, while its
    convolutions cost what a 96 px image model's do: enough work for INT8 kernels to pay.

    Example:
        >>> sum(p.numel() for p in camera_cnn().parameters()) > 200_000
        True
    """
    import torch

    nn = torch.nn

    def block(channels_in: int, channels_out: int, stride: int) -> list[torch.nn.Module]:
        return [nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False), nn.BatchNorm2d(channels_out),
                nn.ReLU()]

    return nn.Sequential(
        nn.Upsample(size=(size, size), mode="bilinear", align_corners=False),
        *block(1, 32, 2), *block(32, 64, 2), *block(64, 64, 1), *block(64, 128, 2), *block(128, 128, 1),
        nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(128 * 9, 10))


def train_camera_cnn(data: DigitsData | None = None, *, size: int = CAMERA_SIZE, seed: int = 0,
                     head_steps: int = 200, threads: int | None = None) -> TrainedDigits:
    """:func:`camera_cnn` made useful in seconds: random convolutions whose BatchNorm statistics are calibrated on
    the train split, and a linear head trained on their features (training every layer at 96 px takes minutes
    on two cores).

    Example:
        >>> trained = train_camera_cnn()      # doctest: +SKIP
        >>> trained.test_accuracy > 0.95      # doctest: +SKIP
        True
    """
    import torch

    if head_steps < 1 or size < 8:
        raise ConfigError(f"head_steps must be at least 1 and size at least 8, got {head_steps} and {size}")
    data = data if data is not None else load_digits()
    with _torch_threads(threads):  # restored however the block ends
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = camera_cnn(size)
        assert isinstance(model, torch.nn.Sequential)
        features, head = model[:-1], model[-1]
        assert isinstance(head, torch.nn.Linear)
        x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        started = time.perf_counter()
        for module in features.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over every calibration batch
        with torch.no_grad():
            features.train()
            for start in range(0, len(x_train), 256):
                features(x_train[start:start + 256])
            features.eval()
            train_features = torch.cat([features(x_train[i:i + 256]) for i in range(0, len(x_train), 256)])
        mean, std = train_features.mean(0), train_features.std(0) + 1e-6
        standard = (train_features - mean) / std
        optimizer = torch.optim.Adam(head.parameters(), 1e-2, weight_decay=1e-4)
        for _ in range(head_steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(head(standard), y_train).backward()
            optimizer.step()
        with torch.no_grad():  # fold the standardization into the head, so the model takes raw features
            head.weight.div_(std)
            head.bias.sub_(head.weight @ mean)
        seconds = time.perf_counter() - started
        model.eval()
        with torch.no_grad():
            predicted = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    return TrainedDigits(model, float((predicted == data.y_test).mean()), seconds)


def train_digits_cnn(data: DigitsData | None = None, *, epochs: int = 10, seed: int = 0, batch_size: int = 64,
                     threads: int | None = None) -> TrainedDigits:
    """Train :func:`digits_cnn` on the digits' train split (Adam, one-cycle schedule) and score it on the test split.

    ``threads`` caps torch's threads for the training (default: torch's own setting), restored afterwards.

    Example:
        >>> trained = train_digits_cnn(epochs=5)      # doctest: +SKIP
        >>> trained.test_accuracy > 0.9               # doctest: +SKIP
        True
    """
    import torch

    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be at least 1, got epochs={epochs}, batch_size={batch_size}")
    data = data if data is not None else load_digits()
    with _torch_threads(threads):  # restored however the block ends
        generator = torch.Generator().manual_seed(seed)
        # Weight initialisation draws from the global generator: seed it so a seed means one model.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = digits_cnn()
        x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        optimizer = torch.optim.Adam(model.parameters(), 5e-3, weight_decay=1e-4)
        steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 5e-3, total_steps=epochs * steps_per_epoch)
        started = time.perf_counter()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x_train), generator=generator)
            for start in range(0, len(x_train), batch_size):
                batch = order[start:start + batch_size]
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
                optimizer.step()
                schedule.step()
        seconds = time.perf_counter() - started
        model.eval()
        with torch.no_grad():
            predicted = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    return TrainedDigits(model, float((predicted == data.y_test).mean()), seconds)


def digits_example_input(data: DigitsData) -> Any:
    """One test image as a torch tensor [1, 1, 8, 8], the ``example_input`` that exports the CNN to ONNX.

    Example:
        >>> tuple(digits_example_input(load_digits()).shape)
        (1, 1, 8, 8)
    """
    import torch

    return torch.from_numpy(data.x_test[:1])
