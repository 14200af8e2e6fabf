"""The comparison every entry point reports: the compressed model next to the original, measured
where it will run (the job's DeployTarget), in one process, latency interleaved."""
from __future__ import annotations

import math

from .backend import DeployTarget, compare_latency
from .config import DeploySection, EvalSection
from .model_io import ModelFiles, summarize
from .summary import metric_drop

INT8_DEPLOY_NOTE = (
    "The model is int8 (quantize_linear/dequantize_linear format). It loads with a stock "
    "`paddle.inference.Config`; for int8 speed on CPU call `config.enable_mkldnn()` and "
    "`config.enable_mkldnn_int8()` (TensorRT int8 on GPU). Without the switch it runs correctly "
    "but slower than FP32. For OpenVINO, give it the ONNX export placed for its kernels (`autocompress "
    "export-onnx --placement openvino`; a job that measured OpenVINO delivers it in onnx-openvino/): its "
    "Paddle frontend misreads int8 programs.")


# A compressed model counts as slower when its median is this much above the original's AND it lost
# most interleaved rounds: a model of the same architecture (plain distillation) must not "lose" on
# the timing noise of a shared CPU.
SLOWER_MARGIN = 1.03
SLOWER_ROUNDS = 0.8


def rounds_lost(original_rounds: list[float], model_rounds: list[float]) -> float:
    """The share of interleaved rounds in which the model was slower than the original."""
    return sum(a > o for o, a in zip(original_rounds, model_rounds)) / max(len(original_rounds), 1)


def is_slower(before: float, after: float, lost: float) -> bool:
    """The rule above: median more than SLOWER_MARGIN above the original's and most rounds lost."""
    return bool(after > before * SLOWER_MARGIN and lost >= SLOWER_ROUNDS)


def compare_models(original: ModelFiles, compressed: ModelFiles, meta: dict, evaluation,
                   eval_settings: EvalSection, latency_threads: int = 1, deploy: DeploySection | None = None) -> dict:
    """Summary fields comparing `compressed` (with its stage metadata `meta`) against `original`.
    `evaluation` (evaluation.Evaluation) holds the evaluator, the baseline and the job's deploy target;
    `deploy` names the runtimes and the deployment batch the latency is measured on."""
    int8 = meta.get("precision") == "int8"
    deployed, metric_backend = evaluation.score(compressed, int8)
    sample_feed = evaluation.sample_feed
    shapes = {k: list(v.shape) for k, v in sample_feed.items()}
    before, after = summarize(original, shapes), summarize(compressed, shapes)
    baseline = evaluation.baseline
    drop = metric_drop(baseline, deployed, eval_settings.drop_type)
    deploy = deploy or DeploySection()
    runtimes = latency_by_runtime(original, compressed, int8, evaluation, deploy, latency_threads)
    first = next(r for r in runtimes if r["runtime"] == evaluation.target.runtime and r["batch"] == 1)
    lat_before, lat_after = first["ms_before"], first["ms_after"]
    warnings, slower = [], []
    for row in runtimes:
        if row["slower"]:
            where = f"{row['runtime']} at batch {row['batch']}"
            warnings.append(f"the compressed model is slower than the original on {where}: {row['ms_after']:.3f} ms "
                            f"vs {row['ms_before']:.3f} ms per call ({latency_threads} thread(s)).")
            if row["batch"] == runtimes[-1]["batch"]:
                slower.append(where)
    allowed_slower = deploy.allow_slower or not slower
    if not allowed_slower:
        warnings.append(f"target not met: slower than the original at the deployment batch on {', '.join(slower)} "
                        "(set Deploy.allow_slower: true to accept a slower model)")
    engine_metric = meta.get("metric")
    if engine_metric is not None and abs(engine_metric - deployed) > 0.02:
        warnings.append(f"the engine's metric ({engine_metric:.4f}) and the deployed metric ({deployed:.4f}) "
                        "differ; the summary reports the deployed one.")
    fields = {
        "baseline_metric": baseline,
        "metric": deployed,
        "metric_drop": drop,
        "metric_name": evaluation.metric_name,
        "metric_backend": metric_backend,
        "budget": f"max {eval_settings.drop_type} drop {eval_settings.max_drop}",
        "target_met": bool(math.isfinite(deployed) and drop <= eval_settings.max_drop + 1e-12 and allowed_slower),
        "latency": runtimes,
        "deploy_batch_size": runtimes[-1]["batch"],
        "engine_metric": engine_metric,
        "size_bytes_before": before["size_bytes"], "size_bytes_after": after["size_bytes"],
        "param_bytes_before": before.get("param_bytes"), "param_bytes_after": after.get("param_bytes"),
        "params_before": before.get("params"), "params_after": after.get("params"),
        "flops_before": before.get("flops"), "flops_after": after.get("flops"),
        "latency_ms_before": lat_before, "latency_ms_after": lat_after,
        "latency_backend": evaluation.target.describe(int8, latency_threads, 1),
        "precision": meta.get("precision", "fp32"),
        "warnings": warnings,
    }
    if int8:
        fields["deploy_note"] = INT8_DEPLOY_NOTE
    return fields


def latency_by_runtime(original: ModelFiles, compressed: ModelFiles, int8: bool, evaluation, deploy: DeploySection,
                       threads: int) -> list[dict]:
    """Per runtime (the job's own target first, then the named ones), at batch 1 and at the deployment
    batch: milliseconds per call of the original
    and the compressed model, warm and interleaved; on runtimes other than the job's own target also
    the compressed model's metric there (a runtime may read the int8 program differently)."""
    primary = evaluation.target
    names = [primary.runtime] + [n for n in deploy.runtimes or [] if n != primary.runtime]
    batch = deploy.batch_size or evaluation.data_batch
    rows = []
    for name in names:
        target = primary if name == primary.runtime else DeployTarget(name, primary.device_id)
        metric = None
        if target is not primary and evaluation.evaluator.mode != "paddleslim":
            metric = evaluation.score(compressed, int8, target)[0]
        for b in sorted({1, batch}):
            per_round: list = []
            before, after = compare_latency([(original, False), (compressed, int8)], evaluation.feed_of(b),
                                            threads=threads, target=target, per_round=per_round)
            lost = rounds_lost(*per_round)
            rows.append({"runtime": name, "backend": target.describe(int8, threads, b), "batch": b,
                         "ms_before": before, "ms_after": after, "speedup": before / after if after else None,
                         "rounds_lost": lost, "slower": is_slower(before, after, lost),
                         **({"metric": metric} if metric is not None else {})})
    return sorted(rows, key=lambda r: r["batch"])
