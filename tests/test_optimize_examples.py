"""The digits example helpers the quickstart uses: the shipped data set and the CNN trained on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError
from workbench.optimize import DigitsData, digits_example_input, load_digits, train_digits_cnn


@pytest.fixture(scope="module")
def digits() -> DigitsData:
    return load_digits()


def _small(data: DigitsData, rows: int = 300) -> DigitsData:
    return DigitsData(data.x_train[:rows], data.y_train[:rows], data.x_calib, data.y_calib, data.x_test,
                      data.y_test)


def test_load_digits_returns_disjoint_labelled_splits_when_dataset_is_shipped(digits: DigitsData) -> None:
    assert digits.x_train.shape[1:] == digits.x_calib.shape[1:] == digits.x_test.shape[1:] == (1, 8, 8)
    assert len(digits.x_train) == len(digits.y_train) and len(digits.x_test) == len(digits.y_test)
    assert set(np.unique(digits.y_test)) == set(range(10))
    assert float(digits.x_train.min()) >= 0.0 and float(digits.x_train.max()) <= 1.0
    x_test, y_test = digits.test
    assert x_test is digits.x_test and y_test is digits.y_test
    train_rows = {row.tobytes() for row in digits.x_train}
    assert sum(row.tobytes() in train_rows for row in digits.x_test) < len(digits.x_test) // 10


def test_load_digits_raises_config_error_naming_the_file_when_it_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(ConfigError, match=r"nope\.npz"):
        load_digits(missing)


def test_load_digits_raises_config_error_naming_arrays_when_a_split_is_missing(tmp_path: Path) -> None:
    partial = tmp_path / "partial.npz"
    np.savez(partial, x_train=np.zeros((2, 1, 8, 8), np.float32), y_train=np.zeros(2, np.int64))
    with pytest.raises(ConfigError, match="x_calib"):
        load_digits(partial)


def test_train_digits_cnn_gives_identical_weights_when_seed_is_the_same(digits: DigitsData) -> None:
    small = _small(digits)
    first = train_digits_cnn(small, epochs=1, seed=3)
    second = train_digits_cnn(small, epochs=1, seed=3)
    other = train_digits_cnn(small, epochs=1, seed=4)
    pairs = list(zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert first.test_accuracy == second.test_accuracy
    assert not all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                     other.model.state_dict().values(), strict=True))


def test_train_digits_cnn_learns_far_above_chance_when_trained_on_the_train_split(digits: DigitsData) -> None:
    trained = train_digits_cnn(digits, epochs=2, seed=0)
    with torch.no_grad():
        predicted = trained.model(torch.from_numpy(digits.x_test)).argmax(1).numpy()
    assert trained.test_accuracy == pytest.approx(float((predicted == digits.y_test).mean()))
    assert trained.test_accuracy > 0.5, "ten classes: chance is 0.1"
    assert not trained.model.training and trained.train_seconds > 0


def test_train_digits_cnn_restores_torch_threads_when_it_capped_them(digits: DigitsData) -> None:
    before = torch.get_num_threads()
    train_digits_cnn(_small(digits, 64), epochs=1, threads=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": 0}])
def test_train_digits_cnn_raises_config_error_when_counts_are_not_positive(
    digits: DigitsData, kwargs: dict[str, int]
) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        train_digits_cnn(digits, **kwargs)


def test_digits_example_input_is_one_test_image_when_exporting(digits: DigitsData) -> None:
    example = digits_example_input(digits)
    assert isinstance(example, torch.Tensor) and tuple(example.shape) == (1, 1, 8, 8)
    assert np.array_equal(example.numpy(), digits.x_test[:1])


@pytest.fixture(scope="module")
def camera(digits: DigitsData) -> object:
    from workbench.optimize import train_camera_cnn

    return train_camera_cnn(digits, threads=2)


def test_camera_cnn_classifies_digits_when_features_are_bn_calibrated_and_head_trained(camera: object) -> None:
    from workbench.optimize import camera_cnn

    assert camera.test_accuracy >= 0.95, camera.test_accuracy  # type: ignore[attr-defined]
    assert sum(p.numel() for p in camera_cnn().parameters()) > 200_000
    # The 8x8 digit is upsampled inside the model: devices stream 8x8 frames to it unchanged.
    with torch.no_grad():
        assert tuple(camera.model(torch.zeros(2, 1, 8, 8)).shape) == (2, 10)  # type: ignore[attr-defined]


def test_camera_cnn_int8_is_chosen_and_measurably_faster_when_cpu_has_int8_dot_product(
        camera: object, digits: DigitsData) -> None:
    from workbench.optimize import optimize
    from workbench.profiles import cpu_features

    flags = set(cpu_features())
    if not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        pytest.skip(f"this CPU has no INT8 dot-product instructions (flags: {', '.join(sorted(flags))}); "
                    "the preflight says why INT8 may not pay here")
    result = optimize(camera.model, "x86-server", example_input=digits_example_input(digits),  # type: ignore[attr-defined]
                      eval_data=digits.test, calibration_data=digits.x_calib, calibration_methods=("minmax",),
                      prune=False, iterations=30, rounds=5, use_cache=False, sweep=False)
    # U8S8 (int8-static-minmax) or S8S8 (int8-static-s8s8), whichever this CPU runs faster.
    assert result.best.variant in {"int8-static-minmax", "int8-static-s8s8"}, result.best.reason
    chosen, fp32 = result.row(result.best.variant), result.row("fp32")
    assert chosen["speedup"] >= 1.5 and chosen["p50_ms"] < fp32["p50_ms"] / 1.5, (chosen, fp32)
    assert fp32["accuracy"] - chosen["accuracy"] <= 0.01
    assert result.preflight["int8_likely_helps"] is True
