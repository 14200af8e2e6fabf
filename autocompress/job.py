"""A validated compression job: the strategy, its config objects, the TrainConfig, the accuracy
budget, the device and the loader settings — built the same way from the API's arguments, a YAML
run file or a pipeline's parameters, and handed to every stage.

No Paddle import here: the pipeline's first stage validates a job in a fraction of a second.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import yaml

from . import config as cfg
from . import strategies
from .errors import ConfigError
from .strategies import Strategy

PIPELINE_CONFIG_KEYS = tuple(cfg.STRATEGY_CLASSES) + ("TrainConfig", "Deploy")


@dataclasses.dataclass
class Job:
    strategy: Strategy
    configs: dict                       # validated config objects by class name
    train: cfg.TrainConfig | None
    eval: cfg.EvalSection
    device: Any = "cpu"                 # the spec's `devices` (kept as given: the default 'gpu' may fall back)
    batch_size: int = 32                # loader batch size for Dataset folders
    latency_threads: int = 1
    deploy: cfg.DeploySection = dataclasses.field(default_factory=cfg.DeploySection)

    @classmethod
    def create(cls, strategy_config, train_config=None, *, metric: str = "top1", max_drop: float = 0.01,
               drop_type: str = "absolute", device="cpu", batch_size: int = 32, latency_threads: int = 1,
               deploy=None) -> Job:
        strategy, configs = strategies.resolve(strategy_config)
        train = strategies.resolve_train_config(strategy, train_config)
        settings = cfg.build(cfg.EvalSection, {"metric": metric, "max_drop": max_drop, "drop_type": drop_type}, "Eval")
        for name, value in (("batch_size", batch_size), ("latency_threads", latency_threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        _check_deploy(configs, device)
        return cls(strategy, configs, train, settings, device, batch_size, latency_threads,
                   cfg.build(cfg.DeploySection, deploy, "Deploy"))

    @classmethod
    def from_run_config(cls, rc: cfg.RunConfig) -> Job:
        return cls.create(rc.strategy, rc.train, metric=rc.Eval.metric, max_drop=rc.Eval.max_drop,
                          drop_type=rc.Eval.drop_type, device=rc.Device, batch_size=rc.Data.batch_size,
                          deploy=rc.Deploy)

    @classmethod
    def from_pipeline(cls, text, *, metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute",
                      device: str = "cpu", batch_size: int = 32, expect: str | None = None) -> Job:
        """The job of a pipeline run: its `config` parameter (YAML/JSON with the strategy configs and
        TrainConfig) plus the run settings passed as separate parameters. `expect`: the strategy the
        pipeline implements; a config for another is an error that names the right pipeline."""
        data = _parse_mapping(text)
        unknown = [k for k in data if k not in PIPELINE_CONFIG_KEYS]
        if unknown:
            raise ConfigError(f"the pipeline's config has unknown keys {unknown}; allowed: {list(PIPELINE_CONFIG_KEYS)} "
                              "(model, data, metric, budget and device are separate pipeline parameters)")
        strategy_config = {k: v for k, v in data.items() if k not in ("TrainConfig", "Deploy")}
        job = cls.create(strategy_config, data.get("TrainConfig"), metric=metric, max_drop=max_drop,
                         drop_type=drop_type, device=device, batch_size=batch_size, deploy=data.get("Deploy"))
        if expect and job.strategy.name != expect:
            raise ConfigError(f"the config describes the {job.strategy.name} strategy but this is the {expect} "
                              f"pipeline; run the {job.strategy.name} pipeline instead, or change the config")
        return job

    def pipeline_config(self) -> str:
        """The pipeline's `config` parameter for this job (JSON): strategy configs + TrainConfig."""
        out = {name: c.model_dump(mode="json", exclude_unset=True) for name, c in self.configs.items()}
        if self.train is not None:
            out["TrainConfig"] = self.train.model_dump(mode="json", exclude_unset=True)
        if self.deploy.model_fields_set:
            out["Deploy"] = self.deploy.model_dump(mode="json", exclude_unset=True)
        return json.dumps(out, sort_keys=True)

    def target_metric(self, baseline: float) -> float:
        """The lowest metric within the budget, against the original model's metric."""
        e = self.eval
        return baseline - (e.max_drop * abs(baseline) if e.drop_type == "relative" else e.max_drop)

    @property
    def deploy_backend(self) -> str:
        """The runtime the job selects on: QuantizationConfig.deploy_backend for int8 jobs; for the others
        the stock runtime ('none') when Deploy.runtimes names 'paddle-cpu' first, else oneDNN."""
        quant = self.configs.get("QuantizationConfig")
        if quant is not None:
            return quant.deploy_backend
        return "none" if (self.deploy.runtimes or [None])[0] == "paddle-cpu" else "onednn"


def _parse_mapping(text) -> dict:
    if isinstance(text, dict):
        return dict(text)
    if not str(text).strip():
        raise ConfigError("the pipeline's config is empty; give the strategy configs as YAML or JSON, e.g. "
                          "{QuantizationConfig: {}, HyperParameterOptimizationConfig: {max_quant_count: 10}}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"the pipeline's config is not valid YAML/JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the pipeline's config must be a mapping with keys from {list(PIPELINE_CONFIG_KEYS)}")
    return data


def _check_deploy(configs: dict, device) -> None:
    """A deployment backend the device cannot run is an error before any work, never a substitute."""
    quant = configs.get("QuantizationConfig")
    if quant is None or quant.deploy_backend != "tensorrt":
        return
    text = str(device or "cpu").lower()
    if not text.startswith("gpu"):
        raise ConfigError(f"QuantizationConfig.deploy_backend 'tensorrt' runs on a GPU, but devices={str(device)!r}; "
                          "pass devices='gpu' (a CUDA build of Paddle with TensorRT), or use deploy_backend "
                          "'onednn' (CPU, oneDNN int8) or 'none' (stock Paddle Inference)")
