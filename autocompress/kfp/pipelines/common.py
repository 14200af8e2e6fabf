"""What every pipeline shares: its parameters' defaults and how a task is placed on the cluster.

Object-store credentials come from a Kubernetes Secret as environment variables (KFP's
`mlpipeline-minio-artifact` by default, keys accesskey/secretkey) — never as pipeline parameters, so
they never appear in compiled YAML, run forms or logs. GPU stages request `nvidia.com/gpu`, tolerate
the GPU taint, can be pinned with a node selector and get a memory-backed /dev/shm (data loaders).
"""
from kfp import dsl
from kfp import kubernetes

DEFAULT_SECRET = "mlpipeline-minio-artifact"
SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
DEFAULT_ENDPOINT = "http://minio-service.kubeflow:9000"
# keys in sorted order: the compiler prints defaults sometimes sorted, sometimes not (stable output)
DEFAULT_TOLERATIONS = [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
ACCELERATOR = "nvidia.com/gpu"
RUN_AS = 1000  # the image's non-root user (images/Dockerfile*)
SHM_SIZE = "8Gi"



def default_config(strategy) -> str:
    """The strategy's default config as the run form shows it (JSON, keys in the declared order)."""
    import json

    return json.dumps(strategy.pipeline_config)


def common(task: dsl.PipelineTask, secret, name: str, *, cache: bool = True, retries: int = 0):
    """Every task: display name, caching, retries, non-root security context, credentials from the Secret."""
    task.set_display_name(name)
    task.set_caching_options(enable_caching=cache)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="3600s")
    kubernetes.set_security_context(task, run_as_user=RUN_AS, run_as_group=RUN_AS, run_as_non_root=True)
    kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=SECRET_KEYS)
    return task


TRIAL_CPU_LIMIT, TRIAL_MEMORY_LIMIT = "8", "32Gi"


def heavy(task: dsl.PipelineTask, *, gpu: bool, gpu_count, tolerations, node_selector, cpu_limit, memory_limit,
          in_loop: bool = False):
    """A compute stage: CPU/memory limits; on the GPU variant an accelerator, tolerations, node
    selector and a memory-backed /dev/shm. Inside a ParallelFor the limits are constants (one GPU per
    trial): the local runner cannot resolve pipeline parameters in resource fields inside a loop."""
    task.set_cpu_limit(TRIAL_CPU_LIMIT if in_loop else cpu_limit)
    task.set_memory_limit(TRIAL_MEMORY_LIMIT if in_loop else memory_limit)
    if gpu:
        task.set_accelerator_type(ACCELERATOR)
        task.set_accelerator_limit(1 if in_loop else gpu_count)
        kubernetes.add_toleration_json(task, tolerations)
        kubernetes.add_node_selector_json(task, node_selector)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=SHM_SIZE)
    return task


def light(task: dsl.PipelineTask):
    task.set_cpu_limit("2")
    task.set_memory_limit("4Gi")
    return task


def load_inputs(c, *, model_uri, config, model_filename, params_filename, data_uri, data_name, eval_data_uri,
                test_data_uri, batch_size, secret, s3_endpoint):
    """The loading tasks every pipeline starts with: model, its calibration/training data, eval data
    (selection) and test data (the final report; empty URI: none). Not cached (the URIs may point at
    new content), retried (object stores flake)."""
    model = common(light(c.load_model(model_uri=model_uri, config=config, model_filename=model_filename,
                                      params_filename=params_filename, s3_endpoint=s3_endpoint)),
                   secret, "load model", cache=False, retries=2)
    data = common(light(c.load_data(data_uri=data_uri, batch_size=batch_size, s3_endpoint=s3_endpoint)),
                  secret, f"load {data_name} data", cache=False, retries=2)
    evald = common(light(c.load_data(data_uri=eval_data_uri, batch_size=batch_size, s3_endpoint=s3_endpoint)),
                   secret, "load eval data", cache=False, retries=2)
    testd = common(light(c.load_data(data_uri=test_data_uri, batch_size=batch_size, s3_endpoint=s3_endpoint)),
                   secret, "load test data", cache=False, retries=2)
    return model, data, evald, testd


def evaluate_and_export(c, *, model, original, evald, testd, config, metric, max_drop, drop_type, device, batch_size,
                        place, secret, publish_uri, s3_endpoint):
    """Every pipeline's end: the compressed model measured next to the original (on the test split
    when there is one), then the deliverable exported."""
    ev = common(heavy(c.evaluate(model=model, baseline=original, eval_data=evald.outputs["dataset"],
                                 test_data=testd.outputs["dataset"], config=config, metric=metric, max_drop=max_drop,
                                 drop_type=drop_type, device=device, batch_size=batch_size), **place),
                secret, "evaluate")
    common(light(c.export(model=model, summary=ev.outputs["summary"], publish_uri=publish_uri,
                          s3_endpoint=s3_endpoint)), secret, "export", cache=False, retries=2)
