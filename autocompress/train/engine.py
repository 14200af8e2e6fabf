"""The training loop: distillation from teachers, optionally with fake quantization, on a
program rebuilt from an inference model, with the whole TrainConfig.

`train_program` is the one entry point every training strategy uses (QAT, distillation,
multi-teacher, and fine-tuning of pruned models through `after_step`). It builds

    student (trainable, maybe fake-quant) + teachers (prefixed, frozen) + losses + optimizer

in one program and one private scope, so the loaded models stay pristine; evaluates through the
`evaluate(predict, limit=None)` contract; checkpoints at every evaluation and resumes from them;
keeps the best checkpoint; and returns the trained weights in its scope plus the curve.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Optional


from ..config import TrainConfig, build
from ..errors import ConfigError, EvalError
from . import amp as amp_mod
from . import checkpoint as ckpt
from . import fleet as fleet_mod
from .common import StepContext, TrainingError, evaluate_checked, scope_predictor  # noqa: F401
from .feeding import Feeder
from ..program.legacy.ops import patched_for_legacy
from .loop import Loop
from .losses import build_losses, resolve_pairs
from .optim import build_lr, build_optimizer
from ..program.legacy.teachers import merge_teacher, teacher_prefixes
from ..program.legacy.trainable import (copy_persistables, make_trainable, persistable_value_names, promote_parameters,
                                        remove_feed_fetch_ops)

log = logging.getLogger("autocompress.train")
_evaluate = evaluate_checked  # kept for callers that imported the old name (prune.run)

# How far a measured baseline may sit from TrainConfig.origin_metric before we call the eval
# function suspect: absolute, or relative to the metric, whichever is larger.
ORIGIN_METRIC_ABS_TOL = 0.01
ORIGIN_METRIC_REL_TOL = 0.01
GENERATED_NAME_PREFIX = "autocompress_"


@dataclasses.dataclass
class TeacherSpec:
    """One teacher and how the student learns from it."""

    model: object                     # LoadedModel (own scope; never modified)
    losses: list[str]
    lambdas: list[float]
    node_pairs: Optional[list[str]] = None   # flat (teacher, student, teacher, student, ...) or None


@dataclasses.dataclass
class TrainResult:
    scope: object                     # holds the best weights (student names) after training
    place: object
    executor: object
    eval_program: object              # student only, inference mode, fake-quant if QAT
    feed_names: list[str]
    output_names: list[str]
    metric: float                     # best metric (the one the returned weights have)
    baseline_metric: float
    curve: list[dict]
    target_met: Optional[bool]
    steps: int
    resumed_from_step: int
    best_step: int
    seconds: float
    stopped_early: bool


def _check_origin_metric(tc: TrainConfig, baseline: float) -> None:
    if tc.origin_metric is None:
        return
    tol = max(ORIGIN_METRIC_ABS_TOL, ORIGIN_METRIC_REL_TOL * abs(tc.origin_metric))
    if abs(baseline - tc.origin_metric) > tol:
        raise EvalError(
            f"TrainConfig.origin_metric is {tc.origin_metric} but the original model measures {baseline:.4f} "
            f"with this eval function (tolerance {tol:.4f}). The eval function (or its data) is likely wrong; "
            "check its preprocessing, labels and metric, or correct origin_metric.")


def train_program(student, teachers: list[TeacherSpec], train_source, evaluator, train_config,
                  save_dir, place=None, *, merge_feed: bool = True, quant_config=None,
                  after_step: Optional[Callable[[StepContext], None]] = None, freeze_bn: bool = False,
                  baseline_predict: Optional[Callable] = None, baseline_metric: Optional[float] = None,
                  evaluate_initial: Optional[bool] = None, fingerprint_extra: Optional[dict] = None,
                  progress: bool = True) -> TrainResult:
    """Distill `teachers` into `student` (a LoadedModel-like: files, program, feed_names,
    fetch_targets/fetch_names, scope), with fake quantization when `quant_config` is given.

    save_dir: checkpoints go to `save_dir/checkpoints/{last,best}`; a rerun with the same save_dir
    and inputs resumes from `last`. after_step(ctx) runs after every optimizer step (pruning masks).
    baseline_predict: how to run the original model for the baseline metric (default: the student
    as loaded). Returns a TrainResult whose scope holds the best weights under the student's names.
    """
    import paddle

    from ..paddle_env import legacy_ir

    t_start = time.time()
    tc = build(TrainConfig, train_config, "TrainConfig")
    if not teachers:
        raise ConfigError("distillation needs at least one teacher")
    place = place if place is not None else paddle.CPUPlace()
    amp_mod.check_device(tc.amp_config, place)
    parallel = fleet_mod.setup(tc)
    save_dir = Path(save_dir)
    ckpt_dir = save_dir / "checkpoints"

    # Our own name generator: generated names (loss temporaries, optimizer moments) must neither
    # collide with names the exporting process generated (`tmp_3`, `softmax_0.tmp_0`) nor depend
    # on what this process built before, or a checkpoint would not match on resume.
    with legacy_ir(), paddle.utils.unique_name.guard(GENERATED_NAME_PREFIX):
        scope = paddle.static.Scope()
        exe = paddle.static.Executor(place)
        trainable = make_trainable(student, freeze_bn=freeze_bn)
        copy_persistables(trainable.program, student.scope, scope, place)
        main = trainable.program
        if quant_config is not None:
            from ..quant.qat import insert_fake_quant

            main = insert_fake_quant(main, scope, place, quant_config)
            remove_feed_fetch_ops(main)
            promote_parameters(main)
        # Legacy programs name new vars with their own per-program generator, which starts at zero
        # for a loaded program: `reshape2_0.tmp_0` would collide with the model's own var.
        from paddle.base.unique_name import UniqueNameGenerator

        main._name_generator = UniqueNameGenerator(GENERATED_NAME_PREFIX)
        student_names = persistable_value_names(main)       # what a checkpoint of the student holds
        eval_program = main.clone(for_test=True)            # before teachers/optimizer: student only
        calib_program = main.clone() if quant_config is not None else None
        student_program = main.clone(for_test=True)         # for node-name listings

        merged, terms = [], []
        prefixes = teacher_prefixes(len(teachers))
        for spec, prefix in zip(teachers, prefixes):
            mt = merge_teacher(main, trainable.feed_names, spec.model, prefix, merge_feed, scope, place)
            key = "distill_node_pair" if len(teachers) == 1 else f"distill_node_pair[{prefixes.index(prefix)}]"
            pairs = resolve_pairs(spec.node_pairs, mt, student_program, trainable.output_names, main, key)
            terms += build_losses(main, pairs, spec.losses, spec.lambdas,
                                  term_prefix="" if len(teachers) == 1 else prefix)
            merged.append(mt)

        startup = paddle.static.Program()
        lr = build_lr(tc.learning_rate)
        with paddle.static.program_guard(main, startup):
            total = terms[0].var * terms[0].weight
            for term in terms[1:]:
                total = total + term.var * term.weight
            optimizer = build_optimizer(tc.optimizer, lr, tc.optim_args)
            needs_amp_init = False
            if parallel.enabled:
                optimizer = fleet_mod.wrap_optimizer(optimizer, tc, parallel, main)
            else:
                optimizer, needs_amp_init = amp_mod.decorate(optimizer, tc.amp_config)
            with patched_for_legacy():
                optimizer.minimize(total, startup_program=startup)
            fleet_mod.check_applied(tc, parallel)
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            if needs_amp_init:
                optimizer.amp_init(place, scope=scope)
        # Checkpoints hold what training changes: student weights and statistics, optimizer state,
        # the lr var; teacher weights are constants reloaded from the teacher models.
        teacher_vars = {mt.prefix + n for mt in merged for n in mt.var_names}
        all_names = [n for n in persistable_value_names(main) if n not in teacher_vars]
        param_names = [p.name for p in main.global_block().all_parameters()]

        feeder = Feeder(train_source, trainable.feed_names,
                         {k: v for mt in merged for k, v in mt.own_feeds.items()})
        fp = ckpt.fingerprint({
            "student": _model_identity(student), "teachers": [_model_identity(t.model) for t in teachers],
            "losses": [(t.losses, t.lambdas, t.node_pairs) for t in teachers], "merge_feed": merge_feed,
            "quant": quant_config.model_dump() if quant_config is not None else None,
            "train": _train_identity(tc), "freeze_bn": freeze_bn, "extra": fingerprint_extra or {}})

        loop = Loop(tc, exe, scope, place, main, eval_program, calib_program, feeder, evaluator,
                     trainable.output_names, total, terms, lr, ckpt_dir, fp, all_names, student_names,
                     param_names, after_step, parallel, progress)
        state = loop.resume_state()
        if state is None:
            if baseline_metric is None:
                predict = baseline_predict or scope_predictor(student.executor, student.program, student.scope,
                                                              list(student.fetch_names))
                baseline_metric = evaluate_checked(evaluator, predict, "the original model")
            _check_origin_metric(tc, baseline_metric)
            loop.baseline = baseline_metric
            if quant_config is not None:
                loop.calibrate()
            do_initial = evaluate_initial if evaluate_initial is not None else quant_config is None
            if do_initial:
                loop.evaluate_and_checkpoint()
        loop.run()
        loop.restore_best()
    return TrainResult(scope, place, exe, eval_program, trainable.feed_names, trainable.output_names,
                       loop.best_metric, loop.baseline, loop.curve, loop.target_met(), loop.step,
                       loop.resumed_from, loop.best_step, time.time() - t_start, loop.stopped_early)


def _model_identity(model) -> dict:
    files = getattr(model, "files", None)
    ident = {"program": _program_hash(model.program)}
    if files is not None:
        ident["files"] = [p.name for p in files.files()]
    return ident


def _program_hash(program) -> str:
    import hashlib

    return hashlib.sha256(program.desc.serialize_to_string()).hexdigest()[:16]


def _train_identity(tc: TrainConfig) -> dict:
    data = tc.model_dump()
    if not isinstance(data.get("learning_rate"), (int, float, dict)):
        data["learning_rate"] = type(tc.learning_rate).__name__
    return data


