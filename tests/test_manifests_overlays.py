"""The `gpu` and `production` overlays: GPU placement matches the pipelines' defaults (accelerator,
tolerations) and the recurring runs get the same node selector; production sizes the store
(Guaranteed QoS, bigger volume) and guards training workers with a PodDisruptionBudget."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from _kustomize import render

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = REPO / "manifests" / "overlays"


def _one(docs, kind, name=None):
    [d] = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return d


def _validate(docs):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for d in docs:
        if d["kind"] == "PaddleJob":
            d = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w"},
                 "spec": d["spec"]["paddleReplicaSpecs"]["Worker"]["template"]["spec"]}
        kv.validate(d, "1.30", strict=True)


def _ir_default(name: str) -> dict:
    ir = next(yaml.safe_load_all((REPO / "pipelines" / "compiled" / "ptq_hpo.yaml").read_text()))
    return ir["root"]["inputDefinitions"]["parameters"][name]["defaultValue"]


def test_gpu_overlay_places_training_and_recurring_runs_like_the_pipelines(tmp_path):
    pytest.importorskip("kfp")
    from autocompress.kfp.gitops import load_sync_file
    from autocompress.kfp.pipelines.common import ACCELERATOR, DEFAULT_TOLERATIONS

    docs = render(OVERLAYS / "gpu")
    _validate(docs)
    pod = _one(docs, "PaddleJob")["spec"]["paddleReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["tolerations"] == DEFAULT_TOLERATIONS == _ir_default("tolerations")
    [c] = pod["containers"]
    gpus = int(_ir_default("gpu_count"))
    assert c["resources"]["requests"][ACCELERATOR] == c["resources"]["limits"][ACCELERATOR] == str(gpus)
    runs = _one(docs, "ConfigMap", "autocompress-recurring-runs")
    for key, text in runs["data"].items():
        (tmp_path / key).write_text(text)
    spec = load_sync_file(tmp_path / "recurring-runs.yaml")  # parameters checked against the pipeline
    for run in spec.runs:
        assert run.parameters["node_selector"] == pod["nodeSelector"]
        assert run.parameters["tolerations"] == DEFAULT_TOLERATIONS and run.parameters["gpu_count"] == gpus


def test_production_overlay_sizes_the_store_and_guards_training_workers():
    docs = render(OVERLAYS / "production")
    _validate(docs)
    assert "Secret" not in {d["kind"] for d in docs}
    minio = _one(docs, "Deployment", "autocompress-minio")["spec"]["template"]["spec"]["containers"][0]
    assert minio["resources"]["requests"] == minio["resources"]["limits"]  # Guaranteed QoS
    pvc = _one(docs, "PersistentVolumeClaim", "autocompress-minio-data")["spec"]
    assert pvc["resources"]["requests"]["storage"] == "500Gi" and pvc["storageClassName"]
    job = _one(docs, "PaddleJob")
    pdb = _one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"]["training.kubeflow.org/job-name"] == job["metadata"]["name"]
    assert pdb["minAvailable"] == job["spec"]["paddleReplicaSpecs"]["Worker"]["replicas"]
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget" and "minio" in d["metadata"]["name"]]
    # the training workers use this store, with its credentials, and the NetworkPolicy admits them
    worker = job["spec"]["paddleReplicaSpecs"]["Worker"]["template"]
    env = {e["name"]: e for e in worker["spec"]["containers"][0]["env"]}
    service = _one(docs, "Service", "autocompress-minio")
    assert env["S3_ENDPOINT"]["value"] == f"http://{service['metadata']['name']}:9000"
    assert {env[k]["valueFrom"]["secretKeyRef"]["name"] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")} == \
        {"autocompress-object-store"}
    policy = _one(docs, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    admitted = [s["podSelector"]["matchLabels"] for s in policy if "matchLabels" in s.get("podSelector", {})
                and "namespaceSelector" not in s]
    assert any(m.items() <= worker["metadata"]["labels"].items() for m in admitted)
