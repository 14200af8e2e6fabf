"""What a strategy declares: its config classes, its stages in order, its defaults, what its
pipeline needs, and (for training strategies) how its training stage calls the engine.

Everything else — validation of `strategy_config`, the API's dispatch, the CLI, the Kubeflow
pipelines — is derived from these declarations (`autocompress.strategies.REGISTRY`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional


@dataclasses.dataclass
class TrainCall:
    """The typed inputs of a training stage, identical on every entry point."""

    student: Any                 # model_io.ModelFiles of the model to train (pruned already, if pruned)
    train_source: Any            # data.FeedSource bound to the model
    evaluator: Any               # evaluation.Evaluator
    configs: dict                # validated config objects by class name (teachers resolved to local folders)
    train_config: Any            # config.TrainConfig
    work_dir: Path               # the engine writes <work_dir>/model and <work_dir>/checkpoints
    place: Any
    progress: bool
    pruned_input: bool = False   # the prune stage already removed channels


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    configs: tuple[str, ...]     # the config class names that select this strategy (the spec's combination)
    description: str
    stages: tuple[str, ...]      # the strategy's own stages, between load and evaluate/export
    data_role: str               # what the first data input is for: "calibration" or "train"
    pipeline_config: dict        # the default config shown in the Kubeflow run form
    train: Optional[Callable[[TrainCall], dict]] = None  # training strategies: the engine call

    @property
    def trains(self) -> bool:
        return self.train is not None

    @property
    def data_param(self) -> str:
        """The pipeline parameter name of the first data input."""
        return "calib_data_uri" if self.data_role == "calibration" else "train_data_uri"

    def pipeline_name(self, gpu: bool) -> str:
        return self.name if gpu else f"{self.name}_cpu"
