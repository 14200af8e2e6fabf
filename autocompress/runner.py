"""Run a validated YAML run config in-process: resolve data and model locations, call the API."""
from __future__ import annotations

from pathlib import Path

from .config import RunConfig, load_run_config
from .errors import ConfigError


def _local(location: str) -> str:
    """Local folder for a location: builtin demo assets and object-store URIs land in a cache."""
    if location.startswith("builtin://"):
        from .demo.digits import materialize_builtin

        return str(materialize_builtin(location))
    if "://" in location:
        from .storage import fetch

        return str(fetch(location))
    return location


def _data(location: str | None, what: str, batch_size: int):
    if location is None:
        return None
    location = _local(location)
    if not Path(location).exists():
        raise ConfigError(f"Data.{what}: {location} does not exist (expected a Dataset folder with dataset.yaml)")
    from .data.dataset import read_dataset

    return read_dataset(location, batch_size=batch_size)


def _localize_teachers(strategy: dict) -> None:
    """Teacher model locations may be builtin:// or object-store URIs too."""
    single = strategy.get("DistillationConfig")
    if single is not None and single.teacher_model_dir:
        single.teacher_model_dir = _local(single.teacher_model_dir)
    multi = strategy.get("MultiTeacherDistillationConfig")
    if multi is not None:
        multi.teacher_model_dir = [_local(d) for d in multi.teacher_model_dir]


def run_config(config: RunConfig | str | Path, save_dir: str | None = None, progress: bool = True) -> dict:
    """Run one compression job from a RunConfig (or a YAML path). Returns the summary."""
    from .api import AutoCompression

    rc = config if isinstance(config, RunConfig) else load_run_config(config)
    data = rc.Data
    train = _data(data.train, "train", data.batch_size)
    if train is None:
        raise ConfigError("Data.train is required (calibration / training data)")
    evaluation = _data(data.eval, "eval", data.batch_size)
    if evaluation is None:
        raise ConfigError("Data.eval is required (the data the budget is measured on)")
    _localize_teachers(rc.strategy)
    ac = AutoCompression(
        model_dir=_local(rc.Model.model_dir), model_filename=rc.Model.model_filename,
        params_filename=rc.Model.params_filename, save_dir=save_dir or rc.SaveDir,
        strategy_config=rc.strategy, train_config=rc.train, train_dataloader=train,
        eval_callback=evaluation, devices=rc.Device, metric=rc.Eval.metric, max_drop=rc.Eval.max_drop,
        drop_type=rc.Eval.drop_type, calib_dataloader=_data(data.calib, "calib", data.batch_size),
        progress=progress)
    return ac.compression()
