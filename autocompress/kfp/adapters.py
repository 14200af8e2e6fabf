"""Folder adapters: what each Kubeflow component body calls. Each turns its artifact folders and
parameters into one call of the stage function in `autocompress.stages` and writes the result as
an artifact folder — no algorithm here, and the same stage functions run in-process for the API.

No kfp import: the adapters are plain functions over folders, so tests call them directly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path

from ..atomic import atomic_dir, write_json_atomic
from ..errors import AutoCompressError, ConfigError
from ..job import Job
from ..stages.artifact import ModelArtifact, StageTimer

STATS_FILE = "stats.npz"
STATS_INFO = "stats.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
ABSENT_FILE = "absent.json"
DELIVERABLE_SUBDIR = "model"  # in the evaluate stage's artifact: the model in the input's format, if converted  # the artifact of an optional Dataset the run does not have


# ---- shared inputs ------------------------------------------------------------------------------
def _job(config, stage: str | None = None, **settings) -> Job:
    """The pipeline's job; `stage`: this component runs that stage, so the strategy must have it."""
    job = Job.from_pipeline(config, **settings)
    if stage is not None and stage not in job.strategy.stages:
        raise ConfigError(f"the config describes the {job.strategy.name} strategy, which has no {stage} stage; "
                          f"run the {job.strategy.name} pipeline instead, or change the config")
    return job


def _validate(config) -> None:
    """The pipeline config checked as its pipeline reads it: auto mode's sections, or a strategy's job."""
    from . import auto_adapters

    if auto_adapters.is_auto(config):
        auto_adapters.parse_config(config)
    else:
        _job(config)


def _dataset(folder, batch_size: int):
    from ..data.dataset import read_dataset

    return read_dataset(folder, batch_size=batch_size)


def _bound(folder, batch_size: int, files):
    """The Dataset bound to the model (feed names, shapes, dtypes checked), as the API binds its loaders."""
    from ..data import FeedSource
    from ..model_io import load_model
    from ..paddle_env import legacy_ir

    with legacy_ir():
        return FeedSource.for_model(_dataset(folder, batch_size), load_model(files))


def _evaluation(job: Job, original_files, eval_dir, place):
    from ..backend import DeployTarget
    from ..evaluation import build_evaluation

    target = DeployTarget.for_job(job.deploy_backend, place)
    return build_evaluation(original_files, _dataset(eval_dir, job.batch_size), job.eval.metric,
                            _feed_names(original_files.model_dir), target)


def _engine_model(model: ModelArtifact, folder) -> ModelArtifact:
    """The artifact on the legacy program the engines work on (a PIR model: its verified translation)."""
    from ..stages.formats import working_copy

    return dataclasses.replace(model, files=working_copy(model.files, Path(folder)))


def _place(job: Job):
    from ..paddle_env import resolve_device

    return resolve_device(job.device or "cpu")


def describe(model_dir) -> dict:
    """The model's program facts (inputs, outputs, params, FLOPs), from its metadata when a stage
    already recorded them, else by loading the program (and recording them for later stages)."""
    from ..model_io import locate_model, read_metadata, summarize

    meta = read_metadata(model_dir) or {}
    if meta.get("inputs") is None:
        facts = summarize(locate_model(model_dir, meta.get("model_filename"), meta.get("params_filename")))
        meta.update({k: facts.get(k) for k in ("inputs", "outputs", "params", "param_bytes", "flops")})
        with contextlib.suppress(OSError):  # a read-only input artifact: the facts are just not cached
            write_json_atomic(Path(model_dir) / "autocompress.json", meta)
    return meta


def _feed_names(model_dir) -> list[str]:
    return [i["name"] for i in describe(model_dir)["inputs"]]


# ---- load ---------------------------------------------------------------------------------------
def load_model(uri: str, dest, model_filename: str | None = None, params_filename: str | None = None,
               config=None) -> dict:
    """Fetch a model (local path, s3://, minio://) into `dest`, untouched, with its file metadata.
    With `config`, the pipeline config is validated first, so a bad config fails the first stage in
    seconds. No Paddle import here: program facts are added by the first stage that loads it."""
    from ..locations import local_path
    from ..model_io import locate_model

    if config is not None:
        _validate(config)
    with StageTimer("load_model") as t, tempfile.TemporaryDirectory(prefix="ac-model-") as tmp:
        files = locate_model(local_path(uri, Path(tmp) / "in", "model_uri"), model_filename or None,
                             params_filename or None)
        saved = ModelArtifact.original(files, uri).save(dest)
    saved = saved.with_stage(t.record)
    meta = {**saved.meta, "source_uri": uri}
    write_json_atomic(Path(dest) / "autocompress.json", meta)
    return meta


def load_data(uri: str, dest, batch_size: int = 32) -> dict:
    """Fetch a Dataset folder (local, s3://, minio://, builtin://) into `dest` and check that it reads.
    An empty `uri` is an optional split the run does not have: an empty artifact (`absent.json`)."""
    from .. import storage
    from ..data.dataset import load_dataset_yaml
    from ..locations import local_path

    if not uri:
        with atomic_dir(dest) as tmp:
            write_json_atomic(Path(tmp) / ABSENT_FILE, {"absent": True})
        return {"absent": True}
    with atomic_dir(dest) as tmp:
        storage.fetch(str(local_path(uri, Path(tmp), "data_uri")) if uri.startswith("builtin://") else uri, tmp)
        meta = load_dataset_yaml(tmp)
        first = _dataset(tmp, batch_size).first()
    return {"samples": meta.get("samples"), "format": meta.get("format") or "reader",
            "feeds": sorted(first.feed), "labelled": first.label is not None, "source_uri": uri}


# ---- PTQ ----------------------------------------------------------------------------------------
def calibrate(model_dir, data_dir, config, dest, device: str = "cpu", batch_size: int = 32) -> dict:
    from ..stages.ptq import calibrate as calibrate_stage

    job = _job(config, "calibrate", device=device, batch_size=batch_size)
    with StageTimer("calibrate") as t, tempfile.TemporaryDirectory(prefix="ac-calib-") as work:
        model = _engine_model(ModelArtifact.load(model_dir), work)
        stats = calibrate_stage(model.files, _bound(data_dir, batch_size, model.files),
                                job.configs["QuantizationConfig"], job.configs["HyperParameterOptimizationConfig"],
                                _place(job))
    info = {"tensors": len(stats.names), "samples": stats.total_samples,
            "model_sha256": stats.meta.get("model_sha256"), "stages": [t.record]}
    with atomic_dir(dest) as tmp:
        stats.save(Path(tmp) / STATS_FILE)
        write_json_atomic(Path(tmp) / STATS_INFO, info)
    return info


def plan_trials(config, shards: int = 1) -> list[str]:
    from ..stages.ptq import plan_trials as plan

    job = _job(config, "calibrate")
    return [json.dumps(p, sort_keys=True) for p in plan(job.configs["HyperParameterOptimizationConfig"], shards)]


def ptq_trial(model_dir, stats_dir, calib_dir, eval_dir, config, trial, dest, *, metric: str = "top1",
              max_drop: float = 0.01, drop_type: str = "absolute", device: str = "cpu", batch_size: int = 32) -> dict:
    """One part of the PTQ search (or one explicit configuration), from the shared statistics."""
    from ..quant.calibration import CalibrationStats
    from ..stages.ptq import ptq_search

    job = _job(config, "ptq_search", metric=metric, max_drop=max_drop, drop_type=drop_type, device=device,
               batch_size=batch_size)
    part = json.loads(trial) if isinstance(trial, str) else dict(trial)
    model = ModelArtifact.load(model_dir)
    calib_info = json.loads((Path(stats_dir) / STATS_INFO).read_text()) if stats_dir else {}
    model = ModelArtifact(model.files, {**model.meta, "stages": model.stages + calib_info.get("stages", [])})
    place = _place(job)
    with StageTimer("ptq_search") as t, tempfile.TemporaryDirectory(prefix="ac-trial-") as work:
        stats = CalibrationStats.load(Path(stats_dir) / STATS_FILE) if stats_dir else None
        evaluation = _evaluation(job, model.files, eval_dir, place)  # the baseline: the user's model
        model = _engine_model(model, Path(work) / "input")
        found = ptq_search(model, stats, _bound(calib_dir, batch_size, model.files), evaluation,
                           job.configs["QuantizationConfig"], job.configs["HyperParameterOptimizationConfig"], part,
                           job.target_metric(evaluation.baseline), work, place, progress=False,
                           strategy=job.strategy.name)
        saved = found.save(dest)
    meta = {**saved.meta, "stages": saved.stages + [t.record]}
    write_json_atomic(Path(dest) / "autocompress.json", meta)
    return {"metric": meta["metric"], "baseline_metric": evaluation.baseline, "trials": len(saved.trials)}


def select_best(candidate_dirs, dest) -> dict:
    """Keep the best candidate by its deployed metric; merge every candidate's trials and stage costs."""
    from ..stages.ptq import select_best as select

    candidates = [ModelArtifact.load(c) for c in candidate_dirs]
    with StageTimer("select_best") as t:
        best = select(candidates)
    # the shared stages once (from the best part), then every part's own search
    head = [r for r in best.stages if r["stage"] != "ptq_search"]
    parts = [r for c in candidates for r in c.stages if r["stage"] == "ptq_search"]
    best = ModelArtifact(best.files, {**best.meta, "stages": head + parts + [t.record]}, best.trials, best.curve)
    best.save(dest)
    value = best.meta.get("metric")
    return {"metric": value if value is not None and math.isfinite(value) else None,
            "candidates": len(candidates), "trials": len(best.trials)}


# ---- pruning and training -----------------------------------------------------------------------
def prune(model_dir, config, dest, device: str = "cpu", batch_size: int = 32, train_dir=None) -> dict:
    """Channel pruning; `train_dir` (the training Dataset) gives the batches for mean compensation
    and criterion 'activation', as in-process runs do."""
    from ..stages.train import prune as prune_stage

    job = _job(config, "prune", device=device, batch_size=batch_size)
    describe(model_dir)
    with StageTimer("prune") as t, tempfile.TemporaryDirectory(prefix="ac-prune-") as work:
        model = _engine_model(ModelArtifact.load(model_dir), Path(work) / "input")
        calib = _bound(train_dir, batch_size, model.files) if train_dir else None
        pruned = prune_stage(model, job.configs["PruneConfig"], work, _place(job), calib=calib)
        saved = pruned.save(dest)
    write_json_atomic(Path(dest) / "autocompress.json", {**saved.meta, "stages": saved.stages + [t.record]})
    facts = saved.meta.get("facts", {})
    return {k: facts.get(k) for k in ("params_before", "params_after", "flops_before", "flops_after")}


class CheckpointSync:
    """Mirrors a local checkpoint folder to an object-store prefix every `interval` seconds, so a
    retried training task (a new pod) resumes from the last checkpoint."""

    def __init__(self, local: Path, uri: str, interval: float = 60.0):
        self.local, self.uri, self.interval = local, uri, interval
        self._stop = threading.Event()
        self._seen: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sync()
        return False

    def _loop(self):
        while not self._stop.wait(self.interval):
            with contextlib.suppress(AutoCompressError):
                self.sync()

    def sync(self):
        from .. import storage

        for path in sorted(p for p in self.local.rglob("*") if p.is_file() and not p.name.startswith(".")):
            mtime = path.stat().st_mtime
            rel = path.relative_to(self.local).as_posix()
            if self._seen.get(rel) != mtime:
                storage.publish(path, str(storage.parse_uri(self.uri).child(rel)))
                self._seen[rel] = mtime


def distill_train(student_dir, teacher_dir, train_dir, eval_dir, config, dest, *, checkpoint_uri: str = "",
                  metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute",
                  device: str = "cpu", batch_size: int = 32) -> dict:
    """Train the student with the job's strategy. `teacher_dir` is the original model (the default
    teacher and the baseline). Checkpoints live under `checkpoint_uri` (a folder, or an object-store
    prefix synced while training), so a retried task resumes."""
    from .. import storage
    from ..stages.train import distill_train as train_stage

    job = _job(config, "distill_train", metric=metric, max_drop=max_drop, drop_type=drop_type, device=device,
               batch_size=batch_size)
    student, original = ModelArtifact.load(student_dir), ModelArtifact.load(teacher_dir)
    place = _place(job)
    with contextlib.ExitStack() as stack:
        t = stack.enter_context(StageTimer("distill_train"))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ac-train-")))
        if storage.is_remote(checkpoint_uri):
            root = work / "save"
            if storage.ObjectStore(scheme=storage.parse_uri(checkpoint_uri).scheme).list(checkpoint_uri):
                storage.fetch(checkpoint_uri, root)
            stack.enter_context(CheckpointSync(root, checkpoint_uri))
        else:
            root = Path(checkpoint_uri) if checkpoint_uri else work / "save"
            root.mkdir(parents=True, exist_ok=True)
        evaluation = _evaluation(job, original.files, eval_dir, place)  # the baseline: the user's model
        student = _engine_model(student, work / "student")
        teacher = _engine_model(original, work / "teacher").files  # the default teacher
        trained = train_stage(job, student, teacher, _bound(train_dir, batch_size, student.files), evaluation,
                              root, place, progress=False)
        saved = trained.save(dest)
    write_json_atomic(Path(dest) / "autocompress.json", {**saved.meta, "stages": saved.stages + [t.record]})
    return {"metric": saved.meta.get("metric"), "curve_points": len(saved.curve)}


# ---- evaluation and export ----------------------------------------------------------------------
def evaluate(model_dir, baseline_dir, eval_dir, config, dest, *, test_dir=None, metric: str = "top1",
             max_drop: float = 0.01, drop_type: str = "absolute", device: str = "cpu", batch_size: int = 32) -> dict:
    """Measure the compressed model next to the original on the deployment target — on the test
    split `test_dir` when the run has one, else on the eval split — and write `summary.json` +
    `report.md` into `dest`. Returns the summary (plus `confusion_matrix` for labelled top1/top5 data)."""
    from ..backend import inference_predictor
    from ..paddle_env import device_string
    from ..stages.formats import in_input_format
    from ..stages.report import confusion_matrix, evaluate as evaluate_stage
    from ..summary import write_summary

    job = _job(config, metric=metric, max_drop=max_drop, drop_type=drop_type, device=device, batch_size=batch_size)
    model, original = ModelArtifact.load(model_dir), ModelArtifact.load(baseline_dir)
    place = _place(job)
    has_test = test_dir is not None and not (Path(test_dir) / ABSENT_FILE).exists()
    with atomic_dir(dest) as tmp:
        with StageTimer("baseline") as t:
            evaluation = _evaluation(job, original.files, test_dir if has_test else eval_dir, place)
            # in the input's format (PIR in, PIR out); export takes this copy when there is one
            converted = in_input_format(model, original.files, Path(tmp) / DELIVERABLE_SUBDIR)
        summary = evaluate_stage(original.files, converted, evaluation, job, device_string(place),
                                 model.stages + [t.record], split="test" if has_test else "eval")
        write_summary(tmp, summary)
        if converted is not model:
            converted.save(Path(tmp) / DELIVERABLE_SUBDIR)
    model = ModelArtifact.load(Path(dest) / DELIVERABLE_SUBDIR) if converted is not model else model
    confusion = None
    if evaluation.evaluator.data is not None:
        predict = inference_predictor(model.files, int8=summary["precision"] == "int8", target=evaluation.target)
        confusion = confusion_matrix(predict, evaluation.evaluator.data, job.eval.metric)
    return {**summary, "confusion_matrix": confusion} if confusion else summary


def export(model_dir, summary_dir, dest, publish_uri: str | None = None) -> dict:
    """The deliverable in `dest` (model/, summary.json, report.md, trials.json), optionally published."""
    from ..stages.export import export as export_stage

    summary = json.loads((Path(summary_dir) / SUMMARY_FILE).read_text())
    converted = Path(summary_dir) / DELIVERABLE_SUBDIR  # the evaluate stage's copy in the input's format
    model = ModelArtifact.load(converted if converted.is_dir() else model_dir)
    return export_stage(model, summary, dest, publish_uri=publish_uri or None)


# ---- Kubeflow UI helpers ------------------------------------------------------------------------
def use_endpoint(endpoint: str | None) -> None:
    """Components get the object-store endpoint as a (non-secret) parameter; credentials come from
    the Secret mounted as environment variables."""
    if endpoint:
        os.environ["S3_ENDPOINT"] = endpoint


def ui_metadata(meta: dict) -> dict:
    """The small subset of model metadata shown on a KFP artifact."""
    keys = ("format", "model_filename", "params_filename", "precision", "strategy", "size_bytes", "params",
            "flops", "metric", "baseline_metric", "autocompress_version", "source_uri")
    return {k: meta[k] for k in keys if meta.get(k) is not None}


def checkpoint_location(artifact_uri: str, artifact_path: str) -> str:
    """Where a training task keeps checkpoints: next to its output artifact, which KFP keeps the same
    across retries of the task. On a cluster that is an object-store prefix, locally a folder."""
    from .. import storage

    if storage.is_remote(artifact_uri):
        return artifact_uri.rstrip("/") + ".checkpoints"
    return str(artifact_path).rstrip("/") + ".checkpoints"


def metric_items(summary: dict) -> list[tuple[str, float]]:
    """The numeric summary fields worth a line in the KFP UI's metrics view."""
    keys = ("metric", "baseline_metric", "metric_drop", "size_bytes_before", "size_bytes_after",
            "latency_ms_before", "latency_ms_after", "params_before", "params_after", "flops_before",
            "flops_after", "seconds", "peak_rss_bytes")
    return [(k, float(summary[k])) for k in keys
            if isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool)
            and math.isfinite(summary[k])] + [("target_met", 1.0 if summary.get("target_met") else 0.0)]


def copy_report(deliverable_dir, report_path) -> None:
    """The report as the pipeline's Markdown artifact (the UI renders it)."""
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(deliverable_dir) / REPORT_FILE, report_path)


# ---- user errors in a component -----------------------------------------------------------------
USER_ERROR_MARK = "autocompress: user error (deterministic; not retried)"
STAGES = ("load_model", "load_data", "calibrate", "plan_trials", "ptq_trial", "select_best", "prune",
          "distill_train", "evaluate", "export")


def _in_component() -> bool:
    """This process is a KFP component (the kfp executor's command line), not a test or the API."""
    import sys

    return "--executor_input" in sys.argv


def _user_errors_exit(fn):
    """In a component: a deterministic user error prints `<ErrorType>: <message>` and the USER_ERROR_MARK
    line, and exits with the error's code, without a traceback. `autocompress run` reads the mark and
    does not retry the stage (kfp's retry policy cannot tell errors apart); transient errors
    (TransientStorageError) and bugs propagate as before and are retried."""
    import functools

    from ..errors import is_user_error

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AutoCompressError as err:
            if not (is_user_error(err) and _in_component()):
                raise
            import sys

            print(f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)
            print(USER_ERROR_MARK, flush=True)
            raise SystemExit(err.exit_code) from None
    return wrapper


for _name in STAGES:
    globals()[_name] = _user_errors_exit(globals()[_name])
del _name
