"""Finding the layers that break under quantization: rank them by the error they add against FP32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workbench.optimize._data import Samples
from workbench.optimize._files import has_external_data

_QUANTIZED_OPS = {"Conv", "MatMul", "Gemm", "ConvTranspose", "Attention", "MatMulNBits"}


def _with_outputs(path: Path, names: list[str], dst: Path) -> None:
    import onnx

    # Without the weights: the probe sits next to the model, so it finds the same external data files.
    model = onnx.load(str(path), load_external_data=False)
    present = {o.name for o in model.graph.output}
    # The quantizer renames some tensors: probe only those this model computes.
    computed = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}
    for name in names:
        if name not in present and name in computed:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(dst))


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got.astype(np.float64)) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return 120.0 if noise == 0 else float(10 * np.log10(max(signal, 1e-30) / noise))


def rank_layers(fp32: Path, quantized: Path, samples: Samples, workdir: Path) -> list[dict[str, Any]]:
    """Quantizable nodes, worst first, by how many dB of SQNR each loses between its input and output.

    Example:
        >>> rank_layers(Path("fp32.onnx"), Path("int8.onnx"), calib, Path("/tmp"))[0]["node"]  # doctest: +SKIP
        'node_Conv_0'
    """
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(fp32), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type in _QUANTIZED_OPS and n.name]
    names = sorted({t for n in nodes for t in (n.input[0], n.output[0])})
    both = []
    for index, path in enumerate((fp32, quantized)):
        # A model with external data is probed from its own directory, where its data files are.
        probe = (path.parent if has_external_data(path) else workdir) / f".probe{index}-{path.name}"
        _with_outputs(path, names, probe)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(probe), sess_options=options, providers=["CPUExecutionProvider"])
        available = [o.name for o in session.get_outputs() if o.name in names]
        values: dict[str, list[np.ndarray]] = {n: [] for n in available}
        for feeds in samples.head(32).batches(1):
            for name, value in zip(available, session.run(available, feeds), strict=True):
                values[name].append(value)
        both.append({k: np.concatenate(v) for k, v in values.items()})
        probe.unlink(missing_ok=True)
    ref, got = both
    ranked = []
    for node in nodes:
        if node.output[0] not in ref or node.output[0] not in got:
            continue
        out_sqnr = _sqnr(ref[node.output[0]], got[node.output[0]])
        in_sqnr = _sqnr(ref[node.input[0]], got[node.input[0]]) if node.input[0] in ref and node.input[0] in got \
            else 120.0
        ranked.append({"node": node.name, "op": node.op_type, "sqnr_db": round(out_sqnr, 2),
                       "added_error_db": round(max(0.0, min(in_sqnr, 120.0) - out_sqnr), 2)})
    ranked.sort(key=lambda r: (-r["added_error_db"], r["sqnr_db"]))
    return ranked
