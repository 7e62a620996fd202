"""Quality of a variant: accuracy against labels, or agreement with the FP32 outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from workbench.optimize._data import Samples

Metric = Callable[[np.ndarray, np.ndarray], float]


def run_outputs(path: str, samples: Samples, *, threads: int = 1, batch: int = 256) -> list[np.ndarray]:
    """All outputs of the model over the samples, batched where the model allows it.

    Example:
        >>> run_outputs("model.onnx", samples)[0].shape   # doctest: +SKIP
        (360, 10)
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    # Large inputs (640x640 images) in batches of at most ~64 MB.
    batch = max(1, min(batch, (64 << 20) // samples.sample_bytes()))
    parts: list[list[np.ndarray]] = []
    for feeds in samples.batches(batch):
        parts.append(session.run(None, feeds))
    if samples.stacked and all(np.ndim(p[i]) > 0 for p in parts for i in range(len(p))):
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
    # One sample per run: the outputs get a leading sample axis.
    return [np.stack([np.asarray(p[i]) for p in parts]) for i in range(len(parts[0]))]


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 classification accuracy of logits (or class scores) against integer labels.

    Example:
        >>> import numpy as np
        >>> accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
        0.5
    """
    return float(np.mean(np.argmax(outputs.reshape(outputs.shape[0], -1), axis=1) == labels.reshape(-1)))


def agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float]:
    """How closely a variant reproduces the FP32 outputs: top-1 match, cosine, SQNR in dB.

    Example:
        >>> import numpy as np
        >>> a = [np.array([[1.0, 2.0], [3.0, 1.0]])]
        >>> agreement(a, a)["top1"]
        1.0
    """
    ref = reference[0].astype(np.float64).reshape(reference[0].shape[0], -1)
    got = candidate[0].astype(np.float64).reshape(candidate[0].shape[0], -1)
    # Top-1 only for class scores [N, classes] (or [N, 1, classes] from a model fed one sample at a time);
    # a map (a detector's [N, C, H, W]) is compared by cosine.
    shape = reference[0].shape
    classes = len(shape) >= 2 and shape[-1] > 1 and int(np.prod(shape[1:-1])) == 1
    top1 = float(np.mean(np.argmax(ref, axis=1) == np.argmax(got, axis=1))) if classes else float("nan")
    flat_ref = np.concatenate([r.astype(np.float64).ravel() for r in reference])
    flat_got = np.concatenate([c.astype(np.float64).ravel() for c in candidate])
    norms = float(np.linalg.norm(flat_ref)), float(np.linalg.norm(flat_got))
    if norms[0] > 0 and norms[1] > 0:
        cosine = float(flat_ref @ flat_got / (norms[0] * norms[1]))
    else:  # an all-zero output agrees only with another all-zero output (a broken INT8 map is all zeros)
        cosine = 1.0 if norms[0] == norms[1] == 0 else 0.0
    noise = float(np.sum((flat_ref - flat_got) ** 2))
    signal = float(np.sum(flat_ref**2))
    sqnr = float("inf") if noise == 0 else float(10.0 * np.log10(max(signal, 1e-30) / noise))
    return {"top1": top1, "cosine": cosine, "sqnr_db": sqnr}


def score(outputs: list[np.ndarray], samples: Samples, metric: Metric | str | None,
          reference: list[np.ndarray]) -> tuple[float, str]:
    """The quality number the choice uses (higher is better) and its name.

    Accuracy where labels exist; a user metric callable(outputs, labels); else top-1 agreement
    with FP32 (cosine where outputs are not class scores).
    """
    if callable(metric):
        return float(metric(outputs[0], samples.labels if samples.labels is not None else reference[0])), \
            getattr(metric, "__name__", "metric")
    if samples.labels is not None and metric in (None, "accuracy"):
        return accuracy(outputs[0], samples.labels), "accuracy"
    agree = agreement(reference, outputs)
    if np.isnan(agree["top1"]):
        return agree["cosine"], "cosine agreement with FP32"
    return agree["top1"], "top-1 agreement with FP32"


def describe_metric(metric: Any) -> str:
    return getattr(metric, "__name__", str(metric))
