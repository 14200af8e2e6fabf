"""Apply given thresholds to the FP32 program: the int8 (quantize/dequantize_linear) model, no recalibration.

The program comes from the program layer (`program.legacy.quantize.insert_qdq`, Paddle's PTQ passes in
their ONNX-style export, bit ranges and skip marks repaired there), built once per template on a clone
in a fresh scope, so the loaded FP32 model is never modified and one load serves every trial. Unlike
paddle's PTQ it passes `not_quant_pattern` to the passes and really applies bias correction.
Weights and activations each get their own bits (`weight_bits`, `activation_bits`); oneDNN and
TensorRT run 8 bits only, other widths need deploy_backend 'none' (config.py).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..errors import DataError
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

        from ..program.legacy.info import persistable_names
        from ..program.legacy.quantize import FP32_MARK, insert_qdq, mark_fp32
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
        fp32_tensors = mark_fp32(clone, marked) if marked else set()
        if marked:
            skip.append(FP32_MARK)
        # no observer scale on the FP32 layers' inputs/outputs: oneDNN fuses some ops into new ones
        # that drop skip_quant (matmul_v2 + add -> fc), and an op without an input scale stays FP32.
        # The scales are placeholders: each trial writes its own (instantiate).
        placeholder = {name: 1.0 for name in targets.activations if name not in fp32_tensors}
        self.program, axes = insert_qdq(
            clone, build_scope, self.place, weight_op_types=targets.weight_op_types,
            act_op_types=targets.act_op_types, observer_op_types=targets.observer_op_types, skip_patterns=skip,
            observed=placeholder, weight_bits=self.weight_bits, activation_bits=bits,
            weight_quantize_type=weight_quantize_type)
        # weight name -> (fp32 values, quant axis the pass chose)
        self.weights = {name: (np.array(model.scope.find_var(name).get_tensor()), axis) for name, axis in axes.items()}
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


def _copy_params(model, place):
    """A new scope holding copies of the FP32 parameters (the passes write into their scope)."""
    import paddle

    from ..program.legacy.info import persistable_names

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
