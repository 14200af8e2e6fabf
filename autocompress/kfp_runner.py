"""Run the strategy pipelines locally, compile them, submit and schedule them on a KFP endpoint.

The functions the CLI calls (`autocompress run / compile / submit / schedule`):

- `run_local(config, save_dir=None, ...)`: the run config's strategy pipeline through
  `kfp.local.SubprocessRunner(use_venv=False)`; artifacts in a local pipeline root; the deliverable
  (model/, summary.json, report.md) published into SaveDir. Returns the summary.
- `compile_pipelines(output_dir="pipelines/compiled", ...)`: every pipeline's IR YAML (and, with
  `components_dir`, each component's spec); `stale_files(...)` says which committed files differ.
- `submit(config, host=None, token=None, ...)`: upload a pipeline version and start a run.
- `schedule(config, cron, host=None, token=None, ...)`: create or replace a recurring run.

`kfp` is imported lazily: the engine works without it. Credentials are never pipeline arguments:
clusters give them to the tasks from a Kubernetes Secret; local runs inherit this process's
environment (S3_ENDPOINT / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig, load_run_config
from .errors import AutoCompressError, ConfigError

log = logging.getLogger("autocompress.kfp")

DEFAULT_COMPILED_DIR = Path("pipelines") / "compiled"
DEFAULT_COMPONENTS_DIR = Path("components") / "compiled"
HOST_ENV = ("KFP_HOST", "KF_PIPELINES_ENDPOINT")
TOKEN_ENV = ("KFP_TOKEN", "KF_PIPELINES_TOKEN")
NAMESPACE_ENV = ("KFP_NAMESPACE",)
DEFAULT_EXPERIMENT = "autocompress"


class KFPError(AutoCompressError):
    """A Kubeflow Pipelines problem: missing kfp, unreachable endpoint, failed run."""


def _kfp():
    try:
        import kfp
        from kfp import kubernetes  # noqa: F401  (the pipelines need kfp-kubernetes too)
    except ImportError:
        raise KFPError("Kubeflow features need the kfp packages: pip install 'autocompress[kfp]' "
                       "(kfp and kfp-kubernetes); `autocompress run --in-process` works without them") from None
    return kfp


def _pipelines():
    _kfp()
    from .kfp import pipelines

    return pipelines


# ---- arguments ----------------------------------------------------------------------------------
def _run_config(config) -> RunConfig:
    return config if isinstance(config, RunConfig) else load_run_config(config)


def pipeline_arguments(config, *, gpu: bool = False, publish_uri: str | None = None, trial_shards: int | None = None,
                       s3_endpoint: str | None = None, object_store_secret: str | None = None,
                       extra: dict | None = None) -> tuple[str, dict]:
    """The pipeline name and its arguments for a run config (validated here, before any run starts).

    Never includes credentials. `extra` overrides/adds pipeline parameters (e.g. gpu_count, tolerations).
    """
    from .stages import config_text

    rc = _run_config(config)
    pipelines = _pipelines()
    combination = rc.combination
    data = rc.Data
    first, second = pipelines.data_params(combination)
    primary = (data.calib or data.train) if combination == "ptq_hpo" else data.train
    if not primary:
        raise ConfigError(f"Data.train is required (the {combination} strategy uses it for "
                          f"{'calibration' if combination == 'ptq_hpo' else 'training'})")
    if not data.eval:
        raise ConfigError("Data.eval is required (the data the budget is measured on)")
    args: dict[str, Any] = {
        "model_uri": rc.Model.model_dir, first: primary, second: data.eval, "config": config_text(rc),
        "metric": rc.Eval.metric, "max_drop": rc.Eval.max_drop, "drop_type": rc.Eval.drop_type,
        "model_filename": rc.Model.model_filename or "", "params_filename": rc.Model.params_filename or "",
        "device": rc.Device, "batch_size": data.batch_size, "publish_uri": publish_uri or "",
    }
    if combination == "ptq_hpo" and trial_shards is not None:
        args["trial_shards"] = int(trial_shards)
    if s3_endpoint is not None:
        args["s3_endpoint"] = s3_endpoint
    if object_store_secret:
        args["object_store_secret"] = object_store_secret
    args.update(extra or {})
    name = combination if gpu else f"{combination}_cpu"
    known = set(_pipeline_inputs(pipelines.by_name(name)))
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"the {name} pipeline has no parameters {unknown}; it has: {sorted(known)}")
    for key in ("model_uri", first, second):
        _check_location(args[key], key)
    return name, args


def _pipeline_inputs(pipeline) -> dict:
    return dict(pipeline.pipeline_spec.root.input_definitions.parameters)


def _check_location(location: str, what: str) -> None:
    from . import storage

    if not storage.is_remote(location) and "://" in location:
        raise ConfigError(f"{what}: {location} uses an unsupported scheme; use a local path, s3:// or minio://")



# ---- local runs ---------------------------------------------------------------------------------
@dataclasses.dataclass
class LocalRun:
    summary: dict
    save_dir: Path
    pipeline_root: Path
    pipeline: str
    wall_seconds: float

    @property
    def model_dir(self) -> Path:
        return self.save_dir / "model"


def run_local(config, save_dir: str | os.PathLike | None = None, *, pipeline_root: str | os.PathLike | None = None,
              trial_shards: int = 1, publish_uri: str | None = None, progress: bool | str = True, echo: Callable[[str], None] | None = None) -> LocalRun:
    """Run the config's strategy pipeline with `kfp.local.SubprocessRunner(use_venv=False)`.

    Every stage runs in its own process with this interpreter (so this environment needs the engine
    installed, as the image has). Artifacts go to `pipeline_root` (default `<save_dir>/pipeline-root`);
    the deliverable is published into `save_dir` (default the config's SaveDir): `model/`,
    `summary.json`, `report.md`. PTQ search runs as `trial_shards` parts (1: one process does all
    trials, the fastest on one machine). `publish_uri` (e.g. s3://bucket/prefix) makes the export stage
    publish there as well. Progress is one line per stage; every stage's full log goes
    to `<pipeline_root>/<pipeline>-<time>.log` (`progress="verbose"` echoes it, False prints nothing).
    """
    _kfp()
    from kfp import local

    if echo is None:
        out = sys.stdout
        echo = (lambda text: print(text, file=out, flush=True)) if progress else (lambda text: None)
    rc = _materialize_builtin(_run_config(config))
    save = Path(save_dir or rc.SaveDir).resolve()
    model_path = Path(rc.Model.model_dir)
    if "://" not in rc.Model.model_dir and model_path.resolve() == save:
        raise ConfigError("SaveDir is the input model's folder; choose another folder (the input is never overwritten)")
    root = Path(pipeline_root or save / "pipeline-root").resolve()
    endpoint = os.environ.get("S3_ENDPOINT") or os.environ.get("MINIO_ENDPOINT") or ""
    name, args = pipeline_arguments(rc, gpu=False, publish_uri=publish_uri or str(save), trial_shards=trial_shards,
                                    s3_endpoint=endpoint)
    for key, location in args.items():
        # fail before the pipeline starts: the load stages retry (for flaky object stores) with backoff
        if key.endswith("_uri") and key != "publish_uri" and location and "://" not in location \
                and not Path(location).exists():
            raise ConfigError(f"{key}: {location} does not exist")
    pipeline = _pipelines().by_name(name)
    save.mkdir(parents=True, exist_ok=True)
    echo(f"autocompress: running the {name} pipeline locally ({len(pipeline.pipeline_spec.root.dag.tasks)} "
         f"top-level stages); artifacts under {root}")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    log_path = root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    start = time.perf_counter()
    with _StageProgress(log_path, echo, verbose=progress == "verbose") as stream, _quiet_kfp(stream):
        try:
            pipeline(**args)
        except RuntimeError as err:
            stream.close_log()
            tail = _log_tail(log_path)
            cause = _stage_error(log_path)
            raise KFPError(f"the local {name} pipeline failed: {_first_line(_strip_ansi(str(err)))}\n"
                           + (f"{cause}\n" if cause else "")
                           + f"--- end of the log ({log_path}) ---\n{tail}") from None
    wall = time.perf_counter() - start
    if publish_uri:  # the pipeline published to the URI; the deliverable also lands in save_dir
        exported = sorted(root.glob("*/export/exported"), key=lambda p: p.stat().st_mtime)
        if not exported:
            raise KFPError(f"the {name} pipeline finished but its export artifact is missing under {root}")
        from .atomic import replace_dir
        import shutil

        for child in ("model", "summary.json", "report.md"):
            src, dst = exported[-1] / child, save / child
            if src.is_dir():
                tmp = save / f".{child}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(src, tmp)
                replace_dir(tmp, dst)
            else:
                shutil.copy2(src, dst)
    summary_path = save / "summary.json"
    if not summary_path.exists():
        raise KFPError(f"the {name} pipeline finished but wrote no {summary_path}; see the logs above")
    summary = json.loads(summary_path.read_text())
    # the run's cost is the pipeline's wall time; the stages' own compute time stays beside it
    summary.update(stage_seconds=summary.get("seconds"), seconds=wall, pipeline=name,
                   pipeline_root=str(root), pipeline_log=str(log_path))
    from .summary import write_summary

    write_summary(save, summary)
    run = LocalRun(summary, save, root, name, wall)
    for line in stage_table(summary):
        echo(line)
    echo(f"model:   {run.model_dir}")
    echo(f"summary: {summary_path}")
    echo(f"report:  {save / 'report.md'}")
    return run


def _materialize_builtin(rc: RunConfig) -> RunConfig:
    """`builtin://` demo locations become local folders before a local run starts."""
    def local(location):
        if location and location.startswith("builtin://"):
            from .demo.digits import materialize_builtin

            return str(materialize_builtin(location))
        return location

    model = rc.Model.model_copy(update={"model_dir": local(rc.Model.model_dir)})
    data = rc.Data.model_copy(update={k: local(getattr(rc.Data, k)) for k in ("train", "eval", "calib")})
    return rc.model_copy(update={"Model": model, "Data": data})


def stage_table(summary: dict) -> list[str]:
    rows = summary.get("stages") or []
    if not rows:
        return []
    lines = ["stage            seconds   peak RSS"]
    for r in rows:
        lines.append(f"{r['stage']:<16} {r['seconds']:>7.2f}   {r['peak_rss_bytes'] / (1 << 20):>6.0f} MiB")
    return lines


@contextlib.contextmanager
def _quiet_kfp(stream):
    """kfp's local runner prints every task's executor input and streamed log to stdout: send all of
    it to the run's log file and show one line per stage instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="kfp")
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_SKIPPED = re.compile(r"Skipping task ([\w-]+)")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class _StageProgress(io.TextIOBase):
    """A stdout stand-in: every line goes to the run log; stage starts/ends are echoed as progress."""

    def __init__(self, log_path: Path, echo: Callable[[str], None], verbose: bool = False):
        self.log_path, self.echo, self.verbose = log_path, echo, verbose
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w", encoding="utf-8")
        self._buffer = ""
        self._started: dict[str, float] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close_log()
        return False

    def close_log(self):
        if not self._log.closed:
            if self._buffer:
                self._line(self._buffer)
                self._buffer = ""
            self._log.close()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self):
        if not self._log.closed:
            self._log.flush()

    def _line(self, line: str) -> None:
        plain = _strip_ansi(line)
        if not self._log.closed:
            self._log.write(plain + "\n")
        if self.verbose:
            self.echo(plain)
            return
        if m := _STARTED.search(plain):
            self._started[m.group(1)] = time.perf_counter()
            self.echo(f"  > {m.group(1)} ...")
        elif m := _FINISHED.search(plain):
            took = time.perf_counter() - self._started.get(m.group(1), time.perf_counter())
            self.echo(f"  {'ok' if m.group(2) == 'SUCCESS' else m.group(2)} {m.group(1)} ({took:.1f} s)")
        elif m := _SKIPPED.search(plain):
            self.echo(f"  skipped {m.group(1)} (an upstream stage failed)")


def _stage_error(path: Path) -> str | None:
    """The failing stage's own error line (e.g. `autocompress.errors.DataError: ...`): stages run in
    parallel, so the end of the log often belongs to a sibling that finished later."""
    failed, last_error = None, None
    for line in _strip_ansi(path.read_text(errors="replace")).splitlines():
        m = re.match(r"\s*((?:\w+\.)*\w*(?:Error|Exception|Interrupt)): (.*)", line)
        if m:
            last_error = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
        m = re.search(r"Task '([^']+)' finished with status FAILURE", line)
        if m and failed is None:
            failed = f"stage {m.group(1)} failed with {last_error}" if last_error else f"stage {m.group(1)} failed"
    return failed


def _log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---- compile ------------------------------------------------------------------------------------
def compile_pipelines(output_dir: str | os.PathLike = DEFAULT_COMPILED_DIR, *, names: list[str] | None = None,
                      components_dir: str | os.PathLike | None = None,
                      image_repository: str | None = None) -> list[Path]:
    """Compile every pipeline (or `names`) to `<output_dir>/<name>.yaml`; with `components_dir`, also
    each component's spec to `<components_dir>/<stage>.yaml`. `image_repository` replaces the default
    image repository (the tag stays the package version). Returns the written paths."""
    _kfp()
    from kfp import compiler

    from .atomic import write_text_atomic

    pipelines = _pipelines()
    written = []
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in names or pipelines.names():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.yaml"
            compiler.Compiler().compile(pipelines.by_name(name), str(path))
            text = _retag(path.read_text(), image_repository)
        write_text_atomic(out / f"{name}.yaml", text)
        written.append(out / f"{name}.yaml")
    if names is None:
        _remove_leftovers(out, written)
    if components_dir is not None:
        from .kfp import components

        cdir = Path(components_dir)
        cdir.mkdir(parents=True, exist_ok=True)
        for comp in components.ALL.values():
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "c.yaml"
                compiler.Compiler().compile(comp, str(path))
                stem = comp.name.replace("-", "_")
                write_text_atomic(cdir / f"{stem}.yaml", _retag(path.read_text(), image_repository))
            written.append(cdir / f"{stem}.yaml")
        _remove_leftovers(cdir, written)
    return written


def _remove_leftovers(folder: Path, written: list[Path]) -> None:
    """A full compile owns its folders' *.yaml: files of removed pipelines/components go."""
    keep = {p.resolve() for p in written}
    for path in folder.glob("*.yaml"):
        if path.resolve() not in keep:
            path.unlink()


def _retag(text: str, image_repository: str | None) -> str:
    from .kfp.image import IMAGE_REPOSITORY

    if image_repository and image_repository != IMAGE_REPOSITORY:
        text = text.replace(f"{IMAGE_REPOSITORY}:", f"{image_repository}:")
    return _stable(text)


_HEADER_DEFAULT = re.compile(r"^(#\s+\w+: (?:list|dict) \[Default: )(.*)(\])$", re.M)


def _sorted_repr(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_sorted_repr(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_sorted_repr(v) for v in value) + "]"
    return repr(value)


def _stable(text: str) -> str:
    """The compiler's header comment prints dict defaults in hash order and its trailing blank lines
    vary: normalise both so compiled files are byte-identical between runs (the staleness test)."""
    import ast

    def fix(m):
        try:
            return m.group(1) + _sorted_repr(ast.literal_eval(m.group(2))) + m.group(3)
        except (ValueError, SyntaxError):
            return m.group(0)
    return _HEADER_DEFAULT.sub(fix, text).rstrip("\n") + "\n"


def stale_files(output_dir: str | os.PathLike = DEFAULT_COMPILED_DIR,
                components_dir: str | os.PathLike | None = DEFAULT_COMPONENTS_DIR) -> list[str]:
    """Committed compiled files that differ from a fresh compile (or are missing / left over)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_p, fresh_c = Path(tmp) / "p", Path(tmp) / "c"
        compile_pipelines(fresh_p, components_dir=fresh_c if components_dir is not None else None)
        stale = []
        pairs = [(fresh_p, Path(output_dir))] + ([(fresh_c, Path(components_dir))] if components_dir else [])
        for fresh, committed in pairs:
            want = {p.name: p.read_text() for p in fresh.glob("*.yaml")}
            have = {p.name: p.read_text() for p in committed.glob("*.yaml")} if committed.is_dir() else {}
            stale += [str(committed / n) for n in sorted(set(want) | set(have)) if want.get(n) != have.get(n)]
        return stale


# ---- cluster ------------------------------------------------------------------------------------
def _env(names) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


def client(host: str | None = None, token: str | None = None, namespace: str | None = None):
    """A `kfp.Client` for `host` (or $KFP_HOST), with a bearer token from `token` (or $KFP_TOKEN)."""
    kfp = _kfp()
    host = host or _env(HOST_ENV)
    if not host:
        raise KFPError("no KFP endpoint: pass --host URL or set KFP_HOST (e.g. http://ml-pipeline-ui.kubeflow)")
    token = token or _env(TOKEN_ENV)
    try:
        return kfp.Client(host=host, existing_token=token, namespace=namespace or _env(NAMESPACE_ENV) or "kubeflow")
    except Exception as err:  # kfp raises plain exceptions for unreachable hosts
        raise KFPError(f"cannot reach the KFP endpoint {host}: {_first_line(err)}; check --host / KFP_HOST and the "
                       "token (--token / KFP_TOKEN)") from None


def _upload(kfp_client, name: str, version: str | None, image_repository: str | None) -> tuple[str, str]:
    """Upload the compiled pipeline as a new version (creating the pipeline first). Returns ids."""
    from .version import __version__

    display = f"autocompress-{name.replace('_', '-')}"
    version = version or f"{__version__}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory() as tmp:
        [path] = compile_pipelines(tmp, names=[name], image_repository=image_repository)
        pipeline_id = kfp_client.get_pipeline_id(display)
        if pipeline_id is None:
            p = kfp_client.upload_pipeline(str(path), pipeline_name=display,
                                           description=f"autocompress {name} pipeline")
            pipeline_id = p.pipeline_id
        v = kfp_client.upload_pipeline_version(str(path), pipeline_version_name=version, pipeline_id=pipeline_id)
    return pipeline_id, v.pipeline_version_id


def _experiment(kfp_client, name: str, namespace: str | None) -> str:
    return kfp_client.create_experiment(name=name, namespace=namespace).experiment_id


def submit(config, *, host: str | None = None, token: str | None = None, namespace: str | None = None,
           experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None, gpu: bool = True,
           version: str | None = None, publish_uri: str | None = None, trial_shards: int | None = None,
           object_store_secret: str | None = None, image_repository: str | None = None,
           params: dict | None = None, kfp_client=None) -> dict:
    """Validate the config, upload the pipeline as a new version and start a run.

    Returns {pipeline, pipeline_id, version_id, run_id, url}. Model and data locations in the config
    must be URIs the cluster can read (s3:// or minio://)."""
    name, args = _cluster_args(config, gpu, publish_uri, trial_shards, object_store_secret, params)
    c = kfp_client or client(host, token, namespace)
    pipeline_id, version_id = _upload(c, name, version, image_repository)
    experiment_id = _experiment(c, experiment, namespace)
    run = c.run_pipeline(experiment_id=experiment_id, job_name=run_name or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                         params=args, pipeline_id=pipeline_id, version_id=version_id)
    run_id = getattr(run, "run_id", None)
    host = host or _env(HOST_ENV) or ""
    return {"pipeline": name, "pipeline_id": pipeline_id, "version_id": version_id, "run_id": run_id,
            "url": f"{host.rstrip('/')}/#/runs/details/{run_id}" if host else None}


def schedule(config, cron: str, *, host: str | None = None, token: str | None = None,
             namespace: str | None = None, experiment: str = DEFAULT_EXPERIMENT, job_name: str | None = None,
             gpu: bool = True, version: str | None = None, publish_uri: str | None = None,
             trial_shards: int | None = None, object_store_secret: str | None = None,
             image_repository: str | None = None, params: dict | None = None, max_concurrency: int = 1,
             kfp_client=None) -> dict:
    """Create, or replace (same `job_name` in the experiment), a recurring run on a cron schedule
    (KFP's 6-field cron, seconds first: '0 0 3 * * *' = daily at 03:00). Returns the ids."""
    fields = cron.split()
    if len(fields) not in (5, 6):
        raise ConfigError(f"cron {cron!r} needs 5 or 6 fields (KFP: seconds minutes hours day month weekday)")
    if len(fields) == 5:
        cron = "0 " + cron
    name, args = _cluster_args(config, gpu, publish_uri, trial_shards, object_store_secret, params)
    job_name = job_name or f"autocompress-{name.replace('_', '-')}"
    c = kfp_client or client(host, token, namespace)
    pipeline_id, version_id = _upload(c, name, version, image_repository)
    experiment_id = _experiment(c, experiment, namespace)
    replaced = []
    token_ = ""
    while True:
        page = c.list_recurring_runs(experiment_id=experiment_id, page_size=100, page_token=token_)
        for job in getattr(page, "recurring_runs", None) or []:
            if job.display_name == job_name:
                c.delete_recurring_run(job.recurring_run_id)
                replaced.append(job.recurring_run_id)
        token_ = getattr(page, "next_page_token", None)
        if not token_:
            break
    job = c.create_recurring_run(experiment_id=experiment_id, job_name=job_name, cron_expression=cron,
                                 params=args, pipeline_id=pipeline_id, version_id=version_id,
                                 max_concurrency=max_concurrency, no_catchup=True, enabled=True)
    return {"pipeline": name, "pipeline_id": pipeline_id, "version_id": version_id,
            "recurring_run_id": job.recurring_run_id, "replaced": replaced, "cron": cron}


def _cluster_args(config, gpu, publish_uri, trial_shards, secret, params):
    from . import storage

    name, args = pipeline_arguments(config, gpu=gpu, publish_uri=publish_uri, trial_shards=trial_shards,
                                    object_store_secret=secret, extra=params)
    for key in ("model_uri", "calib_data_uri", "train_data_uri", "eval_data_uri"):
        if key in args and not (storage.is_remote(args[key]) or args[key].startswith("builtin://")):
            raise ConfigError(f"{key} is the local path {args[key]}; a cluster cannot read it. Upload it "
                              "(e.g. with `mc cp` / `aws s3 cp`) and use its s3:// or minio:// URI in the config")
    if publish_uri and not storage.is_remote(publish_uri):
        raise ConfigError(f"publish_uri {publish_uri} must be an s3:// or minio:// URI on a cluster")
    return name, args


def main_compile(argv=None) -> int:  # `python -m autocompress.kfp_runner` regenerates the committed files
    import argparse

    p = argparse.ArgumentParser(description="compile every pipeline and component")
    p.add_argument("--output-dir", default=str(DEFAULT_COMPILED_DIR))
    p.add_argument("--components-dir", default=str(DEFAULT_COMPONENTS_DIR))
    p.add_argument("--image-repository")
    a = p.parse_args(argv)
    for path in compile_pipelines(a.output_dir, components_dir=a.components_dir, image_repository=a.image_repository):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main_compile())
