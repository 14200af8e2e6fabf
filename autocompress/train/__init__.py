"""Training from an inference model: distillation (single / multi-teacher), QAT + distillation,
and the `train_program` hook that pruning uses to fine-tune. See docs/engine.md."""
from .api import list_nodes, run_distill, run_multi_teacher, save_trained
from .engine import StepContext, TeacherSpec, TrainingError, TrainResult, scope_predictor, train_program
from ..program.legacy.trainable import TrainableProgram, make_trainable

__all__ = ["run_distill", "run_multi_teacher", "train_program", "save_trained", "list_nodes", "TeacherSpec",
           "StepContext", "TrainResult", "TrainingError", "scope_predictor", "make_trainable", "TrainableProgram"]
