"""The `evaluate` stage and the one summary assembly: the compressed model measured next to the
original on the deployment target, the stage costs, the trials or curve, the engine's facts and
warnings — the same `summary.json` on every entry point."""
from __future__ import annotations

import numpy as np

from .artifact import ModelArtifact


def evaluate(original, compressed: ModelArtifact, evaluation, job, device: str, records: list[dict] | None = None,
             seconds: float | None = None, split: str = "eval") -> dict:
    """Measure `compressed` next to `original` and assemble the summary. `evaluation` scores the
    split named by `split` ('test': data the selection never saw; 'eval': the selection data).
    `records` are the stage records so far (this stage's own is appended); `seconds` the run's wall
    time (default: the sum of the records)."""
    from ..measure import compare_models
    from .artifact import StageTimer

    with StageTimer("evaluate") as t:
        compared = compare_models(original, compressed.files, compressed.meta, evaluation, job.eval,
                                  job.latency_threads, job.deploy)
    records = list(records if records is not None else compressed.stages) + [t.record]
    summary = assemble_summary(job, compressed, compared, device, records, seconds)
    summary["metric_split"] = split
    if split == "eval":
        summary["warnings"].append("the reported metric is on the eval data the selection used; give a test split "
                                   "(Data.test / test_dataloader) for a metric on data the selection never saw")
    return summary


def assemble_summary(job, compressed: ModelArtifact, compared: dict, device: str, records: list[dict],
                     seconds: float | None = None) -> dict:
    from ..summary import peak_rss_bytes

    records = list(records)
    summary = {
        "strategy": job.strategy.name,
        **compared,
        "device": device,
        "deploy_backend": job.deploy_backend,
        "input_model": compressed.meta.get("parent"),
        "trials": compressed.trials,
        "curve": compressed.curve,
        "interrupted": bool(compressed.meta.get("facts", {}).get("interrupted", False)),
        "stages": records,
        "seconds": seconds if seconds is not None else round(sum(r["seconds"] for r in records), 3),
        "peak_rss_bytes": max([r["peak_rss_bytes"] for r in records] + [peak_rss_bytes()]),
    }
    summary["warnings"] = list(compressed.meta.get("warnings", [])) + compared["warnings"]
    for key, value in compressed.meta.get("facts", {}).items():
        summary.setdefault(key, value)
    return summary


def confusion_matrix(predict, source, metric: str, max_classes: int = 32) -> dict | None:
    """Confusion matrix for classifiers (top1/top5 with labels and few classes), else None."""
    if metric not in ("top1", "top5"):
        return None
    pairs = []
    for batch in source.batches():
        if batch.label is None:
            return None
        out = predict(batch.feed)[0]
        if out.ndim != 2:
            return None
        pairs.append((out.argmax(-1), batch.label.reshape(-1)))
    pred = np.concatenate([p for p, _ in pairs])
    true = np.concatenate([t for _, t in pairs]).astype(np.int64)
    n = int(max(pred.max(), true.max())) + 1
    if n > max_classes:
        return None
    matrix = np.zeros((n, n), np.int64)
    np.add.at(matrix, (true, pred), 1)
    return {"categories": [str(i) for i in range(n)], "matrix": matrix.tolist()}
