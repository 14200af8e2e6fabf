"""Spec combination 3: PruneConfig + DistillationConfig — structured pruning, then distillation from
the original model. Channel pruning (`prune_algo: prune`) runs as its own `prune` stage, so the model
that trains is already physically smaller; ASP 2:4 (`prune_algo: asp`) keeps the shapes and holds its
masks while training."""
from .base import Strategy, TrainCall


def train(call: TrainCall) -> dict:
    from ..prune.run import run_prune_distill

    return run_prune_distill(call.student, call.train_source, call.evaluator, call.configs["PruneConfig"],
                             call.configs["DistillationConfig"], call.train_config, call.work_dir,
                             place=call.place, pruned_input=call.pruned_input, progress=call.progress)


STRATEGY = Strategy(
    name="prune_distill",
    configs=("PruneConfig", "DistillationConfig"),
    description="Channel pruning, then distillation from the original model.",
    stages=("prune", "distill_train"),
    data_role="train",
    pipeline_config={"PruneConfig": {"pruned_ratio": 0.25}, "DistillationConfig": {}, "TrainConfig": {"epochs": 1}},
    train=train,
)
