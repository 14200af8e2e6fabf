"""What a legacy program holds: inputs, outputs, parameters, FLOPs. Reads only; call inside `legacy_ir()`."""
from __future__ import annotations

import numpy as np

# op types whose multiply-accumulates count as FLOPs (2 * MACs, the usual convention)
FLOP_OPS = ("conv2d", "depthwise_conv2d", "conv2d_transpose", "depthwise_conv2d_transpose", "mul", "matmul",
            "matmul_v2", "fc")


def var_info(block, name: str) -> dict:
    var = block.var(name)
    dtype = str(var.dtype).replace("paddle.", "").replace("VarType.", "").lower()
    return {"name": name, "shape": [int(d) for d in var.shape], "dtype": dtype}


def _dense_type():
    import paddle

    return paddle.base.core.VarDesc.VarType.LOD_TENSOR


def persistable_names(program) -> list[str]:
    """The weights and statistics (persistable dense tensors), feed/fetch holders excluded."""
    block = program.global_block()
    return [v.name for v in block.vars.values()
            if v.persistable and v.name not in ("feed", "fetch") and v.type == _dense_type()]


def count_params(program) -> int:
    block = program.global_block()
    return int(sum(int(np.prod(block.var(n).shape)) for n in persistable_names(program)))


def param_bytes(program, scope) -> int:
    total = 0
    for name in persistable_names(program):
        var = scope.find_var(name)
        if var is None or not var.get_tensor()._is_initialized():
            continue
        total += np.asarray(var.get_tensor()).nbytes
    return int(total)


def macs(op_type: str, out_shape, weight_shape=None, x_shape=None, in_shape=None, trans_x: bool = False) -> int:
    """Multiply-accumulates of one FLOP op, from static shapes (batch 1); shared with the PIR backend.

    conv: every output element sums in_c/groups * kh * kw products; a transposed conv scatters every
    *input* element into out_c/groups * kh * kw outputs; matmul / mul / fc: every output element is a
    dot product over the reduced dimension."""
    if op_type in ("conv2d", "depthwise_conv2d"):
        return int(np.prod(out_shape)) * int(np.prod(weight_shape[1:]))
    if op_type in ("conv2d_transpose", "depthwise_conv2d_transpose"):  # weight [in_c, out_c/groups, kh, kw]
        return int(np.prod(in_shape[1:])) * int(np.prod(weight_shape[1:]))
    k = x_shape[-2] if trans_x else x_shape[-1]
    return int(np.prod(out_shape)) * max(int(k), 1)


def count_flops(program, feed_names: list[str], feed_shapes: dict[str, list[int]] | None = None) -> int | None:
    """FLOPs of one sample (2 x multiply-accumulates of conv / matmul ops), by static shape inference.

    The batch dimension counts as 1. Other unknown (-1) dims need `feed_shapes`; without them the
    result is None rather than a guess.
    """
    prog = program.clone(for_test=True)
    block = prog.global_block()
    for name in feed_names:
        shape = list((feed_shapes or {}).get(name) or block.var(name).shape)
        shape = [1 if i == 0 and d < 0 else d for i, d in enumerate(shape)]
        if any(d < 0 for d in shape):
            return None
        block.var(name).desc.set_shape(shape)
    flops = 0
    for op in block.ops:
        if op.type in ("feed", "fetch"):
            continue
        try:
            op.desc.infer_shape(block.desc)
        except Exception:
            return None
        if op.type not in FLOP_OPS:
            continue
        out_name = op.output("Output" if "Output" in op.output_names else "Out")[0]
        out_shape = [max(d, 1) for d in block.var(out_name).shape]
        if "Filter" in op.input_names:
            in_shape = [max(d, 1) for d in block.var(op.input("Input")[0]).shape]
            flops += 2 * macs(op.type, out_shape, weight_shape=block.var(op.input("Filter")[0]).shape,
                              in_shape=in_shape)
        else:
            x_shape = block.var(op.input("X" if "X" in op.input_names else "Input")[0]).shape
            trans_x = op.type == "matmul_v2" and bool(op.attr("trans_x"))
            flops += 2 * macs(op.type, out_shape, x_shape=x_shape, trans_x=trans_x)
    return int(flops)


def facts(program, feed_names, fetch_names, scope, feed_shapes: dict[str, list[int]] | None = None) -> dict:
    """Inputs, outputs, parameter count and bytes, FLOPs of a loaded legacy program."""
    block = program.global_block()
    return {"inputs": [var_info(block, n) for n in feed_names],
            "outputs": [var_info(block, n) for n in fetch_names],
            "params": count_params(program),
            "param_bytes": param_bytes(program, scope),
            "flops": count_flops(program, list(feed_names), feed_shapes)}


def summarize(files, feed_shapes: dict[str, list[int]] | None = None) -> dict:
    """`facts` of a legacy model's files."""
    from ...model_io import load_model
    from ...paddle_env import legacy_ir

    with legacy_ir():
        model = load_model(files)
        return facts(model.program, model.feed_names, model.fetch_names, model.scope, feed_shapes)
