"""One PTQ trial and the trial table: thresholds from the shared statistics -> quantized model -> metric."""
from __future__ import annotations

import dataclasses
import inspect
import time

from ..evaluation import ModelContext, executor_predictor, finite_metric
from .apply import QuantTemplate
from .calibration import CalibrationStats
from .space import TrialConfig
from .thresholds import compute_thresholds


def call_evaluator(evaluator, predict, limit=None, context=None) -> float:
    """evaluate(predict, limit=None) -> float; a plain evaluate(predict) is fine when limit is None.
    `context` (the trial's static program, for PaddleSlim-style callbacks) is passed to evaluators
    that take it. A non-finite or non-numeric result is an EvalError (DESIGN §6)."""
    try:
        params = inspect.signature(evaluator).parameters
    except (TypeError, ValueError):
        params = {"limit": None}
    kwargs = {"limit": limit} if "limit" in params else {}
    if context is not None and "context" in params:
        kwargs["context"] = context
    return finite_metric(evaluator(predict, **kwargs), "the evaluation")


def effective_key(config: TrialConfig, stats: CalibrationStats) -> tuple:
    """What actually determines a trial's model: two configs with the same key give the same model."""
    chunks = stats.chunks_for(config.samples)
    hist = round(float(config.hist_percent), 6) if config.ptq_algo == "hist" else None
    return (config.ptq_algo, bool(config.bias_correct), config.weight_quantize_type, hist, chunks)


@dataclasses.dataclass
class Trial:
    index: int
    config: TrialConfig
    samples: int                    # calibration samples the thresholds came from
    metric: float | None = None     # simulated (executor, fake-quant) metric
    deployed_metric: float | None = None
    seconds: float = 0.0
    status: str = "ok"              # ok | failed | pruned
    error: str | None = None
    # successive halving (HyperParameterOptimizationConfig.subset_eval): metric on the first eval batches;
    # a pruned trial has no full `metric` and is never selected
    subset_metric: float | None = None
    pruned: bool = False
    # FP32 fallback (quant/fallback.py), on the selected finalist only
    fp32_layers: list[str] = dataclasses.field(default_factory=list)
    fallback_metric: float | None = None    # deployed metric with fp32_layers in FP32
    fallback_steps: list[dict] = dataclasses.field(default_factory=list)
    reused: bool = False            # taken from the trial log of an interrupted run (ptq_search resume)

    @classmethod
    def from_log(cls, index: int, config: TrialConfig, entry: dict) -> "Trial":
        """A trial of an earlier run's log, as the search evaluated it (the deployed-backend and
        FP32-fallback results are not taken: the finalists are measured again)."""
        return cls(index, config, int(entry["calib_samples"]), entry.get("metric"), seconds=float(entry.get("seconds", 0)),
                   status=entry["status"], error=entry.get("error"), subset_metric=entry.get("subset_metric"),
                   pruned=bool(entry.get("pruned")), reused=True)

    @property
    def final_deployed_metric(self) -> float | None:
        return self.fallback_metric if self.fp32_layers else self.deployed_metric

    def to_dict(self) -> dict:
        return {"index": self.index, "config": self.config.to_dict(), "calib_samples": self.samples,
                "metric": self.metric, "deployed_metric": self.deployed_metric,
                "seconds": round(self.seconds, 3), "status": self.status, "error": self.error,
                "fp32_layers": list(self.fp32_layers), "fallback_metric": self.fallback_metric,
                "fallback_steps": list(self.fallback_steps), "subset_metric": self.subset_metric,
                "pruned": self.pruned, "reused": self.reused}


class TrialRunner:
    """Builds trial models from one loaded model and one set of statistics (templates cached)."""

    def __init__(self, model, stats: CalibrationStats, targets, bits: int, place=None, weight_bits: int | None = None):
        """bits: activation bits (thresholds); weight_bits: the weights' (default: bits)."""
        self.model, self.stats, self.targets, self.bits, self.place = model, stats, targets, bits, place
        self.weight_bits = bits if weight_bits is None else weight_bits
        self._templates: dict[str, QuantTemplate] = {}

    def template(self, weight_quantize_type: str) -> QuantTemplate:
        if weight_quantize_type not in self._templates:
            self._templates[weight_quantize_type] = QuantTemplate(
                self.model, self.targets, self.bits, weight_quantize_type, self.place, weight_bits=self.weight_bits)
        return self._templates[weight_quantize_type]

    def thresholds(self, config: TrialConfig) -> dict[str, float]:
        return compute_thresholds(self.stats, config.ptq_algo, config.samples, config.hist_percent, self.bits)

    def build(self, config: TrialConfig, fp32_layers=()):
        """The trial's quantized model; `fp32_layers` (layer keys) stay FP32 in a one-off template
        (not cached: each FP32 fallback step has its own program)."""
        if fp32_layers:
            template = QuantTemplate(self.model, self.targets, self.bits, config.weight_quantize_type,
                                     self.place, fp32_layers=fp32_layers, weight_bits=self.weight_bits)
        else:
            template = self.template(config.weight_quantize_type)
        return template.instantiate(self.thresholds(config), bool(config.bias_correct))

    def _shadow(self, qmodel):
        """The loaded FP32 model (executor, feeds, fetches) with the trial's scope."""
        return dataclasses.replace(self.model, scope=qmodel.scope)

    def context(self, qmodel):
        """What a PaddleSlim-style `(exe, program, feed_names, fetch_targets)` callback runs: this trial."""
        return ModelContext.from_model(self._shadow(qmodel), program=qmodel.program)

    def samples(self, config: TrialConfig) -> int:
        k = self.stats.chunks_for(config.samples)
        return int(self.stats.chunk_samples[:k].sum())

    def run(self, index: int, config: TrialConfig, evaluator, limit=None) -> tuple[Trial, object]:
        start = time.perf_counter()
        qmodel = self.build(config)
        metric = self.evaluate(qmodel, evaluator, limit)
        return Trial(index, config, self.samples(config), metric, seconds=time.perf_counter() - start), qmodel

    def evaluate(self, qmodel, evaluator, limit=None) -> float:
        predict = executor_predictor(self._shadow(qmodel), program=qmodel.program)
        return call_evaluator(evaluator, predict, limit, context=self.context(qmodel))
