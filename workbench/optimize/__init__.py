"""Optimize a model per target hardware, measured where it will run.

Example:
    >>> import workbench
    >>> result = workbench.optimize("model.onnx", target="raspberry-pi-5",      # doctest: +SKIP
    ...                             eval_data=(x_test, y_test), calibration_data=x_calib)
    >>> result.best.variant, result.best.reason                                 # doctest: +SKIP
"""

from __future__ import annotations

import sys
import types
from typing import Any

from workbench._lazy import lazy_getattr

# optimize() pulls in onnx, torch and pandas; the agent imports only the light _timing and _spec modules.
_LAZY = {
    "optimize": "workbench.optimize._optimize",
    "OptimizeResult": "workbench.optimize._result",
    "Constraints": "workbench.optimize._choice",
    "Choice": "workbench.optimize._choice",
    "choose": "workbench.optimize._choice",
    "pareto_front": "workbench.optimize._choice",
    "export_onnx": "workbench.optimize._export",
    "ModelSpec": "workbench.protocol.spec",
    "TensorSpec": "workbench.protocol.spec",
    "load_model": "workbench.protocol.spec",
    "Pass": "workbench.optimize._passes",
    "register_pass": "workbench.optimize._passes",
    "list_passes": "workbench.optimize._passes",
    "int8_outlook": "workbench.optimize._preflight",
    "prune_module": "workbench.optimize._prune",
    "time_models": "workbench.protocol.timing",
    "resolve_target": "workbench.optimize._target",
    "DigitsData": "workbench.optimize._examples",
    "TrainedDigits": "workbench.optimize._examples",
    "load_digits": "workbench.optimize._examples",
    "digits_cnn": "workbench.optimize._examples",
    "train_digits_cnn": "workbench.optimize._examples",
    "digits_example_input": "workbench.optimize._examples",
    "camera_cnn": "workbench.optimize._examples",
    "train_camera_cnn": "workbench.optimize._examples",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)


class _CallableModule(types.ModuleType):
    # Importing this package sets the attribute `workbench.optimize` to the package itself, shadowing the
    # lazily exported function of the same name: calling the package calls the function, so both spellings work.
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.optimize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
