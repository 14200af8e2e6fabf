"""A strategy's stages in one process: what `AutoCompression.compression()` (and so `autocompress
run --in-process`, the demo and a PaddleJob's ranks) runs. The Kubeflow pipelines run the same stage
functions, one process per stage (`autocompress.kfp.adapters`).

Layout of `save_dir`: the PTQ search keeps its best model so far and its trial log in
`save_dir/.work/search/` (a killed run leaves the previous deliverable intact; a rerun resumes from
the log), training keeps `save_dir/checkpoints` (a rerun resumes) and writes `save_dir/model` when it
ends, and `export` completes the deliverable in place: `model/` with metadata and model card,
`summary.json`, `report.md`, `trials.json`. Intermediate stage outputs live in `save_dir/.work/` and
are removed when the run succeeds.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from ..errors import ConfigError
from .artifact import ModelArtifact, StageTimer
from .formats import in_input_format, working_copy

log = logging.getLogger("autocompress")
WORK_SUBDIR = ".work"


def check_save_dir(save_dir, model_dir) -> Path:
    """The save dir may not be the input's folder or an existing file."""
    save_dir = Path(save_dir)
    if save_dir.resolve() == Path(model_dir).resolve():
        raise ConfigError("save_dir is the input model's folder; choose another folder (the input is never "
                          "overwritten)")
    if save_dir.exists() and not save_dir.is_dir():
        raise ConfigError(f"save_dir {save_dir} is an existing file; choose a folder")
    _check_writable(save_dir)
    return save_dir


def _check_writable(save_dir: Path) -> None:
    """The save dir (or the nearest folder above it that exists) takes a file: probed, not guessed
    from permission bits (root ignores them; read-only mounts and /proc do not)."""
    import tempfile

    folder = save_dir.resolve()
    while not folder.exists():
        folder = folder.parent
    try:
        with tempfile.TemporaryDirectory(prefix=".autocompress-probe-", dir=folder):
            pass
    except OSError as err:
        raise ConfigError(f"save_dir {save_dir} cannot be written ({folder}: {err.strerror or err}); choose a "
                          "folder you can write to") from None


def run_job(job, model_files, data, eval_callback, save_dir, *, calib_data=None, test_data=None,
            progress: bool = True) -> dict:
    """Run `job` on the model: `data` is the calibration (PTQ) or training data, `eval_callback` the
    spec's eval data or function (what the selection scores), `test_data` held-out data for the
    reported metric. Returns the summary (also in save_dir/summary.json); on a non-zero rank of a
    collective job, {strategy, rank, model_dir} after training."""
    from ..backend import DeployTarget
    from ..data import FeedSource
    from ..evaluation import build_evaluation
    from ..model_io import InputGuard, load_model
    from ..paddle_env import device_string, legacy_ir, resolve_device
    from ..train.fleet import process_rank
    from .export import export
    from .report import evaluate

    start = time.perf_counter()
    save_dir = check_save_dir(save_dir, model_files.model_dir)
    guard = InputGuard(model_files)
    place = resolve_device(job.device)
    target = DeployTarget.for_job(job.deploy_backend, place)
    work = save_dir / WORK_SUBDIR
    with StageTimer("load") as t:
        engine_files = working_copy(model_files, work / "input")  # a PIR input: its legacy translation
        with legacy_ir():
            loaded = load_model(engine_files)
            # bound to the model: feed names and shapes checked, dtypes cast, before any work
            primary = FeedSource.for_model(data, loaded)
            calib = FeedSource.for_model(calib_data, loaded) if calib_data is not None else primary
            from ..preflight import check_names

            check_names(job, loaded)  # node / prune names before the baseline is measured
        evaluation = build_evaluation(model_files, eval_callback, job.eval.metric, loaded.feed_names, target,
                                      sample_source=calib)
        # the reported metric: on held-out data when there is some (selection never sees it)
        final = evaluation if test_data is None else build_evaluation(
            model_files, test_data, job.eval.metric, loaded.feed_names, target, sample_source=calib)
    records = [t.record]
    log.info("baseline %s of the original model: %.4f", evaluation.metric_name, evaluation.baseline)
    original = ModelArtifact.original(engine_files, str(model_files.model_dir))
    if job.strategy.trains:
        result = _train(job, original, engine_files, primary, evaluation, save_dir, work, place, progress)
        if process_rank() != 0:  # collective training: rank 0 measures and writes; the others only trained
            log.info("rank %d done; rank 0 writes the summary and the model", process_rank())
            return {"strategy": job.strategy.name, "rank": process_rank(), "model_dir": str(result.files.model_dir)}
    else:
        result = _search(job, original, calib, evaluation, work / "search", place, progress)
    result = in_input_format(result, model_files, work / "output")
    summary = evaluate(model_files, result, final, job, device_string(place), records + result.stages,
                       split="eval" if test_data is None else "test")
    summary["seconds"] = time.perf_counter() - start
    delivered = export(result, summary, save_dir)["summary"]
    shutil.rmtree(work, ignore_errors=True)
    guard.verify()
    log.info("summary written to %s", save_dir / "summary.json")
    return delivered


def _search(job, original, calib, evaluation, save_dir, place, progress) -> ModelArtifact:
    from .ptq import calibrate, plan_trials, ptq_search, select_best

    quant, hpo = job.configs["QuantizationConfig"], job.configs["HyperParameterOptimizationConfig"]
    with StageTimer("calibrate") as t:
        stats = calibrate(original.files, calib, quant, hpo, place)
    records = [t.record]
    [part] = plan_trials(hpo, 1)  # one process: one part searches every trial (a pipeline may fan out)
    with StageTimer("ptq_search") as t:
        found = ptq_search(original, stats, calib, evaluation, quant, hpo, part,
                           job.target_metric(evaluation.baseline), save_dir, place, progress, job.strategy.name)
    records.append(t.record)
    with StageTimer("select_best") as t:
        best = select_best([found])
    return ModelArtifact(best.files, {**best.meta, "stages": records + [t.record]}, best.trials, best.curve)


def _train(job, original, model_files, primary, evaluation, save_dir, work, place, progress) -> ModelArtifact:
    from .train import distill_train, prune

    student, records = original, []
    if "prune" in job.strategy.stages:
        with StageTimer("prune") as t:
            student = prune(original, job.configs["PruneConfig"], work / "prune", place, calib=primary)
        records.append(t.record)
    with StageTimer("distill_train") as t:
        trained = distill_train(job, student, model_files, primary, evaluation, save_dir, place, progress)
    return ModelArtifact(trained.files, {**trained.meta, "stages": records + [t.record]}, trained.trials,
                         trained.curve)
