"""Spec combination 5: DistillationConfig — plain distillation from the original model (the spec's
default teacher) or a named teacher."""
from .base import Strategy, TrainCall


def train(call: TrainCall) -> dict:
    from ..train.api import run_distill

    return run_distill(call.student, call.train_source, call.evaluator, call.configs["DistillationConfig"],
                       call.train_config, call.work_dir, place=call.place, progress=call.progress)


STRATEGY = Strategy(
    name="distill",
    configs=("DistillationConfig",),
    description="Distillation from the original (or a named) teacher.",
    stages=("distill_train",),
    data_role="train",
    pipeline_config={"DistillationConfig": {}, "TrainConfig": {"epochs": 1}},
    train=train,
)
