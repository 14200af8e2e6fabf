"""The object-store overlay (components/object-store): MinIO, its PVC and Service, the bucket-init Job
and a NetworkPolicy render and pass kubernetes-validate --strict; every pod template is non-root with
dropped capabilities, limits and a read-only root; credentials only from the Secret (none rendered);
the policy admits pipeline pods and the KFP API only; the launcher points at this store."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from _kustomize import render

REPO = Path(__file__).resolve().parents[1]
OVERLAY = REPO / "manifests" / "overlays" / "object-store"


@pytest.fixture(scope="module")
def docs():
    return render(OVERLAY)


def _by(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pods(docs):
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "CronJob":
            yield d, spec["jobTemplate"]["spec"]["template"]
        elif "template" in spec:
            yield d, spec["template"]


def test_renders_and_validates_strictly(docs):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for doc in docs:
        kv.validate(doc, "1.30", strict=True)
    assert {"Deployment", "Service", "PersistentVolumeClaim", "Job", "NetworkPolicy"} <= {d["kind"] for d in docs}


def test_no_secret_is_rendered_and_credentials_come_from_the_secret(docs):
    assert "Secret" not in {d["kind"] for d in docs}  # the real one is created out of git; never overwritten
    for doc, pod in _pods(docs):
        for c in pod["spec"]["containers"]:
            for env in c.get("env", []):
                if any(w in env["name"] for w in ("KEY", "PASSWORD", "USER", "TOKEN")):
                    assert "value" not in env, f"{doc['metadata']['name']}: {env['name']} is a literal"


def test_every_pod_template_is_locked_down(docs):
    pods = list(_pods(docs))
    assert {d["kind"] for d, _ in pods} == {"Deployment", "Job", "CronJob"}
    for doc, pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] is True
            assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"]
            assert ":" in c["image"] and not c["image"].endswith(":latest")


def test_networkpolicy_admits_only_pipeline_pods_and_the_kfp_api(docs):
    [policy] = _by(docs, "NetworkPolicy").values()
    minio = _by(docs, "Deployment")["autocompress-minio"]
    labels = minio["spec"]["template"]["metadata"]["labels"]
    assert policy["metadata"]["namespace"] == minio["metadata"]["namespace"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9000, "protocol": "TCP"}]
    sources = rule["from"]
    assert all(s for s in sources) and not any(s == {} for s in sources)  # no allow-all peer
    exprs = [e for s in sources for e in s.get("podSelector", {}).get("matchExpressions", [])]
    assert {"key": "workflows.argoproj.io/workflow", "operator": "Exists"} in exprs  # KFP's Argo task pods
    kfp = [s for s in sources if "namespaceSelector" in s]
    assert kfp and kfp[0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kubeflow"}
    assert "ml-pipeline" in kfp[0]["podSelector"]["matchExpressions"][0]["values"]
    init = _by(docs, "Job")["autocompress-minio-bucket-init"]["spec"]["template"]["metadata"]["labels"]
    assert init["autocompress/object-store-client"] == "true"  # the init Job is admitted too
    service = _by(docs, "Service")["autocompress-minio"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_launcher_points_at_this_store(docs):
    launcher = _by(docs, "ConfigMap")["kfp-launcher"]
    provider = yaml.safe_load(launcher["data"]["providers"])["minio"]["default"]
    service = _by(docs, "Service")["autocompress-minio"]
    assert provider["endpoint"] == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert provider["credentials"]["secretRef"]["secretName"] == "autocompress-object-store"
    bucket = launcher["data"]["defaultPipelineRoot"].removeprefix("minio://").split("/")[0]
    init = _by(docs, "Job")["autocompress-minio-bucket-init"]["spec"]["template"]["spec"]["containers"][0]
    [buckets] = [e["value"] for e in init["env"] if e["name"] == "BUCKETS"]
    assert bucket in buckets.split()
