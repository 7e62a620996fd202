"""Small real models to serve in examples and tests: a digits classifier and a sensor anomaly detector.

Both are trained here on the shipped data (seconds on a laptop CPU) and written as ONNX
with ``onnx.helper``, so no model file has to be downloaded.

Example:
    >>> path = build_digits_model(Path("/tmp/digits.onnx"))            # doctest: +SKIP
    >>> path = build_sensor_anomaly_model(Path("/tmp/anomaly.onnx"))   # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from workbench._datasets import SENSOR_CHANNELS, load_digits_frames, load_sensor_recordings, sensor_stream

ANOMALY_WINDOW = 20
NORMAL_ACTIVITIES = ("Standing", "Walking")


def _save(model: object, path: Path) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)  # type: ignore[arg-type]
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    onnx.save(model, tmp)  # type: ignore[arg-type]
    os.replace(tmp, path)
    return path


def build_digits_model(path: Path) -> Path:
    """Train a logistic-regression digit classifier (input ``pixels`` float[N,64]) and save it as ONNX.

    Output ``probabilities`` float[N,10]. Example: see the module docstring.
    """
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits_frames()
    clf = LogisticRegression(max_iter=300).fit(x, y)
    weights = numpy_helper.from_array(clf.coef_.T.astype(np.float32), "W")
    bias = numpy_helper.from_array(clf.intercept_.astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["pixels", "W", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "digits_logreg",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [weights, bias],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


def build_sensor_anomaly_model(path: Path, *, window: int = ANOMALY_WINDOW) -> Path:
    """Fit a z-score anomaly detector on normal motion (standing, walking) and save it as ONNX.

    Input ``window`` float[N, window*6] (the last ``window`` samples, time-major); output
    ``anomaly_score`` float[N,1] in 0..1: above 0.5 means the motion is unlike anything
    normal (running, badminton). Example: see the module docstring.
    """
    from onnx import TensorProto, helper, numpy_helper

    recordings = load_sensor_recordings()
    normal = np.concatenate([recordings[c] for c in NORMAL_ACTIVITIES])  # (cases, 100, 6)
    samples = normal.reshape(-1, len(SENSOR_CHANNELS))
    mean, std = samples.mean(axis=0), samples.std(axis=0) + 1e-6
    # Scored over the normal stream as devices replay it, joins between recordings included: a threshold fitted
    # inside recordings only (0.995 quantile x 1.5) let a join fire a false alarm about once a replay.
    stream = sensor_stream(NORMAL_ACTIVITIES)
    windows = np.stack([stream[i:i + window] for i in range(stream.shape[0] - window + 1)])
    scores = (((windows - mean) / std) ** 2).mean(axis=(1, 2))
    # 20% above the worst normal window; running, the anomaly the examples show, scores well above that.
    threshold = float(scores.max()) * 1.2
    width = window * len(SENSOR_CHANNELS)
    inits = [
        numpy_helper.from_array(np.tile(mean, window).astype(np.float32), "mean"),
        numpy_helper.from_array(np.tile(1.0 / std, window).astype(np.float32), "inv_std"),
        numpy_helper.from_array(np.array([threshold], np.float32), "threshold"),
        numpy_helper.from_array(np.array([4.0 / threshold], np.float32), "slope"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Sub", ["window", "mean"], ["centered"]),
         helper.make_node("Mul", ["centered", "inv_std"], ["z"]),
         helper.make_node("Mul", ["z", "z"], ["z2"]),
         helper.make_node("ReduceMean", ["z2"], ["score"], axes=[1], keepdims=1),
         helper.make_node("Sub", ["score", "threshold"], ["margin"]),
         helper.make_node("Mul", ["margin", "slope"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["anomaly_score"])],
        "sensor_zscore_anomaly",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9), path)
