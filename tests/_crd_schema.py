"""Validate custom resources against the published CRD schemas kept in tests/crds/ (see its README).

A kept schema is a CRD version's `openAPIV3Schema` with descriptions dropped and, at every object,
only the properties our manifests use; the others are named in `x-autocompress-trimmed`. `to_jsonschema`
turns that OpenAPI v3 structural schema into JSON Schema (2020-12) the way the API server reads it:
`nullable`, `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
`x-kubernetes-embedded-resource`, `x-kubernetes-list-type` (set, map + `x-kubernetes-list-map-keys`),
int32/int64 formats; unknown fields are errors (as `kubectl apply --validate=strict`), a trimmed one
says to refresh the kept schemas. CEL rules (`x-kubernetes-validations`) are not evaluated.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

K8S_VERSION = "1.30"  # ObjectMeta (kubernetes-validate), as tests/test_manifests.py
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
CRDS = Path(__file__).resolve().parent / "crds"
TRIMMED = "x-autocompress-trimmed"
_OPENAPI_ONLY = {"nullable", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
                 "x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-map-type",
                 "x-kubernetes-validations", TRIMMED, "description", "example", "externalDocs"}
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_OBJECT_META = {"type": "object"}  # a resource's ObjectMeta: the API server's own rules, not the CRD's
_INT_RANGE = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}


def kustomize_targets() -> list[Path]:
    """Every folder under manifests/ that `kubectl kustomize` builds on its own (components are built
    through the overlays that use them)."""
    targets = []
    for k in sorted(MANIFESTS.rglob("kustomization.yaml")):
        if (yaml.safe_load(k.read_text()) or {}).get("kind", "Kustomization") == "Kustomization":
            targets.append(k.parent)
    return targets


def api_group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def is_custom_resource(doc: dict) -> bool:
    """Built-in kinds are in the core group, a dotless group (apps, batch, policy, ...) or *.k8s.io."""
    group = api_group(doc.get("apiVersion", ""))
    return "." in group and not group.endswith(".k8s.io")


@functools.cache
def kept_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the kept file (`group`, `version`, `kind`, `source`, `openAPIV3Schema`)."""
    kept = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        kept[(f"{crd['group']}/{crd['version']}", crd["kind"])] = crd | {"path": path}
    return kept


def to_jsonschema(node: dict) -> dict:
    """One OpenAPI v3 structural schema node (and its children) as JSON Schema 2020-12."""
    out = {k: v for k, v in node.items() if k not in _OPENAPI_ONLY}
    if "properties" in out:
        out["properties"] = {name: to_jsonschema(sub) for name, sub in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = to_jsonschema(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(out["additionalProperties"])
    for key in _SUBSCHEMA_LISTS:
        if key in out:
            out[key] = [to_jsonschema(sub) for sub in out[key]]
    if "not" in out:
        out["not"] = to_jsonschema(out["not"])
    for bound in ("Minimum", "Maximum"):  # OpenAPI 3.0 booleans -> JSON Schema numbers
        if out.get(f"exclusive{bound}") is True:
            out[f"exclusive{bound}"] = out.pop(bound.lower())
        elif out.get(f"exclusive{bound}") is False:
            del out[f"exclusive{bound}"]
    if node.get("x-kubernetes-int-or-string") and not any(k in out for k in _SUBSCHEMA_LISTS):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if node.get("x-kubernetes-embedded-resource"):
        out.setdefault("properties", {})
        for name in ("apiVersion", "kind"):
            out["properties"].setdefault(name, {"type": "string"})
        out["properties"]["metadata"] = _OBJECT_META
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out and not preserve:
        # structural: a field outside `properties` is pruned by the API server, rejected by strict apply
        out["x-unknown-fields"] = {"known": sorted(out.get("properties", {})), "trimmed": node.get(TRIMMED, [])}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def _unknown_fields(validator, spec, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    from jsonschema import ValidationError

    for name in sorted(set(instance) - set(spec["known"])):
        if name in spec["trimmed"]:
            yield ValidationError(f"field {name!r} is in the published CRD but not in the schema kept in "
                                  f"tests/crds/: run tests/crds/refresh.py")
        else:
            yield ValidationError(f"unknown field {name!r} (known: {', '.join(spec['known']) or 'none'})")


def _list_map_keys(validator, keys, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    from jsonschema import ValidationError

    defaults = {k: sub.get("default") for k, sub in schema.get("items", {}).get("properties", {}).items()}
    seen = set()
    for item in instance:
        if isinstance(item, dict):  # a missing key counts as its default (a port's protocol: TCP)
            key = tuple(item.get(k, defaults.get(k)) for k in keys)
            if repr(key) in seen:
                yield ValidationError(f"duplicate entry for list-map keys {keys}: {dict(zip(keys, key))}")
            seen.add(repr(key))


def validator_for(openapi_schema: dict):
    import jsonschema

    checker = jsonschema.FormatChecker([])
    for fmt, (low, high) in _INT_RANGE.items():
        checker.checks(fmt)(lambda v, low=low, high=high: not isinstance(v, int) or low <= v <= high)
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, {
        "x-unknown-fields": _unknown_fields, "x-kubernetes-list-map-keys": _list_map_keys})
    schema = to_jsonschema(openapi_schema)
    schema["properties"]["metadata"] = _OBJECT_META
    return cls(schema, format_checker=checker)


_VALIDATORS: dict[Path, object] = {}


def violations(doc: dict, kept: dict | None = None) -> list[str]:
    """`Kind/name: $.json.path: message` for each way `doc` breaks its CRD's kept schema, or its
    metadata the API server's ObjectMeta rules (kubernetes-validate, when installed)."""
    kept = kept_schemas() if kept is None else kept
    meta = doc.get("metadata") or {}
    name = f"{doc.get('kind')}/{meta.get('name')}"
    crd = kept.get((doc.get("apiVersion"), doc.get("kind")))
    if crd is None:
        return [f"{name}: no CRD schema kept in tests/crds/ for {doc.get('apiVersion')} {doc.get('kind')}"]
    if crd["path"] not in _VALIDATORS:
        _VALIDATORS[crd["path"]] = validator_for(crd["openAPIV3Schema"])
    errors = sorted(_VALIDATORS[crd["path"]].iter_errors(doc), key=lambda e: list(e.absolute_path))
    found = [f"{name}: {e.json_path}: {e.message}" for e in errors]
    if not (isinstance(meta.get("name"), str) and len(meta["name"]) <= 253 and DNS1123_SUBDOMAIN.match(meta["name"])):
        found.append(f"{name}: $.metadata.name: not a DNS-1123 subdomain (what the API server requires of a CR name)")
    try:
        import kubernetes_validate as kv
    except ImportError:
        return found
    try:  # ObjectMeta is not in the CRD schema; the API server checks it for every kind
        kv.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}, K8S_VERSION, strict=True)
    except kv.ValidationError as e:
        found.append(f"{name}: {e.json_path}: {e.message}")
    return found
