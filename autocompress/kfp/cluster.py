"""`autocompress submit / schedule`: upload a pipeline version and start a run, or create / replace a
recurring run, on a KFP endpoint. Host and token from arguments or KFP_HOST / KFP_TOKEN."""
from __future__ import annotations

import os
import tempfile
import time

from ..errors import ConfigError
from . import KFPError, first_line, require_kfp
from .arguments import pipeline_arguments
from .compile import compile_pipelines

HOST_ENV = ("KFP_HOST", "KF_PIPELINES_ENDPOINT")
TOKEN_ENV = ("KFP_TOKEN", "KF_PIPELINES_TOKEN")
NAMESPACE_ENV = ("KFP_NAMESPACE",)
DEFAULT_EXPERIMENT = "autocompress"


def _env(names) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


def client(host: str | None = None, token: str | None = None, namespace: str | None = None):
    """A `kfp.Client` for `host` (or $KFP_HOST), with a bearer token from `token` (or $KFP_TOKEN)."""
    kfp = require_kfp()
    host = host or _env(HOST_ENV)
    if not host:
        raise KFPError("no KFP endpoint: pass --host URL or set KFP_HOST (e.g. http://ml-pipeline-ui.kubeflow)")
    token = token or _env(TOKEN_ENV)
    try:
        return kfp.Client(host=host, existing_token=token, namespace=namespace or _env(NAMESPACE_ENV) or "kubeflow")
    except Exception as err:  # kfp raises plain exceptions for unreachable hosts
        raise KFPError(f"cannot reach the KFP endpoint {host}: {first_line(err)}; check --host / KFP_HOST and the "
                       "token (--token / KFP_TOKEN)") from None


def _upload(kfp_client, name: str, version: str | None, image_repository: str | None) -> tuple[str, str]:
    """Upload the compiled pipeline as a new version (creating the pipeline first). Returns ids."""
    from ..version import __version__

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
    from .. import storage
    from .arguments import run_config

    name, args = pipeline_arguments(config, gpu=gpu, publish_uri=publish_uri, trial_shards=trial_shards,
                                    object_store_secret=secret, extra=params)
    preflight(run_config(config), gpu, device=args.get("device"))  # before the endpoint is contacted
    for key in ("model_uri", "calib_data_uri", "train_data_uri", "eval_data_uri", "test_data_uri"):
        if args.get(key) and not (storage.is_remote(args[key]) or args[key].startswith("builtin://")):
            raise ConfigError(f"{key} is the local path {args[key]}; a cluster cannot read it. Upload it "
                              "(e.g. with `mc cp` / `aws s3 cp`) and use its s3:// or minio:// URI in the config")
    if publish_uri and not storage.is_remote(publish_uri):
        raise ConfigError(f"publish_uri {publish_uri} must be an s3:// or minio:// URI on a cluster")
    return name, args


def preflight(rc, gpu: bool, device: str | None = None) -> list[str]:
    """`autocompress run`'s pre-flight (autocompress.preflight) as far as it can run on the machine that
    submits, before the endpoint is contacted: the config (pipeline_arguments validates it), the
    device string and that the pipeline has it (an accelerator needs the GPU pipeline: not --cpu),
    the metric (a built-in, or a plugin `module:function` that resolves where it imports here),
    model / data / teacher / publish locations the cluster can read (object-store URIs, not local
    paths). Returns what it could not check here, also logged: model files, data against the model's
    feeds, node and prune names and teacher contents (the cluster's load stages check them; their
    URIs are read with the cluster's endpoint and credentials), and plugins this machine cannot import."""
    import logging

    from .. import storage
    from ..data.plugin import _SPEC_RE, load_plugin
    from ..errors import DeviceError
    from ..metrics import load_metric
    from ..paddle_env import _DEVICE_RE

    given = rc.Device if device is None else device  # `device` as the run's parameters override it
    device = str(given).strip().lower()
    match = _DEVICE_RE.match(device)
    if not match:
        raise DeviceError(f"Device {given!r} is not a device. Use one of: cpu, gpu, gpu:<id>, xpu:<id>, npu, "
                          "npu:<id>.")
    if match.group(1) != "cpu" and not gpu:
        raise DeviceError(f"Device {given!r} but the CPU pipeline (--cpu) runs on pods without accelerators; "
                          "set Device: cpu (or the run parameter device: cpu), or submit without --cpu")
    skipped = ["model files, data against the model's feeds, node / prune names and teacher contents: the "
               "cluster's load stages check them"]
    metric = str(rc.Eval.metric)
    if ":" not in metric:
        load_metric(metric)  # an unknown name: the ConfigError listing the allowed ones
    elif not _SPEC_RE.match(metric) or _importable(metric.split(":")[0]):
        load_plugin(metric, "metric")  # malformed, or importable here: resolved as the stage would
    else:
        skipped.append(f"metric plugin {metric!r}: its module does not import here; the image must provide it")
    from ..job import Job

    job = None if rc.combination == "auto" else Job.from_run_config(rc)
    for key, folder in _teacher_dirs(job):
        if folder and not storage.is_remote(folder):
            raise ConfigError(f"{key} is the local path {folder}; a cluster cannot read it. Upload the teacher "
                              "model (e.g. with `mc cp` / `aws s3 cp`) and use its s3:// or minio:// URI")
    for line in skipped:
        logging.getLogger("autocompress").info("pre-flight (submit): not checked here: %s", line)
    return skipped


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _teacher_dirs(job) -> list[tuple[str, str]]:
    if job is None:
        return []
    out = []
    single = job.configs.get("DistillationConfig")
    if single is not None and single.teacher_model_dir:
        out.append(("DistillationConfig.teacher_model_dir", single.teacher_model_dir))
    multi = job.configs.get("MultiTeacherDistillationConfig")
    if multi is not None:
        out += [(f"MultiTeacherDistillationConfig.teacher_model_dir[{i}]", d)
                for i, d in enumerate(multi.teacher_model_dir)]
    return out
