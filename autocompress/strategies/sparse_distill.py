"""Spec combination 4: UnstructurePruneConfig + DistillationConfig — unstructured sparsity (one-shot
ratio / threshold, or GMP ramp), masks held while distilling from the original model."""
from .base import Strategy, TrainCall


def train(call: TrainCall) -> dict:
    from ..prune.run import run_sparse_distill

    return run_sparse_distill(call.student, call.train_source, call.evaluator,
                              call.configs["UnstructurePruneConfig"], call.configs["DistillationConfig"],
                              call.train_config, call.work_dir, place=call.place, progress=call.progress)


STRATEGY = Strategy(
    name="sparse_distill",
    configs=("UnstructurePruneConfig", "DistillationConfig"),
    description="Unstructured (sparse) pruning during distillation from the original model.",
    stages=("distill_train",),
    data_role="train",
    pipeline_config={"UnstructurePruneConfig": {"prune_ratio": 0.5}, "DistillationConfig": {},
                     "TrainConfig": {"epochs": 1}},
    train=train,
)
