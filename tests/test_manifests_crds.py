"""The custom resources in manifests/ (PaddleJob, Pipeline, PipelineVersion, Application) pass their
published CRD schemas, kept trimmed in tests/crds/ (README.md there: sources, versions, refresh.py):
every kustomization is rendered with `kubectl kustomize`, each custom resource validated with
jsonschema; a failure names the resource and the JSON path of each violation."""
from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

import pytest
import yaml

from _crd_schema import CRDS, MANIFESTS, REPO, is_custom_resource, kept_schemas, kustomize_targets, violations, \
    to_jsonschema, validator_for
from _kustomize import render

pytest.importorskip("jsonschema", reason="pip install jsonschema (the test extra)")
TARGETS = kustomize_targets()
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
KINDS = {"PaddleJob", "Pipeline", "PipelineVersion", "Application"}


@functools.cache
def _custom_resources(folder: Path) -> tuple[dict, ...]:
    return tuple(d for d in render(folder) if is_custom_resource(d))


def _one(kind: str) -> dict:
    for folder in TARGETS:
        for doc in _custom_resources(folder):
            if doc["kind"] == kind:
                return copy.deepcopy(doc)
    raise AssertionError(f"no {kind} rendered")


def _refresh_module():
    spec = importlib.util.spec_from_file_location("crds_refresh", CRDS / "refresh.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("folder", TARGETS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_custom_resources_match_their_crd_schemas(folder):
    errors = [f"{folder.relative_to(REPO)}: {v}" for d in _custom_resources(folder) for v in violations(d)]
    assert not errors, "custom resources that their CRD schema rejects:\n" + "\n".join(errors)


def test_every_custom_resource_kind_is_rendered_and_checked():
    rendered = {(d["apiVersion"], d["kind"]) for folder in TARGETS for d in _custom_resources(folder)}
    assert {kind for _, kind in rendered} == KINDS
    assert rendered == set(kept_schemas())


def test_every_committed_custom_resource_is_in_a_rendered_folder():
    """A CR in a file that no rendered kustomization includes would escape the schema check."""
    rendered = {(d["kind"], d["metadata"]["name"]) for folder in TARGETS for d in _custom_resources(folder)}
    committed = set()
    for path in MANIFESTS.rglob("*.yaml"):
        if path.name != "kustomization.yaml":
            committed |= {(d["kind"], d["metadata"]["name"]) for d in yaml.load_all(path.read_text(), Loader=_LOADER)
                          if isinstance(d, dict) and is_custom_resource(d)}
    assert committed and committed <= rendered, sorted(committed - rendered)


def test_kept_schemas_come_from_the_pinned_sources():
    refresh = _refresh_module()
    sources, kept, readme = refresh.SOURCES, kept_schemas(), (CRDS / "README.md").read_text()
    assert set(kept) == set(sources)
    for key, (repo, ref, path, license_) in sources.items():
        source = kept[key]["source"]
        assert (source["repository"], source["ref"], source["path"], source["license"]) == \
            (f"https://github.com/{repo}", ref, path, license_), f"rerun tests/crds/refresh.py ({key})"
        assert kept[key]["path"] == refresh.kept_file(*key)
        assert f"`{ref}`" in readme, f"tests/crds/README.md does not name {repo} {ref}"


# ---- rejected: what the schemas must catch ------------------------------------------------------------

def test_wrong_field_type_is_rejected_with_resource_and_path():
    job = _one("PaddleJob")
    job["spec"]["paddleReplicaSpecs"]["Worker"]["replicas"] = "two"
    job["spec"]["paddleReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = \
        "36543"
    found = violations(job)
    name = f"PaddleJob/{job['metadata']['name']}"
    assert f"{name}: $.spec.paddleReplicaSpecs.Worker.replicas: 'two' is not of type 'integer'" in found
    assert any(v.startswith(f"{name}: $.spec.paddleReplicaSpecs.Worker.template.spec.containers[0].ports[0]"
                            ".containerPort: ") for v in found), found
    assert len(found) == 2, found


def test_missing_required_field_is_rejected():
    version = _one("PipelineVersion")
    del version["spec"]["pipelineSpec"]
    assert violations(version) == [
        f"PipelineVersion/{version['metadata']['name']}: $.spec: 'pipelineSpec' is a required property"]
    app = _one("Application")
    del app["spec"]["destination"]
    assert violations(app) == [f"Application/{app['metadata']['name']}: $.spec: 'destination' is a required property"]


def test_unknown_field_is_rejected_and_a_trimmed_one_asks_for_a_refresh():
    app = _one("Application")
    app["spec"]["syncPolicy"]["automated"]["selfheal"] = True  # typo of selfHeal
    app["spec"]["revisionHistoryLimit"] = 3  # in Argo CD's CRD, unused by our manifests
    [trimmed, typo] = violations(app)  # sorted by path
    assert typo.endswith("$.spec.syncPolicy.automated: unknown field 'selfheal' (known: prune, selfHeal)")
    assert "$.spec: field 'revisionHistoryLimit' is in the published CRD" in trimmed and "refresh.py" in trimmed


def test_pod_template_rules_from_the_crd():
    """Quantities (int-or-string with a pattern), int32 ranges and list-map keys of the pod template."""
    job = _one("PaddleJob")
    container = job["spec"]["paddleReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["memory"] = "32 gigabytes"
    container["resources"]["limits"]["cpu"] = 8  # a number is a quantity too
    container["env"].append(dict(container["env"][0]))  # the same name twice: env is a list-map keyed by name
    container["ports"].append({"name": "again", "containerPort": 36543, "protocol": "TCP"})  # protocol defaults to TCP
    del container["ports"][0]["protocol"]
    container["ports"].append({"name": "big", "containerPort": 2**31})
    found = "\n".join(violations(job))
    assert ".resources.limits.memory: '32 gigabytes' does not match" in found
    assert ".resources.limits.cpu" not in found
    assert ".ports[2].containerPort: 2147483648 is not a 'int32'" in found
    assert ".containers[0].env: duplicate entry for list-map keys ['name']" in found
    assert ".containers[0].ports: duplicate entry for list-map keys ['containerPort', 'protocol']: " \
           "{'containerPort': 36543, 'protocol': 'TCP'}" in found


def test_metadata_is_checked_as_the_api_server_does():
    pipeline = _one("Pipeline")
    pipeline["metadata"]["labels"] = {"release": 1}
    pipeline["metadata"]["name"] = "Autocompress_PTQ"
    found = violations(pipeline)
    assert "Pipeline/Autocompress_PTQ: $.metadata.name: not a DNS-1123 subdomain" in found[0]
    if importlib.util.find_spec("kubernetes_validate"):
        assert found[1].startswith("Pipeline/Autocompress_PTQ: $.metadata.labels.release: 1 is not of type")


def test_a_kind_without_a_kept_schema_is_reported():
    doc = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "x"}, "spec": {}}
    assert violations(doc) == ["PyTorchJob/x: no CRD schema kept in tests/crds/ for kubeflow.org/v1 PyTorchJob"]


def test_openapi_extensions_become_json_schema():
    schema = {"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True},
        "note": {"type": "string", "nullable": True},
        "mode": {"type": "string", "enum": ["a", "b"], "nullable": True},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "anything": {"x-kubernetes-preserve-unknown-fields": True},
        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
        "object": {"type": "object", "x-kubernetes-embedded-resource": True,
                   "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
        "size": {"type": "integer", "minimum": 0, "exclusiveMinimum": True}}}
    validator = validator_for(schema)

    def errors(instance):
        return sorted(e.message for e in validator.iter_errors(instance))

    ok = {"port": "http", "note": None, "mode": None, "free": {"x": {"y": 1}}, "anything": [1, "a"], "tags": ["a", "b"],
          "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "spec": {"k": 1}}, "size": 1}
    assert errors(ok) == [] and errors({"port": 80}) == []
    assert errors({"port": 1.5}) and errors({"note": 3}) and errors({"mode": "c"}) and errors({"size": 0})
    assert errors({"tags": ["a", "a"]}) == ["['a', 'a'] has non-unique elements"]
    assert errors({"object": {"kind": "ConfigMap", "data": {}}}) == [
        "unknown field 'data' (known: apiVersion, kind, metadata, spec)"]
    assert errors({"extra": 1}) == [
        "unknown field 'extra' (known: anything, free, mode, note, object, port, size, tags)"]
    assert "x-kubernetes-int-or-string" not in str(to_jsonschema(schema))
