"""`autocompress schedule --sync recurring-runs.yaml`: reconcile KFP's recurring runs to a file in git.

The file lists the recurring runs (name, pipeline, version or `latest`, cron, parameters or a run
config, enabled). The sync reads everything first (experiment, pipelines, versions, existing recurring
runs; every check before the first write), computes a plan (`plan`, pure), prints it, and applies it
through the KFP v2beta1 REST API (`KFPRest`, stdlib HTTP; the paths kfp.Client's kfp_server_api calls).

Ownership: a run is ours when its display name starts with the file's `prefix` (default `gitops-`) and
its description carries `MARKER`; every other run in the namespace is left alone (a desired name that
collides with an unmanaged run is an error). The description also carries a fingerprint of the
desired definition (pipeline version id, cron, parameters, experiment, concurrency), so a changed
entry, or a new version under `version: latest`, is seen as changed.

KFP cannot update a recurring run in place (kubeflow/pipelines#3789): a changed run is replaced by
creating the new one first, then deleting the old one. Guarantees on an API error halfway: nothing is
written before every read and check passed; each step is one API call; the sync stops at the first
failed call and says which steps were applied; no desired run is ever missing (create before delete:
at worst old and new definitions both exist until the next sync); a rerun converges, since the plan is
computed from what the API reports, and duplicates left by an interrupted replace are deleted.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from . import KFPError

MARKER = "managed-by=autocompress-gitops"
DEFAULT_PREFIX = "gitops-"
DEFAULT_EXPERIMENT = "autocompress"
REMOVAL = ("disable", "delete")
# where multi-user KFP's clients read a projected ServiceAccount token (audience pipelines.kubeflow.org)
TOKEN_FILE = "/var/run/secrets/kubeflow/pipelines/token"
_RUN_KEYS = {"name", "pipeline", "version", "cron", "parameters", "config", "gpu", "enabled", "max_concurrency",
             "description", "service_account"}
_FILE_KEYS = {"namespace", "experiment", "prefix", "removed", "runs"}


# ------------------------------------------------------------------------------------------------ file
@dataclass
class DesiredRun:
    name: str                      # as in the file; the KFP display name is prefix + name
    pipeline: str                  # KFP pipeline display name (our `ptq_hpo` -> `autocompress-ptq-hpo`)
    version: str                   # a version's display name (or resource name), or "latest"
    cron: str                      # KFP's 6-field cron (seconds first)
    parameters: dict = field(default_factory=dict)
    enabled: bool = True
    max_concurrency: int = 1
    description: str = ""
    service_account: str = ""


@dataclass
class SyncFile:
    runs: list[DesiredRun]
    namespace: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    prefix: str = DEFAULT_PREFIX
    removed: str = "disable"


def kfp_pipeline_name(pipeline: str) -> str:
    """Our pipeline names (`ptq_hpo`, `distill_cpu`) as the display name `submit` uploads them under and
    the generated Pipeline resources use; any other name is taken as a KFP pipeline's display name."""
    from . import pipelines_module

    try:
        ours = pipeline in pipelines_module().names()
    except Exception:  # kfp missing: names are still usable as display names
        ours = False
    return f"autocompress-{pipeline.replace('_', '-')}" if ours else pipeline


def normalise_cron(cron: str, where: str) -> str:
    fields = str(cron).split()
    if len(fields) not in (5, 6):
        raise ConfigError(f"{where}: cron {cron!r} needs 5 or 6 fields (KFP: seconds minutes hours day month "
                          "weekday; a 5-field one gets seconds 0)")
    return " ".join(["0", *fields] if len(fields) == 5 else fields)


def load_sync_file(path: str | os.PathLike) -> SyncFile:
    """Parse and check recurring-runs.yaml (every entry, before anything talks to KFP)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (the recurring-runs file to sync)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_sync_file(doc, where=str(path), base_dir=path.parent)


def parse_sync_file(doc: Any, where: str = "recurring-runs.yaml", base_dir: Path | None = None) -> SyncFile:
    if not isinstance(doc, dict) or not isinstance(doc.get("runs", []), list):
        raise ConfigError(f"{where}: expected a mapping with a `runs:` list")
    unknown = sorted(set(doc) - _FILE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(_FILE_KEYS)}")
    removed = doc.get("removed", "disable")
    if removed not in REMOVAL:
        raise ConfigError(f"{where}: removed: {removed!r} must be one of {list(REMOVAL)}")
    prefix = str(doc.get("prefix", DEFAULT_PREFIX))
    if not prefix:
        raise ConfigError(f"{where}: prefix must not be empty (it tells our recurring runs from others)")
    runs, seen = [], set()
    for i, entry in enumerate(doc.get("runs") or []):
        here = f"{where}: runs[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{here}: expected a mapping")
        unknown = sorted(set(entry) - _RUN_KEYS)
        if unknown:
            raise ConfigError(f"{here}: unknown keys {unknown}; known: {sorted(_RUN_KEYS)}")
        name = entry.get("name")
        if not name or not isinstance(name, str):
            raise ConfigError(f"{here}: `name` is required")
        here = f"{where}: runs[{i}] ({name})"
        if name in seen:
            raise ConfigError(f"{here}: the name is used twice")
        seen.add(name)
        if "cron" not in entry:
            raise ConfigError(f"{here}: `cron` is required")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{here}: parameters must be a mapping of pipeline parameter -> value")
        pipeline = entry.get("pipeline")
        if "config" in entry:
            pipeline, params = _from_run_config(entry, params, base_dir, here)
        if not pipeline:
            raise ConfigError(f"{here}: `pipeline` is required (or a `config` run config to derive it from)")
        runs.append(DesiredRun(
            name=name, pipeline=kfp_pipeline_name(str(pipeline)), version=str(entry.get("version", "latest")),
            cron=normalise_cron(entry["cron"], here), parameters=params, enabled=bool(entry.get("enabled", True)),
            max_concurrency=int(entry.get("max_concurrency", 1)), description=str(entry.get("description", "")),
            service_account=str(entry.get("service_account", ""))))
    return SyncFile(runs=runs, namespace=doc.get("namespace"), experiment=str(doc.get("experiment",
                    DEFAULT_EXPERIMENT)), prefix=prefix, removed=removed)


def _from_run_config(entry: dict, params: dict, base_dir: Path | None, here: str) -> tuple[str, dict]:
    """`config:` (a run config mapping, or a file next to the sync file) -> pipeline name + arguments,
    validated as `autocompress schedule CONFIG` does; `parameters:` add to / override them."""
    from .cluster import _cluster_args

    config = entry["config"]
    if isinstance(config, str):
        config = (base_dir or Path.cwd()) / config
        if not config.is_file():
            raise ConfigError(f"{here}: config file {config} does not exist")
    try:
        name, args = _cluster_args(config, bool(entry.get("gpu", True)), None, None, None, params)
    except ConfigError as err:
        raise ConfigError(f"{here}: {err}") from None
    if entry.get("pipeline") and entry["pipeline"] not in (name, kfp_pipeline_name(name)):
        raise ConfigError(f"{here}: pipeline {entry['pipeline']!r} but the run config is for {name!r}")
    return name, args


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class Resolved:
    """A desired run with the ids the API gave for its experiment, pipeline and version."""
    run: DesiredRun
    display_name: str
    experiment_id: str | None      # None: the experiment is created first
    pipeline_id: str
    version_id: str
    fingerprint: str = ""

    def __post_init__(self):
        if not self.fingerprint:
            self.fingerprint = fingerprint(self)


def fingerprint(r: Resolved) -> str:
    body = {"pipeline_id": r.pipeline_id, "version_id": r.version_id, "cron": r.run.cron,
            "parameters": r.run.parameters, "experiment_id": r.experiment_id or "", "max_concurrency":
            r.run.max_concurrency, "service_account": r.run.service_account}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _description(r: Resolved) -> str:
    return f"{MARKER} spec={r.fingerprint}" + (f"\n{r.run.description}" if r.run.description else "")


def _spec_of(observed: dict) -> str | None:
    for word in (observed.get("description") or "").split():
        if word.startswith("spec="):
            return word[5:]
    return None


def is_managed(observed: dict, prefix: str) -> bool:
    return (observed.get("display_name") or "").startswith(prefix) and MARKER in (observed.get("description") or "")


def _enabled(observed: dict) -> bool:
    return (observed.get("mode") or "ENABLE") == "ENABLE"


@dataclass
class Action:
    kind: str                      # create | replace | enable | disable | delete | keep
    name: str                      # display name
    reason: str = ""
    desired: Resolved | None = None
    run_ids: list[str] = field(default_factory=list)   # the existing runs this action deletes/toggles

    def __str__(self):
        ids = f" [{', '.join(self.run_ids)}]" if self.run_ids else ""
        return f"{self.kind:<8} {self.name}{ids}" + (f": {self.reason}" if self.reason else "")


@dataclass
class Plan:
    actions: list[Action]
    unmanaged: list[str]           # display names left alone
    create_experiment: str | None = None

    @property
    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.kind != "keep"]

    def lines(self) -> list[str]:
        out = [f"create   experiment {self.create_experiment}"] if self.create_experiment else []
        out += [str(a) for a in self.actions]
        if self.unmanaged:
            out.append(f"unmanaged (left alone): {', '.join(sorted(self.unmanaged))}")
        n = len(self.changes) + bool(self.create_experiment)
        out.append(f"{n} change(s)" if n else "in sync: nothing to change")
        return out


def plan(desired: list[Resolved], observed: list[dict], *, prefix: str = DEFAULT_PREFIX, removed: str = "disable",
         create_experiment: str | None = None) -> Plan:
    """What to do so that the observed recurring runs match `desired` (pure: no I/O).

    Order: creates, replaces (create new, then delete old), enable/disable, then removals."""
    managed = [o for o in observed if is_managed(o, prefix)]
    unmanaged = [o for o in observed if not is_managed(o, prefix)]
    clash = sorted({o["display_name"] for o in unmanaged} & {d.display_name for d in desired})
    if clash:
        raise ConfigError(f"recurring runs {clash} exist but are not managed by the sync (no {MARKER!r} in their "
                          "description): rename the entries in the file, or delete those runs once by hand")
    by_name: dict[str, list[dict]] = {}
    for o in managed:
        by_name.setdefault(o["display_name"], []).append(o)
    creates, replaces, toggles, removals, keeps = [], [], [], [], []
    for d in desired:
        have = by_name.pop(d.display_name, [])
        same = [o for o in have if _spec_of(o) == d.fingerprint]
        if not have:
            creates.append(Action("create", d.display_name, "new", desired=d))
        elif not same:
            replaces.append(Action("replace", d.display_name, "definition changed (KFP cannot update in place: "
                                   "create new, delete old)", desired=d,
                                   run_ids=[o["recurring_run_id"] for o in have]))
        else:
            keep, extra = same[0], [o for o in have if o is not same[0]]
            if extra:  # an interrupted replace left the old definition (or a duplicate) behind
                removals.append(Action("delete", d.display_name, "stale duplicate",
                                       run_ids=[o["recurring_run_id"] for o in extra]))
            if _enabled(keep) != d.run.enabled:
                toggles.append(Action("enable" if d.run.enabled else "disable", d.display_name,
                                      "enabled: " + str(d.run.enabled).lower(), run_ids=[keep["recurring_run_id"]]))
            elif not extra:
                keeps.append(Action("keep", d.display_name, run_ids=[keep["recurring_run_id"]]))
    for display, runs in sorted(by_name.items()):  # ours, no longer in the file
        if removed == "delete":
            removals.append(Action("delete", display, "removed from the file",
                                   run_ids=[o["recurring_run_id"] for o in runs]))
        else:
            on = [o["recurring_run_id"] for o in runs if _enabled(o)]
            if on:
                removals.append(Action("disable", display, "removed from the file", run_ids=on))
            else:
                keeps.append(Action("keep", display, "removed from the file, already disabled",
                                    run_ids=[o["recurring_run_id"] for o in runs]))
    return Plan(creates + replaces + toggles + removals + keeps, [o["display_name"] for o in unmanaged],
                create_experiment)


# ------------------------------------------------------------------------------------------------ REST
class KFPRest:
    """The KFP v2beta1 REST endpoints the sync uses (stdlib only; bearer token if given)."""

    def __init__(self, host: str, token: str | None = None, namespace: str | None = None, timeout: float = 30,
                 retries: int = 3, backoff: float = 1.0):
        self.host, self.token, self.namespace = host.rstrip("/"), token, namespace
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def call(self, method: str, path: str, query: dict | None = None, body: dict | None = None) -> dict:
        query = {k: v for k, v in (query or {}).items() if v not in (None, "")}
        url = f"{self.host}/apis/v2beta1{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        # transient faults are retried, except for a create (POST without ':'), which is not idempotent
        idempotent = method != "POST" or ":" in path.rsplit("/", 1)[-1]
        for attempt in range(self.retries if idempotent else 1):
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers),
                                            timeout=self.timeout) as resp:
                    raw = resp.read()
                return json.loads(raw) if raw.strip() else {}
            except urllib.error.HTTPError as err:
                message = _error_message(err)
                if err.code in (502, 503, 504) and attempt + 1 < self.retries and idempotent:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                hint = " (check --token / KFP_TOKEN)" if err.code in (401, 403) else ""
                raise KFPError(f"{method} {path}: HTTP {err.code}: {message}{hint}") from None
            except (urllib.error.URLError, OSError) as err:
                if attempt + 1 < self.retries and idempotent:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                reason = getattr(err, "reason", err)
                raise KFPError(f"{method} {url}: cannot reach the KFP API ({reason}); check --host / KFP_HOST") from None
        raise AssertionError("unreachable")

    def list_all(self, path: str, key: str, query: dict | None = None) -> list[dict]:
        items, token = [], ""
        while True:
            page = self.call("GET", path, {**(query or {}), "page_size": 100, "page_token": token})
            camel = key.split("_")[0] + "".join(w.title() for w in key.split("_")[1:])
            items += page.get(key) or page.get(camel) or []
            token = page.get("next_page_token") or ""
            if not token:
                return items

    # the calls
    def experiments(self) -> list[dict]:
        return self.list_all("/experiments", "experiments", {"namespace": self.namespace})

    def create_experiment(self, name: str) -> dict:
        return self.call("POST", "/experiments", body={"display_name": name, "namespace": self.namespace or ""})

    def pipelines(self) -> list[dict]:
        return self.list_all("/pipelines", "pipelines", {"namespace": self.namespace})

    def versions(self, pipeline_id: str) -> list[dict]:
        return self.list_all(f"/pipelines/{pipeline_id}/versions", "pipeline_versions", {"sort_by": "created_at desc"})

    def recurring_runs(self) -> list[dict]:
        return self.list_all("/recurringruns", "recurring_runs", {"namespace": self.namespace})

    def create_recurring_run(self, body: dict) -> dict:
        return self.call("POST", "/recurringruns", body=body)

    def delete_recurring_run(self, run_id: str) -> None:
        self.call("DELETE", f"/recurringruns/{run_id}")

    def set_enabled(self, run_id: str, enabled: bool) -> None:
        self.call("POST", f"/recurringruns/{run_id}:{'enable' if enabled else 'disable'}")


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read() or b"{}")
        return str(body.get("message") or body.get("error") or body)[:500]
    except (ValueError, OSError):
        return err.reason or "no message"


# ------------------------------------------------------------------------------------------------ sync
def resolve(api: KFPRest, spec: SyncFile) -> tuple[list[Resolved], str | None, bool]:
    """Read the experiment, pipelines and versions; raise (nothing written) when one is missing.
    Returns (resolved runs, experiment id or None, whether the experiment must be created)."""
    exp = [e for e in api.experiments() if e.get("display_name") == spec.experiment]
    experiment_id = exp[0]["experiment_id"] if exp else None
    pipelines = api.pipelines()
    resolved, versions_cache, problems = [], {}, []
    for run in spec.runs:
        match = [p for p in pipelines if run.pipeline in (p.get("display_name"), p.get("name"))]
        if not match:
            problems.append(f"{run.name}: no pipeline {run.pipeline!r} in KFP (register it: `kubectl apply -k "
                            "manifests/components/pipeline-versions` or `autocompress submit`)")
            continue
        pid = match[0]["pipeline_id"]
        if pid not in versions_cache:
            versions_cache[pid] = sorted(api.versions(pid), key=lambda v: v.get("created_at") or "", reverse=True)
        versions = versions_cache[pid]
        if run.version == "latest":
            chosen = versions[:1]
        else:
            chosen = [v for v in versions if run.version in (v.get("display_name"), v.get("name"))]
        if not chosen:
            have = [v.get("display_name") for v in versions]
            problems.append(f"{run.name}: pipeline {run.pipeline!r} has no version {run.version!r} (it has {have})")
            continue
        resolved.append(Resolved(run, spec.prefix + run.name, experiment_id, pid, chosen[0]["pipeline_version_id"]))
    if problems:
        raise ConfigError("recurring-runs file does not match KFP, nothing changed:\n  " + "\n  ".join(problems))
    return resolved, experiment_id, experiment_id is None


def _create_body(r: Resolved, experiment_id: str, namespace: str | None) -> dict:
    body = {"display_name": r.display_name, "description": _description(r),
            "pipeline_version_reference": {"pipeline_id": r.pipeline_id, "pipeline_version_id": r.version_id},
            "runtime_config": {"parameters": r.run.parameters},
            "trigger": {"cron_schedule": {"cron": r.run.cron}}, "max_concurrency": str(r.run.max_concurrency),
            "mode": "ENABLE" if r.run.enabled else "DISABLE", "no_catchup": True, "experiment_id": experiment_id}
    if r.run.service_account:
        body["service_account"] = r.run.service_account
    if namespace:
        body["namespace"] = namespace
    return body


def sync(path: str | os.PathLike, *, host: str | None = None, token: str | None = None,
         namespace: str | None = None, dry_run: bool = False, removed: str | None = None,
         echo=print, api: KFPRest | None = None) -> Plan:
    """Reconcile KFP's recurring runs to the file at `path`; print the plan, then apply it (unless
    `dry_run`). Returns the plan. Raises KFPError naming the failed step on an API error."""
    from .cluster import HOST_ENV, NAMESPACE_ENV, TOKEN_ENV, _env

    spec = load_sync_file(path)
    if removed:
        spec.removed = removed
    if api is None:
        host = host or _env(HOST_ENV)
        if not host:
            raise KFPError("no KFP endpoint: pass --host URL or set KFP_HOST (e.g. http://ml-pipeline.kubeflow:8888)")
        api = KFPRest(host, token or _env(TOKEN_ENV) or _token_file(),
                      namespace or spec.namespace or _env(NAMESPACE_ENV))
    resolved, experiment_id, new_experiment = resolve(api, spec)
    observed = api.recurring_runs()
    p = plan(resolved, observed, prefix=spec.prefix, removed=spec.removed,
             create_experiment=spec.experiment if new_experiment else None)
    echo(f"plan for {path} ({api.host}, namespace {api.namespace or '-'}):")
    for line in p.lines():
        echo(f"  {line}")
    if dry_run or not (p.changes or p.create_experiment):
        if dry_run:
            echo("dry run: nothing changed")
        return p
    done: list[str] = []
    steps = _steps(p, api, spec, experiment_id)
    for i, (label, call) in enumerate(steps, 1):
        try:
            call()
        except KFPError as err:
            applied = "; ".join(done) or "none"
            raise KFPError(f"sync stopped at step {i}/{len(steps)} ({label}): {err}. Applied before it: {applied}. "
                           "No desired run was removed before its replacement existed; rerun the sync to "
                           "converge") from None
        done.append(label)
        echo(f"  done: {label}")
    echo(f"applied {len(done)} step(s)")
    return p


def _token_file() -> str | None:
    """A projected ServiceAccount token ($KFP_TOKEN_FILE or the path multi-user KFP's clients use)."""
    try:
        return Path(os.environ.get("KFP_TOKEN_FILE") or TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def _steps(p: Plan, api: KFPRest, spec: SyncFile, experiment_id: str | None) -> list[tuple[str, Any]]:
    state = {"experiment_id": experiment_id}
    steps: list[tuple[str, Any]] = []
    if p.create_experiment:
        def make_experiment():
            state["experiment_id"] = api.create_experiment(p.create_experiment)["experiment_id"]
        steps.append((f"create experiment {p.create_experiment}", make_experiment))

    def creator(r: Resolved):
        def create():
            if r.experiment_id is None:  # the fingerprint names the experiment id: fix it now that it exists
                r.experiment_id = state["experiment_id"]
                r.fingerprint = fingerprint(r)
            api.create_recurring_run(_create_body(r, state["experiment_id"], api.namespace))
        return create

    for a in p.changes:
        if a.kind in ("create", "replace"):
            steps.append((f"create {a.name}", creator(a.desired)))
        if a.kind in ("replace", "delete"):
            steps += [(f"delete {a.name} [{rid}]", lambda rid=rid: api.delete_recurring_run(rid)) for rid in a.run_ids]
        if a.kind in ("enable", "disable"):
            steps += [(f"{a.kind} {a.name} [{rid}]", lambda rid=rid, on=a.kind == "enable": api.set_enabled(rid, on))
                      for rid in a.run_ids]
    return steps
