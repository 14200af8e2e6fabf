"""FP32 fallback after QAT (DESIGN §8): keep the layers that hurt the *deployed* int8 metric in FP32.

QAT's simulated metric (fake-quant ops in the executor) and oneDNN int8 disagree: oneDNN also runs
pool2d / elementwise_add / concat... in int8 from the observer scales, fuses ops and requantizes
outputs. The PTQ search closes that gap with quant/fallback.py; this module applies the same rules to
the QAT-converted program, which no QuantTemplate can rebuild (convert() already rounded the weights
in place), so it edits the converted program itself, through the program layer
(`program.legacy.quantize.keep_fp32`):

- a layer kept in FP32 gets the INTEGER `skip_quant = 1` (the attribute oneDNN's placement pass reads),
  reads its inputs before their quantize/dequantize pair, and the observer pairs on its input and
  output tensors are dropped unless a still-quantized layer needs them (an op without an input scale
  stays FP32 in oneDNN, also after fusions that drop skip_quant); its weights stay dequantized
  (the int8 grid QAT trained against, now run by an FP32 kernel);
- candidates: every op that would run int8 when deployed; the oneDNN-only int8 ops first, then the
  QAT-quantized ones, each by the relative quantization noise of its scaled tensors on one evaluation
  batch (the PTQ proxy, measured instead of read off histograms: QAT keeps no calibration statistics);
- gating, caps and group sizes come from quant/fallback.py (fallback_plan, group_sizes, summary_line),
  and each step is measured with Paddle Inference + oneDNN int8 and kept only if it helps.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ..program.legacy.quantize import QDQ_OPS, dequantized_source, is_skipped, keep_fp32, layer_key, producers, scale_values

WORK_SUBDIR = ".qat_fallback"
# Steps bound the extra wall time. A QAT step only edits the converted program, saves it and measures
# it (~2 s on PP-OCRv4 with 100 lines), no QuantTemplate rebuild as in PTQ (5-10 s, MAX_STEPS = 8 there),
# so more groups fit the same 1-2 minute budget.
MAX_STEPS = 12


@dataclasses.dataclass
class Candidate:
    key: str               # quant.targets.layer_key: `type(first output)`
    tensors: list[str]     # its scaled inputs (before quantization) and scaled outputs
    simulated: bool        # True: QAT quantized it while training; False: only oneDNN runs it in int8


def int8_candidates(program, quantized_types) -> list[Candidate]:
    """Ops that run in int8 when deployed, program order: quantized op types and the oneDNN int8 op
    types whose input carries a scale; ops already skipped (not_quant_pattern) are no candidates."""
    from ..quant.targets import ONEDNN_INT8_OP_TYPES

    block = program.global_block()
    made_by = producers(block)
    scaled = {op.input("X")[0] for op in block.ops if op.type == "quantize_linear"}
    out = []
    for op in block.ops:
        if op.type in QDQ_OPS or op.type in ("feed", "fetch") or is_skipped(op):
            continue
        ins = [s for s in (dequantized_source(block, made_by, n) for n in op.input_arg_names) if s is not None]
        if not ins or (op.type not in quantized_types and op.type not in ONEDNN_INT8_OP_TYPES):
            continue
        outs = [n for n in op.output_arg_names if n in scaled]
        out.append(Candidate(layer_key(op), sorted(set(ins + outs)), op.type in quantized_types))
    return out


def rank(model, candidates: list[Candidate], evaluator, bits: int) -> list[tuple[str, float]]:
    """[(key, score)] most sensitive first; score = summed relative noise E[(x-q(x))^2]/E[x^2] of the
    layer's scaled tensors on the first evaluation batch (one simulated evaluation).

    The layers only oneDNN runs in int8 (elementwise_add/mul of hardswish and residuals, pool2d,
    concat) come first: training never saw their quantization, so they carry the simulated-vs-deployed
    gap, while the quantized layers' noise is already in the simulated metric QAT optimised. Measured
    on PP-OCRv4: with noise alone the first steps tried depthwise convs and lost deployed accuracy."""
    import paddle

    from ..quant.search import call_evaluator

    scales = scale_values(model.program, model.scope)
    names = sorted({t for c in candidates for t in c.tensors if t in scales})
    qmax = 2 ** (bits - 1) - 1
    noise: dict[str, float] = {}
    fetch = list(model.fetch_names)

    def predict(feed):
        extra = [] if noise else names
        with paddle.static.scope_guard(model.scope):
            values = model.executor.run(model.program, feed=feed, fetch_list=fetch + extra)
        for name, v in zip(extra, values[len(fetch):]):
            v = np.asarray(v, np.float64)
            step = max(scales[name], 1e-12) / qmax
            q = np.clip(np.round(v / step), -qmax, qmax) * step
            power = float((v * v).sum())
            noise[name] = float(((v - q) ** 2).sum()) / power if power > 0 else 0.0
        return values[:len(fetch)]

    call_evaluator(evaluator, predict, limit=1)
    scored = [(c.key, float(sum(noise.get(t, 0.0) for t in c.tensors))) for c in candidates]
    order = sorted(range(len(scored)), key=lambda i: (candidates[i].simulated, -scored[i][1], i))
    return [scored[i] for i in order]


def run_qat_fallback(model, evaluator, quantized_types, bits: int, plan: tuple[int, float], start_metric: float,
                     work_dir: Path, measure) -> dict:
    """Greedy FP32 fallback on a converted QAT model (a LoadedModel of the saved int8 model).

    measure(files) -> deployed metric. Returns {fp32_layers, metric, steps, candidates, cap, target,
    seconds, ranking, program (best edited program or None)}; the same keys as quant/fallback.py."""
    from ..model_io import save_model
    from ..quant.fallback import greedy_fp32

    start = time.perf_counter()
    candidates = int8_candidates(model.program, quantized_types)
    ranked = rank(model, candidates, evaluator, bits)

    def attempt(layers: list[str], step_dir: Path):
        program = model.program.clone()
        keep_fp32(program, layers, quantized_types)
        files = save_model(model, step_dir, {"precision": "int8"}, program=program,
                           fetch_targets=list(model.fetch_names))
        return measure(files), program

    out = greedy_fp32(ranked, plan, start_metric, attempt, work_dir, MAX_STEPS)
    out.update(seconds=time.perf_counter() - start, program=out.pop("best"))
    return out


def deployed_with_fallback(files, evaluator, qc, setting, target_metric, fp32_metric, save_dir: Path,
                           metadata: dict) -> dict:
    """Measure the saved QAT model on oneDNN int8; when `quant.fallback.fallback_plan` says so (the
    same gate as the PTQ search: setting None = automatic when target_metric is missed), keep the most
    harmful layers in FP32 and re-save the best model over `files`. Call inside legacy_ir().

    Returns {deployed_metric, int8_deployed_metric, fp32_layers, fallback_steps, fallback_seconds,
    fallback_ranking, warnings, model_files}."""
    from ..backend import inference_predictor
    from ..model_io import load_model, save_model
    from ..quant.fallback import fallback_plan, summary_line
    from ..quant.search import call_evaluator
    from ..quant.targets import quant_op_tables

    def measure(f):
        return call_evaluator(evaluator, inference_predictor(f, int8=True))

    before = measure(files)
    out = {"deployed_metric": before, "int8_deployed_metric": before, "fp32_layers": [], "fallback_steps": [],
           "fallback_seconds": 0.0, "fallback_ranking": [], "warnings": [], "model_files": files}
    model = load_model(files)
    weight_ops, act_ops, _ = quant_op_tables(qc)
    quantized = set(weight_ops) | set(act_ops)
    n = len(int8_candidates(model.program, quantized))
    plan = fallback_plan(setting, n, before, target_metric, fp32_metric)
    if plan is None:
        return out
    info = run_qat_fallback(model, evaluator, quantized, int(qc.activation_bits), plan, before,
                            Path(save_dir) / WORK_SUBDIR, measure)
    out.update(deployed_metric=info["metric"], fp32_layers=info["fp32_layers"], fallback_steps=info["steps"],
               fallback_seconds=info["seconds"], fallback_ranking=info["ranking"],
               warnings=[summary_line(info, before)])
    if info["program"] is not None:
        meta = dict(metadata, fp32_layers=info["fp32_layers"], deployed_metric=info["metric"])
        out["model_files"] = save_model(model, files.model_dir, meta, program=info["program"],
                                        fetch_targets=list(model.fetch_names))
    return out
