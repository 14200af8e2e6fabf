"""The spec's combinations 3 (PruneConfig + DistillationConfig) and 4 (UnstructurePruneConfig +
DistillationConfig): prune or mask a private copy of the model, then fine-tune it by distillation
from the original with the training engine (`train.engine.train_program`), masks re-applied after
every optimizer step through its `after_step` hook.

Both return the engine result dict (docs/engine.md) plus params / FLOPs / sizes /
sparsity before and after. The input model is never modified; the model lands atomically in
`save_dir/model`, checkpoints in `save_dir/checkpoints` (a rerun resumes).
"""
from __future__ import annotations

import logging
from pathlib import Path

from .. import model_io
from ..program.legacy import info as program_info
from ..config import DistillationConfig, PruneConfig, TrainConfig, UnstructurePruneConfig, build
from ..errors import ConfigError
from ..paddle_env import legacy_ir
from .masks import compressed_size, scope_sparsity

log = logging.getLogger("autocompress.prune")
MODEL_SUBDIR = "model"  # same layout as train.api


def _as_list(v):
    return v if isinstance(v, list) else [v]


def _teacher(dc: DistillationConfig, model_files, place):
    """The spec's teacher defaults to the original model; a separate load keeps its scope pristine."""
    files = model_files if dc.teacher_model_dir is None else model_io.locate_model(
        dc.teacher_model_dir, dc.teacher_model_filename, dc.teacher_params_filename)
    return files, model_io.load_model(files, place)


def _stats(model, feed_shapes=None) -> dict:
    return {"params": program_info.count_params(model.program),
            "flops": program_info.count_flops(model.program, model.feed_names, feed_shapes)}


class _MaskHook:
    """after_step adapter: the engine trains in its own scope, so the pruner follows `ctx.scope`;
    `ctx.step` (1-based, survives resume), offset by gmp_config.resume_iteration, drives the GMP schedule."""

    def __init__(self, pruner):
        self.pruner = pruner

    def __call__(self, ctx):
        self.pruner.scope, self.pruner.place = ctx.scope, ctx.place
        if hasattr(self.pruner, "iteration"):
            schedule = getattr(self.pruner, "schedule", None)
            self.pruner.iteration = (schedule.start if schedule else 0) + ctx.step - 1  # step() adds 1
        self.pruner.step()


def _distill(student, teacher_model, dc, train_source, evaluator, tc, save_dir, place, after_step,
             strategy, extra_fingerprint, train_kwargs):
    """Run the training engine with the original model as teacher and as the baseline."""
    from ..train.api import save_trained
    from ..train.engine import TeacherSpec, scope_predictor, train_program

    spec = TeacherSpec(teacher_model, _as_list(dc.distill_loss), [float(x) for x in _as_list(dc.distill_lambda)],
                       dc.distill_node_pair)
    # the baseline is the *original* model: the student as loaded is already pruned
    baseline = scope_predictor(teacher_model.executor, teacher_model.program, teacher_model.scope,
                               list(teacher_model.fetch_names))
    train_kwargs.setdefault("baseline_predict", baseline)
    result = train_program(student, [spec], train_source, evaluator, tc, save_dir, place,
                           merge_feed=dc.merge_feed, after_step=after_step,
                           fingerprint_extra=extra_fingerprint, **train_kwargs)
    return result, save_trained


def _train_summary(result) -> dict:
    return {"metric": result.metric, "baseline_metric": result.baseline_metric, "curve": result.curve,
            "target_met": result.target_met, "seconds": result.seconds, "steps": result.steps,
            "best_step": result.best_step, "resumed_from_step": result.resumed_from_step,
            "stopped_early": result.stopped_early}


def run_prune_distill(model_files, train_source, evaluator, prune_config, distill_config, train_config,
                      save_dir, place=None, feed_shapes=None, asp_include_convs: bool = False,
                      pruned_input: bool = False, progress: bool = True, **train_kwargs) -> dict:
    """Channel pruning (prune_algo 'prune') or ASP 2:4 (prune_algo 'asp'), then distillation.

    pruned_input: `model_files` already went through `prune.channel.prune_model` (the pipeline's
    separate prune stage): channels are not pruned again; ASP masks are re-derived (idempotent on a
    2:4 model). The teacher and the baseline then come from distill_config.teacher_model_dir, which
    must name the original model.
    """
    pc = build(PruneConfig, prune_config, "PruneConfig")
    dc = build(DistillationConfig, distill_config, "DistillationConfig")
    tc = build(TrainConfig, train_config, "TrainConfig")
    save_dir = Path(save_dir)
    train_kwargs["progress"] = progress
    if pruned_input and dc.teacher_model_dir is None:
        raise ConfigError("pruned_input=True: the input is the pruned model, so DistillationConfig.teacher_model_dir "
                          "must name the original model (the teacher and the baseline)")
    if pc.prune_algo == "asp":
        return _run_masked(model_files, train_source, evaluator, pc, dc, tc, save_dir, place, feed_shapes,
                           train_kwargs, asp_include_convs=asp_include_convs)
    from .channel import prune_loaded

    with legacy_ir():
        guards, teacher, student = _load_pair(dc, model_files, place)
        before = _stats(student, feed_shapes)
        plan = None
        if not pruned_input:
            # in place, on this private copy; a few training batches for the mean compensation
            _, plan = prune_loaded(student, pc, place, calib=_calib(train_source, student.feed_names))
        else:
            before = _stats(teacher, feed_shapes)
        after = _stats(student, feed_shapes)
        log.info("pruned: params %d -> %d, FLOPs %s -> %s", before["params"], after["params"], before["flops"],
                 after["flops"])
        result, save_trained = _distill(student, teacher, dc, train_source, evaluator, tc, save_dir, place, None,
                                        "prune_distill", {"prune": pc.model_dump()}, train_kwargs)
        out = save_trained(student, result, save_dir / MODEL_SUBDIR, None, "prune_distill")
    for g in guards:
        g.verify()
    return {"strategy": "prune_distill", "model_files": out, **_train_summary(result),
            "params_before": before["params"], "params_after": after["params"],
            "flops_before": before["flops"], "flops_after": after["flops"],
            "size_bytes_before": model_io.dir_size(model_files), "size_bytes_after": model_io.dir_size(out),
            "pruned": plan.summary() if plan else None, "prune_algo": "prune", "criterion": pc.criterion,
            "pruned_ratio": pc.pruned_ratio, "checkpoints": str(save_dir / "checkpoints")}


def run_sparse_distill(model_files, train_source, evaluator, prune_config, distill_config, train_config,
                       save_dir, place=None, feed_shapes=None, progress: bool = True, **train_kwargs) -> dict:
    """Unstructured sparsity (one-shot or GMP), then distillation with the masks held.

    prune_config: an UnstructurePruneConfig (object or dict); the keyword matches the API's."""
    train_kwargs["progress"] = progress
    uc = build(UnstructurePruneConfig, prune_config, "UnstructurePruneConfig")
    dc = build(DistillationConfig, distill_config, "DistillationConfig")
    tc = build(TrainConfig, train_config, "TrainConfig")
    return _run_masked(model_files, train_source, evaluator, uc, dc, tc, Path(save_dir), place, feed_shapes,
                       train_kwargs)


def _total_iters(tc: TrainConfig, train_source, feed_names) -> int:
    if tc.train_iter is not None:
        return int(tc.train_iter)
    if tc.epochs is None:
        raise ConfigError("TrainConfig needs epochs or train_iter (how long to train); e.g. epochs: 3")
    from ..data import FeedSource

    source = train_source if hasattr(train_source, "batches") else FeedSource.from_any(train_source, feed_names)
    n = source.num_batches() if hasattr(source, "num_batches") else None
    if not n or n < 0:
        n = sum(1 for _ in source.batches())  # a generator: one counting pass (GMP needs the length)
    return int(tc.epochs) * int(n)


def _calib(train_source, feed_names):
    from ..data import FeedSource

    return train_source if hasattr(train_source, "batches") else FeedSource.from_any(train_source, feed_names)


def _load_pair(dc, model_files, place):
    """Teacher (the original unless the config names one) and a private student copy, with hash guards
    on both inputs. Call inside legacy_ir()."""
    guards = [model_io.InputGuard(model_files)]
    teacher_files, teacher = _teacher(dc, model_files, place)
    guards.append(model_io.InputGuard(teacher_files))
    return guards, teacher, model_io.load_model(model_files, place)


def _run_masked(model_files, train_source, evaluator, config, dc, tc, save_dir, place, feed_shapes,
                train_kwargs, asp_include_convs=False) -> dict:
    is_asp = isinstance(config, PruneConfig)
    strategy = "asp_distill" if is_asp else "sparse_distill"
    with legacy_ir():
        guards, teacher, student = _load_pair(dc, model_files, place)
        stats = _stats(student, feed_shapes)
        if is_asp:
            from .asp import ASPPruner

            pruner = ASPPruner(student.program, student.scope, include_convs=asp_include_convs, place=place,
                               names=config.prune_params_name)
        else:
            from .unstructured import UnstructuredPruner

            total = _total_iters(tc, train_source, student.feed_names) if config.prune_strategy == "gmp" else None
            pruner = UnstructuredPruner(student.program, student.scope, config, total_iters=total, place=place)
        sparsity_before = scope_sparsity(student.scope, pruner.names)["overall"]
        pruner.start()  # masks on the private copy; the engine copies the masked weights
        warnings = []
        if getattr(pruner, "schedule", None) is not None:
            # Only evaluate once the ramp is done: the engine keeps the best *evaluated* weights, and
            # a checkpoint from mid-ramp would hold less than the target sparsity.
            ramp_end = pruner.schedule.ramp_steps_left
            if tc.eval_iter < ramp_end:
                note = (f"GMP: TrainConfig eval_iter {tc.eval_iter} raised to {ramp_end} (evaluating every "
                        f"{ramp_end} steps): the sparsity ramp ends at step {ramp_end} (gmp_config "
                        "stable_iterations + pruning_iterations - resume_iteration), and only weights at the full "
                        "prune_ratio may be evaluated and selected as the best model. Set eval_iter >= "
                        f"{ramp_end} to silence this")
                log.warning(note)
                warnings.append(note)
                tc = tc.model_copy(update={"eval_iter": ramp_end})
            train_kwargs.setdefault("evaluate_initial", False)
        result, save_trained = _distill(student, teacher, dc, train_source, evaluator, tc, save_dir, place,
                                        _MaskHook(pruner), strategy, {"masks": config.model_dump()}, train_kwargs)
        # the engine's restored best weights were masked when checkpointed; re-applying the final
        # masks guarantees the saved zeros even if a checkpoint came from elsewhere
        pruner.scope, pruner.place = result.scope, result.place
        trained_zeros = scope_sparsity(result.scope, pruner.names)["zeros"]
        if not is_asp and pruner.schedule is not None:
            pruner.iteration = max(pruner.iteration, pruner.schedule.stable + pruner.schedule.pruning)
            if pruner.current_ratio != config.prune_ratio:
                pruner.prune(config.prune_ratio)
        pruner.masks.apply(result.scope, result.place)
        report = pruner.report()
        if scope_sparsity(result.scope, pruner.names)["zeros"] != trained_zeros:
            # the selected weights were not fully masked (should not happen): the engine's metric no
            # longer describes them, so measure again
            from ..train.engine import _evaluate, scope_predictor

            result.metric = _evaluate(evaluator, scope_predictor(result.executor, result.eval_program, result.scope,
                                                                 result.output_names), "the re-masked student")
            warnings.append("the trained weights had to be re-masked after training; metric re-measured")
        out = save_trained(student, result, save_dir / MODEL_SUBDIR, None, strategy)
    for g in guards:
        g.verify()
    return {"strategy": strategy, "model_files": out, **_train_summary(result),
            "params_before": stats["params"], "params_after": stats["params"],
            "flops_before": stats["flops"], "flops_after": stats["flops"],
            "size_bytes_before": model_io.dir_size(model_files), "size_bytes_after": model_io.dir_size(out),
            "compressed_size_before": compressed_size(model_files), "compressed_size_after": compressed_size(out),
            "sparsity_before": sparsity_before, "sparsity_after": report["overall"], "sparsity": report,
            "nonzero_params_after": stats["params"] - report["zeros"],
            "warnings": warnings, "checkpoints": str(save_dir / "checkpoints")}
