"""Apply given thresholds to the FP32 program: the int8 (quantize/dequantize_linear) model, no recalibration.

Drives the passes paddle's PTQ uses for its ONNX-style export (QuantizationTransformPassV2,
AddQuantDequantPassV2, QuantWeightPass, AddQuantDequantForInferencePass) on a clone of the program
in a fresh scope, so the loaded FP32 model is never modified and one load serves every trial.
Unlike paddle's PTQ it passes `not_quant_pattern` to the passes and really applies bias correction.

Bits: weights and activations each get their own (`weight_bits`, `activation_bits`), and every
quantize/dequantize op's `qmin`/`qmax` is set from its `bit_length`: Paddle 3's kernels clip and
scale with those attributes (default -128 / 127) and ignore bit_length, so without them a 4-bit
model would be dequantized by 127 instead of 7 (measured: top-1 0.10 on the digits CNN, 0.99 with).
oneDNN and TensorRT run 8 bits only; other widths need deploy_backend 'none' (config.py).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..errors import ConfigError, DataError
from .targets import QuantTargets
from .weights import quantize_weight, weight_scales


@dataclasses.dataclass
class QuantizedModel:
    program: object
    scope: object
    feed_names: list[str]
    fetch_names: list[str]
    weight_scales: dict[str, np.ndarray]
    thresholds: dict[str, float]


def quantize_model(model, thresholds: dict[str, float], targets: QuantTargets, bits: int = 8,
                   weight_quantize_type: str = "channel_wise_abs_max", bias_correct: bool = False,
                   place=None, weight_bits: int | None = None) -> QuantizedModel:
    """Quantized copy of `model` (a LoadedModel) with the given activation thresholds.

    Call inside `paddle_env.legacy_ir()`. Raises DataError naming the tensors without a threshold.
    For many trials build one `QuantTemplate` per weight_quantize_type and `instantiate` it.
    """
    return QuantTemplate(model, targets, bits, weight_quantize_type, place,
                         weight_bits=weight_bits).instantiate(thresholds, bias_correct)


FP32_MARK = "ac_keep_fp32"  # name-scope marker of the layers kept in FP32 (FP32 fallback, quant/fallback.py)


class QuantTemplate:
    """The quantized program for one (model, targets, bits, weight_quantize_type, fp32_layers), built once.

    Paddle's passes are slow (AddQuantDequantForInferencePass is quadratic in the graph size: ~5 s
    on PP-OCRv4 rec) but a trial only changes numbers: the `<tensor>@scale` values and the int
    weights. So the passes run once with placeholder scales and each trial fills a fresh scope.

    bits: activation bits; weight_bits: the weights' (default: `bits`).
    fp32_layers: layer keys (`targets.layer_key`) to keep in FP32 on top of `not_quant_pattern` (and of
    the ops whose type quantize_op_types leaves out, `targets.held_fp32_layers`).
    Every skipped op gets the integer attribute `skip_quant = 1`, the one oneDNN's
    cpu_quantize_placement_pass honours; without it oneDNN would still run the op in int8 from the
    scales its neighbours' observers leave on its input and output.
    """

    def __init__(self, model, targets: QuantTargets, bits: int = 8,
                 weight_quantize_type: str = "channel_wise_abs_max", place=None, fp32_layers=(),
                 weight_bits: int | None = None):
        import paddle
        from paddle.base.framework import IrGraph
        from paddle.framework import core
        from paddle.static.quantization import (AddQuantDequantForInferencePass, AddQuantDequantPassV2,
                                                QuantizationTransformPassV2, QuantWeightPass, utils)

        from ..model_io import persistable_names
        from .targets import held_fp32_layers, tiny_weight_layers

        self.model, self.targets, self.bits = model, targets, bits
        self.weight_bits = bits if weight_bits is None else weight_bits
        self.place = place or paddle.CPUPlace()
        self.fp32_layers = list(fp32_layers)
        build_scope = _copy_params(model, self.place)
        clone = model.program.clone(for_test=True)
        skip = list(targets.skip_patterns)
        self.tiny_layers = tiny_weight_layers(clone, model.scope, targets)
        if self.tiny_layers:
            logging.getLogger("autocompress.quant").info(
                "kept in FP32, weights too small for int8 runtimes (targets.TINY_WEIGHT_STEP): %s", self.tiny_layers)
        held = held_fp32_layers(clone, targets) + self.tiny_layers
        marked = self.fp32_layers + [k for k in held if k not in self.fp32_layers]
        fp32_tensors = _mark_fp32(clone, marked) if marked else set()
        if marked:
            skip.append(FP32_MARK)
        with _stable_node_order():  # the same program bytes in every process
            graph = IrGraph(core.Graph(clone.desc), for_test=True)
            passes = [
                QuantizationTransformPassV2(scope=build_scope, place=self.place, weight_bits=self.weight_bits,
                                            activation_bits=bits, activation_quantize_type="range_abs_max",
                                            weight_quantize_type=weight_quantize_type,
                                            skip_pattern=skip, quantizable_op_type=targets.weight_op_types),
                AddQuantDequantPassV2(scope=build_scope, place=self.place, quant_bits=bits,
                                      skip_pattern=skip, quantizable_op_type=targets.act_op_types),
            ]
            with _quiet_tqdm():
                for p in passes:
                    for sub in graph.all_sub_graphs():
                        sub._for_test = True
                        p.apply(sub)
            self.weights = {}  # weight name -> (fp32 values, quant axis the pass chose)
            for op in graph.all_op_nodes():
                if op.name() == "quantize_linear":
                    x_name = op.input("X")[0]
                    if graph._find_node_by_name(op.inputs, x_name).persistable():
                        w = np.array(model.scope.find_var(x_name).get_tensor())
                        self.weights[x_name] = (w, int(op.op().attr("quant_axis")))
            # QuantWeightPass only rewires here (weights -> dequantize_linear); values are set per trial
            QuantWeightPass(build_scope, self.place, quant_bits=self.weight_bits, save_int_weight=False).apply(graph)
            observers = targets.weight_op_types + targets.act_op_types + targets.observer_op_types
            # no observer scale on the FP32 layers' inputs/outputs: oneDNN fuses some ops into new ones
            # that drop skip_quant (matmul_v2 + add -> fc), and an op without an input scale stays FP32
            placeholder = {name: 1.0 for name in targets.activations if name not in fp32_tensors}
            out_scales = AddQuantDequantForInferencePass(scope=build_scope, place=self.place, quant_bits=bits,
                                                         quantizable_op_type=observers,
                                                         calibration_range_dict=placeholder)
            with _quiet_logger():
                for sub in graph.all_sub_graphs():
                    sub._for_test = True
                    out_scales.apply(sub)
            unique_written_names(graph)  # one writer per tensor: see there
            self.program = graph.to_program()
        utils.move_persistable_var_to_global_block(self.program)
        _int_skip_quant(self.program)
        set_int_range(self.program)
        # classify the quantized program's persistables: weight scales, activation scales, the rest
        self.weight_scale_vars, self.act_scale_vars, self.fixed = {}, {}, {}
        params = set(persistable_names(model.program))
        for name in persistable_names(self.program):
            base = name[: -len("@scale")] if name.endswith("@scale") else None
            if base in self.weights:
                self.weight_scale_vars[name] = base
            elif base is not None and name not in params:
                self.act_scale_vars[name] = base
            elif name not in self.weights:
                self.fixed[name] = np.array(build_scope.find_var(name).get_tensor())
        self.scales = {w: weight_scales(v, axis) for w, (v, axis) in self.weights.items()}
        self._int_weights: dict[bool, dict[str, np.ndarray]] = {}
        # One scope for every trial: the executor caches an interpreter (with all its activation
        # buffers) per (program, scope), so a new scope per trial grew memory by ~400 MB a trial
        # on PP-OCRv4. The fixed values are written once.
        self.scope = paddle.static.Scope()
        for name, value in self.fixed.items():
            self.scope.var(name).get_tensor().set(value, self.place)

    def int_weights(self, bias_correct: bool) -> dict[str, np.ndarray]:
        """Integer weights, computed once per bias_correct setting."""
        if bias_correct not in self._int_weights:
            self._int_weights[bias_correct] = {
                name: quantize_weight(w, self.scales[name], axis, self.weight_bits, bias_correct)
                for name, (w, axis) in self.weights.items()}
        return self._int_weights[bias_correct]

    def instantiate(self, thresholds: dict[str, float], bias_correct: bool = False) -> QuantizedModel:
        """This trial's scales and weights written into the template's scope; the program is shared.

        The returned model is valid until the next `instantiate` of this template (same scope)."""
        missing = sorted({t for t in self.act_scale_vars.values() if t not in thresholds})
        if missing:
            raise DataError(f"no calibration threshold for the quantized tensors {missing[:5]}"
                            f"{' ...' if len(missing) > 5 else ''}; the statistics were collected for "
                            "another model or QuantizationConfig. Rerun calibration with this model and config")
        scope = self.scope

        def put(name, value):
            scope.var(name).get_tensor().set(value, self.place)

        for name, value in self.int_weights(bias_correct).items():
            put(name, value)
        for name, weight in self.weight_scale_vars.items():
            put(name, self.scales[weight].astype(np.float32))
        for name, tensor in self.act_scale_vars.items():
            put(name, np.array([thresholds[tensor]], np.float32))
        return QuantizedModel(self.program, scope, list(self.model.feed_names), list(self.model.fetch_names),
                              self.scales, dict(thresholds))


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


def _mark_fp32(program, keys) -> set[str]:
    """Append FP32_MARK to the name scope of the ops named by `keys` (on the clone only), so the
    passes' own skip_pattern leaves them in FP32. Returns their non-persistable input and output
    tensors. Raises ConfigError naming unknown keys."""
    from paddle.static.quantization import utils

    from .targets import layer_key

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


def _int_skip_quant(program, held=()) -> None:
    """The passes mark skipped ops with a *bool* `skip_quant`; oneDNN reads it as an int (== 1) and
    ignores the bool, so rewrite it as int 1 (otherwise not_quant ops would still run in int8). The
    FP32 fallback's ops that are no quantizable type (pool2d, elementwise_add...) get it here too, and
    so do ops of the `held` types (quantize_op_types leaves them out)."""
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
            if op.type in ("quantize_linear", "dequantize_linear") and op.has_attr("bit_length"):
                bits = int(op.attr("bit_length"))
                op._set_attr("qmin", -(2 ** (bits - 1)))
                op._set_attr("qmax", 2 ** (bits - 1) - 1)


def _copy_params(model, place):
    """A new scope holding copies of the FP32 parameters (the passes write into their scope)."""
    import paddle

    from ..model_io import persistable_names

    scope = paddle.static.Scope()
    for name in persistable_names(model.program):
        src = model.scope.find_var(name)
        if src is None or not src.get_tensor()._is_initialized():
            continue
        scope.var(name).get_tensor().set(np.array(src.get_tensor()), place)
    return scope


def save_quantized(qmodel: QuantizedModel, model, out_dir, metadata: dict | None = None):
    """Save atomically with the input's file names (model_io.save_model); returns ModelFiles."""
    from ..model_io import save_model, sha256_file

    meta = {"precision": "int8", "format": "pdmodel",
            "parent": sha256_file(model.files.model_path) if model.files else None,
            "quantization": {"format": "quantize_linear/dequantize_linear",
                             "runtime": "Paddle Inference on CPU: config.enable_mkldnn(); "
                                        "config.enable_mkldnn_int8() (runs without it too, slower)"}}
    meta.update(metadata or {})
    shadow = dataclasses.replace(model, scope=qmodel.scope)
    return save_model(shadow, out_dir, meta, program=qmodel.program, fetch_targets=qmodel.fetch_names)


import contextlib  # noqa: E402  (helpers below keep paddle's progress bars and warnings out of ours)
import threading  # noqa: E402

_NODE_ORDER_LOCK = threading.Lock()


class _IdOrderedNodes(set):
    """A set of IrGraph nodes that iterates in node-id order."""

    def __iter__(self):
        return iter(sorted(set.__iter__(self), key=lambda n: n.node.id()))


@contextlib.contextmanager
def _stable_node_order():
    """Paddle's quantization passes walk `IrGraph.all_op_nodes()` & co., plain sets of node wrappers
    hashed by address, so the quantize ops they insert (and the saved program) came out in a different,
    equally valid order in every process. Iterating them by node id makes the program deterministic."""
    from paddle.base.framework import IrGraph

    names = ("all_nodes", "all_var_nodes", "all_persistable_nodes", "all_op_nodes")

    def ordered(fn):
        return lambda self: _IdOrderedNodes(fn(self))

    with _NODE_ORDER_LOCK:  # the patch is process-wide: one template build at a time
        originals = {n: IrGraph.__dict__[n] for n in names}
        try:
            for n, fn in originals.items():
                setattr(IrGraph, n, ordered(fn))
            yield
        finally:
            for n, fn in originals.items():
                setattr(IrGraph, n, fn)


@contextlib.contextmanager
def _quiet_tqdm():
    """The passes draw their own tqdm bars on stderr for every trial; silence them."""
    import paddle.static.quantization.quantization_pass as qp

    original = qp.tqdm

    class _Silent(original):
        def __init__(self, *a, **k):
            k["disable"] = True
            super().__init__(*a, **k)

    qp.tqdm = _Silent
    try:
        yield
    finally:
        qp.tqdm = original


@contextlib.contextmanager
def _quiet_logger():
    import logging

    import paddle.static.quantization.quantization_pass as qp

    logger = getattr(qp, "_logger", logging.getLogger("quantization_pass"))
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
