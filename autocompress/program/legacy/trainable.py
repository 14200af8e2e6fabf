"""Inference program -> trainable program, without changing what the model computes.

An exported inference program has lost what training needs: its weights are plain persistable
variables (not `Parameter`s, so an optimizer would ignore them), ops carry `is_test=True`
(batch_norm uses running statistics, dropout is the identity), and outputs that only training
uses (dropout's `Mask`, batch_norm's `ReserveSpace`) were clipped. This module restores those,
on a clone: the loaded model's program and scope are never touched. All calls go inside
`autocompress.paddle_env.legacy_ir()`.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ...errors import ModelError

log = logging.getLogger("autocompress.train")

# Outputs that inference export drops and training needs although the op proto calls them
# dispensable, or whose dtype is not the input's (None = the dtype of the op's X input).
_TRAINING_OUTPUTS = {"dropout": {"Mask": "uint8"}, "batch_norm": {"ReserveSpace": None}}
# Ops that `is_test=False` turns into their training behaviour. batch_norm additionally needs
# use_global_stats=False, which jit.save sets to True for a layer in eval mode.
_NORM_OPS = ("batch_norm", "sync_batch_norm")


@dataclasses.dataclass
class TrainableProgram:
    """A training-mode program plus what the trainer needs to know about it."""

    program: object            # paddle.static.Program in training mode, no feed/fetch ops
    feed_names: list[str]
    output_names: list[str]    # the inference model's outputs (fetch targets), same names
    param_names: list[str]     # the persistables the optimizer may update

    def eval_program(self):
        """The same computation in inference mode (is_test=True everywhere), sharing var names.

        Call it before the optimizer is added: `Program.clone(for_test=True)` is only documented to
        strip training behaviour, not backward ops."""
        return self.program.clone(for_test=True)


def make_trainable(model, freeze_bn: bool = False) -> TrainableProgram:
    """Return a trainable clone of `model.program` (a LoadedModel or anything with `program`,
    `feed_names`, `fetch_names`). Variable names stay the same, so the model's persistables can
    be copied into a training scope by name (`copy_persistables`).

    freeze_bn: keep batch_norm on its running statistics while training (small or skewed batches,
    e.g. a few text lines, make batch statistics noisy); the default trains BN like the original
    training would.
    """
    program = model.program.clone()
    if program.num_blocks > 1:
        # Control flow (while / conditional_block) keeps ops in sub-blocks whose vars we would have
        # to promote and rename separately; no supported model needs it yet.
        raise ModelError(f"{model.files.model_filename if hasattr(model, 'files') else 'the model'} has "
                         f"{program.num_blocks - 1} control-flow sub-blocks; training such programs is not "
                         "supported. Compress it with PTQ (QuantizationConfig + HyperParameterOptimizationConfig).")
    strip_feed_fetch(program, list(model.feed_names))
    set_training(program, True, freeze_bn=freeze_bn)
    params = promote_parameters(program)
    return TrainableProgram(program, list(model.feed_names), list(model.fetch_names), params)


def strip_feed_fetch(program, feed_names: list[str]) -> None:
    """Remove the feed/fetch ops and their holder vars; the executor adds its own when it runs.

    Keeping them would make every teacher merge and program clone deal with a shared `feed`
    holder var, and `append_backward` with a fetch op at the end of the block."""
    remove_feed_fetch_ops(program)
    block = program.global_block()
    for name in ("feed", "fetch"):
        if block.has_var(name):
            block._remove_var(name, sync=False)
    program._sync_with_cpp()
    for name in feed_names:
        var = block.var(name)
        var.stop_gradient = True
        var.desc.set_need_check_feed(True)
        var.is_data = True


def remove_feed_fetch_ops(program) -> None:
    """Remove the feed and fetch ops (an executor adds its own for every run)."""
    block = program.global_block()
    for i in reversed(range(len(block.ops))):
        if block.ops[i].type in ("feed", "fetch"):
            block._remove_op(i, sync=False)
    program._sync_with_cpp()


def set_training(program, training: bool, freeze_bn: bool = False) -> None:
    """Flip every op between its training and inference behaviour, in place."""
    block = program.global_block()
    for op in block.ops:
        if op.has_attr("is_test"):
            op._set_attr("is_test", not training)
        if op.type in _NORM_OPS and op.has_attr("use_global_stats"):
            op._set_attr("use_global_stats", (not training) or freeze_bn)
        if training:
            _restore_training_outputs(block, op)


def _restore_training_outputs(block, op) -> None:
    """Re-create outputs that export clipped but training kernels or grad ops need (XShape of
    flatten/reshape/transpose, dropout's Mask, batch_norm's ReserveSpace): every output slot the
    op's proto declares non-dispensable, plus the training-only ones in _TRAINING_OUTPUTS."""
    from paddle.base.framework import OpProtoHolder

    try:
        proto = OpProtoHolder.instance().get_op_proto(op.type)
    except ValueError:
        return
    extra = _TRAINING_OUTPUTS.get(op.type, {})
    for out in proto.outputs:
        present = out.name in op.output_names and op.output(out.name)
        if present or (out.dispensable and out.name not in extra):
            continue
        inputs = [n for n in op.input_arg_names if block.has_var(n)]
        if not inputs:
            continue
        x = block.var(op.input("X")[0]) if "X" in op.input_names and op.input("X") else block.var(inputs[0])
        dtype = extra.get(out.name) or x.dtype
        shape = [0] + list(x.shape) if out.name == "XShape" else list(x.shape)
        var = block.create_var(name=f"{op.output_arg_names[0]}.{out.name.lower()}", dtype=dtype, shape=shape,
                               persistable=False, stop_gradient=True)
        op.desc.set_output(out.name, [var.name])


def written_names(program) -> set[str]:
    """Names that some op writes. A persistable that an op writes is a statistic (BN running mean
    and variance, fake-quant scales and states), updated by its op, never by the optimizer."""
    return {n for op in program.global_block().ops for n in op.output_arg_names}


def promote_parameters(program, exclude: set[str] | None = None) -> list[str]:
    """Turn the weights (float persistables no op writes) into `Parameter`s so the optimizer sees
    them; every other variable keeps its gradient flowing. Returns the parameter names."""
    from paddle.base.framework import Parameter

    block = program.global_block()
    written = written_names(program)
    exclude = exclude or set()
    used = {n for op in block.ops for n in op.input_arg_names}
    params = []
    for name, var in list(block.vars.items()):
        if not var.persistable or name in written or name in exclude or name not in used:
            continue
        if not _is_float(var) or var.type != _dense_type():
            continue
        if not isinstance(var, Parameter):
            param = Parameter(block=block, shape=var.shape, dtype=var.dtype, type=var.type, name=name,
                              trainable=True)
            block.vars[name] = param
        params.append(name)
    for name, var in block.vars.items():
        if not var.persistable and not getattr(var, "is_data", False) and _is_float(var):
            var.stop_gradient = False
    return params


def _dense_type():
    from paddle.base import core

    return core.VarDesc.VarType.DENSE_TENSOR


def _is_float(var) -> bool:
    try:
        return "float" in str(var.dtype) or "bfloat16" in str(var.dtype)
    except Exception:  # feed/fetch holders and readers have no dtype
        return False


def copy_persistables(src_program, src_scope, dst_scope, place, prefix: str = "",
                      names: list[str] | None = None) -> list[str]:
    """Copy persistable values from `src_scope` into `dst_scope` under `prefix + name`.

    Copies (not shares) so training never writes into the loaded model's scope, which stays the
    untouched original for baseline evaluation and as the default teacher."""
    copied = []
    for name in names if names is not None else persistable_value_names(src_program):
        src = src_scope.find_var(name)
        if src is None or not src.get_tensor()._is_initialized():
            continue
        dst_scope.var(prefix + name).get_tensor().set(np.array(src.get_tensor()), place)
        copied.append(name)
    return copied


def persistable_value_names(program) -> list[str]:
    return [v.name for v in program.global_block().vars.values()
            if v.persistable and v.name not in ("feed", "fetch") and v.type == _dense_type()]


def node_names(program, limit: int | None = None) -> list[str]:
    """Names a distillation node pair may use: the float outputs of ops, in program order."""
    block = program.global_block()
    seen, names = set(), []
    for op in block.ops:
        if op.type in ("feed", "fetch"):
            continue
        for name in op.output_arg_names:
            if name in seen or not block.has_var(name):
                continue
            var = block.var(name)
            if var.persistable or not _is_float(var):
                continue
            seen.add(name)
            names.append(name)
    return names[:limit] if limit else names
