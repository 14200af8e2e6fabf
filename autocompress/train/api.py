"""Strategy entry points the API / stages call: distillation (optionally with QAT) and
multi-teacher distillation. They load the models, run `engine.train_program`, and save the
trained student atomically into `save_dir/model` (int8-converted for QAT), never touching inputs.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..config import DistillationConfig, MultiTeacherDistillationConfig, QuantizationConfig, build
from ..errors import ConfigError, ModelError
from ..model_io import InputGuard, ModelFiles, load_model, locate_model, save_model, sha256_file
from .engine import TeacherSpec, TrainResult, train_program
from ..program.legacy.trainable import make_trainable, node_names

log = logging.getLogger("autocompress.train")
MODEL_SUBDIR = "model"


def _as_list(v):
    return v if isinstance(v, list) else [v]


def _teacher_files(model_dir, model_filename, params_filename, default: ModelFiles,
                   key: str = "DistillationConfig") -> ModelFiles:
    """`key`: where the teacher is configured, e.g. 'MultiTeacherDistillationConfig' + '[1]' for errors."""
    if isinstance(model_dir, ModelFiles):
        return model_dir
    if model_dir is None:
        return default  # the spec's teacher defaults to the original model
    section, _, index = key.partition("[")
    index = f"[{index}" if index else ""
    try:
        return locate_model(model_dir, model_filename, params_filename)
    except ModelError as err:
        raise ModelError(f"the teacher in {section}.teacher_model_dir{index} ({model_dir}): {err}. Name its files "
                         f"with {section}.teacher_model_filename{index} and {section}.teacher_params_filename{index} "
                         f"(now {model_filename!r} and {params_filename!r})") from None


def run_distill(model_files: ModelFiles, train_source, evaluator, distill_config, train_config, save_dir,
                place=None, quant_config=None, teacher_files: ModelFiles | None = None,
                fp32_fallback: int | None = None, **train_kwargs) -> dict:
    """Single-teacher distillation; with `quant_config`, quantization-aware training + distillation.

    evaluator: `evaluate(predict, limit=None) -> float` (higher is better).
    fp32_fallback (QAT with deploy_backend 'onednn' only): after training the int8 model is measured
    with Paddle Inference + oneDNN int8, and layers that hurt that deployed metric may be kept in FP32,
    gated like the PTQ search's HyperParameterOptimizationConfig.fp32_fallback: None = automatic (only
    when TrainConfig.target_metric is missed, cap 10 % of the int8 layers), 0 = off, N = at most N layers
    (target: target_metric, else the FP32 baseline). See train/qat_fallback.py.
    Returns {model_files, metric (simulated for QAT), baseline_metric, curve, target_met, seconds, steps,
    ...}; QAT adds deployed_metric, int8_deployed_metric, fp32_layers, fallback_steps, fallback_seconds."""
    dc = build(DistillationConfig, distill_config, "DistillationConfig")
    qc = build(QuantizationConfig, quant_config, "QuantizationConfig") if quant_config is not None else None
    tfiles = teacher_files or _teacher_files(dc.teacher_model_dir, dc.teacher_model_filename,
                                             dc.teacher_params_filename, model_files)
    specs = [(tfiles, _as_list(dc.distill_loss), [float(x) for x in _as_list(dc.distill_lambda)],
              dc.distill_node_pair)]
    strategy = "qat_distill" if qc is not None else "distill"
    return _run(model_files, specs, train_source, evaluator, train_config, save_dir, place, qc, dc.merge_feed,
                strategy, train_kwargs, fp32_fallback)


def run_multi_teacher(model_files: ModelFiles, train_source, evaluator, distill_config, train_config, save_dir,
                      place=None, quant_config=None, teacher_files: list[ModelFiles] | None = None,
                      fp32_fallback: int | None = None, **train_kwargs) -> dict:
    """Multi-teacher distillation: teacher i contributes distill_loss[i] * distill_lambda[i] over its
    distill_node_pair[i] (default: the outputs). fp32_fallback: as in run_distill."""
    mc = build(MultiTeacherDistillationConfig, distill_config, "MultiTeacherDistillationConfig")
    qc = build(QuantizationConfig, quant_config, "QuantizationConfig") if quant_config is not None else None
    n = len(mc.teacher_model_dir)
    if teacher_files is not None and len(teacher_files) != n:
        raise ConfigError(f"teacher_files has {len(teacher_files)} entries but teacher_model_dir has {n}")
    specs = []
    for i in range(n):
        tfiles = teacher_files[i] if teacher_files is not None else _teacher_files(
            mc.teacher_model_dir[i], (mc.teacher_model_filename or [None] * n)[i],
            (mc.teacher_params_filename or [None] * n)[i], model_files, f"MultiTeacherDistillationConfig[{i}]")
        specs.append((tfiles, [mc.distill_loss[i]], [float(mc.distill_lambda[i])],
                      mc.distill_node_pair[i] if mc.distill_node_pair else None))
    strategy = "multi_teacher_distill" if qc is None else "qat_multi_teacher_distill"
    return _run(model_files, specs, train_source, evaluator, train_config, save_dir, place, qc, mc.merge_feed,
                strategy, train_kwargs, fp32_fallback)


def _run(model_files, specs, train_source, evaluator, train_config, save_dir, place, qc, merge_feed,
         strategy, train_kwargs, fp32_fallback=None) -> dict:
    from ..paddle_env import legacy_ir

    if fp32_fallback and not _deploys_onednn(qc):
        # Refused before training, not warned about after it: the fallback measures oneDNN int8 only.
        raise ConfigError(f"fp32_fallback={fp32_fallback} needs QAT (quant_config) with QuantizationConfig."
                          "deploy_backend 'onednn', the one backend this process can run; drop fp32_fallback "
                          "or set deploy_backend: onednn")
    save_dir = Path(save_dir)
    guards = [InputGuard(model_files)] + [InputGuard(s[0]) for s in specs]
    with legacy_ir():
        student = load_model(model_files, place)
        teachers = []
        for tfiles, losses, lambdas, pairs in specs:
            # A separate load even when the teacher is the original: the teacher's scope must stay
            # the untouched original while the student's copy trains.
            teachers.append(TeacherSpec(load_model(tfiles, place), losses, lambdas, pairs))
        result = train_program(student, teachers, train_source, evaluator, train_config, save_dir, place,
                               merge_feed=merge_feed, quant_config=qc, **train_kwargs)
        out = save_trained(student, result, save_dir / MODEL_SUBDIR, qc, strategy)
        deployed = _deployed(out, evaluator, qc, fp32_fallback, train_config, result, save_dir)
        out = deployed.pop("model_files", out)
    for g in guards:
        g.verify()
    return {**deployed,
        "strategy": strategy,
        "model_files": out,
        "metric": result.metric,
        "baseline_metric": result.baseline_metric,
        "curve": result.curve,
        "target_met": result.target_met,
        "seconds": result.seconds,
        "steps": result.steps,
        "best_step": result.best_step,
        "resumed_from_step": result.resumed_from_step,
        "stopped_early": result.stopped_early,
        "precision": "int8" if qc is not None else "fp32",
        "metric_kind": "simulated_int8" if qc is not None else "fp32",
        "checkpoints": str(save_dir / "checkpoints"),
    }


def _deploys_onednn(qc) -> bool:
    """QAT whose int8 model this process can measure: the deployed metric and the FP32 fallback need it."""
    return qc is not None and qc.deploy_backend == "onednn"


def _deployed(out: ModelFiles, evaluator, qc, setting, train_config, result: TrainResult, save_dir) -> dict:
    """QAT only: the deployed (oneDNN int8) metric and the FP32 fallback (train/qat_fallback.py).
    Skipped for TensorRT/none backends: this process can only run the oneDNN backend."""
    if not _deploys_onednn(qc):
        return {}
    from ..config import TrainConfig
    from ..model_io import read_metadata
    from .qat_fallback import deployed_with_fallback

    tc = build(TrainConfig, train_config, "TrainConfig")
    meta = {k: v for k, v in read_metadata(out.model_dir).items() if k in ("precision", "strategy", "parent", "metric")}
    info = deployed_with_fallback(out, evaluator, qc, setting, tc.target_metric, result.baseline_metric, save_dir,
                                  meta)
    for line in info["warnings"]:
        log.warning("%s", line)
    info["simulated_metric"] = result.metric
    return info


def save_trained(student, result: TrainResult, out_dir, qc=None, strategy: str = "distill") -> ModelFiles:
    """Save the trained student (the weights in `result.scope`) as an inference model with the
    input's file names; QAT models are converted to the quantize/dequantize int8 format first.
    Call inside `paddle_env.legacy_ir()`."""
    program = result.eval_program
    if qc is not None:
        from ..program.legacy.quantize import fp32_marked_layers, keep_fp32
        from ..quant.qat import convert_for_inference
        from ..quant.targets import quant_op_tables

        program = convert_for_inference(program, result.scope, result.place, qc)
        held = fp32_marked_layers(program)  # e.g. tiny weights: no observer scales around them either
        if held:
            weight_ops, act_ops, _ = quant_op_tables(qc)
            keep_fp32(program, held, set(weight_ops) | set(act_ops))
    from .fleet import rank_private

    out_dir = rank_private(out_dir)
    saver = dataclasses.replace(student, scope=result.scope, executor=result.executor)
    meta = {"precision": "int8" if qc is not None else "fp32", "strategy": strategy,
            "parent": {p.name: sha256_file(p) for p in student.files.files()}, "metric": result.metric}
    return save_model(saver, out_dir, meta, program=program, fetch_targets=list(result.output_names))


def list_nodes(model_files: ModelFiles) -> list[str]:
    """The var names a distill_node_pair may use for this model (op outputs, program order)."""
    from ..paddle_env import legacy_ir

    with legacy_ir():
        model = load_model(model_files)
        return node_names(make_trainable(model).program)
