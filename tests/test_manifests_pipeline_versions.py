"""`autocompress compile --k8s`: the committed Pipeline / PipelineVersion resources (KFP's Kubernetes-native
API mode) are current, one version per release, named as KFP requires, the same IR as pipelines/compiled/,
and render with kustomize into an overlay whose built-in objects pass kubernetes-validate --strict."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from _kustomize import render

pytest.importorskip("kfp")
from autocompress.kfp.compile import DEFAULT_K8S_DIR, render_k8s, stale_k8s_files  # noqa: E402
from autocompress.version import __version__  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / DEFAULT_K8S_DIR
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# the fields of the published v2beta1 CRDs' specs (pipelines.kubeflow.org_pipelines / _pipelineversions)
PIPELINE_SPEC_FIELDS = {"displayName", "description"}
VERSION_SPEC_FIELDS = {"codeSourceURL", "description", "displayName", "pipelineName", "pipelineSpec",
                       "pipelineSpecURI", "platformSpec"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_committed_pipeline_versions_are_current():
    stale = stale_k8s_files(K8S_DIR)
    assert not stale, f"regenerate with `autocompress compile --k8s`: {stale}"


def test_one_version_per_release_named_as_kfp_requires():
    pipelines = {d["metadata"]["name"]: d for d in _docs(K8S_DIR / "pipelines.yaml")}
    versions = [d for p in sorted((K8S_DIR / __version__).glob("*.yaml")) for d in _docs(p)]
    assert versions and len(versions) == len(pipelines)
    for pv in versions:
        assert pv["apiVersion"] == "pipelines.kubeflow.org/v2beta1" and pv["kind"] == "PipelineVersion"
        spec = pv["spec"]
        assert set(spec) <= VERSION_SPEC_FIELDS and "pipelineSpec" in spec
        info_name = spec["pipelineSpec"]["pipelineInfo"]["name"]
        # KFP: the IR's pipelineInfo.name is the Pipeline's metadata.name, which spec.pipelineName names
        assert spec["pipelineName"] == info_name and info_name in pipelines
        assert spec["displayName"] == __version__ == pv["metadata"]["labels"]["app.kubernetes.io/version"]
        name = pv["metadata"]["name"]
        assert DNS1123.match(name) and len(name) <= 63 and name.endswith("-v" + __version__.replace(".", "-"))
        # the same IR (and platform spec) as the committed pipelines/compiled/<name>.yaml
        ir = _docs(REPO / "pipelines" / "compiled" / f"{pv['metadata']['labels']['autocompress/pipeline']}.yaml")
        assert spec["pipelineSpec"] == ir[0]
        assert spec.get("platformSpec") == (ir[1] if len(ir) > 1 else None)
    for name, p in pipelines.items():
        assert p["kind"] == "Pipeline" and set(p["spec"]) <= PIPELINE_SPEC_FIELDS and DNS1123.match(name)


def test_earlier_releases_stay_listed(tmp_path):
    old = tmp_path / "0.0.9"
    old.mkdir()
    shutil.copy(K8S_DIR / __version__ / "ptq_hpo.yaml", old / "ptq_hpo.yaml")
    files = render_k8s(tmp_path)
    resources = yaml.safe_load(files["kustomization.yaml"])["resources"]
    assert resources[:2] == ["pipelines.yaml", "0.0.9/ptq_hpo.yaml"] and f"{__version__}/ptq_hpo.yaml" in resources


def test_kubernetes_native_overlay_renders_and_validates():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    docs = render(REPO / "manifests" / "overlays" / "kubernetes-native")
    custom = [d for d in docs if d["apiVersion"].startswith("pipelines.kubeflow.org/")]
    assert {d["kind"] for d in custom} == {"Pipeline", "PipelineVersion"}
    assert all(d["metadata"]["namespace"] == "kubeflow" for d in custom)
    for doc in docs:
        if doc not in custom:
            kv.validate(doc, "1.30", strict=True)


def test_compile_k8s_command_writes_the_component(tmp_path, capsys):
    from autocompress.cli import main

    assert main(["compile", "--k8s", "--k8s-dir", str(tmp_path)]) == 0
    assert str(tmp_path / __version__ / "ptq_hpo.yaml") in capsys.readouterr().out
    assert not stale_k8s_files(tmp_path)
