"""A run config as a pipeline's arguments, validated before any run starts; never credentials."""
from __future__ import annotations

from typing import Any

from ..config import RunConfig, load_run_config
from ..errors import ConfigError
from ..job import Job
from . import pipelines_module


def run_config(config) -> RunConfig:
    return config if isinstance(config, RunConfig) else load_run_config(config)


def pipeline_arguments(config, *, gpu: bool = False, publish_uri: str | None = None, trial_shards: int | None = None,
                       s3_endpoint: str | None = None, object_store_secret: str | None = None,
                       extra: dict | None = None) -> tuple[str, dict]:
    """The pipeline name and its arguments for a run config. `extra` overrides/adds pipeline
    parameters (e.g. gpu_count, tolerations); unknown names are errors."""
    rc = run_config(config)
    data = rc.Data
    if rc.combination == "auto":  # auto mode's pipeline: the candidates train and calibrate on Data.train
        from .auto_adapters import pipeline_config
        from .pipelines import auto

        name, data_param, text = auto.pipeline_name(gpu), "train_data_uri", pipeline_config(rc.strategy["Auto"], rc.train)
        role = "auto mode uses it to train and calibrate the candidates"
        primary, extra = data.train, {"calib_data_uri": data.calib or "", **(extra or {})}
    else:
        job = Job.from_run_config(rc)
        strategy = job.strategy
        name, data_param, text = strategy.pipeline_name(gpu), strategy.data_param, job.pipeline_config()
        role = f"the {strategy.name} strategy uses it for {strategy.data_role}"
        primary = (data.calib or data.train) if strategy.data_role == "calibration" else data.train
    if not primary:
        raise ConfigError(f"Data.train is required ({role})")
    if not data.eval:
        raise ConfigError("Data.eval is required (the data the budget is measured on)")
    args: dict[str, Any] = {
        "model_uri": rc.Model.model_dir, data_param: primary, "eval_data_uri": data.eval,
        "test_data_uri": data.test or "",
        "config": text, "metric": rc.Eval.metric, "max_drop": rc.Eval.max_drop,
        "drop_type": rc.Eval.drop_type, "model_filename": rc.Model.model_filename or "",
        "params_filename": rc.Model.params_filename or "", "device": rc.Device, "batch_size": data.batch_size,
        "publish_uri": publish_uri or "",
    }
    if trial_shards is not None and rc.combination != "auto" and "ptq_search" in strategy.stages:  # fan-out width
        args["trial_shards"] = int(trial_shards)
    if s3_endpoint is not None:
        args["s3_endpoint"] = s3_endpoint
    if object_store_secret:
        args["object_store_secret"] = object_store_secret
    args.update(extra or {})
    known = set(pipeline_inputs(pipelines_module().by_name(name)))
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"the {name} pipeline has no parameters {unknown}; it has: {sorted(known)}")
    for key in ("model_uri", data_param, "eval_data_uri"):
        _check_location(args[key], key)
    return name, args


def pipeline_inputs(pipeline) -> dict:
    return dict(pipeline.pipeline_spec.root.input_definitions.parameters)


def _check_location(location: str, what: str) -> None:
    from .. import storage

    if not storage.is_remote(location) and "://" in location and not location.startswith("builtin://"):
        raise ConfigError(f"{what}: {location} uses an unsupported scheme; use a local path, s3:// or minio://")
