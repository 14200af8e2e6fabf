"""Refresh the CRD schemas kept in tests/crds/ from their published sources (see README.md).

    python tests/crds/refresh.py                       # download the pinned files from GitHub
    python tests/crds/refresh.py --git kubeflow/pipelines=~/src/pipelines ...   # or read a local clone

For each source: the CRD version's `openAPIV3Schema`, descriptions dropped and, at every object, only
the properties that some custom resource rendered from manifests/ uses (the others are listed under
`x-autocompress-trimmed`, so the test can tell a trimmed field from a typo); `--full` keeps them all.
Run it after a manifest starts using a field the kept schema lacks, or after bumping a pin below.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _crd_schema import CRDS, TRIMMED, is_custom_resource, kustomize_targets  # noqa: E402

# (repository, tag, path, license); the file holds the CRD, the kept version is the one we use
SOURCES = {
    ("kubeflow.org/v1", "PaddleJob"): (
        "kubeflow/training-operator", "v1.9.0", "manifests/base/crds/kubeflow.org_paddlejobs.yaml", "Apache-2.0"),
    ("pipelines.kubeflow.org/v2beta1", "Pipeline"): (
        "kubeflow/pipelines", "2.17.0", "manifests/kustomize/base/crds/pipelines.kubeflow.org_pipelines.yaml",
        "Apache-2.0"),
    ("pipelines.kubeflow.org/v2beta1", "PipelineVersion"): (
        "kubeflow/pipelines", "2.17.0", "manifests/kustomize/base/crds/pipelines.kubeflow.org_pipelineversions.yaml",
        "Apache-2.0"),
    ("argoproj.io/v1alpha1", "Application"): (
        "argoproj/argo-cd", "v3.5.1", "manifests/crds/application-crd.yaml", "Apache-2.0"),
}
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")


def kept_file(api_version: str, kind: str) -> Path:
    return CRDS / f"{api_version.replace('/', '_')}_{kind.lower()}.yaml"


def trim(schema: dict, used: list | None) -> dict:
    """`schema` without descriptions and, unless `used` is None, without the properties no value in
    `used` (the instances at this place) has."""
    out = {k: v for k, v in schema.items() if k != "description"}
    if "properties" in schema:
        out["properties"] = {}
        for name, sub in schema["properties"].items():
            values = None if used is None else [u[name] for u in used if isinstance(u, dict) and name in u]
            if values is None or values:
                out["properties"][name] = trim(sub, values)
        if dropped := [name for name in schema["properties"] if name not in out["properties"]]:
            out[TRIMMED] = dropped
    if isinstance(schema.get("items"), dict):
        out["items"] = trim(schema["items"], None if used is None else
                            [v for u in used if isinstance(u, list) for v in u])
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = trim(schema["additionalProperties"], None if used is None else
                                           [v for u in used if isinstance(u, dict) for v in u.values()])
    for key in _SUBSCHEMA_LISTS:
        if key in schema:
            out[key] = [trim(sub, used) for sub in schema[key]]
    return out


def read_source(repo: str, ref: str, path: str, clones: dict[str, Path]) -> bytes:
    if repo in clones:
        return subprocess.run(["git", "-C", str(clones[repo]), "show", f"{ref}:{path}"],
                              check=True, capture_output=True).stdout
    with urllib.request.urlopen(f"https://raw.githubusercontent.com/{repo}/{ref}/{path}", timeout=60) as r:
        return r.read()


def rendered_custom_resources() -> dict[tuple[str, str], list[dict]]:
    if shutil.which("kubectl") is None:
        sys.exit("refresh.py: needs kubectl (kubectl kustomize renders the manifests)")
    found: dict[tuple[str, str], list[dict]] = {}
    for folder in kustomize_targets():
        out = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True).stdout
        for doc in yaml.safe_load_all(out):
            if doc and is_custom_resource(doc):
                found.setdefault((doc["apiVersion"], doc["kind"]), []).append(doc)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--git", action="append", default=[], metavar="OWNER/NAME=DIR",
                        help="read that repository's pinned files from a local git clone")
    parser.add_argument("--full", action="store_true", help="keep every property, not only the used ones")
    args = parser.parse_args(argv)
    clones = {k: Path(v).expanduser() for k, _, v in (g.partition("=") for g in args.git)}
    resources = rendered_custom_resources()
    if missing := sorted(set(resources) - set(SOURCES)):
        sys.exit(f"refresh.py: no published CRD source listed for {missing}: add it to SOURCES")
    for (api_version, kind), (repo, ref, path, license_) in SOURCES.items():
        text = read_source(repo, ref, path, clones)
        crd = yaml.safe_load(text)
        group, version = api_version.split("/")
        assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind, (path, crd["spec"]["names"])
        [entry] = [v for v in crd["spec"]["versions"] if v["name"] == version]
        schema = trim(entry["schema"]["openAPIV3Schema"], None if args.full else resources.get((api_version, kind), []))
        kept = {"group": group, "version": version, "kind": kind, "scope": crd["spec"]["scope"],
                "source": {"repository": f"https://github.com/{repo}", "ref": ref, "path": path,
                           "git_blob": hashlib.sha1(b"blob %d\0" % len(text) + text).hexdigest(),
                           "license": license_},
                "openAPIV3Schema": schema}
        out = kept_file(api_version, kind)
        out.write_text(f"# GENERATED by tests/crds/refresh.py from {repo}@{ref}:{path} ({license_}); do not edit.\n"
                       + yaml.safe_dump(kept, sort_keys=False, width=120))
        print(f"{out.relative_to(CRDS.parents[1])}: {kind} {api_version} from {repo}@{ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
