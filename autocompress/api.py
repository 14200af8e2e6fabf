"""`AutoCompression`: the spec's Python API. Validates everything before any work, then runs the
strategy's stages in this process (`stages.run.run_job`) — the same stage functions every Kubeflow
component calls — and writes the same outputs as every other entry point."""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, DataError
from .job import Job
from .paddle_env import DEFAULT_DEVICE


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
        self.job = Job.create(strategy_config, train_config, metric=metric, max_drop=max_drop, drop_type=drop_type,
                              device=devices, latency_threads=latency_threads, deploy=deploy)
        if save_dir is None:
            raise ConfigError("save_dir is required: the folder for the compressed model and report")
        if train_dataloader is None:
            raise DataError(f"train_dataloader is required (the {self.job.strategy.name} strategy uses it for "
                            f"{self.job.strategy.data_role})")
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

        check_teachers(self.job)  # a missing teacher folder fails here, not after the baseline
        self.train_dataloader = train_dataloader
        self.calib_dataloader = calib_dataloader
        self.test_dataloader = test_dataloader
        self.eval_callback = eval_callback
        self.progress = progress

    @property
    def combination(self) -> str:
        return self.job.strategy.name

    def compression(self) -> dict:
        """Run the strategy; returns the summary (also written to save_dir/summary.json)."""
        from .stages.run import run_job

        return run_job(self.job, self.model_files, self.train_dataloader, self.eval_callback, self.save_dir,
                       calib_data=self.calib_dataloader, test_data=self.test_dataloader, progress=self.progress)
