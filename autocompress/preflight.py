"""Pre-flight for `autocompress run`: every check that can run before a pipeline starts, with the same
messages the API gives and naming the user's own files and keys (not an artifact copy's path).

Local inputs only: for s3:// / minio:// locations the pipeline's load stages check. Cheap on
purpose: the model is loaded once (its program, for the feed and node checks), each Dataset split is
read only as far as its first batch.
"""
from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .errors import AutoCompressError, ConfigError
from .job import Job
from .locations import existing_folder


def _local(location) -> bool:
    return bool(location) and "://" not in str(location)


def preflight(rc: RunConfig, save_dir) -> Job | None:
    """Raise the AutoCompressError a pipeline stage would raise, before any stage runs. Returns the job
    (None for auto mode, whose candidates are jobs the search builds)."""
    from .metrics import load_metric
    from .paddle_env import resolve_device

    job = None if rc.combination == "auto" else Job.from_run_config(rc)
    resolve_device(rc.Device)           # unknown device, gpu on a CPU build
    load_metric(rc.Eval.metric)         # an unknown or unimportable metric plugin
    if not _local(rc.Model.model_dir):
        return job
    from .model_io import load_model, locate_model
    from .paddle_env import legacy_ir
    from .stages.run import check_save_dir

    files = locate_model(rc.Model.model_dir, rc.Model.model_filename, rc.Model.params_filename)
    check_save_dir(Path(save_dir), files.model_dir)
    if job is not None:
        check_teachers(job)
    if files.format != "pdmodel":
        # a PIR input runs on a translated legacy working copy (stages.formats): translating and
        # verifying it is a stage's work, so the model-bound checks happen there
        return job
    with legacy_ir():
        model = load_model(files)       # empty, random or truncated model / params files
        for split in ("train", "calib", "eval", "test"):
            location = getattr(rc.Data, split)
            if _local(location):
                _check_split(location, f"Data.{split}", rc.Data.batch_size, model,
                             labels=split in ("eval", "test") and rc.Eval.metric in ("top1", "top5"))
        if job is not None:
            check_names(job, model)
    return job


def check_names(job: Job, model) -> None:
    """Distillation node and prune parameter names exist in the loaded model (the API's check too,
    before the baseline is measured)."""
    _check_nodes(job, model)
    _check_prune(job, model)


def _check_split(location, key: str, batch_size: int, model, labels: bool = False) -> None:
    from .data import FeedSource
    from .data.dataset import read_dataset
    from .errors import EvalError

    try:
        source = FeedSource.for_model(read_dataset(existing_folder(location, key), batch_size=batch_size), model)
        first = source.first()          # empty data, wrong shapes / dtypes, NaN or inf
        if labels and first.label is None:
            raise EvalError("the metric needs labels but the eval data has none; add the label as the last field "
                            "of each batch (or label_field), or use metric 'fidelity'")
    except AutoCompressError as err:
        if key in str(err) or str(location) in str(err):
            raise
        raise type(err)(f"{key} ({location}): {err}") from None


def check_teachers(job: Job) -> None:
    """Every local teacher folder holds a model (the API's check too, before any work); the message is
    the training stage's, naming the key. Object-store teachers: the stage fetches and checks them."""
    from .train.api import _teacher_files

    single = job.configs.get("DistillationConfig")
    if single is not None and _local(single.teacher_model_dir):
        _teacher_files(single.teacher_model_dir, single.teacher_model_filename, single.teacher_params_filename, None)
    multi = job.configs.get("MultiTeacherDistillationConfig")
    if multi is not None:
        n = len(multi.teacher_model_dir)
        for i, folder in enumerate(multi.teacher_model_dir):
            if _local(folder):
                _teacher_files(folder, (multi.teacher_model_filename or [None] * n)[i],
                               (multi.teacher_params_filename or [None] * n)[i], None,
                               f"MultiTeacherDistillationConfig[{i}]")


def _var_names(program) -> set[str]:
    return set(program.global_block().vars)


def _check_nodes(job: Job, model) -> None:
    """Distillation node names: the student's must be vars of the model; a teacher's of the teacher
    (the input model itself when no teacher folder is given), as its own name or with the teacher's
    prefix (`teacher_`, `teacher0_`, ...), with the training stage's message. Remote teachers: the
    stage checks."""
    from .train.losses import _listing
    from .program.legacy.teachers import teacher_prefixes
    from .program.legacy.trainable import node_names

    single = job.configs.get("DistillationConfig")
    groups = []
    if single is not None and single.distill_node_pair:
        groups.append(("DistillationConfig.distill_node_pair", single.distill_node_pair, single.teacher_model_dir,
                       single.teacher_model_filename, single.teacher_params_filename, teacher_prefixes(1)[0]))
    multi = job.configs.get("MultiTeacherDistillationConfig")
    if multi is not None and multi.distill_node_pair:
        n = len(multi.teacher_model_dir)
        for i, pairs in enumerate(multi.distill_node_pair):
            groups.append((f"MultiTeacherDistillationConfig.distill_node_pair[{i}]", pairs, multi.teacher_model_dir[i],
                           (multi.teacher_model_filename or [None] * n)[i],
                           (multi.teacher_params_filename or [None] * n)[i], teacher_prefixes(n)[i]))
    student = _var_names(model.program)
    for key, pairs, teacher_dir, tmodel, tparams, prefix in groups:
        teacher_program = model.program
        if teacher_dir is not None:
            if not _local(teacher_dir):
                teacher_program = None
            else:
                from .model_io import load_model, locate_model

                teacher_program = load_model(locate_model(teacher_dir, tmodel, tparams)).program
        teacher = _var_names(teacher_program) if teacher_program is not None else None
        for i in range(0, len(pairs), 2):
            name = pairs[i]
            own = name[len(prefix):] if name.startswith(prefix) else name
            if teacher is not None and name not in teacher and own not in teacher:
                raise ConfigError(f"{key}[{i}] = {name!r} is not a var of the teacher. "
                                  f"{_listing([prefix + n for n in node_names(teacher_program)])}")
            if pairs[i + 1] not in student:
                raise ConfigError(f"{key}[{i + 1}] = {pairs[i + 1]!r} is not a var of the student. "
                                  f"{_listing(node_names(model.program))}")


def _check_prune(job: Job, model) -> None:
    prune = job.configs.get("PruneConfig")
    if prune is None or prune.prune_params_name is None:
        return
    if prune.prune_algo == "asp":
        from .prune.asp import eligible

        eligible(model.program, names=prune.prune_params_name)
    else:
        from .prune.channel import resolve_targets
        from .prune.graph import analyze

        resolve_targets(analyze(model.program, model.feed_names, model.fetch_names), prune.prune_params_name)

