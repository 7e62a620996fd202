"""Make datasets/digits/digits.npz from scikit-learn's bundled copy of the UCI digits data.

Run from the repository root: ``python datasets/digits/make_digits.py``. Deterministic (seed 0):
images scaled from 0..16 to 0..1 as float32, shaped (N, 1, 8, 8); labels int64; stratified
split into train (1237), calibration (200) and test (360).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).with_name("digits.npz")


def main() -> None:
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(images, labels, test_size=360, random_state=0,
                                                      stratify=labels)
    x_train, x_calib, y_train, y_calib = train_test_split(x_rest, y_rest, test_size=200, random_state=0,
                                                          stratify=y_rest)
    tmp = OUT.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, x_train=x_train, y_train=y_train, x_calib=x_calib, y_calib=y_calib,
                        x_test=x_test, y_test=y_test)
    tmp.replace(OUT)
    print(f"wrote {OUT}: train {len(x_train)}, calibration {len(x_calib)}, test {len(x_test)}")


if __name__ == "__main__":
    main()
