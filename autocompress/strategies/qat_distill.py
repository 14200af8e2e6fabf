"""Spec combination 2: QuantizationConfig + DistillationConfig — quantization-aware training with
distillation from the original model (or a named teacher); exported as an int8 model."""
from .base import Strategy, TrainCall


def train(call: TrainCall) -> dict:
    from ..train.api import run_distill

    return run_distill(call.student, call.train_source, call.evaluator, call.configs["DistillationConfig"],
                       call.train_config, call.work_dir, place=call.place,
                       quant_config=call.configs["QuantizationConfig"], progress=call.progress)


STRATEGY = Strategy(
    name="qat_distill",
    configs=("QuantizationConfig", "DistillationConfig"),
    description="Quantization-aware training with distillation from the original model.",
    stages=("distill_train",),
    data_role="train",
    pipeline_config={"QuantizationConfig": {}, "DistillationConfig": {}, "TrainConfig": {"epochs": 1}},
    train=train,
)
