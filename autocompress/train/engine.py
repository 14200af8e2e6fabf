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
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config import TrainConfig, build
from ..errors import AutoCompressError, ConfigError, DataError, EvalError
from . import amp as amp_mod
from . import checkpoint as ckpt
from . import fleet as fleet_mod
from .legacy_ops import patched_for_legacy
from .losses import build_losses, resolve_pairs
from .optim import build_lr, build_optimizer, current_lr
from .teachers import merge_teacher, teacher_prefixes
from .trainable import copy_persistables, make_trainable, persistable_value_names, promote_parameters

log = logging.getLogger("autocompress.train")

# How far a measured baseline may sit from TrainConfig.origin_metric before we call the eval
# function suspect: absolute, or relative to the metric, whichever is larger.
ORIGIN_METRIC_ABS_TOL = 0.01
ORIGIN_METRIC_REL_TOL = 0.01
# Forward-only batches that set fake-quant activation scales before the first optimizer step, so
# the first updates don't train against the scales' arbitrary initial value.
QAT_CALIBRATION_BATCHES = 8
GENERATED_NAME_PREFIX = "autocompress_"


class TrainingError(AutoCompressError):
    """Training diverged (NaN/inf loss) or cannot continue. (Candidate for autocompress.errors.)"""


@dataclasses.dataclass
class TeacherSpec:
    """One teacher and how the student learns from it."""

    model: object                     # LoadedModel (own scope; never modified)
    losses: list[str]
    lambdas: list[float]
    node_pairs: Optional[list[str]] = None   # flat (teacher, student, teacher, student, ...) or None


@dataclasses.dataclass
class StepContext:
    """What `after_step` gets: enough to re-apply masks (pruning) or inspect weights."""

    step: int
    scope: object
    place: object
    program: object                   # the training program
    param_names: list[str]


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


def scope_predictor(exe, program, scope, output_names: list[str]) -> Callable:
    """The evaluation contract's `predict`: feed dict of numpy arrays -> list of numpy outputs."""
    import paddle

    def predict(feed: dict) -> list[np.ndarray]:
        with paddle.static.scope_guard(scope):
            return [np.asarray(o) for o in exe.run(program, feed=dict(feed), fetch_list=list(output_names))]
    return predict


def _evaluate(evaluator, predict, what: str) -> float:
    try:
        value = evaluator(predict)
    except AutoCompressError:
        raise
    except Exception as err:
        raise EvalError(f"the eval callback raised while evaluating {what}: {type(err).__name__}: {err}. "
                        "Fix the callback (it gets predict(feed_dict) -> list of numpy outputs).") from err
    if value is None or not math.isfinite(float(value)):
        raise EvalError(f"the eval callback returned {value!r} for {what}; it must return a finite float "
                        "(higher is better)")
    return float(value)


def _check_origin_metric(tc: TrainConfig, baseline: float) -> None:
    if tc.origin_metric is None:
        return
    tol = max(ORIGIN_METRIC_ABS_TOL, ORIGIN_METRIC_REL_TOL * abs(tc.origin_metric))
    if abs(baseline - tc.origin_metric) > tol:
        raise EvalError(
            f"TrainConfig.origin_metric is {tc.origin_metric} but the original model measures {baseline:.4f} "
            f"with this eval function (tolerance {tol:.4f}). The eval function (or its data) is likely wrong; "
            "check its preprocessing, labels and metric, or correct origin_metric.")


def _steps_limit(tc: TrainConfig) -> None:
    if tc.epochs is None and tc.train_iter is None:
        raise ConfigError("TrainConfig needs epochs or train_iter (how long to train); e.g. epochs: 3")
    for key in ("epochs", "train_iter"):
        value = getattr(tc, key)
        if value is not None and value < 1:
            raise ConfigError(f"TrainConfig.{key} must be >= 1, got {value}")


class _Feeder:
    """Batches from the training source -> feed dicts for the merged program."""

    def __init__(self, source, feed_names, teacher_own_feeds: dict[str, str]):
        self.source = _as_source(source, feed_names)
        self.feed_names = list(feed_names)
        self.own = teacher_own_feeds

    def batches(self):
        yield from self.source.batches()

    def feed(self, batch) -> dict:
        data = batch.feed if hasattr(batch, "feed") else batch
        missing = [n for n in self.feed_names if n not in data]
        if missing:
            raise DataError(f"a training batch lacks the model inputs {missing} (it has {sorted(data)}); "
                            "the training data must provide every feed of the model")
        feed = {n: np.asarray(data[n]) for n in self.feed_names}
        for var, key in self.own.items():
            if var in data:
                feed[var] = np.asarray(data[var])
            elif key in data:
                feed[var] = np.asarray(data[key])
            else:
                raise DataError(f"merge_feed is false, so the teacher input {key} must come in every batch "
                                f"(as {key!r} or {var!r}); the batch has {sorted(data)}")
        return feed


class _ListSource:
    def __init__(self, obj, feed_names):
        self.obj, self.feed_names = obj, feed_names

    def batches(self, limit=None):
        items = self.obj() if callable(self.obj) else self.obj
        for i, item in enumerate(items):
            if limit is not None and i >= limit:
                return
            if isinstance(item, dict):
                yield _Batch(item, None)
            else:
                item = list(item)
                yield _Batch(dict(zip(self.feed_names, item)), item[len(self.feed_names)]
                             if len(item) > len(self.feed_names) else None)


@dataclasses.dataclass
class _Batch:
    feed: dict
    label: object = None


def _as_source(source, feed_names):
    if hasattr(source, "batches"):
        return source
    try:
        from ..data import FeedSource  # the data module's adapter, when present
    except ImportError:
        return _ListSource(source, feed_names)
    return FeedSource.from_any(source, feed_names)


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
    _steps_limit(tc)
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
            _strip_stray_feed_fetch(main)
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
                optimizer = fleet_mod.wrap_optimizer(optimizer, tc, parallel)
            else:
                optimizer, needs_amp_init = amp_mod.decorate(optimizer, tc.amp_config)
            with patched_for_legacy():
                optimizer.minimize(total, startup_program=startup)
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            if needs_amp_init:
                optimizer.amp_init(place, scope=scope)
        all_names = persistable_value_names(main)
        param_names = [p.name for p in main.global_block().all_parameters()]

        feeder = _Feeder(train_source, trainable.feed_names,
                         {k: v for mt in merged for k, v in mt.own_feeds.items()})
        fp = ckpt.fingerprint({
            "student": _model_identity(student), "teachers": [_model_identity(t.model) for t in teachers],
            "losses": [(t.losses, t.lambdas, t.node_pairs) for t in teachers], "merge_feed": merge_feed,
            "quant": quant_config.model_dump() if quant_config is not None else None,
            "train": _train_identity(tc), "freeze_bn": freeze_bn, "extra": fingerprint_extra or {}})

        loop = _Loop(tc, exe, scope, place, main, eval_program, calib_program, feeder, evaluator,
                     trainable.output_names, total, terms, lr, ckpt_dir, fp, all_names, student_names,
                     param_names, after_step, parallel, progress)
        state = loop.resume_state()
        if state is None:
            if baseline_metric is None:
                predict = baseline_predict or scope_predictor(student.executor, student.program, student.scope,
                                                              list(student.fetch_names))
                baseline_metric = _evaluate(evaluator, predict, "the original model")
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


def _strip_stray_feed_fetch(program) -> None:
    block = program.global_block()
    for i in reversed(range(len(block.ops))):
        if block.ops[i].type in ("feed", "fetch"):
            block._remove_op(i, sync=False)
    program._sync_with_cpp()


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


class _Loop:
    """The step loop and its state; separate from graph building so resume logic stays readable."""

    def __init__(self, tc, exe, scope, place, main, eval_program, calib_program, feeder, evaluator,
                 output_names, total, terms, lr, ckpt_dir, fp, all_names, student_names, param_names,
                 after_step, parallel, progress):
        self.tc, self.exe, self.scope, self.place = tc, exe, scope, place
        self.main, self.eval_program, self.calib_program = main, eval_program, calib_program
        self.feeder, self.evaluator, self.output_names = feeder, evaluator, output_names
        self.total, self.terms, self.lr = total, terms, lr
        self.ckpt_dir, self.fp = ckpt_dir, fp
        self.all_names, self.student_names, self.param_names = all_names, student_names, param_names
        self.after_step, self.parallel, self.progress = after_step, parallel, progress
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.curve: list[dict] = []
        self.best_metric, self.best_step = -math.inf, -1
        self.baseline = None
        self.resumed_from = 0
        self.stopped_early = False
        self.last_loss = None
        self.last_eval_step = -1

    # -- state ------------------------------------------------------------------------------
    def resume_state(self):
        last = self.ckpt_dir / "last"
        if not ckpt.exists(last):
            return None
        ckpt.check_resumable(last, self.fp)
        state = ckpt.load(last, self.scope, self.place, only=set(self.all_names))
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.curve, self.baseline = state["curve"], state["baseline_metric"]
        self.best_metric, self.best_step = state["best_metric"], state["best_step"]
        self.last_eval_step = self.step
        if state.get("lr_state") and hasattr(self.lr, "set_state_dict"):
            self.lr.set_state_dict(state["lr_state"])
        self.resumed_from = self.step
        log.info("resuming from %s at step %d (epoch %d, batch %d); best metric so far %.4f at step %d",
                 last, self.step, self.epoch, self.batch_in_epoch, self.best_metric, self.best_step)
        return state

    def _state(self) -> dict:
        return {"fingerprint": self.fp, "step": self.step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "curve": self.curve, "baseline_metric": self.baseline,
                "best_metric": self.best_metric, "best_step": self.best_step,
                "lr_state": self.lr.state_dict() if hasattr(self.lr, "state_dict") else None}

    def target_met(self):
        return None if self.tc.target_metric is None else bool(self.best_metric >= self.tc.target_metric)

    # -- pieces -----------------------------------------------------------------------------
    def predict(self):
        return scope_predictor(self.exe, self.eval_program, self.scope, self.output_names)

    def calibrate(self):
        """Forward-only passes that move the fake-quant scales to the data's ranges (and BN's
        running statistics, as training would) without touching the weights."""
        import paddle

        with paddle.static.scope_guard(self.scope):
            for i, batch in enumerate(self.feeder.batches()):
                if i >= QAT_CALIBRATION_BATCHES:
                    break
                feed = self.feeder.feed(batch)
                self.exe.run(self.calib_program, feed={k: v for k, v in feed.items()
                                                       if self.calib_program.global_block().has_var(k)},
                             fetch_list=[])

    def evaluate_and_checkpoint(self):
        self._check_finite_weights()
        metric = _evaluate(self.evaluator, self.predict(), f"the student at step {self.step}")
        self.curve.append({"step": self.step, "epoch": self.epoch, "loss": self.last_loss, "metric": metric,
                           "lr": current_lr(self.lr)})
        self.last_eval_step = self.step
        improved = metric > self.best_metric
        if improved:
            self.best_metric, self.best_step = metric, self.step
        log.info("eval at step %d: metric %.4f (baseline %.4f, best %.4f at step %d)", self.step, metric,
                 self.baseline, self.best_metric, self.best_step)
        if self.parallel.is_main:
            if improved:
                ckpt.save(self.ckpt_dir / "best", self.scope, self.student_names, self._state())
            ckpt.save(self.ckpt_dir / "last", self.scope, self.all_names, self._state())
        return metric

    def _done(self) -> bool:
        tc = self.tc
        return (tc.train_iter is not None and self.step >= tc.train_iter) or \
               (tc.epochs is not None and self.epoch >= tc.epochs)

    def run(self):
        import paddle
        from tqdm import tqdm

        if self._done() or self._reached_target():
            return
        fetch = [self.total] + [t.var for t in self.terms]
        total_steps = self.tc.train_iter or self._epoch_steps_total()
        bar = tqdm(total=total_steps, initial=self.step, desc="train", unit="step",
                   disable=None if self.progress else True, leave=False)
        t_log, n_log = time.time(), 0
        try:
            while not self._done():
                skip = self.batch_in_epoch
                for index, batch in enumerate(self.feeder.batches()):
                    if index < skip or not self.parallel.mine(index):
                        continue
                    feed = self.feeder.feed(batch)
                    with paddle.static.scope_guard(self.scope):
                        values = self.exe.run(self.main, feed=feed, fetch_list=fetch)
                    losses = [float(np.asarray(v).reshape(-1)[0]) for v in values]
                    self._check_finite(losses)
                    self.last_loss = losses[0]
                    if hasattr(self.lr, "step"):
                        self.lr.step()
                    self.step += 1
                    self.batch_in_epoch = index + 1
                    n_log += _batch_size(feed)
                    if self.after_step is not None:
                        self.after_step(StepContext(self.step, self.scope, self.place, self.main, self.param_names))
                    bar.update(1)
                    if self.step % self.tc.logging_iter == 0:
                        dt = max(time.time() - t_log, 1e-9)
                        self._log(losses, n_log / dt, bar)
                        t_log, n_log = time.time(), 0
                    if self.step % self.tc.eval_iter == 0:
                        self.evaluate_and_checkpoint()
                        if self._reached_target():
                            return
                    if self._done():
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if self.step == 0:
                        raise DataError("the training data yielded no batches; give a non-empty train_dataloader")
        finally:
            bar.close()
        if self.last_eval_step != self.step:
            self.evaluate_and_checkpoint()  # the end of training is always evaluated and checkpointed

    def _epoch_steps_total(self):
        n = self.feeder.source.num_batches() if hasattr(self.feeder.source, "num_batches") else None
        return n * self.tc.epochs if (n and self.tc.epochs) else None

    def _reached_target(self) -> bool:
        if self.tc.target_metric is not None and self.best_metric >= self.tc.target_metric:
            log.info("target_metric %.4f reached (%.4f at step %d): stopping early", self.tc.target_metric,
                     self.best_metric, self.best_step)
            self.stopped_early = True
            return True
        return False

    def _check_finite(self, losses):
        if all(math.isfinite(v) for v in losses):
            return
        names = ["total"] + [t.name for t in self.terms]
        bad = ", ".join(f"{n}={v}" for n, v in zip(names, losses) if not math.isfinite(v))
        kept = f"; the last good checkpoint (step {self.last_eval_step}) is kept in {self.ckpt_dir / 'last'}" \
            if ckpt.exists(self.ckpt_dir / "last") else ""
        raise TrainingError(f"the loss became non-finite at step {self.step + 1} ({bad}){kept}. Lower "
                            f"TrainConfig.learning_rate (now {current_lr(self.lr)}), add gradient clipping "
                            "(optim_args: {grad_clip: ClipGradByGlobalNorm, grad_clip_args: {clip_norm: 1.0}}), "
                            "or check the data for NaN/inf.")

    def _check_finite_weights(self):
        """Activations that squash NaN (relu, max-pool) can keep the loss finite while the weights
        are already NaN; never evaluate or checkpoint such weights."""
        bad = []
        for name in self.param_names:
            var = self.scope.find_var(name)
            if var is not None and not np.isfinite(np.array(var.get_tensor())).all():
                bad.append(name)
        if bad:
            kept = f"; the last good checkpoint (step {self.last_eval_step}) is kept in {self.ckpt_dir / 'last'}" \
                if ckpt.exists(self.ckpt_dir / "last") else ""
            raise TrainingError(f"weights became non-finite by step {self.step}: {bad[:5]}{kept}. Lower "
                                f"TrainConfig.learning_rate (now {current_lr(self.lr)}), add gradient clipping, "
                                "or check the training data for NaN/inf.")

    def _log(self, losses, throughput, bar):
        parts = " ".join(f"{t.name} {v:.5g}" for t, v in zip(self.terms, losses[1:]))
        lr = current_lr(self.lr)
        log.info("step %d epoch %d loss %.5g (%s) lr %.3g %.1f samples/s", self.step, self.epoch, losses[0],
                 parts, lr, throughput)
        bar.set_postfix(loss=f"{losses[0]:.4g}", lr=f"{lr:.2g}")

    def restore_best(self):
        """Put the best evaluated weights (student names) back into the scope."""
        best = self.ckpt_dir / "best"
        if ckpt.exists(best) and self.best_step != self.step:
            ckpt.load(best, self.scope, self.place, only=set(self.student_names))
            log.info("restored the best checkpoint (step %d, metric %.4f)", self.best_step, self.best_metric)


def _batch_size(feed: dict) -> int:
    for v in feed.values():
        return int(np.shape(v)[0]) if np.ndim(v) else 1
    return 0
