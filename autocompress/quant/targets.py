"""Which tensors a PTQ run quantizes, chosen by Paddle's own op tables (never our own guess).

Mirrors `PostTrainingQuantization._collect_target_varnames` (the quant_config tables, is_full_quantize)
and adds what paddle's PTQ leaves out: ops whose `op_namescope` contains a `not_quant_pattern` are not
quantized, so their inputs need no statistics.

`quantize_op_types` is held on the deployment backend too: an op of a weight-quantizable type the
config leaves out (conv2d when only matmul_v2 is listed) would still run in int8 under oneDNN, which
quantizes any conv / matmul whose input carries a neighbour's observer scale and derives the weight
scales itself. Such ops are `held_fp32_layers`: the template keeps them FP32 like the FP32 fallback's
layers (skip_quant = 1, no observer scales around them).
"""
from __future__ import annotations

import dataclasses

from ..program.legacy.quantize import layer_key


_FLOAT_DTYPES = ("float32", "float64", "float16")


@dataclasses.dataclass(frozen=True)
class QuantTargets:
    weight_op_types: list[str]       # ops whose weights get quantize_linear/dequantize_linear
    act_op_types: list[str]          # ops whose activation inputs get quant/dequant pairs
    observer_op_types: list[str]     # ops whose outputs get a scale for the deployed int8 kernels
    skip_patterns: list[str]         # not_quant_pattern
    activations: list[str]           # float tensors that need a threshold, in program order
    weights: dict[str, str]          # weight name -> consuming op type ('matmul_v2_trans_y' style)
    held_op_types: tuple = ()        # weight-quantizable types the config leaves out: kept FP32 when deployed


def quant_op_tables(quant_config):
    """Paddle's op-type tables for a QuantizationConfig: (weight ops, act ops, observer ops)."""
    from paddle.static.quantization.quant_config import SUPPORT_QUANTIZATION_OP_DICT, BaseQuantizer

    op_types = (list(SUPPORT_QUANTIZATION_OP_DICT) if quant_config.is_full_quantize
                else list(quant_config.quantize_op_types))
    quantizer = BaseQuantizer(quantizable_op_type=op_types, quant_bits=quant_config.weight_bits)
    return (list(quantizer.weight_quant_operation_types), list(quantizer.activation_quant_operation_types),
            list(quantizer.observer_operation_types))


def is_skipped(op, patterns) -> bool:
    """True when the op's name scope contains one of the not_quant patterns (the spec's rule)."""
    if not op.has_attr("op_namescope"):
        return False
    scope = op.attr("op_namescope") or ""
    return any(p and p in scope for p in patterns)


def _dtype_name(var) -> str:
    return str(var.dtype).replace("paddle.", "").replace("VarType.", "").lower()


def held_op_types(weight_ops) -> tuple:
    """Paddle's weight-quantizable op types that are not in `weight_ops` (the config's choice)."""
    from paddle.static.quantization.quant_config import SUPPORT_WEIGHT_QUANTIZATION_OP_DICT

    return tuple(t for t in SUPPORT_WEIGHT_QUANTIZATION_OP_DICT if t not in weight_ops)


def held_fp32_layers(program, targets: QuantTargets) -> list[str]:
    """Layer keys of the ops of `targets.held_op_types`: FP32 on every backend (module docstring)."""
    held = set(targets.held_op_types)
    return [layer_key(op) for block in program.blocks for op in block.ops if op.type in held]


# A weight whose channels' int8 step (max |w| / 127, with a batch norm right after it folded in, as every
# runtime folds it) is this small in the median stays FP32. OpenVINO's low-precision transformations
# lose such a layer (its output comes out wrong, the model's with it): PP-OCRv4 det's conv2d_159 is
# followed by a batch norm that scales it by ~1e-4, so its folded step is ~1e-6; with it in int8,
# OpenVINO reads our QDQ export at map IoU 0.01 against ONNX Runtime's reading of the same file, with
# it in FP32 at 0.87 (two PTQ models). Every other layer of det has a folded step above 1e-4.
TINY_WEIGHT_STEP = 1e-5


def tiny_weight_layers(program, scope, targets: "QuantTargets") -> list[str]:
    """Layer keys of the weight-quantized ops whose weight's median per-channel step (a following
    batch norm folded in) is below TINY_WEIGHT_STEP. Output channels: axis 0 of a conv filter, the
    last axis of a matmul weight."""
    import numpy as np

    def value(name):
        var = scope.find_var(name)
        return None if var is None else np.array(var.get_tensor())

    out = []
    for block in program.blocks:
        norms = {op.input("X")[0]: op for op in block.ops if op.type == "batch_norm"}
        for op in block.ops:
            if op.type not in targets.weight_op_types:
                continue
            for name in op.input_arg_names:
                w = value(name) if name in targets.weights else None
                if w is None or w.ndim < 2:
                    continue
                axis = 0 if w.ndim == 4 else w.ndim - 1
                step = np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1).max(axis=1) / 127.0
                bn = norms.get(op.output_arg_names[0]) if op.output_arg_names else None
                if bn is not None and w.ndim == 4:
                    gamma, var = value(bn.input("Scale")[0]), value(bn.input("Variance")[0])
                    if gamma is not None and var is not None and gamma.shape == step.shape:
                        step = step * np.abs(gamma) / np.sqrt(var + bn.attr("epsilon"))
                if float(np.median(step)) < TINY_WEIGHT_STEP:
                    out.append(layer_key(op))
    return out


def find_targets(program, quant_config) -> QuantTargets:
    """Collect the tensors that need thresholds and the weights to quantize, in program order."""
    from paddle.static.quantization import utils

    weight_ops, act_ops, observer_ops = quant_op_tables(quant_config)
    patterns = list(quant_config.not_quant_pattern or [])
    persistable = {v.name for v in program.list_vars() if v.persistable}
    activations: dict[str, None] = {}  # ordered set
    weights: dict[str, str] = {}

    def add_act(block, name):
        if name in persistable or not block.has_var(name):
            return
        if _dtype_name(block.var(name)) in _FLOAT_DTYPES:
            activations.setdefault(name)

    for block in program.blocks:
        for op in block.ops:
            op_type = op.type
            quantized = op_type in weight_ops or op_type in act_ops
            if quantized and not is_skipped(op, patterns):
                if op_type == "matmul_v2" and op.attr("trans_y"):
                    op_type = "matmul_v2_trans_y"
                for name in utils._get_op_input_var_names(op):
                    if name in persistable:
                        if op.type in weight_ops:
                            weights[name] = op_type
                    else:
                        add_act(block, name)
            if quantized or op.type in observer_ops:
                # outputs of quantized and observer ops get an output scale for the int8 kernels
                for name in utils._get_op_output_var_names(op):
                    add_act(block, name)
    return QuantTargets(weight_ops, act_ops, observer_ops, patterns, list(activations), weights,
                        held_op_types(weight_ops))


# Op types oneDNN's cpu_quantize_placement_pass may run in int8 once their input has a scale
# (paddle/fluid/framework/ir/onednn/cpu_quantize_placement_pass.cc, pre-fusion names). The deployed
# model quantizes these even where the simulated one only observes, which is where the two disagree.
ONEDNN_INT8_OP_TYPES = ("concat", "conv2d", "depthwise_conv2d", "elementwise_add", "elementwise_mul",
                        "elementwise_sub", "fc", "matmul", "matmul_v2", "mul", "nearest_interp",
                        "nearest_interp_v2", "pool2d", "prior_box", "reshape2", "transpose2", "slice", "split")


@dataclasses.dataclass(frozen=True)
class Layer:
    key: str
    op_type: str
    quantized: bool          # True: the template quantizes it; False: only oneDNN does (observer scales)
    activations: list[str]   # float inputs with a threshold
    weights: list[str]       # quantized weights
    outputs: list[str]       # outputs with an observer scale (oneDNN requantizes them)


def int8_layers(program, targets: QuantTargets) -> list[Layer]:
    """The ops that run in int8 on the deployment backend, in program order: those the template
    quantizes (weight/activation op types, not skipped) and the oneDNN int8 op types whose inputs
    carry a scale. These are the candidates the FP32 fallback may keep in FP32. Ops of the held types
    (quantize_op_types leaves them out) are FP32 already and no candidates."""
    from paddle.static.quantization import utils

    acts, layers, held = set(targets.activations), [], set(targets.held_op_types)
    for block in program.blocks:
        for op in block.ops:
            if op.type in held or is_skipped(op, targets.skip_patterns):
                continue
            quantized = op.type in targets.weight_op_types or op.type in targets.act_op_types
            ins = utils._get_op_input_var_names(op)
            act_ins = [n for n in ins if n in acts]
            if not quantized and not (op.type in ONEDNN_INT8_OP_TYPES and act_ins):
                continue
            layers.append(Layer(layer_key(op), op.type, quantized, act_ins,
                                [n for n in ins if n in targets.weights] if quantized else [],
                                [n for n in utils._get_op_output_var_names(op) if n in acts]))
    return layers
