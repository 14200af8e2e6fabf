"""Spec combination 6: MultiTeacherDistillationConfig — distillation from several teachers, each
with its own loss, weight and node pairs."""
from .base import Strategy, TrainCall


def train(call: TrainCall) -> dict:
    from ..train.api import run_multi_teacher

    return run_multi_teacher(call.student, call.train_source, call.evaluator,
                             call.configs["MultiTeacherDistillationConfig"], call.train_config, call.work_dir,
                             place=call.place, progress=call.progress)


STRATEGY = Strategy(
    name="multi_teacher_distill",
    configs=("MultiTeacherDistillationConfig",),
    description="Distillation from several teachers.",
    stages=("distill_train",),
    data_role="train",
    pipeline_config={"MultiTeacherDistillationConfig": {"teacher_model_dir": ["s3://bucket/teacher"]},
                     "TrainConfig": {"epochs": 1}},
    train=train,
)
