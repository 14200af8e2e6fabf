"""Quantize/dequantize programs, legacy backend: insertion (PTQ and QAT), conversion for inference, FP32 marks.

Drives Paddle's own passes in the ONNX-style format (`quantize_linear` / `dequantize_linear`), the format
Paddle Inference turns into oneDNN int8 kernels with `enable_mkldnn_int8()`, TensorRT reads, and that
still runs (simulated) without either. Paddle 3.3.1 has these passes for legacy programs only (docs/pir.md).
What the passes get wrong for deployment is repaired here, once for PTQ and QAT:

- every quantize/dequantize op's `qmin`/`qmax` comes from its `bit_length` (Paddle 3's kernels clip and
  scale with those attributes, default -128 / 127, and ignore bit_length: a 4-bit model would be
  dequantized by 127 instead of 7; measured top-1 0.10 on the digits CNN, 0.99 with);
- skipped ops carry the INTEGER `skip_quant = 1`, the only form oneDNN's placement pass honours;
- one writer per tensor (`unique_written_names`): the inference pass names its observer pairs like the
  quantized pairs, so one program name had two writers;
- a deterministic op order (`stable_node_order`).

All calls go inside `autocompress.paddle_env.legacy_ir()`. Which tensors and layers to quantize, with
which scales, is the algorithms' business (`quant/`, `train/qat_fallback.py`).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict

import numpy as np

from ...errors import ConfigError

FP32_MARK = "ac_keep_fp32"  # name-scope marker of the layers kept in FP32
QDQ_OPS = ("quantize_linear", "dequantize_linear")


def layer_key(op) -> str:
    """A stable, readable name for one op: `type(first output)`, e.g. `conv2d(conv2d_5.tmp_0)`.
    Output names are unique in a static program, so the key survives program clones."""
    from paddle.static.quantization import utils

    outs = utils._get_op_output_var_names(op)
    return f"{op.type}({outs[0] if outs else ''})"


def mark_fp32(program, keys) -> set[str]:
    """Append FP32_MARK to the name scope of the ops named by `keys` (layer_key), in place, so the
    passes' skip_pattern leaves them in FP32. Returns their non-persistable input and output tensors.
    Raises ConfigError naming unknown keys."""
    from paddle.static.quantization import utils

    wanted, found, tensors = set(keys), set(), set()
    for block in program.blocks:
        for op in block.ops:
            key = layer_key(op)
            if key in wanted:
                scope = op.attr("op_namescope") if op.has_attr("op_namescope") else ""
                op._set_attr("op_namescope", f"{scope or '/'}{FP32_MARK}/")
                found.add(key)
                for name in utils._get_op_input_var_names(op) + utils._get_op_output_var_names(op):
                    if block.has_var(name) and not block.var(name).persistable:
                        tensors.add(name)
    missing = sorted(wanted - found)
    if missing:
        raise ConfigError(f"fp32 layers {missing[:5]} are not ops of this model; take the names from "
                          "quant.targets.int8_layers on the same model")
    return tensors


def fp32_marked_layers(program) -> list[str]:
    """Layer keys of the ops mark_fp32 marked."""
    return [layer_key(op) for op in program.global_block().ops
            if op.has_attr("op_namescope") and FP32_MARK in (op.attr("op_namescope") or "")]


def count_quant_ops(program) -> int:
    return sum(op.type == "quantize_linear" for op in program.global_block().ops)


def int_skip_quant(program, held=()) -> None:
    """The passes mark skipped ops with a *bool* `skip_quant`; oneDNN reads it as an int (== 1) and
    ignores the bool, so rewrite it as int 1 (otherwise not_quant ops would still run in int8). Ops
    marked FP32 that are no quantizable type (pool2d, elementwise_add...) get it here too, and so do
    ops of the `held` types (quantize_op_types leaves them out)."""
    for block in program.blocks:
        for op in block.ops:
            marked = op.type in held or (op.has_attr("op_namescope") and FP32_MARK in (op.attr("op_namescope") or ""))
            if marked or (op.has_attr("skip_quant") and op.attr("skip_quant")):
                op._set_attr("skip_quant", 1)


def set_int_range(program) -> None:
    """qmin / qmax of every quantize_linear / dequantize_linear from its bit_length (module docstring);
    a no-op on a Paddle whose ops have no such attributes (they used bit_length)."""
    from paddle.base.framework import OpProtoHolder

    if "qmax" not in {a.name for a in OpProtoHolder.instance().get_op_proto("quantize_linear").attrs}:
        return
    for block in program.blocks:
        for op in block.ops:
            if op.type in QDQ_OPS and op.has_attr("bit_length"):
                bits = int(op.attr("bit_length"))
                op._set_attr("qmin", -(2 ** (bits - 1)))
                op._set_attr("qmax", 2 ** (bits - 1) - 1)


def unique_written_names(graph) -> list[str]:
    """Give every non-persistable tensor of the IR graph that two operations write its own name (the
    first node keeps it): the graph's edges stay as they are, so its program reads what the graph
    meant. Returns the new names. Paddle's inference pass names its observer quantize/dequantize
    pairs `X.quantized` / `X.quantized.dequantized`, as the quantizing passes name theirs."""
    groups: dict[str, list] = {}
    for node in graph.all_var_nodes():
        if not node.persistable() and node.inputs:  # written by an op (feeds and weights are not)
            groups.setdefault(node.name(), []).append(node)
    renamed = []
    for name, nodes in groups.items():
        for k, node in enumerate(sorted(nodes, key=lambda n: n.id())[1:], start=1):
            new = f"{name}.w{k}"
            node.node.var().set_name(new)
            for producer in node.inputs:
                producer.rename_output(name, new)
            for consumer in node.outputs:
                consumer.rename_input(name, new)
            renamed.append(new)
    return renamed


def insert_qdq(program, build_scope, place, *, weight_op_types, act_op_types, observer_op_types, skip_patterns,
               observed: dict[str, float], weight_bits: int, activation_bits: int, weight_quantize_type: str):
    """The deployable quantize/dequantize program of `program` (a clone; edited), built by Paddle's PTQ
    passes with `observed` (tensor -> placeholder scale) as the activation scales. The passes write
    into `build_scope` (copies of the weights). Returns (program, {weight name: quant axis}): the
    weights are rewired to dequantize_linear but their values are the caller's to set."""
    from paddle.base.framework import IrGraph
    from paddle.framework import core
    from paddle.static.quantization import (AddQuantDequantForInferencePass, AddQuantDequantPassV2,
                                            QuantizationTransformPassV2, QuantWeightPass, utils)

    with stable_node_order():  # the same program bytes in every process
        graph = IrGraph(core.Graph(program.desc), for_test=True)
        passes = [
            QuantizationTransformPassV2(scope=build_scope, place=place, weight_bits=weight_bits,
                                        activation_bits=activation_bits, activation_quantize_type="range_abs_max",
                                        weight_quantize_type=weight_quantize_type,
                                        skip_pattern=list(skip_patterns), quantizable_op_type=list(weight_op_types)),
            AddQuantDequantPassV2(scope=build_scope, place=place, quant_bits=activation_bits,
                                  skip_pattern=list(skip_patterns), quantizable_op_type=list(act_op_types)),
        ]
        with quiet_passes():
            for p in passes:
                for sub in graph.all_sub_graphs():
                    sub._for_test = True
                    p.apply(sub)
            weights = {}
            for op in graph.all_op_nodes():
                if op.name() == "quantize_linear":
                    x_name = op.input("X")[0]
                    if graph._find_node_by_name(op.inputs, x_name).persistable():
                        weights[x_name] = int(op.op().attr("quant_axis"))
            # QuantWeightPass only rewires here (weights -> dequantize_linear)
            QuantWeightPass(build_scope, place, quant_bits=weight_bits, save_int_weight=False).apply(graph)
            out_scales = AddQuantDequantForInferencePass(
                scope=build_scope, place=place, quant_bits=activation_bits,
                quantizable_op_type=list(weight_op_types) + list(act_op_types) + list(observer_op_types),
                calibration_range_dict=dict(observed))
            for sub in graph.all_sub_graphs():
                sub._for_test = True
                out_scales.apply(sub)
        unique_written_names(graph)
        quantized = graph.to_program()
    utils.move_persistable_var_to_global_block(quantized)
    int_skip_quant(quantized)
    set_int_range(quantized)
    return quantized, weights


def insert_fake_quant(program, scope, place, config: dict):
    """A training program with fake-quant ops (activation scales follow a moving average while it
    trains), by `paddle.static.quantization.quant_aware` with `config` (its dict). The input program is
    left as it is. The result is rebuilt from an IR graph: its weights are plain variables again
    (trainable.promote_parameters makes them Parameters)."""
    from paddle.static.quantization import quant_aware

    with quiet_passes():
        quantized = quant_aware(program, place, config, scope=scope, for_test=False, return_program=True)
    set_int_range(quantized)
    return quantized


def convert_for_inference(eval_program, scope, place, activation_bits: int, held_op_types=()):
    """A trained fake-quant eval program (is_test=True) -> the deployable quantize/dequantize program:
    weights stored quantized with their scales, activation scales as quantize_linear attrs.

    What paddle.static.quantization.convert does in the ONNX format, with one repair before the graph
    becomes a program again: the inference pass adds observer pairs named `X.quantized` /
    `X.quantized.dequantized`, the names QAT's own pair for X already has; in a program one name then has
    two writers and a dequantize reads the observer's float pass-through as int8 (unique_written_names)."""
    from paddle.base import core
    from paddle.base.framework import IrGraph
    from paddle.static.quantization import utils
    from paddle.static.quantization.quantization_pass import AddQuantDequantForInferencePass, QuantWeightPass

    graph = IrGraph(core.Graph(eval_program.desc), for_test=True)
    with quiet_passes():
        for sub_graph in graph.all_sub_graphs():
            QuantWeightPass(scope, place).apply(sub_graph)
        for sub_graph in graph.all_sub_graphs():
            AddQuantDequantForInferencePass(scope=scope, place=place, quant_bits=int(activation_bits)).apply(sub_graph)
    renamed = unique_written_names(graph)
    if renamed:
        logging.getLogger("autocompress.quant").debug("QAT convert: %d tensors written twice renamed: %s",
                                                      len(renamed), renamed[:8])
    program = graph.to_program()
    utils.move_persistable_var_to_global_block(program)  # as convert() does for while blocks
    int_skip_quant(program, held=held_op_types)
    set_int_range(program)
    return program


# --- edits of a converted quantize/dequantize program -------------------------------------------

def producers(block) -> dict:
    return {name: op for op in block.ops for name in op.output_arg_names}


def consumers(block) -> dict:
    users = defaultdict(list)
    for op in block.ops:
        for name in op.input_arg_names:
            users[name].append(op)
    return users


def is_persistable(block, name) -> bool:
    return block.has_var(name) and block.var(name).persistable


def is_skipped(op) -> bool:
    return op.has_attr("skip_quant") and bool(op.attr("skip_quant"))


def dequantized_source(block, producers_, name):
    """The tensor `name` quantizes when it is a dequantize_linear(quantize_linear(x)) output of an
    activation, else None."""
    dq = producers_.get(name)
    if dq is None or dq.type != "dequantize_linear":
        return None
    q = producers_.get(dq.input("X")[0])
    if q is None or q.type != "quantize_linear":
        return None
    x = q.input("X")[0]
    return None if is_persistable(block, x) else x


def scale_values(program, scope) -> dict[str, float]:
    """Activation tensor -> its scale, from the program's quantize_linear ops."""
    block, out = program.global_block(), {}
    for op in block.ops:
        if op.type == "quantize_linear" and not is_persistable(block, op.input("X")[0]):
            var = scope.find_var(op.input("Scale")[0])
            if var is not None:
                out[op.input("X")[0]] = float(np.array(var.get_tensor()).reshape(-1)[0])
    return out


def int8_layer_inputs(program, scope) -> tuple[dict[str, float], set[str]]:
    """({tensor: threshold} of the activations the program's weight layers (Paddle's
    SUPPORT_WEIGHT_QUANTIZATION_OP_DICT types) read through a quantize / dequantize pair, {tensors they
    read in float}): which layers a re-placement of the QDQ (program/qdq_openvino.py) may make int8,
    with the program's own scales."""
    from paddle.static.quantization.quant_config import SUPPORT_WEIGHT_QUANTIZATION_OP_DICT

    block = program.global_block()
    producers_, scales = producers(block), scale_values(program, scope)
    int8, fp32 = {}, set()
    for op in block.ops:
        slots = SUPPORT_WEIGHT_QUANTIZATION_OP_DICT.get(op.type)
        if slots is None:
            continue
        name = op.input(slots[0][0])[0]  # the activation slot: Input (convs) or X (matmuls)
        source = dequantized_source(block, producers_, name)
        if source is not None and source in scales:
            int8[source] = scales[source]
        elif source is None and not is_persistable(block, name):
            fp32.add(name)
    return int8, fp32


def observer_scales(program) -> dict[str, str]:
    """Observed tensor -> the scale variable of its observer pair: the `only_observer` quantize_linear
    that Paddle's convert puts on op outputs (its dequantize reads the same scale)."""
    block = program.global_block()
    return {op.input("X")[0]: op.input("Scale")[0] for op in block.ops
            if op.type == "quantize_linear" and op.has_attr("only_observer") and op.attr("only_observer")
            and not is_persistable(block, op.input("X")[0])}


def set_scales(scope, values: dict[str, float], place) -> None:
    """Write per-tensor scales (scale variable -> value) into `scope`, keeping each variable's dtype."""
    for name, value in values.items():
        tensor = scope.find_var(name).get_tensor()
        old = np.array(tensor)
        tensor.set(np.full(old.shape, value, dtype=old.dtype), place)


def keep_fp32(program, keys, quantized_types) -> None:
    """Edit a converted program (a clone) so the ops named by `keys` run in FP32 when deployed: they get
    the integer skip_quant = 1, read their inputs before the quantize/dequantize pair, and the observer
    pairs on their input and output tensors go unless a still-quantized layer (of `quantized_types`)
    reads them (an op without an input scale stays FP32 in oneDNN, also after fusions that drop
    skip_quant). Raises ConfigError naming unknown keys."""
    block = program.global_block()
    made_by = producers(block)
    wanted = set(keys)
    selected = [op for op in block.ops if layer_key(op) in wanted]
    missing = sorted(wanted - {layer_key(op) for op in selected})
    if missing:
        raise ConfigError(f"fp32 layers {missing[:5]} are not ops of this QAT model; take the names from "
                          "train.qat_fallback.int8_candidates on the converted model")
    tensors = set()
    for op in selected:
        op._set_attr("skip_quant", 1)
        for name in list(op.input_arg_names):
            src = dequantized_source(block, made_by, name)
            if src is not None:
                op._rename_input(name, src)
                tensors.add(src)
            elif not is_persistable(block, name):
                tensors.add(name)
        tensors.update(n for n in op.output_arg_names if not is_persistable(block, n))
    users = consumers(block)
    pairs = []
    for q in block.ops:
        if q.type != "quantize_linear" or q.input("X")[0] not in tensors:
            continue
        dqs = [u for u in users[q.output("Y")[0]] if u.type == "dequantize_linear"]
        readers = [u for dq in dqs for u in users[dq.output("Y")[0]]]
        if not any(u.type in quantized_types and not is_skipped(u) for u in readers):
            pairs.append(q)
    remove_pairs(program, pairs)


def remove_pairs(program, quantize_ops) -> None:
    """Remove these quantize_linear ops of the global block and their dequantize_linear ops; whatever
    read a dequantized tensor reads the unquantized one instead."""
    block = program.global_block()
    users = consumers(block)
    drop = set()
    for q in quantize_ops:
        x = q.input("X")[0]
        for dq in (u for u in users[q.output("Y")[0]] if u.type == "dequantize_linear"):
            for u in users[dq.output("Y")[0]]:
                u._rename_input(dq.output("Y")[0], x)
            drop.add(id(dq))
        drop.add(id(q))
    for i in reversed(range(len(block.ops))):
        if id(block.ops[i]) in drop:
            block._remove_op(i, sync=False)
    program._sync_with_cpp()


# --- keeping Paddle's passes deterministic and quiet ----------------------------------------------

_NODE_ORDER_LOCK = threading.Lock()


class _IdOrderedNodes(set):
    """A set of IrGraph nodes that iterates in node-id order."""

    def __iter__(self):
        return iter(sorted(set.__iter__(self), key=lambda n: n.node.id()))


@contextlib.contextmanager
def stable_node_order():
    """Paddle's quantization passes walk `IrGraph.all_op_nodes()` & co., plain sets of node wrappers
    hashed by address, so the quantize ops they insert (and the saved program) came out in a different,
    equally valid order in every process. Iterating them by node id makes the program deterministic."""
    from paddle.base.framework import IrGraph

    names = ("all_nodes", "all_var_nodes", "all_persistable_nodes", "all_op_nodes")

    def ordered(fn):
        return lambda self: _IdOrderedNodes(fn(self))

    with _NODE_ORDER_LOCK:  # the patch is process-wide: one pass run at a time
        originals = {n: IrGraph.__dict__[n] for n in names}
        try:
            for n, fn in originals.items():
                setattr(IrGraph, n, ordered(fn))
            yield
        finally:
            for n, fn in originals.items():
                setattr(IrGraph, n, fn)


@contextlib.contextmanager
def quiet_passes():
    """Paddle's quant passes draw their own tqdm bars and log their config at INFO for every run; our
    progress bar and log lines say what is happening."""
    import paddle.static.quantization.quanter as quanter
    import paddle.static.quantization.quantization_pass as qp

    original = qp.tqdm

    class _Silent(original):
        def __init__(self, *a, **k):
            k["disable"] = True
            super().__init__(*a, **k)

    loggers = [lg for lg in (getattr(quanter, "_logger", None), getattr(qp, "_logger", None)) if lg is not None]
    levels = [lg.level for lg in loggers]
    qp.tqdm = _Silent
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        qp.tqdm = original
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
