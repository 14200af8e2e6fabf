"""Argo CD: the Application example points at an overlay that renders; its objects carry sync waves in
the order the cluster needs them (namespace config, store, bucket init, Pipelines, PipelineVersions,
the recurring-runs sync); and every pod template of every rendered folder is locked down."""
from __future__ import annotations

from pathlib import Path

import pytest

from _kustomize import render

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
# spec fields of argoproj.io/v1alpha1 Application (Argo CD's ApplicationSpec)
APPLICATION_SPEC_KEYS = {"source", "sources", "destination", "project", "syncPolicy", "ignoreDifferences", "info",
                         "revisionHistoryLimit", "sourceHydrator"}
SYNC_OPTIONS = {"Validate", "CreateNamespace", "PrunePropagationPolicy", "PruneLast", "ApplyOutOfSyncOnly",
                "ServerSideApply", "Replace", "RespectIgnoreDifferences", "FailOnSharedResource",
                "SkipDryRunOnMissingResource", "Prune", "Delete"}
WAVE = "argocd.argoproj.io/sync-wave"


@pytest.fixture(scope="module")
def application():
    [app] = render(MANIFESTS / "argocd")
    return app


@pytest.fixture(scope="module")
def deployed(application):
    return render(REPO / application["spec"]["source"]["path"])


def test_application_points_at_a_rendering_overlay(application, deployed):
    assert application["apiVersion"] == "argoproj.io/v1alpha1" and application["kind"] == "Application"
    spec = application["spec"]
    assert set(spec) <= APPLICATION_SPEC_KEYS
    assert {"repoURL", "path", "targetRevision"} <= set(spec["source"])
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert {o.split("=")[0] for o in spec["syncPolicy"]["syncOptions"]} <= SYNC_OPTIONS
    namespace = spec["destination"]["namespace"]
    assert deployed and all(d["metadata"].get("namespace") == namespace for d in deployed)


def test_objects_are_ordered_by_sync_waves(deployed):
    wave = {}
    for d in deployed:
        annotations = d["metadata"].get("annotations") or {}
        assert WAVE in annotations, f"{d['kind']} {d['metadata']['name']} has no sync wave"
        wave.setdefault(d["kind"], set()).add(int(annotations[WAVE]))
    one = {k: v.pop() for k, v in wave.items() if len(v) == 1}
    assert len(one) == len(wave)  # one wave per kind
    assert max(one[k] for k in ("ServiceAccount", "ConfigMap", "PersistentVolumeClaim")) < one["Deployment"]
    assert one["Deployment"] == one["Service"] == one["NetworkPolicy"] < one["Job"] < one["Pipeline"]
    assert one["Pipeline"] < one["PipelineVersion"] < one["CronJob"]
    [job] = [d for d in deployed if d["kind"] == "Job"]
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"  # reruns; a Job is immutable
    assert "Secret" not in one  # created out of git


def test_built_in_objects_validate_strictly(deployed):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for d in deployed:
        if not d["apiVersion"].startswith("pipelines.kubeflow.org/"):
            kv.validate(d, "1.30", strict=True)


RENDERED = sorted(p.parent.relative_to(MANIFESTS).as_posix() for p in MANIFESTS.glob("**/kustomization.yaml")
                  if "components" not in p.parts)


@pytest.mark.parametrize("folder", RENDERED)
def test_every_pod_template_is_non_root_capability_free_and_limited(folder):
    pods = 0
    for d in render(MANIFESTS / folder):
        spec = d.get("spec") or {}
        templates = [spec["jobTemplate"]["spec"]["template"]] if d["kind"] == "CronJob" else \
            [r["template"] for r in (spec.get("paddleReplicaSpecs") or {}).values()] or \
            ([spec["template"]] if "template" in spec else [])
        for t in templates:
            pods += 1
            where = f"{folder}: {d['kind']} {d['metadata']['name']}"
            assert t["spec"]["securityContext"]["runAsNonRoot"] is True, where
            for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
                assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"], where
                for env in c.get("env", []):
                    if any(w in env["name"] for w in ("KEY", "PASSWORD", "TOKEN", "SECRET")):
                        assert "value" not in env, f"{where}: {env['name']} is a literal"
    assert folder == "argocd" or pods, f"{folder} renders no pod"
