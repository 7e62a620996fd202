"""Recurrent state in generated data: each state input gets the state the FP32 model returned for the sample before."""

from __future__ import annotations

from pathlib import Path

from workbench.optimize._data import Samples
from workbench.protocol.spec import ModelSpec, TensorSpec, input_role


def _common_prefix(a: str, b: str) -> int:
    count = 0
    for x, y in zip(a.lower(), b.lower(), strict=False):
        if x != y:
            break
        count += 1
    return count


def _compatible(state: TensorSpec, output: TensorSpec) -> bool:
    if state.dtype != output.dtype or len(state.shape) != len(output.shape):
        return False
    return all(not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(state.shape, output.shape,
                                                                                         strict=True))


def state_pairs(spec: ModelSpec) -> dict[str, str]:
    """State inputs and the outputs that carry them to the next call (``state`` -> ``stateN``, ``h0`` -> ``hn``).

    An input counts as state by its name (see :func:`input_role`); its output has the same dtype,
    rank and fixed sizes, and the name most like it.

    Example:
        >>> spec = ModelSpec((TensorSpec("x", "float32", ("b", 4)), TensorSpec("state", "float32", (2, "b", 8))),
        ...                  (TensorSpec("y", "float32", ("b", 1)), TensorSpec("stateN", "float32", (2, "b", 8))),
        ...                  15, ())
        >>> state_pairs(spec)
        {'state': 'stateN'}
    """
    pairs: dict[str, str] = {}
    taken: set[str] = set()
    for tensor in spec.inputs:
        if input_role(tensor) != "state":
            continue
        candidates = [o for o in spec.outputs if o.name not in taken and _compatible(tensor, o)]
        if not candidates:
            continue
        best = max(candidates, key=lambda o: (_common_prefix(tensor.name, o.name), input_role(o) == "state"))
        pairs[tensor.name] = best.name
        taken.add(best.name)
    return pairs


def roll_state(path: Path, samples: Samples, pairs: dict[str, str]) -> Samples:
    """``samples`` with each state input replaced by the FP32 model's state output for the previous sample.

    The first sample keeps its (zero) state; samples are run in order, as a stream would be.

    Example:
        >>> rolled = roll_state(Path("vad.onnx"), generated, {"state": "stateN"})   # doctest: +SKIP
    """
    import onnxruntime as ort

    if not pairs:
        return samples
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    inputs = {k: v.copy() for k, v in samples.inputs.items()}
    rolled = Samples(inputs, samples.labels, samples.origin, samples.stacked)
    wanted = list(pairs.values())
    for index, feeds in enumerate(rolled.batches(1)):
        if index + 1 >= rolled.count:
            break
        values = dict(zip(wanted, session.run(wanted, feeds), strict=True))
        for state, output in pairs.items():
            target = inputs[state][index + 1] if not samples.stacked else inputs[state][index + 1:index + 2]
            if values[output].shape != target.shape:
                return samples  # the state output is not shaped like the input: leave the zeros
            target[...] = values[output]
    return rolled
