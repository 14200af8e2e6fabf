"""Training stages: `prune` (channels removed, or 2:4 masks, before training) and `distill_train`
(the strategy's engine: QAT / sparse / pruned / plain / multi-teacher distillation)."""
from __future__ import annotations

from pathlib import Path

from ..locations import local_path
from .artifact import ModelArtifact


def prune(model: ModelArtifact, prune_config, work_dir, place=None, calib=None) -> ModelArtifact:
    """Remove channels (PruneConfig, prune_algo 'prune'; the result is physically smaller) or apply
    2:4 masks (prune_algo 'asp'; kept while training). `calib`: a few batches for the channel
    pruner's mean compensation (prune.channel.compensate_means); None prunes data-free."""
    from ..model_io import summarize
    from ..prune.channel import prune_model

    inputs = model.meta.get("inputs") or summarize(model.files).get("inputs") or []
    shapes = {i["name"]: [1 if d < 0 else d for d in i["shape"]] for i in inputs}
    result = prune_model(model.files, prune_config, Path(work_dir) / "model", feed_shapes=shapes or None, place=place,
                          calib=calib)
    out = ModelArtifact.from_result(result, model, "prune")
    out.meta["pruned"] = result.get("pruned")
    return out


def resolve_teachers(configs: dict, original, folder) -> dict:
    """The configs with every teacher as a local legacy program: a single-teacher config without one
    uses the original model (source-free distillation); teachers named by URI are fetched into
    `folder`; PIR teachers are translated (stages.formats)."""
    out = dict(configs)
    folder = Path(folder)
    single = configs.get("DistillationConfig")
    if single is not None:
        if not single.teacher_model_dir:
            where = {"teacher_model_dir": str(original.model_dir), "teacher_model_filename": original.model_filename,
                     "teacher_params_filename": original.params_filename}
        else:
            where = _teacher(single.teacher_model_dir, single.teacher_model_filename, single.teacher_params_filename,
                             folder / "0", "DistillationConfig.teacher_model_dir")
        out["DistillationConfig"] = single.model_copy(update=where)
    multi = configs.get("MultiTeacherDistillationConfig")
    if multi is not None:
        n = len(multi.teacher_model_dir)
        names, params = multi.teacher_model_filename or [None] * n, multi.teacher_params_filename or [None] * n
        found = [_teacher(t, names[i], params[i], folder / str(i), f"MultiTeacherDistillationConfig.teacher_model_dir[{i}]")
                 for i, t in enumerate(multi.teacher_model_dir)]
        out["MultiTeacherDistillationConfig"] = multi.model_copy(update={
            "teacher_model_dir": [f["teacher_model_dir"] for f in found],
            "teacher_model_filename": [f["teacher_model_filename"] for f in found],
            "teacher_params_filename": [f["teacher_params_filename"] for f in found]})
    return out


def _teacher(location, model_filename, params_filename, folder: Path, key: str) -> dict:
    from ..model_io import locate_model
    from .formats import working_copy

    local = local_path(location, folder / "fetched", key)
    files = locate_model(local, model_filename, params_filename)
    if files.format == "pir-json":
        files = working_copy(files, folder / "legacy")
    return {"teacher_model_dir": str(files.model_dir), "teacher_model_filename": files.model_filename,
            "teacher_params_filename": files.params_filename}


def distill_train(job, student: ModelArtifact, original, train_source, evaluation, work_dir, place=None,
                  progress: bool = True) -> ModelArtifact:
    """Train `student` with the job's strategy engine. The engine writes `<work_dir>/model` and keeps
    checkpoints in `<work_dir>/checkpoints`, so a rerun with the same work_dir resumes."""
    from ..strategies import TrainCall

    work_dir = Path(work_dir)
    configs = resolve_teachers(job.configs, original, work_dir / "teachers")
    call = TrainCall(student=student.files, train_source=train_source, evaluator=evaluation.evaluator,
                     configs=configs, train_config=job.train, work_dir=work_dir, place=place, progress=progress,
                     pruned_input="prune" in job.strategy.stages)
    result = job.strategy.train(call)
    return ModelArtifact.from_result(result, student, job.strategy.name)
