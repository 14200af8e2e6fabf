"""Channel removal, legacy backend: delete channels from the weights and re-derive every shape.

Which channels go is the pruning algorithm's business (`prune/`: the dependency graph and the plan);
this module makes the program and scope agree with the smaller weights: parameter shapes, the
`groups` of depthwise convs, the target shapes of reshapes that name a channel count, and then every
activation shape by Paddle's own shape inference, op by op.
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from .params import read_param, write_param


def remove_channels(program, scope, removals: dict[str, dict[int, np.ndarray]], *, depthwise_ops=(),
                    flatten_reshapes=(), view_reshapes: dict[int, int] | None = None, place=None) -> None:
    """Delete `removals` (parameter -> {axis: positions}) from `scope`'s tensors and `program`'s shapes.

    depthwise_ops: global-block op indices whose `groups` follows their filter's output channels;
    flatten_reshapes: reshape2 ops to [batch, C*H*W] after a pruned conv; view_reshapes: op index ->
    position in its `shape` attribute that holds the (pruned) channel count of its input."""
    import paddle

    place = place or paddle.CPUPlace()
    block = program.global_block()
    for name, axes in removals.items():
        arr = read_param(scope, name)
        for axis, pos in axes.items():
            arr = np.delete(arr, pos, axis=axis)
        write_param(scope, name, arr, place)
        block.var(name).desc.set_shape(list(arr.shape))
    depthwise, flatten, views = set(depthwise_ops), set(flatten_reshapes), dict(view_reshapes or {})
    for idx, op in enumerate(block.ops):
        if op.type in ("feed", "fetch"):
            continue
        if idx in depthwise:
            op.desc._set_attr("groups", int(block.var(op.input("Filter")[0]).shape[0]))
        if idx in flatten:
            xshape = block.var(op.input("X")[0]).shape
            shape = list(op.attr("shape"))
            op.desc._set_attr("shape", [shape[0], int(np.prod(xshape[1:]))])
        if idx in views:
            shape = list(op.attr("shape"))
            if shape[views[idx]] != -1:
                shape[views[idx]] = int(block.var(op.input("X")[0]).shape[0])
                op.desc._set_attr("shape", shape)
        try:
            op.desc.infer_shape(block.desc)  # re-derive every activation shape from the new weights
        except Exception as err:
            raise ModelError(f"pruning left op {idx} ({op.type}) with inconsistent shapes: {err}. "
                             "This is a bug in the dependency analysis; prune fewer layers "
                             "(prune_params_name) and report it.") from None
