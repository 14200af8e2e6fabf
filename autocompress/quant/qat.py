"""Quantization-aware training pieces: fake-quant insertion for training, conversion for deployment.

Uses Paddle's own `paddle.static.quantization.quant_aware` / `convert` in the ONNX-style format
(`quantize_linear` / `dequantize_linear`), the format Paddle Inference turns into oneDNN int8
kernels with `enable_mkldnn_int8()` and TensorRT reads too, and that still runs (simulated) without
either. Weights: channel-wise abs-max; activations: moving-average abs-max, whose scales are
persistable statistics that the training loop checkpoints with the weights.

QuantizationConfig mapping: `quantize_op_types` -> weight ops go to QuantizationTransformPassV2,
activation-only ops (elementwise_add, pool2d, ...) to AddQuantDequantPassV2 (quant_aware splits
them); `is_full_quantize` -> every type Paddle can quantize; `weight_bits`, `activation_bits`;
`not_quant_pattern` -> the passes' skip_pattern (ops whose name scope contains it stay fp32).
As in PTQ (quant/apply.py): every quantize/dequantize op gets qmin/qmax from its bit_length (Paddle 3's
kernels ignore bit_length), and ops of a weight-quantizable type that quantize_op_types leaves out get
skip_quant = 1 in the converted model, so oneDNN does not run them in int8 either.
"""
from __future__ import annotations

import contextlib
import logging

log = logging.getLogger("autocompress.quant")

MOVING_RATE = 0.9


def paddle_quant_config(qc) -> dict:
    """QuantizationConfig -> the dict `paddle.static.quantization.quant_aware` takes."""
    return {
        "weight_quantize_type": "channel_wise_abs_max",
        "activation_quantize_type": "moving_average_abs_max",
        "weight_bits": int(qc.weight_bits),
        "activation_bits": int(qc.activation_bits),
        "not_quant_pattern": list(qc.not_quant_pattern),
        "quantize_op_types": list(qc.quantize_op_types),
        "is_full_quantize": bool(qc.is_full_quantize),
        "onnx_format": True,
        "moving_rate": MOVING_RATE,
        "dtype": "int8",
    }


def insert_fake_quant(program, scope, place, qc):
    """Return a training program with fake-quant ops (training mode: activation scales are
    updated by a moving average while training). The input program is left as it is.

    The returned program is rebuilt from an IR graph, so its weights are plain variables again;
    the caller promotes them back to Parameters (trainable.promote_parameters)."""
    from paddle.static.quantization import quant_aware

    from .apply import FP32_MARK, _mark_fp32, set_int_range
    from .targets import find_targets, tiny_weight_layers

    config = paddle_quant_config(qc)
    tiny = tiny_weight_layers(program, scope, find_targets(program, qc))
    if tiny:  # as in PTQ (quant/apply.py): int8 runtimes other than oneDNN read these layers wrong
        log.info("QAT: kept in FP32, weights too small for int8 runtimes (targets.TINY_WEIGHT_STEP): %s", tiny)
        program = program.clone()
        _mark_fp32(program, tiny)
        config["not_quant_pattern"] = config["not_quant_pattern"] + [FP32_MARK]
    with _quiet_paddle_quant():
        quantized = quant_aware(program, place, config, scope=scope, for_test=False, return_program=True)
    set_int_range(quantized)
    n = count_quant_ops(quantized)
    if n == 0:
        log.warning("QAT: no op of the types %s was quantized (not_quant_pattern %s); the model trains in fp32",
                    list(qc.quantize_op_types), list(qc.not_quant_pattern))
    return quantized


def fp32_marked_layers(program) -> list[str]:
    """Layer keys of the ops insert_fake_quant kept in FP32 (their name scope carries FP32_MARK)."""
    from .apply import FP32_MARK
    from .targets import layer_key

    return [layer_key(op) for op in program.global_block().ops
            if op.has_attr("op_namescope") and FP32_MARK in (op.attr("op_namescope") or "")]


def count_quant_ops(program) -> int:
    return sum(op.type == "quantize_linear" for op in program.global_block().ops)


def convert_for_inference(eval_program, scope, place, qc):
    """The trained eval program (is_test=True) -> the deployable quantize/dequantize program:
    weights stored quantized with their scales, activation scales as quantize_linear attrs."""
    from paddle.base import core
    from paddle.base.framework import IrGraph
    from paddle.static.quantization import utils
    from paddle.static.quantization.quantization_pass import AddQuantDequantForInferencePass, QuantWeightPass

    from .apply import _int_skip_quant, set_int_range, unique_written_names
    from .targets import held_op_types, quant_op_tables

    # what paddle.static.quantization.convert does in the ONNX format, with one repair before the
    # graph becomes a program again: the inference pass adds observer quantize/dequantize pairs named
    # `X.quantized` / `X.quantized.dequantized`, the names QAT's own pair for X already has. In the graph
    # they are separate nodes; in a program one name has two writers, and a dequantize then reads the
    # observer's float pass-through as int8 (ONNX export fails, oneDNN reads the wrong scales).
    graph = IrGraph(core.Graph(eval_program.desc), for_test=True)
    with _quiet_paddle_quant():
        for sub_graph in graph.all_sub_graphs():
            QuantWeightPass(scope, place).apply(sub_graph)
        for sub_graph in graph.all_sub_graphs():
            AddQuantDequantForInferencePass(scope=scope, place=place, quant_bits=int(qc.activation_bits)).apply(sub_graph)
    renamed = unique_written_names(graph)
    if renamed:
        log.debug("QAT convert: %d tensors written twice renamed: %s", len(renamed), renamed[:8])
    program = graph.to_program()
    utils.move_persistable_var_to_global_block(program)  # as convert() does for while blocks
    # not_quant_pattern ops must carry the INTEGER skip_quant == 1, the only form oneDNN's placement pass
    # honours (a bool is ignored and the op would still run int8 from its neighbours' observer scales).
    # convert() writes an int in Paddle 2.6/3.x; rewriting keeps that true whatever the version does.
    _int_skip_quant(program, held=held_op_types(quant_op_tables(qc)[0]))
    set_int_range(program)
    return program


@contextlib.contextmanager
def _quiet_paddle_quant():
    """paddle's quant passes draw their own tqdm bars and log their whole config at INFO; our
    training bar and log lines say what is happening."""
    import paddle.static.quantization.quanter as quanter
    import paddle.static.quantization.quantization_pass as qp

    original = qp.tqdm

    class _Silent(original):
        def __init__(self, *a, **k):
            k["disable"] = True
            super().__init__(*a, **k)

    logger = getattr(quanter, "_logger", None)
    level = logger.level if logger is not None else None
    qp.tqdm = _Silent
    if logger is not None:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        qp.tqdm = original
        if logger is not None:
            logger.setLevel(level)
