"""Kustomize bases render with `kubectl kustomize` and every object passes kubernetes-validate --strict;
no real credential is committed; pods run non-root with limits."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from _kustomize import render  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = [REPO / "manifests" / "base", REPO / "manifests" / "overlays" / "example"]
K8S_VERSION = "1.30"




@pytest.fixture(scope="module", params=TARGETS, ids=lambda p: p.relative_to(REPO).as_posix())
def rendered(request):
    return render(request.param)


def test_objects_validate_strictly(rendered):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    kinds = set()
    for doc in rendered:
        kv.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError on any unknown or wrong field
        kinds.add(doc["kind"])
    assert {"Secret", "ConfigMap", "LimitRange", "CronJob", "ServiceAccount"} <= kinds


def test_no_real_credentials(rendered):
    for doc in rendered:
        if doc["kind"] == "Secret":
            values = {**doc.get("stringData", {}), **doc.get("data", {})}
            assert values and all(v.startswith("REPLACE-WITH-") for v in values.values()), \
                "a committed Secret must hold placeholders only"


def test_pods_are_non_root_with_limits(rendered):
    for doc in rendered:
        if doc["kind"] != "CronJob":
            continue
        pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["args"][0] == "schedule"


def test_launcher_config_and_schedule(rendered):
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    launcher = by_name[("ConfigMap", "kfp-launcher")]
    assert launcher["data"]["defaultPipelineRoot"].startswith("minio://")
    providers = yaml.safe_load(launcher["data"]["providers"])
    assert providers["minio"]["default"]["credentials"]["secretRef"]["secretName"]
    run = by_name[("ConfigMap", "autocompress-recurring-runs")]
    from autocompress.config import load_run_config

    assert load_run_config(yaml.safe_load(run["data"]["config.yaml"])).combination == "ptq_hpo"


def test_cronjob_syncs_the_mounted_recurring_runs_file(rendered, tmp_path):
    """The CronJob runs `schedule --sync` on the ConfigMap's recurring-runs.yaml, mounted where the args
    say; the file (with the run configs it names, as mounted) passes the sync's checks."""
    from autocompress.kfp.gitops import load_sync_file

    by_name = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    pod = by_name[("CronJob", "autocompress-sync-recurring-runs")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["args"][:2] == ["schedule", "--sync"]
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    sync_file = Path(c["args"][2])
    [(volume, folder)] = [(n, p) for n, p in mount.items() if Path(p) == sync_file.parent]
    config_map = by_name[("ConfigMap", volumes[volume]["configMap"]["name"])]
    for key, text in config_map["data"].items():  # the ConfigMap as the pod sees it
        (tmp_path / key).write_text(text)
    spec = load_sync_file(tmp_path / sync_file.name)
    assert spec.runs and all(r.pipeline.startswith("autocompress-") for r in spec.runs)
    token = volumes["kfp-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org" and mount["kfp-token"] == "/var/run/secrets/kubeflow/pipelines"
