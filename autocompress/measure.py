"""The comparison every entry point reports: the compressed model next to the original, measured
where it will run (the job's DeployTarget), in one process, latency interleaved."""
from __future__ import annotations

import math

from .backend import compare_latency
from .config import EvalSection
from .model_io import ModelFiles, summarize
from .summary import metric_drop

INT8_DEPLOY_NOTE = (
    "The model is int8 (quantize_linear/dequantize_linear format). It loads with a stock "
    "`paddle.inference.Config`; for int8 speed on CPU call `config.enable_mkldnn()` and "
    "`config.enable_mkldnn_int8()` (TensorRT int8 on GPU). Without the switch it runs correctly "
    "but slower than FP32.")


def compare_models(original: ModelFiles, compressed: ModelFiles, meta: dict, evaluation,
                   eval_settings: EvalSection, latency_threads: int = 1) -> dict:
    """Summary fields comparing `compressed` (with its stage metadata `meta`) against `original`.
    `evaluation` (evaluation.Evaluation) holds the evaluator, the baseline and the deploy target."""
    int8 = meta.get("precision") == "int8"
    deployed, metric_backend = evaluation.score(compressed, int8)
    sample_feed = evaluation.sample_feed
    shapes = {k: list(v.shape) for k, v in sample_feed.items()}
    before, after = summarize(original, shapes), summarize(compressed, shapes)
    lat_before, lat_after = compare_latency([(original, False), (compressed, int8)], sample_feed,
                                            threads=latency_threads, target=evaluation.target)
    baseline = evaluation.baseline
    drop = metric_drop(baseline, deployed, eval_settings.drop_type)
    warnings = []
    if lat_after > lat_before:
        warnings.append(f"the compressed model is slower than the original on this machine ({lat_after:.3f} ms vs "
                        f"{lat_before:.3f} ms per sample, {latency_threads} thread(s)).")
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
        "target_met": bool(math.isfinite(deployed) and drop <= eval_settings.max_drop + 1e-12),
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
