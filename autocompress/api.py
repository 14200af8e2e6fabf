"""`AutoCompression`: the spec's Python API. Validates everything before any work, then runs the
strategy's stages in this process (`stages.run.run_job`) — the same stage functions every Kubeflow
component calls — and writes the same outputs as every other entry point."""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, DataError
from .job import Job
from .paddle_env import DEFAULT_DEVICE


def auto_section(strategy_config, deploy=None):
    """The validated AutoConfig when `strategy_config` is `{"Auto": {...}}`, else None."""
    from .auto.config import AutoConfig, build_auto

    if isinstance(strategy_config, AutoConfig):
        strategy_config = {"Auto": strategy_config}
    if not isinstance(strategy_config, dict) or "Auto" not in strategy_config:
        return None
    others = sorted(k for k in strategy_config if k != "Auto")
    if others:
        raise ConfigError(f"strategy_config has Auto and {others}: auto mode chooses the strategies itself; remove "
                          f"{others}, or remove Auto to run that strategy")
    if deploy is not None:
        raise ConfigError("deploy= does not apply to auto mode: give the runtime and batch as Auto.target and "
                          "Auto.batch_size")
    return build_auto(strategy_config["Auto"])


class AutoCompression:
    """Compress an inference model with one of the spec's six strategy combinations.

    Beyond the spec (keyword-only): `metric` ('top1' | 'top5' | 'fidelity' | 'pkg.mod:func', used when
    `eval_callback` is a data loader), `max_drop` / `drop_type` (the accuracy budget against the
    original model measured in the same run), `calib_dataloader` (defaults to `train_dataloader`),
    `test_dataloader` (held-out labelled data: the reported metric and budget are measured on it, never
    seen by the selection; without it they are measured on `eval_callback`, and the summary says so),
    `latency_threads` (CPU threads for the latency comparison), `deploy` (the run YAML's Deploy section:
    `runtimes` to measure latency on, deployment `batch_size`, `allow_slower`), `progress` (progress bars).
    """

    def __init__(self, model_dir, model_filename, params_filename, save_dir, strategy_config,
                 train_config, train_dataloader, eval_callback, devices=DEFAULT_DEVICE, *,
                 metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute",
                 calib_dataloader=None, test_dataloader=None, latency_threads: int = 1, deploy=None,
                 progress: bool = True):
        # validate everything before any work (DESIGN §5)
        self.auto = auto_section(strategy_config, deploy)
        if self.auto is not None:  # auto mode: the search picks the strategies
            from . import config as cfg

            self.auto_settings = cfg.build(cfg.EvalSection, {"metric": metric, "max_drop": max_drop,
                                                             "drop_type": drop_type}, "Eval")
            self.auto_train = None if train_config is None else cfg.build(cfg.TrainConfig, train_config, "TrainConfig")
            from .auto.config import check_auto_train

            check_auto_train(self.auto, self.auto_train)
            self.job = None
        else:
            self.job = Job.create(strategy_config, train_config, metric=metric, max_drop=max_drop,
                                  drop_type=drop_type, device=devices, latency_threads=latency_threads, deploy=deploy)
        if save_dir is None:
            raise ConfigError("save_dir is required: the folder for the compressed model and report")
        if train_dataloader is None:
            uses = ("auto mode uses it to train and calibrate the candidates" if self.job is None else
                    f"the {self.job.strategy.name} strategy uses it for {self.job.strategy.data_role}")
            raise DataError(f"train_dataloader is required ({uses})")
        if eval_callback is None:
            raise ConfigError("eval_callback is required: an eval DataLoader (last field = label) or a function "
                              "that receives a predict callable and returns a float")
        from .model_io import locate_model
        from .paddle_env import resolve_device
        from .stages.run import check_save_dir

        resolve_device(devices)  # an unknown or absent device fails here, not after loading
        self.model_files = locate_model(model_dir, model_filename, params_filename)
        self.save_dir = check_save_dir(Path(save_dir), self.model_files.model_dir)
        from .preflight import check_teachers

        if self.job is not None:
            check_teachers(self.job)  # a missing teacher folder fails here, not after the baseline
        self.train_dataloader = train_dataloader
        self.calib_dataloader = calib_dataloader
        self.test_dataloader = test_dataloader
        self.eval_callback = eval_callback
        self.progress = progress
        self.devices, self.latency_threads = devices, latency_threads

    @property
    def combination(self) -> str:
        return "auto" if self.job is None else self.job.strategy.name

    def compression(self) -> dict:
        """Run the strategy (or auto mode's search); returns the summary (also written to
        save_dir/summary.json)."""
        from .stages.run import run_job

        if self.job is None:
            from .auto.search import Inputs, optimize

            train = None if self.auto_train is None else self.auto_train.model_dump(exclude_unset=True)
            inputs = Inputs(self.model_files, self.train_dataloader, self.eval_callback, self.calib_dataloader,
                            self.test_dataloader, train, self.devices, self.latency_threads)
            return optimize(self.auto, inputs, self.auto_settings, self.save_dir, progress=self.progress)

        return run_job(self.job, self.model_files, self.train_dataloader, self.eval_callback, self.save_dir,
                       calib_data=self.calib_dataloader, test_data=self.test_dataloader, progress=self.progress)
