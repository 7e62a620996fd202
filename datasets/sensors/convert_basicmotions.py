"""Rebuild basicmotions.npz from the BasicMotions .ts files that the aeon package ships.

Run: pip download --no-deps aeon==1.6.0 && unzip the wheel's aeon/datasets/data/BasicMotions/,
then `python convert_basicmotions.py path/to/BasicMotions`.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

CHANNELS = ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]


def read_ts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    cases, labels = [], []
    in_data = False
    for line in path.read_text().splitlines():
        if not in_data:
            in_data = line.strip().lower() == "@data"
            continue
        *dims, label = line.strip().split(":")
        cases.append([[float(v) for v in dim.split(",")] for dim in dims])
        labels.append(label)
    return np.asarray(cases, dtype=np.float32), np.asarray(labels)


def main(folder: Path) -> None:
    out: dict[str, np.ndarray] = {"channels": np.asarray(CHANNELS)}
    for split in ("TRAIN", "TEST"):
        source = folder / f"BasicMotions_{split}.ts"
        x, y = read_ts(source)
        out[f"x_{split.lower()}"], out[f"y_{split.lower()}"] = x, y
        print(f"{source.name}: {x.shape}, sha256 {hashlib.sha256(source.read_bytes()).hexdigest()}")
    np.savez_compressed(Path(__file__).with_name("basicmotions.npz"), **out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
