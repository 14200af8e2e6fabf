"""Pipeline stages as plain engine functions: folders in, folders out, no kfp.

Each KFP component (autocompress/kfp/components/) only translates its artifacts into one call here,
so every stage also runs (and is tested) without Kubeflow. A stage writes its output folder
atomically (temporary sibling + rename), never touches its inputs, and appends its own wall time and
peak RSS to the model metadata (`autocompress.json` -> `stages`), so the final summary states the
cost of every stage.

Stage outputs:
- a Model folder: the model files (the input's file names), `autocompress.json` (DESIGN §3 metadata)
  and, for trial / training stages, `trials.json`;
- a stats folder: `stats.npz` (activation statistics, collected once per run) + `stats.json`;
- a summary folder: `summary.json` (the fields of DESIGN §3) + `report.md`.

`config` everywhere is the pipeline's one configuration string: YAML or JSON with the spec's
strategy configs (`QuantizationConfig`, `HyperParameterOptimizationConfig`, `DistillationConfig`, ...)
and `TrainConfig`, validated with `autocompress.config` before any work.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import yaml

from . import config as cfg
from .atomic import atomic_dir, write_json_atomic, write_text_atomic
from .errors import AutoCompressError, ConfigError, ModelError
from .version import __version__

log = logging.getLogger("autocompress.stages")

TRIALS_FILE = "trials.json"
STATS_FILE = "stats.npz"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
MODEL_CARD_FILE = "MODEL_CARD.md"
CONFIG_KEYS = tuple(cfg.STRATEGY_CLASSES) + ("TrainConfig",)


# ---- configuration ------------------------------------------------------------------------------
@dataclasses.dataclass
class StageConfig:
    """The validated pipeline configuration plus the run settings passed as pipeline parameters."""

    run: cfg.RunConfig
    batch_size: int = 32

    @property
    def combination(self) -> str:
        return self.run.combination

    @property
    def strategy(self) -> dict:
        return self.run.strategy

    @property
    def eval(self) -> cfg.EvalSection:
        return self.run.Eval


def parse_config(text, *, metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute",
                 device: str = "cpu", batch_size: int = 32, expect: str | None = None) -> StageConfig:
    """Validate the pipeline's config string (YAML or JSON, or an already-parsed mapping).

    `expect` is the combination the pipeline implements: a config for another combination is an error
    that names the right pipeline.
    """
    if isinstance(text, dict):
        data = dict(text)
    else:
        if not str(text).strip():
            raise ConfigError("the pipeline's config is empty; give the strategy configs as YAML or JSON, e.g. "
                              "{QuantizationConfig: {}, HyperParameterOptimizationConfig: {max_quant_count: 10}}")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"the pipeline's config is not valid YAML/JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the pipeline's config must be a mapping with keys from {list(CONFIG_KEYS)}")
    unknown = [k for k in data if k not in CONFIG_KEYS]
    if unknown:
        raise ConfigError(f"the pipeline's config has unknown keys {unknown}; allowed: {list(CONFIG_KEYS)} "
                          "(model, data, metric, budget and device are separate pipeline parameters)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    run = cfg.load_run_config({
        **data, "Model": {"model_dir": "pipeline-input"}, "Data": {"batch_size": batch_size},
        "Eval": {"metric": metric, "max_drop": max_drop, "drop_type": drop_type}, "Device": device})
    if expect and run.combination != expect:
        raise ConfigError(f"the config describes the {run.combination} strategy but this is the {expect} "
                          f"pipeline; run the {run.combination} pipeline instead, or change the config")
    return StageConfig(run, batch_size)


def config_text(run: cfg.RunConfig) -> str:
    """The pipeline config string (JSON) for a validated RunConfig: strategy configs + TrainConfig."""
    out = {name: c.model_dump(mode="json", exclude_unset=True) for name, c in run.strategy.items()}
    if run.train is not None:
        out["TrainConfig"] = run.train.model_dump(mode="json", exclude_unset=True)
    return json.dumps(out, sort_keys=True)


# ---- small helpers ------------------------------------------------------------------------------
class _Stage:
    """Times a stage and records its wall time and peak RSS."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        from .summary import peak_rss_bytes

        self.record = {"stage": self.name, "seconds": round(time.perf_counter() - self.start, 3),
                       "peak_rss_bytes": peak_rss_bytes()}
        return False


def _place(device: str):
    from .paddle_env import resolve_device

    return resolve_device(device or "cpu")


def _files(model_dir):
    from .model_io import locate_model, read_metadata

    meta = read_metadata(model_dir) or {}
    return locate_model(model_dir, meta.get("model_filename"), meta.get("params_filename"))


def _meta(model_dir) -> dict:
    from .model_io import read_metadata

    return read_metadata(model_dir) or {}


def _write_model(dest, src_files, meta: dict, extra_files: dict | None = None):
    """Copy model files into `dest` atomically with `meta` as autocompress.json (+ extra JSON files)."""
    from .model_io import METADATA_FILE, copy_model, dir_size, locate_model, sha256_file

    with atomic_dir(dest) as tmp:
        copied = copy_model(src_files, tmp)
        meta = {**meta, "model_filename": copied.model_filename, "params_filename": copied.params_filename,
                "format": copied.format, "sha256": {p.name: sha256_file(p) for p in copied.files()},
                "size_bytes": dir_size(copied), "autocompress_version": __version__}
        write_json_atomic(Path(tmp) / METADATA_FILE, meta)
        for name, data in (extra_files or {}).items():
            write_json_atomic(Path(tmp) / name, data)
    return locate_model(dest, meta["model_filename"], meta["params_filename"]), meta


def _with_stage(meta: dict, parent: dict, record: dict) -> dict:
    return {**meta, "stages": list(parent.get("stages", [])) + [record]}


def _engine(combination: str):
    from .api import ENGINES

    module, func = ENGINES[combination]
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError):
        raise AutoCompressError(f"the {combination} strategy's engine ({module}.{func}) is not part of this "
                                f"autocompress build ({__version__}); use a release that has it") from None


def _call(fn, **kwargs):
    """Call an engine function with the keywords it names (optional hooks such as `stats` only reach
    engines that take them; aliases such as multi_config / distill_config pick the engine's spelling)."""
    params = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in kwargs.items() if k in params and params[k].kind != params[k].VAR_KEYWORD})


def _dataset(folder, batch_size: int):
    from .data.dataset import read_dataset

    return read_dataset(folder, batch_size=batch_size)


def _evaluator(reference_files, eval_dir, metric: str, batch_size: int, feed_names):
    """An Evaluator on the eval Dataset with the configured metric; `fidelity` compares with the
    reference model (the original) on the deployment backend."""
    from .backend import inference_predictor
    from .evaluation import build_evaluator

    reference = inference_predictor(reference_files, int8=False)
    return build_evaluator(eval_data=_dataset(eval_dir, batch_size), metric=metric,
                           feed_names=feed_names, reference_predict=reference), reference


def describe(model_dir) -> dict:
    """The model's program facts (inputs, outputs, params, FLOPs), from its metadata when a stage
    already recorded them, else by loading the program (and recording them for later stages)."""
    from .model_io import summarize

    meta = _meta(model_dir)
    if meta.get("inputs") is None:
        facts = summarize(_files(model_dir))
        meta.update({k: facts.get(k) for k in ("inputs", "outputs", "params", "param_bytes", "flops")})
        with contextlib.suppress(OSError):  # a read-only input artifact: the facts are just not cached
            write_json_atomic(Path(model_dir) / "autocompress.json", meta)
    return meta


def _feed_names(files) -> list[str]:
    return [i["name"] for i in describe(files.model_dir)["inputs"]]


def _fetch(location: str, dest) -> Path:
    """A local folder for a location: `builtin://` demo assets are materialised (the image can build
    them), object-store URIs are downloaded into `dest`, local paths are used in place."""
    from . import storage

    if location.startswith("builtin://"):
        from .demo.digits import materialize_builtin

        return Path(materialize_builtin(location))
    if storage.is_remote(location):
        return storage.fetch(location, dest)
    if "://" in location:
        raise ConfigError(f"{location}: unsupported scheme; use a local path, s3://, minio:// or builtin://")
    return Path(location)


def _target(baseline: float, e: cfg.EvalSection) -> float:
    return baseline - (e.max_drop * abs(baseline) if e.drop_type == "relative" else e.max_drop)


# ---- load ---------------------------------------------------------------------------------------
def load_model(uri: str, dest, model_filename: str | None = None, params_filename: str | None = None,
               config=None) -> dict:
    """Fetch a model (local path, s3://, minio://) into `dest`, untouched, with its file metadata
    (format, names, sha256, size, parent). With `config`, the pipeline config is validated first, so a
    bad config fails the first stage. Program facts (inputs, params, FLOPs) are added by the first
    stage that loads the program anyway (`describe`), so this stage never imports Paddle: on one
    machine every stage is a process, and a Paddle import costs seconds."""
    from .model_io import locate_model

    if config is not None:
        parse_config(config)
    with _Stage("load_model") as st, tempfile.TemporaryDirectory(prefix="ac-model-") as tmp:
        local = _fetch(uri, Path(tmp) / "in")
        files = locate_model(local, model_filename or None, params_filename or None)
        meta = {"precision": "fp32", "strategy": None, "parent": uri, "metric": None, "source_uri": uri}
        _, meta = _write_model(dest, files, meta)
    meta = _with_stage(meta, {}, st.record)
    write_json_atomic(Path(dest) / "autocompress.json", meta)
    return meta


def load_data(uri: str, dest, batch_size: int = 32) -> dict:
    """Fetch a Dataset folder (local, s3://, minio://) into `dest` and check that it reads."""
    from . import storage
    from .data.dataset import load_dataset_yaml

    with atomic_dir(dest) as tmp:
        storage.fetch(str(_fetch(uri, Path(tmp))) if uri.startswith("builtin://") else uri, tmp)
        meta = load_dataset_yaml(tmp)
        source = _dataset(tmp, batch_size)
        first = source.first()
    return {"samples": meta.get("samples"), "format": meta.get("format") or "reader",
            "feeds": sorted(first.feed), "labelled": first.label is not None, "source_uri": uri}


# ---- PTQ ----------------------------------------------------------------------------------------
def calibrate(model_dir, data_dir, config, dest, device: str = "cpu", batch_size: int = 32) -> dict:
    """Collect activation statistics once (every PTQ trial reuses them)."""
    from .model_io import load_model as load_program
    from .paddle_env import legacy_ir
    from .quant.calibration import collect_stats
    from .quant.targets import find_targets

    sc = parse_config(config, device=device, batch_size=batch_size, expect="ptq_hpo")
    hpo = sc.strategy["HyperParameterOptimizationConfig"]
    max_samples = max(cfg._as_list(hpo.batch_size)) * max(cfg._as_list(hpo.batch_num))
    files = _files(model_dir)
    with _Stage("calibrate") as st, legacy_ir():
        model = load_program(files, _place(device))
        targets = find_targets(model.program, sc.strategy["QuantizationConfig"])
        stats = collect_stats(model, _dataset(data_dir, batch_size), targets, max_samples=max_samples)
    info = {"tensors": len(stats.names), "samples": stats.total_samples, "max_samples": max_samples,
            "model_sha256": stats.meta.get("model_sha256"), "stages": [st.record]}
    with atomic_dir(dest) as tmp:
        stats.save(Path(tmp) / STATS_FILE)
        write_json_atomic(Path(tmp) / "stats.json", info)
    return info


def plan_trials(config, shards: int = 1) -> list[str]:
    """Split the PTQ search into `shards` independent parts (one ParallelFor item each).

    Each part searches `max_quant_count / shards` configurations with its own seed, so parts never
    repeat each other's samples; `grid` search splits the grid itself. Returns JSON strings.
    """
    sc = parse_config(config, expect="ptq_hpo")
    hpo = sc.strategy["HyperParameterOptimizationConfig"]
    if not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"trial_shards must be a positive integer, got {shards!r}")
    shards = min(shards, hpo.max_quant_count)
    base, extra = divmod(hpo.max_quant_count, shards)
    return [json.dumps({"shard": i, "shards": shards, "seed": hpo.seed + 1000 * i,
                        "max_quant_count": base + (1 if i < extra else 0)}, sort_keys=True)
            for i in range(shards)]


def _shard_hpo(hpo: cfg.HyperParameterOptimizationConfig, trial: dict) -> cfg.HyperParameterOptimizationConfig:
    if "shard" not in trial:  # one explicit configuration: {ptq_algo: KL, hist_percent: 0.999, ...}
        allowed = {"ptq_algo", "bias_correct", "weight_quantize_type", "hist_percent", "batch_size", "batch_num"}
        unknown = sorted(set(trial) - allowed)
        if unknown:
            raise ConfigError(f"trial has unknown keys {unknown}; allowed: {sorted(allowed)}")
        values = {k: [v] for k, v in trial.items()}
        return cfg.build(cfg.HyperParameterOptimizationConfig,
                         {**hpo.model_dump(), **values, "max_quant_count": 1, "search_algo": "grid"})
    return hpo.model_copy(update={"seed": int(trial["seed"]), "max_quant_count": int(trial["max_quant_count"]),
                                  "finalists": min(hpo.finalists, int(trial["max_quant_count"]))})


def ptq_trial(model_dir, stats_dir, calib_dir, eval_dir, config, trial: str, dest, *, metric: str = "top1",
              max_drop: float = 0.01, drop_type: str = "absolute", device: str = "cpu",
              batch_size: int = 32) -> dict:
    """Run one part of the PTQ search (or one explicit configuration) from the shared statistics.

    Writes the part's best quantized model, its metric on the deployment backend and all its trials.
    """
    from .quant.calibration import CalibrationStats

    sc = parse_config(config, metric=metric, max_drop=max_drop, drop_type=drop_type, device=device,
                      batch_size=batch_size, expect="ptq_hpo")
    trial_spec = json.loads(trial) if isinstance(trial, str) else dict(trial)
    files = _files(model_dir)
    parent = _meta(model_dir)
    with _Stage("ptq_trial") as st, tempfile.TemporaryDirectory(prefix="ac-trial-") as work:
        stats = CalibrationStats.load(Path(stats_dir) / STATS_FILE) if stats_dir else None
        evaluator, _ = _evaluator(files, eval_dir, sc.eval.metric, batch_size, _feed_names(files))
        from .backend import inference_predictor

        baseline = evaluator(inference_predictor(files, int8=False))
        result = _call(_engine("ptq_hpo"), model_files=files, evaluator=evaluator, save_dir=Path(work),
                       place=_place(device), calib_source=_dataset(calib_dir, batch_size),
                       quant_config=sc.strategy["QuantizationConfig"],
                       hpo_config=_shard_hpo(sc.strategy["HyperParameterOptimizationConfig"], trial_spec),
                       target_metric=_target(baseline, sc.eval), progress=False, stats=stats)
        trials = [dict(t, shard=trial_spec.get("shard", 0)) for t in result.get("trials", [])]
        meta = {**_meta(result["model_files"].model_dir), "strategy": "ptq_hpo", "parent": parent.get("parent"),
                "metric": result.get("metric"), "baseline_metric": baseline, "trial": trial_spec,
                "precision": (_meta(result["model_files"].model_dir) or {}).get("precision", "int8")}
        _, meta = _write_model(dest, result["model_files"], meta, {TRIALS_FILE: trials})
    calib = json.loads((Path(stats_dir) / "stats.json").read_text()).get("stages", []) if stats_dir else []
    meta = _with_stage(meta, {"stages": list(parent.get("stages", [])) + calib}, st.record)
    write_json_atomic(Path(dest) / "autocompress.json", meta)
    return {"metric": meta["metric"], "baseline_metric": baseline, "trials": len(trials)}


def select_best(candidate_dirs, dest) -> dict:
    """Keep the best candidate by its deployed metric; merge every candidate's trials."""
    candidates = [Path(c) for c in candidate_dirs]
    if not candidates:
        raise ModelError("select_best got no candidates: every PTQ trial failed or none ran")
    scored = []
    trials = []
    for c in candidates:
        meta = _meta(c)
        value = meta.get("metric")
        scored.append((float(value) if value is not None and math.isfinite(value) else -math.inf, str(c), meta))
        path = c / TRIALS_FILE
        if path.exists():
            trials.extend(json.loads(path.read_text()))
    best_value, best_dir, best_meta = max(scored, key=lambda s: s[0])
    # the shared stages once (from the best candidate), then every part's own trial stage
    head = [r for r in best_meta.get("stages", []) if r["stage"] != "ptq_trial"]
    records = [r for _, _, m in scored for r in m.get("stages", []) if r["stage"] == "ptq_trial"]
    with _Stage("select_best") as st:
        meta = {**best_meta, "stages": head + records, "candidates": len(candidates)}
        _write_model(dest, _files(best_dir), meta, {TRIALS_FILE: trials})
    meta["stages"].append(st.record)
    write_json_atomic(Path(dest) / "autocompress.json", meta)
    return {"metric": best_value, "candidates": len(candidates), "trials": len(trials)}


# ---- pruning and training -----------------------------------------------------------------------
def prune(model_dir, config, dest, device: str = "cpu", batch_size: int = 32) -> dict:
    """Remove channels (PruneConfig) before distillation; the result is physically smaller."""
    from .prune.channel import prune_model

    sc = parse_config(config, device=device, batch_size=batch_size, expect="prune_distill")
    files, parent = _files(model_dir), describe(model_dir)
    with _Stage("prune") as st, tempfile.TemporaryDirectory(prefix="ac-prune-") as work:
        shapes = {i["name"]: [1 if d < 0 else d for d in i["shape"]] for i in parent.get("inputs", [])}
        result = prune_model(files, sc.strategy["PruneConfig"], Path(work) / "model", feed_shapes=shapes or None,
                             place=_place(device))
        meta = {**_meta(result["model_files"].model_dir), "strategy": "prune", "parent": parent.get("parent"),
                "pruned": result.get("pruned")}
        _, meta = _write_model(dest, result["model_files"], meta)
    meta = _with_stage(meta, parent, st.record)
    write_json_atomic(Path(dest) / "autocompress.json", meta)
    return {k: result.get(k) for k in ("params_before", "params_after", "flops_before", "flops_after")}


class _CheckpointSync:
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
        from . import storage

        for path in sorted(p for p in self.local.rglob("*") if p.is_file() and not p.name.startswith(".")):
            mtime = path.stat().st_mtime
            rel = path.relative_to(self.local).as_posix()
            if self._seen.get(rel) != mtime:
                storage.publish(path, str(storage.parse_uri(self.uri).child(rel)))
                self._seen[rel] = mtime


def distill_train(student_dir, teacher_dir, train_dir, eval_dir, config, dest, *, checkpoint_uri: str = "",
                  metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute",
                  device: str = "cpu", batch_size: int = 32) -> dict:
    """Train the student (QAT / sparse / pruned / plain / multi-teacher distillation).

    `teacher_dir` is the original model: the default teacher when the config names none (source-free
    distillation), and the reference for `fidelity`. Teachers named in the config may be URIs.
    Checkpoints live under `checkpoint_uri` (a local folder or an object-store prefix, synced while
    training), so a retried task resumes.
    """
    from . import storage

    sc = parse_config(config, metric=metric, max_drop=max_drop, drop_type=drop_type, device=device,
                      batch_size=batch_size)
    combination = sc.combination
    if combination == "ptq_hpo":
        raise ConfigError("distill_train got a ptq_hpo config; PTQ does not train (use the ptq_hpo pipeline)")
    files, parent = _files(student_dir), _meta(student_dir)
    teacher = _files(teacher_dir)
    with contextlib.ExitStack() as stack:
        st = stack.enter_context(_Stage("distill_train"))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ac-train-")))
        strategy = {name: c.model_copy() for name, c in sc.strategy.items()}
        _local_teachers(strategy, teacher, work / "teachers")
        if storage.is_remote(checkpoint_uri):
            ckpt = work / "save"
            if storage.ObjectStore(scheme=storage.parse_uri(checkpoint_uri).scheme).list(checkpoint_uri):
                storage.fetch(checkpoint_uri, ckpt)
                log.info("resuming from the checkpoints at %s", checkpoint_uri)
            stack.enter_context(_CheckpointSync(ckpt, checkpoint_uri))
        else:
            ckpt = Path(checkpoint_uri) if checkpoint_uri else work / "save"
            ckpt.mkdir(parents=True, exist_ok=True)
        evaluator, _ = _evaluator(teacher, eval_dir, sc.eval.metric, batch_size, _feed_names(files))
        kwargs = dict(model_files=files, evaluator=evaluator, save_dir=ckpt, place=_place(device),
                      train_source=_dataset(train_dir, batch_size), train_config=sc.run.train,
                      progress=False)
        if combination == "multi_teacher_distill":
            kwargs.update(multi_config=strategy["MultiTeacherDistillationConfig"],
                          distill_config=strategy["MultiTeacherDistillationConfig"])
        elif combination == "sparse_distill":
            kwargs.update(unstructure_config=strategy["UnstructurePruneConfig"],
                          prune_config=strategy["UnstructurePruneConfig"], distill_config=strategy["DistillationConfig"])
        elif combination == "prune_distill":  # the prune stage already ran; ASP masks are kept while training
            kwargs.update(prune_config=strategy["PruneConfig"], distill_config=strategy["DistillationConfig"],
                          pruned_input=True)
        else:  # distill, qat_distill
            kwargs.update(distill_config=strategy["DistillationConfig"], quant_config=strategy.get("QuantizationConfig"))
        engine = _engine(combination)
        result = _call(engine, **kwargs)
        out_meta = _meta(result["model_files"].model_dir)
        meta = {**out_meta, "strategy": combination, "parent": parent.get("parent"), "metric": result.get("metric"),
                "baseline_metric": result.get("baseline_metric")}
        curve = result.get("curve") or []
        _, meta = _write_model(dest, result["model_files"], meta, {TRIALS_FILE: result.get("trials", [])})
        write_json_atomic(Path(dest) / "curve.json", curve)
    meta = _with_stage(meta, parent, st.record)
    write_json_atomic(Path(dest) / "autocompress.json", meta)
    return {"metric": meta.get("metric"), "curve_points": len(curve)}


def _local_teachers(strategy: dict, default_teacher, folder: Path) -> None:
    """Teachers named by URI are fetched; a single-teacher config without one uses the original model."""

    d = strategy.get("DistillationConfig")
    if d is not None:
        if not d.teacher_model_dir:
            strategy["DistillationConfig"] = d.model_copy(update={
                "teacher_model_dir": str(default_teacher.model_dir),
                "teacher_model_filename": default_teacher.model_filename,
                "teacher_params_filename": default_teacher.params_filename})
        elif "://" in d.teacher_model_dir:
            local = _fetch(d.teacher_model_dir, folder / "0")
            strategy["DistillationConfig"] = d.model_copy(update={"teacher_model_dir": str(local)})
    m = strategy.get("MultiTeacherDistillationConfig")
    if m is not None:
        dirs = [str(_fetch(t, folder / str(i))) for i, t in enumerate(m.teacher_model_dir)]
        strategy["MultiTeacherDistillationConfig"] = m.model_copy(update={"teacher_model_dir": dirs})


# ---- evaluation and export ----------------------------------------------------------------------
def evaluate(model_dir, baseline_dir, eval_dir, dest, *, metric: str = "top1", max_drop: float = 0.01,
             drop_type: str = "absolute", device: str = "cpu", batch_size: int = 32,
             latency_threads: int = 1) -> dict:
    """Measure the compressed model next to the original, where it will run (Paddle Inference), and
    write `summary.json` + `report.md` into `dest`. Returns the summary (plus a confusion matrix for
    labelled top1/top5 data, under `confusion_matrix`)."""
    from .measure import compare_models
    from .summary import peak_rss_bytes

    settings = cfg.build(cfg.EvalSection, {"metric": metric, "max_drop": max_drop, "drop_type": drop_type}, "Eval")
    files, before_files = _files(model_dir), _files(baseline_dir)
    meta = _meta(model_dir)
    start = time.perf_counter()
    feed_names = _feed_names(before_files)
    evaluator, reference = _evaluator(before_files, eval_dir, metric, batch_size, feed_names)
    baseline = evaluator(reference)
    source = _dataset(eval_dir, batch_size)
    first = source.first()
    sample = {k: v[:1] for k, v in first.feed.items()}
    compared = compare_models(before_files, files, evaluator, baseline, sample, settings, latency_threads)
    trials_path = Path(model_dir) / TRIALS_FILE
    curve_path = Path(model_dir) / "curve.json"
    record = {"stage": "evaluate", "seconds": round(time.perf_counter() - start, 3),
              "peak_rss_bytes": peak_rss_bytes()}
    stages = list(meta.get("stages", [])) + [record]
    summary = {
        "strategy": meta.get("strategy") or "unknown",
        "metric_name": metric,
        **compared,
        "device": device,
        "input_model": meta.get("parent"),
        "trials": json.loads(trials_path.read_text()) if trials_path.exists() else [],
        "curve": json.loads(curve_path.read_text()) if curve_path.exists() else [],
        "stages": stages,
        "seconds": round(sum(r["seconds"] for r in stages), 3),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in stages),
    }
    from .backend import inference_predictor

    compressed = inference_predictor(files, int8=compared["precision"] == "int8")
    confusion = _confusion(compressed, source, metric) if first.label is not None else None
    from .summary import write_summary

    with atomic_dir(dest) as tmp:
        write_summary(tmp, summary)
    summary_out = dict(summary)
    if confusion:
        summary_out["confusion_matrix"] = confusion
    return summary_out


def _confusion(predict, source, metric: str, max_classes: int = 32) -> dict | None:
    """Confusion matrix for classifiers (top1/top5 with labels and few classes), else None."""
    import numpy as np

    if metric not in ("top1", "top5"):
        return None
    pairs = []
    for batch in source.batches():
        out = predict(batch.feed)[0]
        if out.ndim != 2:
            return None
        pairs.append((out.argmax(-1), batch.label.reshape(-1)))
    pred = np.concatenate([p for p, _ in pairs])
    true = np.concatenate([t for _, t in pairs]).astype(np.int64)
    n = int(max(pred.max(), true.max())) + 1
    if n > max_classes:
        return None
    matrix = np.zeros((n, n), np.int64)
    np.add.at(matrix, (true, pred), 1)
    return {"categories": [str(i) for i in range(n)], "matrix": matrix.tolist()}


def export(model_dir, summary_dir, dest, publish_uri: str | None = None) -> dict:
    """Assemble the deliverable in `dest`: `model/` (the deployable model, input's file names,
    metadata, model card), `summary.json`, `report.md`; then optionally publish it to a URI (an
    object-store prefix or a local folder). Returns {summary, published: [...]}."""
    from . import storage
    from .summary import write_summary

    files, meta = _files(model_dir), _meta(model_dir)
    summary = json.loads((Path(summary_dir) / SUMMARY_FILE).read_text())
    with atomic_dir(dest) as tmp:
        model_out = Path(tmp) / "model"
        _write_model(model_out, files, {**meta, "metric": summary["metric"],
                                        "baseline_metric": summary["baseline_metric"]})
        write_text_atomic(model_out / MODEL_CARD_FILE, model_card(meta, summary))
        summary = {**summary, "model_dir": str(Path(dest) / "model"), "save_dir": str(dest)}
        if publish_uri:
            summary.update(model_dir=_join(publish_uri, "model"), save_dir=publish_uri)
        write_summary(tmp, summary)
    published = storage.publish(dest, publish_uri) if publish_uri else []
    return {"summary": summary, "published": published}


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else str(Path(base) / name)


def model_card(meta: dict, summary: dict) -> str:
    inputs = ", ".join(f"`{i['name']}` {i.get('dtype', '')} {i.get('shape')}" for i in meta.get("inputs", []))
    lines = [
        f"# Model card: {meta.get('model_filename')}",
        "",
        f"- Produced by autocompress {__version__}, strategy `{summary.get('strategy')}`, from `{meta.get('parent')}`.",
        f"- Format: {meta.get('format')} (same file names as the input model); precision {summary.get('precision')}.",
        f"- Inputs: {inputs or 'n/a'}.",
        f"- {summary.get('metric_name')}: {summary.get('metric'):.4f} (original {summary.get('baseline_metric'):.4f}, "
        f"drop {summary.get('metric_drop'):.4f}; budget {summary.get('budget')}: "
        f"{'met' if summary.get('target_met') else 'NOT met'}).",
        f"- Size {summary.get('size_bytes_after')} bytes (original {summary.get('size_bytes_before')}).",
        "",
        "Load it exactly like the original: `paddle.inference.Config(model_file, params_file)`.",
    ]
    if summary.get("deploy_note"):
        lines += ["", summary["deploy_note"]]
    return "\n".join(lines) + "\n"


def use_endpoint(endpoint: str | None) -> None:
    """Components get the object-store endpoint as a (non-secret) parameter; credentials come from
    the Secret mounted as environment variables."""
    if endpoint:
        os.environ["S3_ENDPOINT"] = endpoint


def ui_metadata(meta: dict) -> dict:
    """The small subset of model metadata shown on a KFP artifact."""
    keys = ("format", "model_filename", "params_filename", "precision", "strategy", "size_bytes", "params",
            "flops", "metric", "baseline_metric", "autocompress_version")
    return {k: meta[k] for k in keys if meta.get(k) is not None}



def checkpoint_location(artifact_uri: str, artifact_path: str) -> str:
    """Where a training task keeps checkpoints: next to its output artifact, which KFP keeps the same
    across retries of the task. On a cluster that is an object-store prefix, locally a folder."""
    from . import storage

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
