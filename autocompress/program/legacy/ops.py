"""Appending ops to legacy (non-PIR) programs where paddle 3's public functions no longer can.

In paddle 3.x, `paddle.log`, `paddle.sum`, `paddle.abs`, `paddle.matmul`, `paddle.sqrt`,
`paddle.maximum`, ... are PIR/eager-only C functions that reject a legacy `Variable`
("must be Value, but got Variable"). Our losses append the few ops they need directly, and
`patched_for_legacy()` lends paddle's own optimizer code (ClipGradByGlobalNorm's static clip calls
paddle.sqrt and paddle.maximum) legacy versions while it builds its ops.
"""
from __future__ import annotations

import contextlib


def raw(op_type: str, inputs: dict, attrs: dict | None = None):
    """Append `op_type` with `inputs` to the current program; return its single output `Out`."""
    from paddle.base.layer_helper import LayerHelper

    helper = LayerHelper(op_type)
    x = next(iter(inputs.values()))
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op(type=op_type, inputs=inputs, outputs={"Out": out}, attrs=attrs or {})
    return out


def sum_last(x):
    return raw("reduce_sum", {"X": x}, {"dim": [-1], "keep_dim": False, "reduce_all": False})


_LEGACY = {
    "sqrt": lambda x, name=None: raw("sqrt", {"X": x}),
    "maximum": lambda x, y, name=None: raw("elementwise_max", {"X": x, "Y": y}, {"axis": -1}),
}


@contextlib.contextmanager
def patched_for_legacy():
    import paddle

    saved = {name: getattr(paddle, name) for name in _LEGACY}
    try:
        for name, fn in _LEGACY.items():
            setattr(paddle, name, fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(paddle, name, fn)
