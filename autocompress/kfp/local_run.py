"""`autocompress run`: the run config's strategy pipeline through `kfp.local.SubprocessRunner` (every
stage a process of this interpreter) or `kfp.local.DockerRunner` (every stage a container of the
pipeline's image, run as the manifests run pods), with one progress line per stage and every stage's
full log in a file."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from ..errors import ConfigError
from . import KFPError, first_line, pipelines_module, require_kfp
from .adapters import USER_ERROR_MARK
from .arguments import pipeline_arguments, run_config

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


RUNNERS = ("subprocess", "docker")


def run_local(config, save_dir: str | os.PathLike | None = None, *, pipeline_root: str | os.PathLike | None = None,
              trial_shards: int = 1, publish_uri: str | None = None, progress: bool | str = True,
              echo: Callable[[str], None] | None = None, runner: str = "subprocess") -> LocalRun:
    """Run the config's strategy pipeline with `kfp.local.SubprocessRunner(use_venv=False)`, or with
    `runner="docker"` in the pipeline's image through `kfp.local.DockerRunner` (see `_docker_runner`).

    Every stage runs in its own process with this interpreter (so this environment needs the engine
    installed, as the image has). Artifacts go to `pipeline_root` (default `<save_dir>/pipeline-root`);
    the deliverable is published into `save_dir` (default the config's SaveDir): `model/`,
    `summary.json`, `report.md` (an Auto config runs the auto pipeline: report.html too, and no
    trials.json). PTQ search runs as `trial_shards` parts (1: one process does all trials, the fastest
    on one machine). `publish_uri` (e.g. s3://bucket/prefix) makes the export stage
    publish there as well. Progress is one line per stage; every stage's full log goes
    to `<pipeline_root>/<pipeline>-<time>.log` (`progress="verbose"` echoes it, False prints nothing).
    """
    require_kfp()
    from kfp import local

    if runner not in RUNNERS:
        raise ConfigError(f"unknown runner {runner!r}; use one of: {', '.join(RUNNERS)}")
    if echo is None:
        out = sys.stdout
        echo = (lambda text: print(text, file=out, flush=True)) if progress else (lambda text: None)
    rc = _materialize_builtin(run_config(config))
    save = Path(save_dir or rc.SaveDir).resolve()
    model_path = Path(rc.Model.model_dir)
    if "://" not in rc.Model.model_dir and model_path.resolve() == save:
        raise ConfigError("SaveDir is the input model's folder; choose another folder (the input is never overwritten)")
    root = Path(pipeline_root or save / "pipeline-root").resolve()
    endpoint = os.environ.get("S3_ENDPOINT") or os.environ.get("MINIO_ENDPOINT") or ""
    # in containers the export stage publishes to object stores only; the host copies the deliverable
    local_publish = publish_uri or (str(save) if runner == "subprocess" else "")
    name, args = pipeline_arguments(rc, gpu=False, publish_uri=local_publish, trial_shards=trial_shards,
                                    s3_endpoint=endpoint)
    if save.exists() and not save.is_dir():
        raise ConfigError(f"SaveDir {save} is an existing file; choose a folder")
    # fail before the pipeline starts, naming the user's own files and keys (local inputs; the load
    # stages check object-store ones)
    from ..preflight import preflight

    preflight(rc, save)
    pipeline = pipelines_module().by_name(name)
    save.mkdir(parents=True, exist_ok=True)
    tasks = contextlib.nullcontext()
    if runner == "docker":
        kfp_runner, tasks = _docker_runner(rc, pipeline, args, root, endpoint, echo)
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
    echo(f"autocompress: running the {name} pipeline locally ({len(pipeline.pipeline_spec.root.dag.tasks)} "
         f"top-level stages{', in containers' if runner == 'docker' else ''}); artifacts under {root}")
    local.init(runner=kfp_runner, pipeline_root=str(root), raise_on_error=True)
    log_path = root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    earlier = set(root.iterdir()) if root.is_dir() else set()
    start = time.perf_counter()
    with _StageProgress(log_path, echo, verbose=progress == "verbose") as stream, _quiet_kfp(stream), \
            _user_errors_not_retried(), tasks:
        try:
            pipeline(**args)
        except RuntimeError as err:
            stream.close_log()
            tail = _log_tail(log_path)
            cause = _stage_error(log_path)
            user = _user_error(log_path)
            if user is not None:  # the user's input, not the pipeline: the message, no log tail
                for entry in set(root.iterdir()) - earlier - {log_path}:  # this run's copies of the inputs
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                raise user
            raise KFPError(f"the local {name} pipeline failed: {first_line(_strip_ansi(str(err)))}\n"
                           + (f"{cause}\n" if cause else "")
                           + f"--- end of the log ({log_path}) ---\n{tail}") from None
    wall = time.perf_counter() - start
    if publish_uri or not local_publish:  # the deliverable lands in save_dir from the export artifact
        exported = sorted(root.glob("*/*export/exported"), key=lambda p: p.stat().st_mtime)  # auto-export too
        if not exported:
            raise KFPError(f"the {name} pipeline finished but its export artifact is missing under {root}")
        from ..atomic import replace_dir

        for child in ("model", "summary.json", "report.md", "trials.json", "report.html"):
            src, dst = exported[-1] / child, save / child
            if not src.exists():  # auto mode: no trials.json (and no model when no candidate finished)
                continue
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
    if not local_publish:  # as the export stage records a local publish
        summary.update(model_dir=str(save / "model") if summary.get("model_dir") else None, save_dir=str(save))
    # the run's cost is the pipeline's wall time; the stages' own compute time stays beside it
    summary.update(stage_seconds=summary.get("seconds"), seconds=wall, pipeline=name,
                   pipeline_root=str(root), pipeline_log=str(log_path))
    from ..summary import write_summary

    auto = summary.get("mode") == "auto"
    if auto:  # auto mode's summary; its report.md / report.html came with the deliverable
        from ..atomic import write_json_atomic

        write_json_atomic(summary_path, summary)
    else:
        write_summary(save, summary)
    run = LocalRun(summary, save, root, name, wall)
    for line in stage_table(summary):
        echo(line)
    echo(f"model:   {run.model_dir}")
    echo(f"summary: {summary_path}")
    echo(f"report:  {save / ('report.html' if auto else 'report.md')}")
    return run


# the object-store settings a stage reads from its environment (autocompress.storage), passed on
STORE_ENV = ("S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MINIO_ENDPOINT", "S3_SECURE", "MINIO_SECURE",
             "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "MINIO_ACCESS_KEY",
             "MINIO_SECRET_KEY")
POD_UID = 1000  # the manifests' pods run as 1000:1000 (runAsUser), as the images' USER


def _docker_runner(rc: RunConfig, pipeline, args: dict, root: Path, endpoint: str, echo):
    """`kfp.local.DockerRunner` with the pods' security settings: a non-root user (this user's uid, or
    1000 when run as root), a read-only root file system with a writable /tmp, no new privileges, no
    capabilities. The pipeline root is mounted read-write (kfp), the local inputs read-only at their
    own paths; the network is none, or the host's for an object store on this machine's loopback.
    Returns the runner and a context that runs the tasks (see `_docker_tasks`)."""
    from kfp import local

    try:
        import docker
    except ImportError:
        raise KFPError("--runner docker needs the Docker SDK for Python: pip install docker") from None
    if str(rc.Device).lower().startswith("gpu"):
        raise ConfigError(f"--runner docker runs the stages in CPU containers, but Device is {rc.Device}: "
                          "use Device: cpu, or --runner subprocess on the GPU machine")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as err:  # noqa: BLE001 - any failure to reach the daemon
        raise KFPError(f"--runner docker: no Docker daemon answers ({first_line(str(err))}); start it (as root, "
                       "`python images/build.py` starts dockerd where none runs) or use --runner subprocess") from None
    images = _pipeline_images(pipeline)
    try:
        present = {i for i in images if _has_image(client, i)}
    finally:
        client.close()
    remap = {}
    from .image import CPU_IMAGE, GPU_IMAGE

    if GPU_IMAGE in images and GPU_IMAGE not in present and CPU_IMAGE in present:
        remap[GPU_IMAGE] = CPU_IMAGE  # the GPU image's stages run on CPU nodes in the CPU build too
        echo(f"autocompress: {GPU_IMAGE} is not on this Docker daemon: its stages run in {CPU_IMAGE} (CPU)")
    missing = sorted(images - present - set(remap))
    if missing:
        raise KFPError(f"--runner docker: the pipeline's image {', '.join(missing)} is not on this Docker daemon: "
                       "build it with `python images/build.py` (or docker pull it)")
    inputs = _local_inputs(args, root)
    if os.geteuid() == 0:  # never root in the container: the pods' user, which then owns the pipeline root
        user = f"{POD_UID}:{POD_UID}"
        root.mkdir(parents=True, exist_ok=True)
        os.chown(root, POD_UID, POD_UID)
        from ..demo.digits import default_cache_dir

        demo = default_cache_dir().resolve()
        for path in inputs:
            bad = _unreadable_by_others(path)
            if bad is not None and demo in path.parents:  # builtin:// demo files: ours to open up
                _let_others_read(path)
                bad = None
            if bad is not None:
                raise ConfigError(f"{bad} is not readable by uid {POD_UID}, the user the containers run as (the "
                                  f"pods' runAsUser): make it readable (chmod -R o+rX {path}) or run as a non-root "
                                  "user, whose uid the containers then use")
    else:
        user = f"{os.getuid()}:{os.getgid()}"
    remote = [v for v in _strings(args) if "://" in v and not v.startswith("builtin://")]
    host = re.sub(r"^\w+://", "", endpoint).split("/")[0].rsplit(":", 1)[0].strip("[]")
    network = ("host" if remote and host in ("127.0.0.1", "localhost", "::1") else
               None if remote else "none")
    mounts = [docker.types.Mount(target=str(p), source=str(p), type="bind", read_only=True) for p in inputs]
    if any(Path("/root") in p.parents for p in inputs):
        # the image's /root is 0700 (a tmpfs there keeps that mode): an empty 0755 folder over it lets
        # the containers' user reach the inputs mounted below it (their mount points are made in it)
        standin = root / ".root-for-containers"
        standin.mkdir(parents=True, exist_ok=True)
        os.chmod(standin, 0o755)
        mounts.insert(0, docker.types.Mount(target="/root", source=str(standin), type="bind"))
    options = dict(user=user, read_only=True, tmpfs={"/tmp": "rw,nosuid,nodev"}, security_opt=["no-new-privileges"],
                   cap_drop=["ALL"], working_dir="/tmp",
                   environment={"HOME": "/tmp", **{k: os.environ[k] for k in STORE_ENV if os.environ.get(k)}},
                   mounts=mounts)
    if network:
        options["network_mode"] = network
    import logging

    logging.getLogger("kfp.local.pip_install_manager").setLevel(logging.WARNING)  # no pip installs here
    return local.DockerRunner(**options), _docker_tasks(remap)


def _pipeline_images(pipeline) -> set[str]:
    from google.protobuf import json_format

    executors = json_format.MessageToDict(pipeline.pipeline_spec.deployment_spec).get("executors", {})
    return {e["container"]["image"] for e in executors.values() if "container" in e}


def _has_image(client, image: str) -> bool:
    import docker

    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def _strings(value):
    """Every string in the pipeline arguments, the JSON `config` parameter's included."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        if value[:1] in "{[":
            with contextlib.suppress(ValueError):
                yield from _strings(json.loads(value))
                return
        yield value


def _local_inputs(args: dict, root: Path) -> list[Path]:
    """The local folders the stages read (a file input: its folder), each once and outside the
    pipeline root; the run config resolves Model and Data paths against its own folder."""
    found = []
    for value in _strings(args):
        if "://" in value or not value.startswith("/"):
            continue
        path = Path(value)
        if path.exists():
            found.append((path if path.is_dir() else path.parent).resolve())
    out = []
    for path in sorted(set(found), key=lambda p: (len(p.parts), p)):
        if not any(path == o or o in path.parents for o in out + [root]):
            out.append(path)
    return sorted(out)


def _unreadable_by_others(path: Path) -> Path | None:
    """The first file or folder under `path` that another user (the containers' uid) cannot read."""
    import stat

    for folder, dirs, files in os.walk(path):
        for entry in [folder, *(os.path.join(folder, f) for f in files)]:
            st = os.stat(entry)
            need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
            if st.st_uid != POD_UID and st.st_mode & need != need:
                return Path(entry)
    return None


def _let_others_read(path: Path) -> None:
    for folder, _, files in os.walk(path):
        os.chmod(folder, os.stat(folder).st_mode | 0o005)
        for name in files:
            entry = os.path.join(folder, name)
            os.chmod(entry, os.stat(entry).st_mode | 0o004)


@contextlib.contextmanager
def _docker_tasks(remap: dict):
    """kfp's Docker task handler with two changes: the images in `remap` are replaced (the GPU image
    by the CPU one), and a task's status is its container's exit code (kfp removes the container
    automatically and may count a quick failure, whose container is gone before it asks, as success)."""
    from kfp.local import docker_task_handler, status

    handler = docker_task_handler.DockerTaskHandler

    class Handler(handler):
        def __init__(self, image, *args, **kwargs):
            super().__init__(remap.get(image, image), *args, **kwargs)

        def run(self):
            import docker

            client = docker.from_env()
            try:
                options = {k: v for k, v in self.runner.container_run_args.items() if k != "environment"}
                container = client.containers.run(image=self.image, command=self.full_command, detach=True,
                                                  volumes=self.get_volumes_to_mount(client),
                                                  environment=self.env_vars, **options)
                try:
                    for chunk in container.logs(stream=True, follow=True):
                        print(chunk.decode(errors="replace"), end="")
                    code = container.wait()["StatusCode"]
                finally:
                    container.remove(force=True)
            finally:
                client.close()
            return status.Status.SUCCESS if code == 0 else status.Status.FAILURE

    docker_task_handler.DockerTaskHandler = Handler
    try:
        yield
    finally:
        docker_task_handler.DockerTaskHandler = handler


def _materialize_builtin(rc: RunConfig) -> RunConfig:
    """`builtin://` demo locations become local folders before a local run starts."""
    def local(location):
        if location and location.startswith("builtin://"):
            from ..demo.digits import materialize_builtin

            return str(materialize_builtin(location))
        return location

    model = rc.Model.model_copy(update={"model_dir": local(rc.Model.model_dir)})
    data = rc.Data.model_copy(update={k: local(getattr(rc.Data, k)) for k in ("train", "eval", "calib", "test")})
    return rc.model_copy(update={"Model": model, "Data": data})


_TASK = threading.local()  # per task thread: the task now running, and the one a user error failed


@contextlib.contextmanager
def _user_errors_not_retried():
    """kfp's local runner retries every failed task by its retry policy (30 s, 60 s, 120 s here): it
    cannot tell a user error from a flaky object store. A stage that fails with a user error prints
    `adapters.USER_ERROR_MARK` (read by `_StageProgress`, in the task's own thread); that task's
    remaining attempts then return FAILURE at once, without the backoff sleep. Transient errors and
    bugs keep their retries."""
    from kfp.local import status, task_dispatcher
    from kfp.local.orchestrator import task_executor

    run_task, clock = task_dispatcher.run_single_task_implementation, task_executor.time

    def dispatch(*args, **kwargs):
        key = (kwargs.get("component_name"), id(kwargs.get("arguments")))
        if getattr(_TASK, "user_error", None) == key:
            return {}, status.Status.FAILURE
        _TASK.current, _TASK.seen = key, False
        outputs, state = run_task(*args, **kwargs)
        if state == status.Status.FAILURE and _TASK.seen:
            _TASK.user_error = key
        return outputs, state

    class _Clock:
        def __getattr__(self, name):
            return getattr(clock, name)

        @staticmethod
        def sleep(seconds):
            if getattr(_TASK, "user_error", None) is None or _TASK.user_error != getattr(_TASK, "current", None):
                clock.sleep(seconds)

    task_dispatcher.run_single_task_implementation, task_executor.time = dispatch, _Clock()
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation, task_executor.time = run_task, clock


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
        # kfp runs parallel tasks in threads that all print here: a partial line is kept per thread (a
        # line's user-error mark belongs to the task that printed it), and one lock guards the file, as
        # concurrent writes through one text file object can split a multi-byte character
        self._partial: dict[int, str] = {}
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close_log()
        return False

    def close_log(self):
        with self._lock:
            if self._log.closed:
                return
            for partial in self._partial.values():
                if partial:
                    self._line(partial)
            self._partial.clear()
            self._log.close()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        thread = threading.get_ident()
        with self._lock:
            *lines, self._partial[thread] = (self._partial.get(thread, "") + text).split("\n")
            for line in lines:
                self._line(line)
        return len(text)

    def flush(self):
        with self._lock:
            if not self._log.closed:
                self._log.flush()

    def _line(self, line: str) -> None:
        plain = _strip_ansi(line)
        if not self._log.closed:
            self._log.write(plain + "\n")
        if USER_ERROR_MARK in plain:
            _TASK.seen = True
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


def _user_error(path: Path):
    """The error a stage refused the user's input with (it printed USER_ERROR_MARK), as its own type."""
    from .. import errors

    lines = _strip_ansi(path.read_text(errors="replace")).splitlines()
    for i, line in enumerate(lines):
        if USER_ERROR_MARK not in line:
            continue
        # the error line (stderr) precedes the mark (stdout); a container's log may interleave them
        for prev in [*reversed(lines[max(0, i - 50):i]), *lines[i + 1:i + 4]]:
            m = re.match(r"\s*(\w+Error): (.*)", prev)
            cls = getattr(errors, m.group(1), None) if m else None
            if isinstance(cls, type) and issubclass(cls, errors.AutoCompressError):
                failed = re.findall(r"Task '([^']+)' finished with status FAILURE", "\n".join(lines[i:]))
                stage = f"stage {failed[0]}: " if failed else ""
                return cls(f"{stage}{_user_paths(path.parent, m.group(2))} (full log: {path})")
    return None


def _user_paths(root: Path, message: str) -> str:
    """The message with every loaded artifact copy's path replaced by the user's own location (the
    load stages record it as the artifact's `source_uri`)."""
    copies = {}
    for output in root.glob("*/load-*/executor_output.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            for group in json.loads(output.read_text()).get("artifacts", {}).values():
                for artifact in group.get("artifacts", []):
                    source = (artifact.get("metadata") or {}).get("source_uri")
                    if source and artifact.get("uri"):
                        copies[artifact["uri"]] = source
    for copy in sorted(copies, key=len, reverse=True):
        message = message.replace(copy, copies[copy])
    return message


def _log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])
