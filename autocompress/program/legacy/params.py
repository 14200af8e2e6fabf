"""Reading and writing one parameter of a loaded legacy program's scope as a numpy array."""
from __future__ import annotations

import numpy as np

from ...errors import ModelError


def read_param(scope, name) -> np.ndarray:
    var = scope.find_var(name)
    if var is None or not var.get_tensor()._is_initialized():
        raise ModelError(f"parameter {name} is in the program but has no value in the loaded weights; re-export "
                         "the model, or load it into this scope")
    return np.array(var.get_tensor())


def write_param(scope, name, value: np.ndarray, place=None) -> None:
    import paddle

    scope.find_var(name).get_tensor().set(np.ascontiguousarray(value), place or paddle.CPUPlace())
