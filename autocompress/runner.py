"""`autocompress run CONFIG --in-process`: a YAML run config through the Python API, in this process
(the same stages the pipeline runs, without Kubeflow: for notebooks, PaddleJob ranks, debugging)."""
from __future__ import annotations

from pathlib import Path

from .config import RunConfig, load_run_config
from .errors import ConfigError
from .locations import existing_folder, local_path


def _data(location: str | None, what: str, batch_size: int):
    if location is None:
        return None
    from .data.dataset import read_dataset

    return read_dataset(existing_folder(location, f"Data.{what}"), batch_size=batch_size)


def run_config(config: RunConfig | str | Path, save_dir: str | None = None, progress: bool = True) -> dict:
    """Run one compression job from a RunConfig (or a YAML path). Returns the summary."""
    from .api import AutoCompression

    rc = config if isinstance(config, RunConfig) else load_run_config(config)
    data = rc.Data
    if data.train is None:
        raise ConfigError("Data.train is required (calibration / training data)")
    if data.eval is None:
        raise ConfigError("Data.eval is required (the data the budget is measured on)")
    ac = AutoCompression(
        model_dir=str(local_path(rc.Model.model_dir, what="Model.model_dir")), model_filename=rc.Model.model_filename,
        params_filename=rc.Model.params_filename, save_dir=save_dir or rc.SaveDir,
        strategy_config=rc.strategy, train_config=rc.train, train_dataloader=_data(data.train, "train", data.batch_size),
        eval_callback=_data(data.eval, "eval", data.batch_size), devices=rc.Device, metric=rc.Eval.metric,
        max_drop=rc.Eval.max_drop, drop_type=rc.Eval.drop_type,
        calib_dataloader=_data(data.calib, "calib", data.batch_size),
        test_dataloader=_data(data.test, "test", data.batch_size), deploy=None if rc.combination == "auto" else rc.Deploy, progress=progress)
    return ac.compression()
