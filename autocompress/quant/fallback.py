"""FP32 fallback (DESIGN §8): keep the layers that hurt the deployed int8 metric most in FP32.

Simulated quantization and oneDNN int8 disagree: oneDNN also runs pool2d, elementwise_add, concat,
reshape2/transpose2... in int8 from the observer scales and requantizes every int8 op's output, none
of which the simulated (executor) model does. So after the finalists, when the selected model's
deployed metric misses the target, this module

1. lists the ops that run in int8 when deployed (`targets.int8_layers`: quantized layers and the
   oneDNN-only int8 ops) and ranks them by accuracy gained per speed given up, both read off the
   calibration statistics. The gain is the relative quantization noise (noise power / signal power)
   of each op's input and output tensors at the trial's thresholds, plus that of its int8 weights.
   The cost is the layer's share of the int8 work (`layer_costs`: multiply-accumulates of a conv or
   matmul, tensor elements of the rest) plus an even share for the reorders every FP32 island adds,
   so of two equally noisy layers the cheap one goes to FP32 first and a big conv only when it is
   much noisier. No model run: ~0.1 s on PP-OCRv4 (why: a measured per-layer ranking needs one
   template + oneDNN predictor + evaluation per layer, ~15 s each on PP-OCRv4 with ~200 candidates,
   far over the 1-2 minute budget);
2. greedily keeps the top-ranked layers in FP32, in growing groups (1, 1, 2, 4, ... layers), and
   measures each step's *deployed* metric; a group is kept only when it raises the metric (FP32
   layers cost speed), and the search stops once the target is met, the cap is reached, or
   `MAX_STEPS` steps ran (each step rebuilds the template: ~5-10 s on PP-OCRv4).

`HyperParameterOptimizationConfig.fp32_fallback` (extension) sets it:
- None (default): automatic. Runs only when a target_metric is given and the selected model's
  deployed metric misses it; at most ceil(10 %) of the int8 layers (at least 1) go to FP32.
- 0: off; the model stays fully int8.
- N > 0: at most N layers. Runs whenever the deployed metric is below the target, or, without a
  target, below the FP32 model's deployed metric (recover what the budget allows).
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np

from .calibration import CalibrationStats
from .targets import Layer, int8_layers

AUTO_FRACTION = 0.10   # automatic cap: this share of the int8 layers
MAX_STEPS = 8          # bounds the extra wall time (one template build + deployed evaluation each)
WORK_SUBDIR = ".fallback"


def fallback_plan(setting: int | None, n_layers: int, metric: float | None, target_metric: float | None,
                  fp32_metric: float | None) -> tuple[int, float] | None:
    """(cap, target) when the fallback should run, else None. See the module docstring."""
    if setting == 0 or metric is None or n_layers == 0:
        return None
    if setting is None:
        if target_metric is None or metric >= target_metric:
            return None
        return max(1, math.ceil(AUTO_FRACTION * n_layers)), float(target_metric)
    target = target_metric if target_metric is not None else fp32_metric
    if target is None or metric >= target:
        return None
    return min(int(setting), n_layers), float(target)


def relative_noise(hists: np.ndarray, widths: np.ndarray, thresholds: np.ndarray, bits: int) -> np.ndarray:
    """Per tensor: E[(x - q(x))^2] / E[x^2] for symmetric `bits` quantization clipped at the
    threshold, read off |x| histograms (values at bin centres). [T, B] counts -> [T]."""
    hists = np.atleast_2d(hists).astype(np.float64)
    qmax = 2 ** (bits - 1) - 1
    centres = (np.arange(hists.shape[1]) + 0.5)[None, :] * np.asarray(widths, np.float64)[:, None]
    step = np.maximum(np.asarray(thresholds, np.float64), 1e-12)[:, None] / qmax
    deq = np.minimum(np.round(centres / step), qmax) * step
    noise = ((centres - deq) ** 2 * hists).sum(axis=1)
    signal = (centres ** 2 * hists).sum(axis=1)
    return np.where(signal > 0, noise / np.maximum(signal, 1e-30), 0.0)


def weight_noise(template, bias_correct: bool) -> dict[str, float]:
    """Relative quantization noise of each int8 weight of a QuantTemplate."""
    ints = template.int_weights(bias_correct)
    qmax = 2 ** (template.weight_bits - 1) - 1
    out = {}
    for name, (w, axis) in template.weights.items():
        scales = np.asarray(template.scales[name], np.float64)
        if axis >= 0 and scales.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scales = scales.reshape(shape)
        deq = ints[name].astype(np.float64) * scales / qmax
        power = float((w.astype(np.float64) ** 2).sum())
        out[name] = float(((w - deq) ** 2).sum()) / power if power > 0 else 0.0
    return out


def layer_costs(layers: list[Layer], stats: CalibrationStats, weight_shapes: dict[str, tuple]) -> dict[str, float]:
    """Layer key -> its share of the int8 work (shares sum to 1). A layer with weights costs its
    multiply-accumulates: output elements x the weight's fan-in (conv [O, I/g, kh, kw]: I/g*kh*kw;
    matmul [K, N]: K). The others (pool, add, concat...) are memory-bound: they cost the elements they
    read and write. Element counts come from the calibration histograms, which count every element
    of every calibration sample, so no shape inference is needed (the recognizer's width is dynamic)."""
    index = stats.index()

    def elements(names) -> float:
        return float(sum(stats.hist[index[n]].sum(dtype=np.int64) for n in names if n in index))

    raw = {}
    for layer in layers:
        fan_in = 0
        for w in layer.weights:
            shape = weight_shapes.get(w)
            if shape:
                fan_in += int(np.prod(shape[1:])) if len(shape) == 4 else int(shape[0])
        if fan_in:
            raw[layer.key] = elements(layer.outputs or layer.activations) * fan_in
        else:
            raw[layer.key] = elements(set(layer.activations + layer.outputs))
    total = sum(raw.values())
    return {k: (v / total if total > 0 else 1.0 / max(len(raw), 1)) for k, v in raw.items()}


def rank_layers(layers: list[Layer], stats: CalibrationStats, thresholds: dict[str, float], bits: int,
                weights: dict[str, float], costs: dict[str, float] | None = None) -> list[tuple[str, float]]:
    """[(layer key, score)], best FP32 candidate first. noise = summed relative noise of the layer's
    quantization points (inputs, outputs, weights); score = noise without `costs`, else noise per
    cost, cost = the layer's work share (`layer_costs`) + 1/len(layers) (the reorders an FP32 island
    adds, about the same for every layer). Ties keep program order."""
    index = stats.index()
    names = sorted({n for layer in layers for n in layer.activations + layer.outputs if n in index})
    rows = np.array([index[n] for n in names], int)
    noise = {}
    if len(rows):
        hists = stats.hist[rows].sum(axis=1, dtype=np.int64)
        widths = stats.hist_max[rows].astype(np.float64) / stats.bins
        values = relative_noise(hists, widths, np.array([thresholds[n] for n in names]), bits)
        noise = dict(zip(names, values))
    scored = [(layer.key, float(sum(noise.get(n, 0.0) for n in set(layer.activations + layer.outputs))
                                + sum(weights.get(w, 0.0) for w in layer.weights))) for layer in layers]
    if costs is not None:
        island = 1.0 / max(len(layers), 1)
        scored = [(key, score / (costs.get(key, island) + island)) for key, score in scored]
    order = sorted(range(len(scored)), key=lambda i: (-scored[i][1], i))
    return [scored[i] for i in order]


def group_sizes(cap: int):
    """1, 1, 2, 4, 8, ...: the first two steps test single layers (often one dominates), then the
    groups double so that the cap is reached in few steps."""
    size, first = 1, True
    while True:
        yield min(size, cap)
        if first:
            first = False
        else:
            size *= 2


def run_fallback(runner, trial, measure, save, plan: tuple[int, float], work_dir: Path,
                 progress: bool = False, by_cost: bool = True) -> dict:
    """Greedy FP32 fallback for `trial` (a finalist with a deployed metric). by_cost: rank by noise per
    work share (`fallback_ranking: cost`), else by noise alone.

    runner: search.TrialRunner. measure(files) -> deployed metric. save(qmodel, out_dir) -> ModelFiles.
    Returns {fp32_layers, metric, steps, candidates, cap, target, seconds, qmodel (best or None)}.
    """
    start = time.perf_counter()
    thresholds = runner.thresholds(trial.config)
    template = runner.template(trial.config.weight_quantize_type)
    layers = int8_layers(runner.model.program, runner.targets)
    costs = layer_costs(layers, runner.stats, {name: w.shape for name, (w, _) in template.weights.items()}) \
        if by_cost else None
    ranked = rank_layers(layers, runner.stats, thresholds, runner.bits,
                         weight_noise(template, bool(trial.config.bias_correct)), costs)

    def attempt(layers: list[str], step_dir: Path):
        qmodel = runner.build(trial.config, fp32_layers=layers)
        return measure(save(qmodel, step_dir)), qmodel

    bar = _bar(progress)
    try:
        out = greedy_fp32(ranked, plan, trial.deployed_metric, attempt, work_dir, MAX_STEPS,
                          on_step=lambda kept, metric: (bar.update(), bar.set_postfix(fp32=len(kept),
                                                                                       metric=f"{metric:.4f}")))
    finally:
        bar.close()
    out.update(seconds=time.perf_counter() - start, qmodel=out.pop("best"))
    return out


def greedy_fp32(ranked: list[tuple[str, float]], plan: tuple[int, float], start_metric: float, attempt,
                work_dir: Path, max_steps: int, on_step=None) -> dict:
    """Keep the highest-ranked layers in FP32, in groups of `group_sizes`, measuring each step on the
    deployment backend; a group stays only if the deployed metric rises. Stops at the target, the cap
    or `max_steps`. attempt(fp32_layers, step_dir) -> (deployed metric, candidate model).

    Returns {fp32_layers, metric, steps, candidates, ranking, cap, target, best (candidate or None)}."""
    cap, target = plan
    kept: list[str] = []
    best_metric, best = start_metric, None
    steps: list[dict] = []
    sizes, pos = group_sizes(cap), 0
    try:
        while best_metric < target and len(kept) < cap and pos < len(ranked) and len(steps) < max_steps:
            size = min(next(sizes), cap - len(kept))
            group = [key for key, _ in ranked[pos:pos + size]]
            pos += size
            t0 = time.perf_counter()
            metric, candidate = attempt(kept + group, work_dir / f"step_{len(steps)}")
            accepted = metric > best_metric
            steps.append({"step": len(steps), "added": group, "fp32_layers": kept + group,
                          "deployed_metric": metric, "accepted": accepted,
                          "seconds": round(time.perf_counter() - t0, 3)})
            if accepted:
                kept, best_metric, best = kept + group, metric, candidate
            if on_step is not None:
                on_step(kept, best_metric)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return {"fp32_layers": kept, "metric": best_metric, "steps": steps, "candidates": len(ranked),
            "ranking": ranked[:max(cap, 10)], "cap": cap, "target": target, "best": best}


def summary_line(info: dict, before: float) -> str:
    """One sentence for the report (the FP32 layers cost deployed speed, so it is always stated)."""
    kept = info["fp32_layers"]
    met = "met" if info["metric"] >= info["target"] else "still missed"
    if not kept:
        return (f"FP32 fallback tried {len(info['steps'])} steps (cap {info['cap']} of {info['candidates']} int8 "
                f"layers) without improving the deployed metric {before:.4f}; target {info['target']:.4f} {met}.")
    return (f"FP32 fallback kept {len(kept)} of {info['candidates']} int8 layers in FP32 ({', '.join(kept[:5])}"
            f"{' ...' if len(kept) > 5 else ''}): deployed metric {before:.4f} -> {info['metric']:.4f}, target "
            f"{info['target']:.4f} {met}. These layers run in FP32 on the deployment backend.")


def _bar(progress: bool):
    from .calibration import _NoBar

    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=MAX_STEPS, desc="FP32 fallback", unit="step", leave=False)
