"""Quantization-aware training: which ops train through fake quantization, and their conversion for deployment.

The programs are edited by the program layer (`program.legacy.quantize`: Paddle's `quant_aware` and the
inference passes of `convert`, in the ONNX-style quantize/dequantize format). This module maps the
QuantizationConfig onto them: weights channel-wise abs-max, activations moving-average abs-max (their
scales are persistable statistics that the training loop checkpoints with the weights);
`quantize_op_types` -> weight ops go to QuantizationTransformPassV2, activation-only ops
(elementwise_add, pool2d, ...) to AddQuantDequantPassV2 (quant_aware splits them); `is_full_quantize`
-> every type Paddle can quantize; `weight_bits`, `activation_bits`; `not_quant_pattern` -> the passes'
skip_pattern (ops whose name scope contains it stay fp32). As in PTQ, ops of a weight-quantizable type
that quantize_op_types leaves out get skip_quant = 1 in the converted model, so oneDNN does not run them
in int8 either, and layers whose weights are too small for int8 runtimes stay FP32.
"""
from __future__ import annotations

import logging

from ..program.legacy import quantize as qdq

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
    """Return a training program with fake-quant ops for `qc`; the input program is left as it is.
    The caller promotes the weights back to Parameters (trainable.promote_parameters)."""
    from .targets import find_targets, tiny_weight_layers

    config = paddle_quant_config(qc)
    tiny = tiny_weight_layers(program, scope, find_targets(program, qc))
    if tiny:  # as in PTQ (quant/apply.py): int8 runtimes other than oneDNN read these layers wrong
        log.info("QAT: kept in FP32, weights too small for int8 runtimes (targets.TINY_WEIGHT_STEP): %s", tiny)
        program = program.clone()
        qdq.mark_fp32(program, tiny)
        config["not_quant_pattern"] = config["not_quant_pattern"] + [qdq.FP32_MARK]
    quantized = qdq.insert_fake_quant(program, scope, place, config)
    if qdq.count_quant_ops(quantized) == 0:
        log.warning("QAT: no op of the types %s was quantized (not_quant_pattern %s); the model trains in fp32",
                    list(qc.quantize_op_types), list(qc.not_quant_pattern))
    return quantized


def convert_for_inference(eval_program, scope, place, qc):
    """The trained eval program (is_test=True) -> the deployable quantize/dequantize program."""
    from .targets import held_op_types, quant_op_tables

    # not_quant_pattern ops and the types quantize_op_types leaves out carry skip_quant == 1, the only
    # form oneDNN's placement pass honours (it would run them int8 from their neighbours' observer scales)
    return qdq.convert_for_inference(eval_program, scope, place, int(qc.activation_bits),
                                     held_op_types=held_op_types(quant_op_tables(qc)[0]))


def recalibrate_observers(model, calib, algo: str = "avg", hist_percent: float = 0.9999) -> dict[str, tuple]:
    """Replace the observer pairs' scales of a converted QAT model (a LoadedModel, edited in its scope)
    by thresholds calibrated on `calib` with the trained weights, in inference mode.

    Why: QAT trains through the fake quantization of conv / matmul inputs only. The observer pairs
    that convert adds on every other op output (adds, softmax, layer norm...) were never trained
    against; their scales are moving averages of training batches (batch-norm in training mode, weights
    still moving). Stock Paddle runs them as pass-through; oneDNN, ONNX Runtime and OpenVINO quantize
    with them. Returns {tensor: (old scale, new scale)}."""
    import paddle

    from ..program.legacy.quantize import observer_scales, scale_values, set_scales
    from .calibration import collect_stats
    from .targets import QuantTargets
    from .thresholds import compute_thresholds

    observed = observer_scales(model.program)
    if not observed:
        return {}
    names = list(observed)
    stats = collect_stats(model, calib, QuantTargets([], [], [], [], names, {}))
    new = compute_thresholds(stats, algo, hist_percent=hist_percent)
    old = scale_values(model.program, model.scope)
    set_scales(model.scope, {observed[n]: new[n] for n in names},
               getattr(model.executor, "place", None) or paddle.CPUPlace())
    return {n: (old.get(n), new[n]) for n in names}
