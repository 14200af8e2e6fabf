"""The step loop: feed, step, log, evaluate, checkpoint, resume, stop early, keep the best."""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..errors import DataError
from . import checkpoint as ckpt
from .common import StepContext, TrainingError, evaluate_checked, scope_predictor
from .optim import current_lr

log = logging.getLogger("autocompress.train")

# Forward-only batches that set fake-quant activation scales before the first optimizer step, so
# the first updates don't train against the scales' arbitrary initial value.
QAT_CALIBRATION_BATCHES = 8


class Loop:
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
        metric = evaluate_checked(self.evaluator, self.predict(), f"the student at step {self.step}")
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
