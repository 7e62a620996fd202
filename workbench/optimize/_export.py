"""Export a torch module to ONNX with a dynamic batch axis, checked for parity with torch."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import ConfigError, OptimizeError


def export_onnx(
    module: Any,
    example_input: Any,
    path: str | os.PathLike[str],
    *,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    opset: int = 18,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> Path:
    """Export ``module`` to a single-file ONNX model whose first axis (batch) is dynamic.

    The file is checked with ``onnx.checker`` and run once in ONNX Runtime; the outputs must
    match torch's within ``rtol``/``atol`` or :class:`OptimizeError` says by how much they differ.

    Example:
        >>> import torch
        >>> export_onnx(torch.nn.Linear(4, 2), torch.randn(1, 4), "/tmp/linear.onnx")  # doctest: +SKIP
        PosixPath('/tmp/linear.onnx')
    """
    import onnx
    import onnxruntime as ort
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"expected a torch.nn.Module or a path to an .onnx file, got {type(module).__name__}")
    examples = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not examples or not all(isinstance(x, torch.Tensor) for x in examples):
        raise ConfigError("example_input must be a tensor (or a tuple of tensors) shaped like one batch of input")
    names = input_names or (["input"] if len(examples) == 1 else [f"input_{i}" for i in range(len(examples))])
    outputs = output_names or ["output"]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    module = module.eval()
    batch = torch.export.Dim("batch", min=1, max=65_536)
    dynamic = tuple({0: batch} for _ in examples)
    try:
        with warnings.catch_warnings(), _quiet_torch_logs():
            # torch 2.13's exporter internals emit these on every export; they are not about the user's model.
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx\..*")
            # Batch 1 examples make torch.export specialize the batch axis: export with two rows instead.
            wide = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in examples)
            torch.onnx.export(module, wide, str(tmp), dynamo=True, external_data=False, opset_version=opset,
                              input_names=names, output_names=outputs, dynamic_shapes=dynamic, verbose=False)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise OptimizeError(f"torch.onnx.export failed for {type(module).__name__}: {exc}; "
                            "export it yourself and pass the .onnx path instead") from exc
    try:
        onnx.checker.check_model(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        feeds = {name: x.detach().cpu().numpy() for name, x in zip(names, examples, strict=True)}
        got = session.run(None, feeds)
        with torch.no_grad():
            expected = module(*examples)
        expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        for index, (want, have) in enumerate(zip(expected_list, got, strict=False)):
            want_np = want.detach().cpu().numpy()
            if not np.allclose(want_np, have, rtol=rtol, atol=atol):
                worst = float(np.max(np.abs(want_np - have)))
                raise OptimizeError(f"exported ONNX output {index} differs from torch by up to {worst:.3g} "
                                    f"(rtol={rtol}, atol={atol}); the export is not faithful: check for "
                                    "training-mode layers or data-dependent control flow")
    except OptimizeError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise OptimizeError(f"the exported model does not load or check: {exc}") from exc
    os.replace(tmp, target)
    return target


class _quiet_torch_logs:
    # The exporter logs one warning per missing torchvision op; they drown the notebook.
    def __enter__(self) -> None:
        self._logger = logging.getLogger("torch.onnx")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)
