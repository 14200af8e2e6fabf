"""`AutoCompression`: the spec's Python API. Validates everything, runs one strategy engine, measures
the result where it will run, and writes the same outputs as every other entry point.

The class only orchestrates: algorithms live in `quant/`, `train/` and `prune/`.
"""
from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

from . import config as cfg
from .errors import ConfigError, DataError
from .paddle_env import DEFAULT_DEVICE, device_string, resolve_device
from .summary import peak_rss_bytes, write_summary
from .train.fleet import process_rank

log = logging.getLogger("autocompress")

# combination -> (module, function). Engines share one keyword interface (see _engine_kwargs).
ENGINES = {
    "ptq_hpo": ("autocompress.quant.ptq_search", "run_ptq_search"),
    "qat_distill": ("autocompress.train", "run_distill"),
    "distill": ("autocompress.train", "run_distill"),
    "multi_teacher_distill": ("autocompress.train", "run_multi_teacher"),
    "prune_distill": ("autocompress.prune.run", "run_prune_distill"),
    "sparse_distill": ("autocompress.prune.run", "run_sparse_distill"),
}


class AutoCompression:
    """Compress an inference model with one of the spec's six strategy combinations.

    Beyond the spec (keyword-only): `metric` ('top1' | 'top5' | 'fidelity' | 'pkg.mod:func', used when
    `eval_callback` is a data loader), `max_drop` / `drop_type` (the accuracy budget against the
    original model measured in the same run), `calib_dataloader` (defaults to `train_dataloader`),
    `latency_threads` (CPU threads for the latency comparison).
    """

    def __init__(self, model_dir, model_filename, params_filename, save_dir, strategy_config,
                 train_config, train_dataloader, eval_callback, devices=DEFAULT_DEVICE, *,
                 metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute",
                 calib_dataloader=None, latency_threads: int = 1, progress: bool = True):
        # validate everything before any work (DESIGN §5)
        self.combination, self.strategy = cfg.parse_strategy(strategy_config)
        if self.combination in cfg.NEEDS_TRAINING:
            self.train_config = cfg.build(cfg.TrainConfig, train_config)
        else:
            if train_config is not None:
                log.info("train_config is ignored by the %s strategy (it does not train), as the spec says",
                         self.combination)
            self.train_config = None
        self.eval_settings = cfg.build(cfg.EvalSection, {"metric": metric, "max_drop": max_drop,
                                                          "drop_type": drop_type}, "eval")
        if save_dir is None:
            raise ConfigError("save_dir is required: the folder for the compressed model and report")
        if train_dataloader is None:
            raise DataError(f"train_dataloader is required (the {self.combination} strategy uses it for "
                            "calibration or training)")
        if eval_callback is None:
            raise ConfigError("eval_callback is required: an eval DataLoader (last field = label) or a function "
                              "that receives a predict callable and returns a float")
        if latency_threads < 1:
            raise ConfigError(f"latency_threads must be >= 1, got {latency_threads}")
        self.place = resolve_device(devices)
        from .model_io import locate_model, require_legacy

        self.model_files = locate_model(model_dir, model_filename, params_filename)
        require_legacy(self.model_files, f"the {self.combination} strategy")
        self.save_dir = Path(save_dir)
        if self.save_dir.resolve() == self.model_files.model_dir.resolve():
            raise ConfigError("save_dir is the input model's folder; choose another folder (the input is never "
                              "overwritten)")
        self.train_dataloader = train_dataloader
        self.calib_dataloader = calib_dataloader
        self.eval_callback = eval_callback
        self.latency_threads = latency_threads
        self.progress = progress

    def compression(self) -> dict:
        """Run the strategy; returns the summary (also written to save_dir/summary.json)."""
        from .model_io import InputGuard

        guard = InputGuard(self.model_files)
        start = time.perf_counter()
        context = self._prepare()
        module, func = ENGINES[self.combination]
        engine = getattr(importlib.import_module(module), func)
        result = engine(**self._engine_kwargs(context))
        rank = process_rank()
        if rank != 0:  # collective training: rank 0 measures and reports; the others only trained
            log.info("rank %d done; rank 0 writes the summary and the model", rank)
            return {"strategy": self.combination, "rank": rank, "model_dir": str(result["model_files"].model_dir)}
        summary = self._measure(context, result, time.perf_counter() - start)
        write_summary(self.save_dir, summary)
        guard.verify()
        log.info("summary written to %s", self.save_dir / "summary.json")
        return summary

    # -- steps -------------------------------------------------------------------------------------
    def _prepare(self) -> dict:
        from .backend import inference_predictor
        from .data import FeedSource
        from .evaluation import build_evaluator
        from .model_io import load_model
        from .paddle_env import legacy_ir

        with legacy_ir():
            model = load_model(self.model_files)
            # bound to the model: feed names and shapes checked, dtypes cast, before any work
            train_source = FeedSource.for_model(self.train_dataloader, model)
            calib_source = (FeedSource.for_model(self.calib_dataloader, model)
                            if self.calib_dataloader is not None else train_source)
        feed_names = model.feed_names
        fp32_predict = inference_predictor(self.model_files, int8=False)
        evaluator = build_evaluator(
            eval_callback=None if _is_data(self.eval_callback) else self.eval_callback,
            eval_data=self.eval_callback if _is_data(self.eval_callback) else None,
            metric=self.eval_settings.metric, feed_names=feed_names, reference_predict=fp32_predict)
        baseline = evaluator(fp32_predict)
        first = calib_source.first()
        sample_feed = {k: v[:1] for k, v in first.feed.items()}
        log.info("baseline %s of the original model: %.4f", self.eval_settings.metric, baseline)
        return {"feed_names": feed_names, "train_source": train_source, "calib_source": calib_source,
                "evaluator": evaluator, "baseline": baseline, "sample_feed": sample_feed}

    def _target_metric(self, baseline: float) -> float:
        e = self.eval_settings
        return baseline - (e.max_drop * abs(baseline) if e.drop_type == "relative" else e.max_drop)

    def _engine_kwargs(self, c: dict) -> dict:
        s = self.strategy
        common = {"model_files": self.model_files, "evaluator": c["evaluator"], "save_dir": self.save_dir,
                  "place": self.place}
        if self.combination == "ptq_hpo":
            return {**common, "calib_source": c["calib_source"], "quant_config": s["QuantizationConfig"],
                    "hpo_config": s["HyperParameterOptimizationConfig"],
                    "target_metric": self._target_metric(c["baseline"]), "progress": self.progress}
        train = {**common, "train_source": c["train_source"], "train_config": self.train_config,
                 "baseline_metric": c["baseline"], "progress": self.progress}
        if self.combination == "multi_teacher_distill":
            return {**train, "distill_config": s["MultiTeacherDistillationConfig"]}
        if self.combination == "prune_distill":
            return {**train, "prune_config": s["PruneConfig"], "distill_config": s["DistillationConfig"]}
        if self.combination == "sparse_distill":
            return {**train, "prune_config": s["UnstructurePruneConfig"], "distill_config": s["DistillationConfig"]}
        return {**train, "distill_config": s["DistillationConfig"], "quant_config": s.get("QuantizationConfig")}

    def _measure(self, c: dict, result: dict, seconds: float) -> dict:
        """Evaluate and time the final model on the deployment backend, next to the original."""
        from .measure import compare_models

        out_files = result["model_files"]
        compared = compare_models(self.model_files, out_files, c["evaluator"], c["baseline"], c["sample_feed"],
                                  self.eval_settings, self.latency_threads)
        summary = {
            "strategy": self.combination,
            "metric_name": self.eval_settings.metric if _is_data(self.eval_callback) else "eval_callback",
            **compared,
            "device": device_string(self.place),
            "model_dir": str(out_files.model_dir),
            "save_dir": str(self.save_dir),
            "input_model": self.model_files.to_dict(),
            "trials": result.get("trials", []),
            "curve": result.get("curve", []),
            "interrupted": bool(result.get("interrupted", False)),
            "seconds": seconds,
            "peak_rss_bytes": peak_rss_bytes(),
        }
        summary["warnings"] = list(result.get("warnings", [])) + compared["warnings"]
        for key, value in result.items():
            if key not in summary and key != "model_files" and _jsonable(value):
                summary[key] = value
        return summary

def _is_data(obj) -> bool:
    """An eval_callback is eval data unless it is a plain function (the spec allows both)."""
    import inspect

    return not (inspect.isfunction(obj) or inspect.ismethod(obj) or
                (callable(obj) and not hasattr(obj, "__iter__") and not isinstance(obj, (str, Path))))


def _jsonable(value) -> bool:
    import json

    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False

