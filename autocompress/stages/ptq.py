"""PTQ stages: statistics collected once (`calibrate`), the search split into parts (`plan_trials`),
one part searched from the shared statistics (`ptq_search`), the best part kept (`select_best`)."""
from __future__ import annotations

import math
from pathlib import Path

from .. import config as cfg
from ..errors import ConfigError, ModelError
from .artifact import ModelArtifact

# the keys one explicit trial configuration may set (a ParallelFor item may be one configuration)
TRIAL_KEYS = ("ptq_algo", "bias_correct", "weight_quantize_type", "hist_percent", "batch_size", "batch_num")


def calibrate(model, calib_source, quant: cfg.QuantizationConfig, hpo: cfg.HyperParameterOptimizationConfig,
              place=None):
    """Activation statistics for every quantizable tensor, collected once: as many samples as the
    largest trial uses, in chunks of the smallest trial batch. A trial uses the whole chunks that
    cover its batch_size x batch_num samples (rounded up when a sampled batch size is not a multiple
    of the chunk); the trial table records the count it used (`calib_samples`)."""
    from ..model_io import load_model
    from ..paddle_env import legacy_ir
    from ..quant.calibration import collect_stats
    from ..quant.space import SearchSpace
    from ..quant.targets import find_targets

    space = SearchSpace.from_config(hpo)
    with legacy_ir():
        loaded = load_model(model, place)
        targets = find_targets(loaded.program, quant)
        return collect_stats(loaded, calib_source, targets, chunk_size=space.min_batch_size,
                             max_samples=space.max_samples)


def plan_trials(hpo: cfg.HyperParameterOptimizationConfig, shards: int = 1) -> list[dict]:
    """Split the search into `shards` independent parts (one ParallelFor item each). Part i searches
    its share of max_quant_count with seed `seed + 1000 i`, so parts never repeat each other's samples."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"trial_shards must be a positive integer, got {shards!r}")
    shards = min(shards, hpo.max_quant_count)
    base, extra = divmod(hpo.max_quant_count, shards)
    return [{"shard": i, "shards": shards, "seed": hpo.seed + 1000 * i,
             "max_quant_count": base + (1 if i < extra else 0)} for i in range(shards)]


def part_config(hpo: cfg.HyperParameterOptimizationConfig, part: dict) -> cfg.HyperParameterOptimizationConfig:
    """The HPO config of one part: a planned shard, or one explicit configuration {ptq_algo: KL, ...}."""
    if "shard" not in part:
        unknown = sorted(set(part) - set(TRIAL_KEYS))
        if unknown:
            raise ConfigError(f"trial has unknown keys {unknown}; allowed: {sorted(TRIAL_KEYS)}")
        values = {k: [v] for k, v in part.items()}
        return cfg.build(cfg.HyperParameterOptimizationConfig,
                         {**hpo.model_dump(), **values, "max_quant_count": 1, "search_algo": "grid"})
    count = int(part["max_quant_count"])
    return hpo.model_copy(update={"seed": int(part["seed"]), "max_quant_count": count,
                                  "finalists": min(hpo.finalists, count)})


def ptq_search(model: ModelArtifact, stats, calib_source, evaluation, quant: cfg.QuantizationConfig,
               hpo: cfg.HyperParameterOptimizationConfig, part: dict, target_metric: float, work_dir,
               place=None, progress: bool = True, strategy: str = "ptq_search") -> ModelArtifact:
    """Search one part from the shared statistics; the best int8 model of the part, all its trials."""
    from ..quant.ptq_search import run_ptq_search

    result = run_ptq_search(model.files, calib_source, evaluation.evaluator, quant, part_config(hpo, part),
                            save_dir=Path(work_dir), place=place, target_metric=target_metric, progress=progress,
                            stats=stats)
    result["trials"] = [dict(t, shard=part.get("shard", 0)) for t in result.get("trials", [])]
    return ModelArtifact.from_result(result, model, strategy, trial=part, baseline_metric=evaluation.baseline)


def select_best(candidates: list[ModelArtifact]) -> ModelArtifact:
    """The candidate with the best deployed metric, carrying every candidate's trials."""
    if not candidates:
        raise ModelError("select_best got no candidates: every PTQ search part failed or none ran")

    def score(c: ModelArtifact) -> float:
        value = c.meta.get("metric")
        return float(value) if value is not None and math.isfinite(value) else -math.inf

    best = max(candidates, key=score)
    trials = [t for c in candidates for t in c.trials]
    return ModelArtifact(best.files, {**best.meta, "candidates": len(candidates)}, trials, best.curve)
