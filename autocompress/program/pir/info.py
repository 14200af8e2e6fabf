"""What a PIR program (`*.json`) holds: inputs, outputs, parameters, FLOPs, read natively from the program.

PIR values carry their static shapes, so nothing is translated or run: `builtin.parameter` ops name
the weights, `pd_op.data` the inputs, `pd_op.fetch` the outputs. FLOPs follow the legacy backend's
rules (`program.legacy.info.macs`) with the batch dimension as 1. Paddle 3.3.1 offers no shape
inference of PIR ops from Python, so a program whose other dimensions are dynamic (-1, e.g. an OCR
model's height and width) is counted on its legacy translation with the given `feed_shapes`
(`summarize`); without them its FLOPs are None, as a legacy one's are.
"""
from __future__ import annotations

import numpy as np

from ..legacy.info import macs

PARAMETER_OPS = ("builtin.parameter", "pd_op.parameter")
_FLOP_OPS = {"pd_op.conv2d": "conv2d", "pd_op.depthwise_conv2d": "depthwise_conv2d",
             "pd_op.conv2d_transpose": "conv2d_transpose",
             "pd_op.depthwise_conv2d_transpose": "depthwise_conv2d_transpose",
             "pd_op.matmul": "matmul_v2", "pd_op.fc": "fc"}


def load(files):
    """(program, feed names, fetch values, scope) of a PIR model, in its own scope."""
    import paddle

    from ...errors import ModelError
    from ...paddle_env import paddle as static_paddle

    static_paddle()
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    try:
        with paddle.pir_utils.IrGuard(), paddle.static.scope_guard(scope):
            program, feeds, fetches = paddle.static.load_inference_model(files.path_prefix, exe)
    except Exception as err:
        raise ModelError(f"could not load the PIR model {files.model_path}: {type(err).__name__}: {err}") from None
    return program, list(feeds), list(fetches), scope


def _dtype(value) -> str:
    return str(value.dtype).replace("paddle.", "")


def _ops(program):
    return list(program.global_block().ops)


def inputs(program, feed_names) -> list[dict]:
    values = {op.attrs()["name"]: op.result(0) for op in _ops(program) if op.name() == "pd_op.data"}
    return [{"name": n, "shape": [int(d) for d in values[n].shape], "dtype": _dtype(values[n])}
            for n in feed_names if n in values]


def outputs(program) -> list[dict]:
    """The fetched values, named as their fetch ops name them (`fetch_name_0`, ...), in fetch order."""
    fetches = sorted((op.attrs().get("col", i), op) for i, op in enumerate(_ops(program)) if op.name() == "pd_op.fetch")
    return [{"name": op.attrs()["name"], "shape": [int(d) for d in op.operand_source(0).shape],
             "dtype": _dtype(op.operand_source(0))} for _, op in fetches]


def parameters(program) -> dict[str, list[int]]:
    """Parameter name -> shape, weights and statistics (batch-norm means and variances) alike."""
    return {op.attrs()["parameter_name"]: [int(d) for d in op.result(0).shape]
            for op in _ops(program) if op.name() in PARAMETER_OPS}


def count_params(program) -> int:
    return int(sum(int(np.prod(shape)) for shape in parameters(program).values()))


def param_bytes(program, scope) -> int:
    total = 0
    for name in parameters(program):
        var = scope.find_var(name)
        if var is not None and var.get_tensor()._is_initialized():
            total += np.asarray(var.get_tensor()).nbytes
    return int(total)


def op_types(program) -> list[str]:
    return sorted({op.name() for op in _ops(program)})


def _static(shape) -> list[int] | None:
    """A value's shape with the batch dimension as 1, or None when another dimension is dynamic."""
    dims = [1 if i == 0 and d < 0 else int(d) for i, d in enumerate(shape)]
    return None if any(d < 0 for d in dims) else dims


def count_flops(program) -> int | None:
    """FLOPs of one sample (2 x multiply-accumulates of conv / matmul ops), from the values' static shapes."""
    flops = 0
    for op in _ops(program):
        kind = _FLOP_OPS.get(op.name())
        if kind is None:
            continue
        x, w, out = op.operand_source(0), op.operand_source(1), op.result(0)
        shapes = [_static(v.shape) for v in (x, w, out)]
        if any(s is None for s in shapes):
            return None
        x_shape, w_shape, out_shape = shapes
        if kind.startswith(("conv", "depthwise")):
            flops += 2 * macs(kind, out_shape, weight_shape=w_shape, in_shape=x_shape)
        else:
            trans_x = bool(op.attrs().get("transpose_x", False))
            flops += 2 * macs(kind, out_shape, x_shape=x_shape, trans_x=trans_x)
    return int(flops)


def summarize(files, feed_shapes: dict[str, list[int]] | None = None) -> dict:
    """Inputs, outputs, parameter count and bytes, FLOPs of a PIR model (module docstring)."""
    program, feeds, _, scope = load(files)
    flops = count_flops(program)
    if flops is None and feed_shapes:
        flops = _flops_of_translation(files, feed_shapes)
    return {"inputs": inputs(program, feeds), "outputs": outputs(program), "params": count_params(program),
            "param_bytes": param_bytes(program, scope), "flops": flops}


def _flops_of_translation(files, feed_shapes) -> int | None:
    import logging
    import tempfile

    from ...errors import ModelError
    from ..to_legacy import pir_to_legacy
    from ..legacy.info import summarize as legacy_summarize

    with tempfile.TemporaryDirectory(prefix="ac-flops-") as tmp:
        try:
            legacy = pir_to_legacy(files, f"{tmp}/legacy", feed_shapes=feed_shapes)
        except ModelError as err:  # an op outside the translator's table: say why FLOPs are missing
            logging.getLogger("autocompress").info("FLOPs of %s not counted: %s", files.model_path, err)
            return None
        return legacy_summarize(legacy, feed_shapes)["flops"]
