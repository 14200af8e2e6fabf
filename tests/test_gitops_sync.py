"""`autocompress schedule --sync recurring-runs.yaml` against a local HTTP fake of KFP's v2beta1 REST API:
create, replace on change (create before delete), disable / delete on removal, unmanaged runs untouched,
an API error halfway (clear message, rerun converges) and idempotent reruns."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from _kfp_fake import FakeKFP
from autocompress.cli import main
from autocompress.errors import ConfigError
from autocompress.kfp import KFPError
from autocompress.kfp.gitops import MARKER, Resolved, DesiredRun, load_sync_file, parse_sync_file, plan, sync

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def kfp():
    fake = FakeKFP()
    fake.add_pipeline("autocompress-ptq-hpo", ["0.0.9", "0.1.0"])
    fake.add_pipeline("autocompress-distill-cpu", ["0.1.0"])
    fake.add_run("someone-elses-nightly", "made in the UI")
    fake.add_run("gitops-handmade", "prefix but no marker")  # not ours either: no marker
    yield fake
    fake.close()


def _file(tmp_path, runs, **top) -> Path:
    path = tmp_path / "recurring-runs.yaml"
    path.write_text(yaml.safe_dump({"experiment": "retraining", **top, "runs": runs}))
    return path


RUNS = [
    {"name": "resnet50-nightly", "pipeline": "ptq_hpo", "version": "latest", "cron": "0 3 * * *",
     "parameters": {"model_uri": "s3://models/resnet50", "max_drop": 0.01}},
    {"name": "mbv3-weekly", "pipeline": "distill_cpu", "version": "0.1.0", "cron": "0 0 4 * * 1",
     "parameters": {"model_uri": "s3://models/mbv3"}, "enabled": False},
]


def _writes(fake: FakeKFP) -> list[tuple[str, str]]:
    return [c for c in fake.calls if c[0] != "GET"]


def _sync(path, fake, **kw):
    lines = []
    return sync(path, host=fake.host, echo=lines.append, **kw), lines


def test_first_sync_creates_experiment_and_runs_then_rerun_changes_nothing(kfp, tmp_path):
    path = _file(tmp_path, RUNS)
    p, lines = _sync(path, kfp)
    assert p.create_experiment == "retraining" and [a.kind for a in p.changes] == ["create", "create"]
    assert any("unmanaged (left alone): gitops-handmade, someone-elses-nightly" in ln for ln in lines)
    [nightly] = kfp.by_name("gitops-resnet50-nightly")
    [weekly] = kfp.by_name("gitops-mbv3-weekly")
    latest = kfp.versions[nightly["pipeline_version_reference"]["pipeline_id"]][-1]
    assert nightly["pipeline_version_reference"]["pipeline_version_id"] == latest["pipeline_version_id"]
    assert nightly["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"  # 5 fields -> KFP's 6
    assert nightly["runtime_config"]["parameters"] == RUNS[0]["parameters"]
    assert nightly["mode"] == "ENABLE" and weekly["mode"] == "DISABLE" and MARKER in nightly["description"]
    assert nightly["experiment_id"] == kfp.experiments[0]["experiment_id"]
    before = len(_writes(kfp))
    p2, lines2 = _sync(path, kfp)
    assert not p2.changes and not p2.create_experiment and lines2[-1].strip() == "in sync: nothing to change"
    assert len(_writes(kfp)) == before  # idempotent: no write at all
    assert {r["display_name"] for r in kfp.runs} >= {"someone-elses-nightly", "gitops-handmade"}


def test_changed_entry_is_replaced_create_before_delete(kfp, tmp_path):
    _sync(_file(tmp_path, RUNS), kfp)
    [old] = kfp.by_name("gitops-resnet50-nightly")
    changed = [{**RUNS[0], "cron": "0 30 2 * * *"}, RUNS[1]]
    kfp.calls.clear()
    p, _ = _sync(_file(tmp_path, changed), kfp)
    assert [(a.kind, a.name) for a in p.changes] == [("replace", "gitops-resnet50-nightly")]
    assert _writes(kfp) == [("POST", "/apis/v2beta1/recurringruns"),
                            ("DELETE", f"/apis/v2beta1/recurringruns/{old['recurring_run_id']}")]
    [new] = kfp.by_name("gitops-resnet50-nightly")
    assert new["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *" and new["recurring_run_id"] != old["recurring_run_id"]


def test_latest_follows_a_new_version_a_pinned_one_does_not(kfp, tmp_path):
    path = _file(tmp_path, RUNS)
    _sync(path, kfp)
    for pid, versions in kfp.versions.items():
        versions.append({"pipeline_id": pid, "pipeline_version_id": kfp.new_id("v"), "display_name": "0.2.0",
                         "created_at": "2026-02-01T00:00:00Z"})
    p, _ = _sync(path, kfp)
    assert [(a.kind, a.name) for a in p.changes] == [("replace", "gitops-resnet50-nightly")]


def test_enabled_flag_toggles_without_replacing(kfp, tmp_path):
    _sync(_file(tmp_path, RUNS), kfp)
    [weekly] = kfp.by_name("gitops-mbv3-weekly")
    p, _ = _sync(_file(tmp_path, [RUNS[0], {**RUNS[1], "enabled": True}]), kfp)
    assert [(a.kind, a.run_ids) for a in p.changes] == [("enable", [weekly["recurring_run_id"]])]
    assert kfp.by_name("gitops-mbv3-weekly")[0]["mode"] == "ENABLE"


def test_removed_entry_is_disabled_by_default_deleted_on_request_unmanaged_untouched(kfp, tmp_path):
    _sync(_file(tmp_path, RUNS), kfp)
    unmanaged = [dict(r) for r in kfp.runs if MARKER not in r["description"]]
    p, _ = _sync(_file(tmp_path, [RUNS[1]]), kfp)
    assert [(a.kind, a.name) for a in p.changes] == [("disable", "gitops-resnet50-nightly")]
    assert kfp.by_name("gitops-resnet50-nightly")[0]["mode"] == "DISABLE"
    p, _ = _sync(_file(tmp_path, [RUNS[1]]), kfp)  # already disabled: nothing to do
    assert not p.changes
    p, _ = _sync(_file(tmp_path, [RUNS[1]], removed="delete"), kfp)
    assert [(a.kind, a.name) for a in p.changes] == [("delete", "gitops-resnet50-nightly")]
    assert not kfp.by_name("gitops-resnet50-nightly")
    p, _ = _sync(_file(tmp_path, []), kfp, removed="delete")  # an empty file removes all of ours, only ours
    assert [r for r in kfp.runs] == unmanaged


def test_api_error_halfway_names_the_step_and_a_rerun_converges(kfp, tmp_path):
    path = _file(tmp_path, RUNS)
    kfp.fail[("POST", "/recurringruns")] = (2, 500)  # the second create fails
    with pytest.raises(KFPError) as err:
        _sync(path, kfp)
    msg = str(err.value)
    assert "step 3/3 (create gitops-mbv3-weekly)" in msg and "HTTP 500" in msg and "injected failure" in msg
    assert "Applied before it: create experiment retraining; create gitops-resnet50-nightly" in msg
    assert "rerun" in msg
    assert len(kfp.by_name("gitops-resnet50-nightly")) == 1 and not kfp.by_name("gitops-mbv3-weekly")
    kfp.fail.clear()
    p, _ = _sync(path, kfp)
    assert [(a.kind, a.name) for a in p.changes] == [("create", "gitops-mbv3-weekly")]
    p, _ = _sync(path, kfp)
    assert not p.changes and len(kfp.experiments) == 1


def test_failed_delete_during_replace_keeps_both_and_the_rerun_removes_the_stale_one(kfp, tmp_path):
    _sync(_file(tmp_path, RUNS), kfp)
    [old] = kfp.by_name("gitops-resnet50-nightly")
    changed = _file(tmp_path, [{**RUNS[0], "parameters": {**RUNS[0]["parameters"], "max_drop": 0.02}}, RUNS[1]])
    kfp.fail[("DELETE", "/recurringruns/{id}")] = (1, 500)
    with pytest.raises(KFPError, match=r"step 2/2 \(delete gitops-resnet50-nightly"):
        _sync(changed, kfp)
    assert len(kfp.by_name("gitops-resnet50-nightly")) == 2  # the new one exists: never a gap
    kfp.fail.clear()
    p, _ = _sync(changed, kfp)
    assert [(a.kind, a.run_ids, a.reason) for a in p.changes] == [
        ("delete", [old["recurring_run_id"]], "stale duplicate")]
    [new] = kfp.by_name("gitops-resnet50-nightly")
    assert new["runtime_config"]["parameters"]["max_drop"] == 0.02


def test_transient_errors_are_retried_except_for_creates(kfp, tmp_path):
    from autocompress.kfp.gitops import KFPRest

    api = KFPRest(kfp.host, backoff=0)
    kfp.fail[("GET", "/recurringruns")] = (1, 503)
    assert len(api.recurring_runs()) == 2  # retried
    kfp.fail[("POST", "/recurringruns")] = (1, 503)
    with pytest.raises(KFPError, match="HTTP 503"):  # a create is not retried: it may have happened
        api.create_recurring_run({"display_name": "x"})
    assert kfp.calls.count(("POST", "/apis/v2beta1/recurringruns")) == 1


def test_dry_run_prints_the_plan_and_writes_nothing(kfp, tmp_path, capsys):
    path = _file(tmp_path, RUNS)
    assert main(["schedule", "--sync", str(path), "--dry-run", "--host", kfp.host]) == 0
    out = capsys.readouterr().out
    assert "create   experiment retraining" in out and "create   gitops-resnet50-nightly" in out
    assert "dry run: nothing changed" in out and not _writes(kfp)
    assert main(["schedule", "--sync", str(path), "--host", kfp.host]) == 0
    assert "applied 3 step(s)" in capsys.readouterr().out


def test_missing_pipeline_or_version_fails_before_any_write(kfp, tmp_path):
    bad = [RUNS[0], {**RUNS[1], "version": "9.9.9"}, {**RUNS[1], "name": "x", "pipeline": "nope"}]
    with pytest.raises(ConfigError) as err:
        _sync(_file(tmp_path, bad), kfp)
    assert "has no version '9.9.9'" in str(err.value) and "no pipeline 'nope'" in str(err.value)
    assert not _writes(kfp)


def test_a_name_taken_by_an_unmanaged_run_is_refused(kfp, tmp_path):
    with pytest.raises(ConfigError, match="gitops-handmade.*not managed"):
        _sync(_file(tmp_path, [{**RUNS[0], "name": "handmade"}]), kfp)
    assert not _writes(kfp)


def test_unreachable_host_and_http_errors_are_clear(tmp_path):
    path = _file(tmp_path, RUNS)
    with pytest.raises(KFPError, match="cannot reach the KFP API"):
        sync(path, host="http://127.0.0.1:9", echo=lambda *_: None)
    assert main(["schedule", "--sync", str(path), "--host", "http://127.0.0.1:9"]) == 2


def test_token_from_env_or_the_projected_token_file(kfp, tmp_path, monkeypatch):
    path = _file(tmp_path, RUNS)
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.setenv("KFP_TOKEN_FILE", str(token))
    _sync(path, kfp, dry_run=True)
    assert set(kfp.auth) == {"Bearer sa-token"}
    monkeypatch.setenv("KFP_TOKEN", "env-token")
    kfp.auth.clear()
    _sync(path, kfp, dry_run=True)
    assert set(kfp.auth) == {"Bearer env-token"}


def test_file_checks():
    with pytest.raises(ConfigError, match="cron 'daily' needs 5 or 6 fields"):
        parse_sync_file({"runs": [{"name": "a", "pipeline": "p", "cron": "daily"}]})
    with pytest.raises(ConfigError, match="used twice"):
        parse_sync_file({"runs": [{"name": "a", "pipeline": "p", "cron": "0 3 * * *"}] * 2})
    with pytest.raises(ConfigError, match=r"unknown keys \['schedule'\]"):
        parse_sync_file({"runs": [{"name": "a", "pipeline": "p", "schedule": "x"}]})
    with pytest.raises(ConfigError, match="removed"):
        parse_sync_file({"removed": "archive", "runs": []})


def test_plan_is_pure_and_orders_creates_before_removals():
    def resolved(name, cron="0 0 3 * * *", enabled=True):
        return Resolved(DesiredRun(name, "autocompress-ptq-hpo", "latest", cron, enabled=enabled),
                        "gitops-" + name, "e-1", "p-1", "v-1")
    keep, change, toggle = resolved("keep"), resolved("change"), resolved("toggle", enabled=False)
    observed = [
        {"recurring_run_id": "1", "display_name": "gitops-keep", "description": f"{MARKER} spec={keep.fingerprint}"},
        {"recurring_run_id": "2", "display_name": "gitops-change", "description": f"{MARKER} spec=0000"},
        {"recurring_run_id": "3", "display_name": "gitops-toggle", "description": f"{MARKER} spec={toggle.fingerprint}",
         "mode": "ENABLE"},
        {"recurring_run_id": "4", "display_name": "gitops-gone", "description": f"{MARKER} spec=1"},
        {"recurring_run_id": "5", "display_name": "other", "description": ""},
    ]
    p = plan([keep, change, toggle, resolved("new")], observed)
    assert [(a.kind, a.name, a.run_ids) for a in p.actions] == [
        ("create", "gitops-new", []), ("replace", "gitops-change", ["2"]), ("disable", "gitops-toggle", ["3"]),
        ("disable", "gitops-gone", ["4"]), ("keep", "gitops-keep", ["1"])]
    assert p.unmanaged == ["other"]


def _example(tmp_path):
    """The committed file as the CronJob mounts it: next to its run config, named config.yaml."""
    base = REPO / "manifests" / "base"
    (tmp_path / "config.yaml").write_text((base / "recurring-run-config.yaml").read_text())
    (tmp_path / "recurring-runs.yaml").write_text((base / "recurring-runs.yaml").read_text())
    return load_sync_file(tmp_path / "recurring-runs.yaml")


def test_committed_example_file_parses(tmp_path):
    spec = _example(tmp_path)
    assert spec.runs and all(len(r.cron.split()) == 6 for r in spec.runs)
    assert all(r.pipeline.startswith("autocompress-") for r in spec.runs)
