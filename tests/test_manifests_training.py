"""The training job (manifests/training-job, a Training Operator PaddleJob) renders with `kubectl kustomize`;
its core objects and its pod template pass kubernetes-validate --strict; the PaddleJob (a CRD, no schema
there) is checked field by field: workers, GPUs, security context, credentials from the Secret, the
launch command that autocompress/train/fleet.py expects, and the image = GPU_IMAGE."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from autocompress.kfp.image import GPU_IMAGE, IMAGE_REPOSITORY

from _kustomize import render  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "manifests" / "training-job"
OVERLAY = REPO / "manifests" / "overlays" / "training-example"
K8S_VERSION = "1.30"
SECRET = "mlpipeline-minio-artifact"
# spec fields of kubeflow.org/v1 PaddleJob (training-operator's PaddleJobSpec / ReplicaSpec / RunPolicy)
PADDLEJOB_SPEC_KEYS = {"runPolicy", "elasticPolicy", "paddleReplicaSpecs"}
REPLICA_KEYS = {"replicas", "template", "restartPolicy"}
RUN_POLICY_KEYS = {"cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit",
                   "schedulingPolicy", "suspend", "managedBy"}




@pytest.fixture(scope="module", params=[BASE, OVERLAY], ids=lambda p: p.relative_to(REPO).as_posix())
def rendered(request):
    return request.param, render(request.param)


def _paddlejob(docs) -> dict:
    jobs = [d for d in docs if d["kind"] == "PaddleJob"]
    assert len(jobs) == 1
    assert jobs[0]["apiVersion"] == "kubeflow.org/v1"
    return jobs[0]


def _worker(docs) -> dict:
    return _paddlejob(docs)["spec"]["paddleReplicaSpecs"]["Worker"]


def test_core_objects_and_pod_template_validate_strictly(rendered):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    _, docs = rendered
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["apiVersion"] == "kubeflow.org/v1":
            continue  # a CRD: its pod templates are validated below, the rest structurally
        kv.validate(doc, K8S_VERSION, strict=True)
    assert kinds == {"ConfigMap", "PersistentVolumeClaim", "PaddleJob"}
    job = _paddlejob(docs)
    for rtype, spec in job["spec"]["paddleReplicaSpecs"].items():
        template = {"apiVersion": "v1", "kind": "PodTemplate",
                    "metadata": {"name": f"{job['metadata']['name']}-{rtype.lower()}"}, "template": spec["template"]}
        kv.validate(template, K8S_VERSION, strict=True)


def test_paddlejob_shape(rendered):
    _, docs = rendered
    job = _paddlejob(docs)
    assert set(job["spec"]) <= PADDLEJOB_SPEC_KEYS
    assert set(job["spec"].get("runPolicy", {})) <= RUN_POLICY_KEYS
    # collective mode: Worker replicas only (a Master replica would switch the operator to PS mode)
    assert set(job["spec"]["paddleReplicaSpecs"]) == {"Worker"}
    worker = _worker(docs)
    assert set(worker) <= REPLICA_KEYS
    assert isinstance(worker["replicas"], int) and worker["replicas"] >= 2
    assert worker["restartPolicy"] in {"Always", "OnFailure", "Never", "ExitCode"}
    pod = worker["template"]["spec"]
    # the operator finds the rendezvous port by container name "paddle" and port name "master"
    (container,) = pod["containers"]
    assert container["name"] == "paddle"
    assert any(p["name"] == "master" for p in container["ports"])


def test_gpus_resources_and_shm(rendered):
    _, docs = rendered
    pod = _worker(docs)["template"]["spec"]
    (container,) = pod["containers"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["cpu"] and limits["memory"] and requests["cpu"] and requests["memory"]
    # one GPU per worker: the engine puts Device "gpu" on gpu:0 in every process (see paddlejob.yaml)
    assert str(limits["nvidia.com/gpu"]) == "1" and str(requests["nvidia.com/gpu"]) == "1"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/config"]]["configMap"]["name"] == "autocompress-training-config"
    claim = volumes[mounts["/output"]]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in {(d["kind"], d["metadata"]["name"]) for d in docs}


def test_non_root_security_context(rendered):
    _, docs = rendered
    pod = _worker(docs)["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert not sc.get("privileged", False)


def test_credentials_only_from_the_secret(rendered):
    _, docs = rendered
    (container,) = _worker(docs)["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("AWS_ACCESS_KEY_ID", "accesskey"), ("AWS_SECRET_ACCESS_KEY", "secretkey")):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": key}
    assert not any(d["kind"] == "Secret" for d in docs)
    text = yaml.safe_dump_all(docs)
    # nothing that looks like a literal credential anywhere (config, env, args)
    assert not re.search(r"(?i)(secret[_-]?key|access[_-]?key|password|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}", text)
    assert "AKIA" not in text


def test_command_matches_fleet_launch(rendered):
    """The operator sets PADDLE_MASTER / PADDLE_NNODES per pod; paddle.distributed.launch inside the pod
    starts the process and sets PADDLE_TRAINERS_NUM, which autocompress/train/fleet.py reads."""
    _, docs = rendered
    (container,) = _worker(docs)["template"]["spec"]["containers"]
    argv = container["command"] + container["args"]
    assert argv[:3] == ["python", "-m", "paddle.distributed.launch"]
    assert "--nproc_per_node=1" in argv
    entry = argv.index("autocompress")
    assert argv[entry + 1:entry + 4] == ["run", "/config/config.yaml", "--in-process"]
    # one save dir shared by all ranks (rank 0 writes; resume works for every rank)
    assert argv[argv.index("--save-dir") + 1] == "/output/autocompress-distill"
    # the CLI accepts these arguments
    from autocompress.cli import build_parser

    args = build_parser().parse_args(argv[entry + 1:])
    assert args.in_process and args.config == "/config/config.yaml"
    import inspect

    from autocompress.train import fleet

    assert "PADDLE_TRAINERS_NUM" in inspect.getsource(fleet.launched_world_size)


def test_run_config_uses_fleet(rendered):
    from autocompress import strategies
    from autocompress.config import load_run_config

    _, docs = rendered
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "autocompress-training-config")
    rc = load_run_config(yaml.safe_load(cm["data"]["config.yaml"]))
    assert strategies.get(rc.combination).trains and "DistillationConfig" in rc.strategy
    assert rc.train.use_fleet is True
    assert rc.Device == "gpu"


def test_image_is_the_gpu_image(rendered):
    path, docs = rendered
    (container,) = _worker(docs)["template"]["spec"]["containers"]
    if path == BASE:
        assert container["image"] == GPU_IMAGE
    else:  # the overlay moves the repository, never the tag
        repo, tag = container["image"].rsplit(":", 1)
        assert repo != IMAGE_REPOSITORY and tag == GPU_IMAGE.rsplit(":", 1)[1]


def test_source_manifest_names_gpu_image():
    """Also without kubectl: the committed YAML names GPU_IMAGE (bump it with the package version)."""
    docs = list(yaml.safe_load_all((BASE / "paddlejob.yaml").read_text(encoding="utf-8")))
    (container,) = docs[0]["spec"]["paddleReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert container["image"] == GPU_IMAGE
