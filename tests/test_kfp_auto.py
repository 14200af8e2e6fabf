"""The auto pipeline: it compiles, its IR fans the candidate families out with a ParallelFor and
collects them into one select stage whose outputs are HTML, Markdown and Metrics artifacts; it runs
end to end with the KFP local runner on the real digits model through `autocompress run`; the
adapters count the time budget from the plan and re-point the branches' models."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp", reason="the Kubeflow layer needs kfp (pip install 'autocompress[kfp]')")
pytest.importorskip("kfp.kubernetes", reason="needs kfp-kubernetes")

from autocompress.errors import ConfigError  # noqa: E402
from autocompress.kfp import auto_adapters, pipelines  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "compiled"
AUTO = {"target": "onednn-int8", "batch_size": 32, "time_budget": "10m", "candidates": ["ptq", "prune", "prune+ptq"],
        "prune_ratios": [0.5], "ptq_trials": 2, "epochs": 1, "refine": False}


def _ir(name: str) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((COMPILED / f"{name}.yaml").read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]


@pytest.mark.parametrize("name", ["auto", "auto_cpu"])
def test_ir_fans_out_the_families_and_collects_them(name):
    assert name in pipelines.names()
    spec, platform = _ir(name)
    root = spec["root"]["dag"]["tasks"]
    assert {"load-model", "auto-plan", "for-loop-1", "auto-select", "auto-export"} <= set(root)
    loop = root["for-loop-1"]
    # the parallel branches: one iteration per family the plan returns
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--auto-plan-Output"
    assert loop["dependentTasks"] and "auto-plan" in loop["dependentTasks"]
    inner = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert set(inner) == {"auto-branch"}
    assert inner["auto-branch"]["inputs"]["parameters"]["family"]["componentInputParameter"].endswith("loop-item")
    assert inner["auto-branch"]["cachingOptions"].get("enableCache", False) is False  # branches train
    # select collects every branch's artifact (dsl.Collected) and the plan (the budget's start)
    select = root["auto-select"]
    branches = select["inputs"]["artifacts"]["branches"]["taskOutputArtifact"]
    assert branches == {"outputArtifactKey": "pipelinechannel--auto-branch-candidates", "producerTask": "for-loop-1"}
    assert select["inputs"]["artifacts"]["plan"]["taskOutputArtifact"]["producerTask"] == "auto-plan"
    assert spec["components"]["comp-auto-select"]["inputDefinitions"]["artifacts"]["branches"]["isArtifactList"]
    outputs = spec["components"]["comp-auto-select"]["outputDefinitions"]["artifacts"]
    kinds = {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()}
    assert kinds == {"chosen": "system.Model", "summary": "system.Artifact", "report_html": "system.HTML",
                     "report_md": "system.Markdown", "metrics": "system.Metrics"}
    export = root["auto-export"]["inputs"]["artifacts"]
    assert {k: v["taskOutputArtifact"]["producerTask"] for k, v in export.items()} == {"chosen": "auto-select",
                                                                                       "summary": "auto-select"}
    # the GPU variant gives every branch (and the final ranking) a GPU; the CPU variant none
    executors = spec["deploymentSpec"]["executors"]
    for comp in ("auto-branch", "auto-select"):
        label = spec["components"][f"comp-{comp}"]["executorLabel"]
        resources = executors[label]["container"]["resources"]
        assert ("accelerator" in resources) == (name == "auto")
        assert platform["executors"][label]["securityContext"]["runAsNonRoot"] is True


def test_the_default_config_validates_and_plans():
    spec, _ = _ir("auto")
    default = spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    auto, train = auto_adapters.parse_config(default)
    assert auto.target == "onednn-int8" and train is None


def test_config_errors_name_the_auto_sections(tmp_path, digits_files):
    with pytest.raises(ConfigError, match=r"takes \['Auto', 'TrainConfig'\].*run its pipeline"):
        auto_adapters.parse_config(json.dumps({"Auto": {}, "PruneConfig": {}}))
    with pytest.raises(ConfigError, match="target"):
        auto_adapters.parse_config(json.dumps({"Auto": {"target": "tpu"}}))
    from autocompress.kfp import adapters

    with pytest.raises(ConfigError, match="target"):  # the first stage refuses it, in seconds
        adapters.load_model(str(digits_files.model_dir), tmp_path / "m", config=json.dumps({"Auto": {"target": "x"}}))
    assert adapters.load_model(str(digits_files.model_dir), tmp_path / "m2", config=json.dumps({"Auto": AUTO}))


def test_plan_is_the_engines_families(tmp_path):
    from autocompress.auto.config import build_auto
    from autocompress.auto.search import families

    before = time.time()
    info = auto_adapters.plan(json.dumps({"Auto": AUTO}), tmp_path / "plan")
    assert [json.loads(f) for f in info["families"]] == families(build_auto(AUTO)) == [["ptq"],
                                                                                       ["prune-0.5", "prune-0.5+ptq"]]
    recorded = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert recorded["families"] == info["families"] and before <= recorded["started_at"] <= time.time()
    skipped = auto_adapters.plan(json.dumps({"Auto": {"target": "paddle-cpu"}}), tmp_path / "p2")["skipped"]
    assert {s["id"] for s in skipped} >= {"ptq", "qat"} and all(s["reason"] for s in skipped)


def test_a_branch_that_starts_after_the_budget_runs_nothing(tmp_path, digits_files, digits_datasets):
    """The time budget counts from the plan: a branch queued until it is spent runs no candidate."""
    from autocompress.kfp import adapters

    model = tmp_path / "model"
    adapters.load_model(str(digits_files.model_dir), model)
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "plan.json").write_text(json.dumps({"started_at": time.time() - 3600}))
    (tmp_path / "absent").mkdir()
    (tmp_path / "absent" / adapters.ABSENT_FILE).write_text("{}")
    records = auto_adapters.branch('["ptq"]', tmp_path / "plan", model, digits_datasets / "train",
                                   digits_datasets / "eval", tmp_path / "absent", tmp_path / "absent",
                                   json.dumps({"Auto": {**AUTO, "time_budget": 60}}), tmp_path / "out")
    assert [(r["id"], r["status"]) for r in records] == [("ptq", "not_run")]
    assert "time budget spent" in records[0]["reason"]
    assert json.loads((tmp_path / "out" / auto_adapters.RECORDS_FILE).read_text()) == records


# ---- end to end with the KFP local runner -------------------------------------------------------
def _yaml(tmp_path, model_dir, data, **auto) -> Path:
    cfg = {"Model": {"model_dir": str(model_dir)},
           "Data": {"train": str(data / "train"), "eval": str(data / "eval"), "batch_size": 32},
           "Eval": {"metric": "top1", "max_drop": 0.5}, "Device": "cpu", "SaveDir": str(tmp_path / "out"),
           "Auto": {**AUTO, "candidates": ["ptq", "prune"], **auto}}
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def piped(tmp_path_factory, digits_files, digits_datasets):
    """`autocompress run --publish DIR` on an Auto YAML: the auto_cpu pipeline through the KFP local
    runner; the export stage publishes to DIR and the deliverable lands in SaveDir too."""
    from conftest import tree_hashes

    from autocompress.cli import main

    tmp = tmp_path_factory.mktemp("auto-pipeline")
    before = tree_hashes(digits_files.model_dir)
    start = time.perf_counter()
    code = main(["run", str(_yaml(tmp, digits_files.model_dir, digits_datasets, refine=True)), "--quiet",
                 "--publish", str(tmp / "published")])
    wall = time.perf_counter() - start
    assert tree_hashes(digits_files.model_dir) == before  # the input is never modified
    save = tmp / "out"
    return code, json.loads((save / "summary.json").read_text()), save, wall


def test_autocompress_run_goes_through_the_auto_pipeline(piped):
    code, s, save, wall = piped
    assert s["pipeline"] == "auto_cpu" and s["mode"] == "auto" and Path(s["pipeline_log"]).exists()
    assert code == (0 if s["target_met"] else 3)
    assert s["seconds"] == pytest.approx(wall, abs=15)  # the run's cost is the pipeline's wall time
    assert 0 < s["stage_seconds"] <= s["seconds"]  # the search's own time, from the plan on
    root = Path(s["pipeline_root"])
    [run_dir] = [p for p in root.iterdir() if p.is_dir()]
    branches = sorted(p.name for p in run_dir.glob("for-loop-1-iteration-*"))
    assert branches == ["for-loop-1-iteration-0", "for-loop-1-iteration-1"]  # one per family, in parallel
    log = Path(s["pipeline_log"]).read_text()
    assert log.count("Executing task 'auto-branch'") == 2


def test_the_chosen_model_and_the_reports_come_out(piped, digits_files):
    code, s, save, wall = piped
    ids = [c["id"] for c in s["candidates"]]
    assert {"ptq", "prune-0.5"} <= set(ids)
    done = [c for c in s["candidates"] if c["status"] == "done"]
    # with the time the branches left, the select stage tried more pruning ratios (0.5 fits a 0.5 drop)
    assert "prune-0.7" in ids and next(c for c in done if c["id"] == "prune-0.5")["within_budget"]
    assert done, s["candidates"]
    for c in done:  # every finished candidate measured again, together, in the final ranking
        assert c["final_ranking"] and c["latency_ms"]["32"] > 0 and c["speedup"] > 0
        assert c["latency_ms"]["1"] > 0 and c["speedup_batch1"] > 0
    assert set(s["original"]["latency_ms"]) == {"1", "32"}  # measured in the same final ranking
    eligible = [c for c in done if c["within_budget"] and not c["slower"] and c["speedup"] > 1]
    if eligible:
        assert s["chosen"] == max(eligible, key=lambda c: c["speedup"])["id"] and s["target_met"]
    assert s["chosen"] in {c["id"] for c in done}
    assert (save / "model" / digits_files.model_filename).exists() and (save / "model" / "MODEL_CARD.md").exists()
    published = save.parent / "published"
    assert s["model_dir"] == str(published / "model") and s["save_dir"] == str(published)
    for folder in (save, published):
        assert sorted(p.name for p in folder.iterdir() if p.name != "pipeline-root") == [
            "model", "report.html", "report.md", "summary.json"]
        assert sorted(p.name for p in (folder / "model").iterdir()) == sorted(
            p.name for p in (save / "model").iterdir())
    html = (save / "report.html").read_text()
    assert '<table id="candidates">' in html and "data:image/png;base64," in html
    assert not re.search(r"https?://", html)  # self-contained: nothing fetched from the network
    markdown = (save / "report.md").read_text()
    assert markdown.startswith("# ")
    # the report names where the model was delivered, not a stage's temporary folder
    assert str(published / "model") in markdown and "ac-auto-" not in markdown + html


def test_the_ui_gets_html_markdown_and_metrics(piped):
    code, s, save, wall = piped
    [run_dir] = [p for p in Path(s["pipeline_root"]).iterdir() if p.is_dir()]
    select = run_dir / "auto-select"
    assert (select / "report_html").read_text() == (select / "summary" / "report.html").read_text()
    assert (select / "report_md").read_text() == (select / "summary" / "report.md").read_text()
    # the same report as the delivered one, naming the chosen model's artifact
    assert str(select / "chosen") in (select / "report_md").read_text()
    assert (select / "report_md").read_text().replace(str(select / "chosen"), "M") == \
        (save / "report.md").read_text().replace(s["model_dir"], "M")
    out = json.loads((select / "executor_output.json").read_text())["artifacts"]
    [metrics] = out["metrics"]["artifacts"]
    assert metrics["metadata"]["target_met"] == (1.0 if s["target_met"] else 0.0)
    assert metrics["metadata"]["candidates_done"] == sum(c["status"] == "done" for c in s["candidates"])
    assert metrics["metadata"]["speedup"] == pytest.approx(next(c for c in s["candidates"]
                                                                if c["id"] == s["chosen"])["speedup"])


def test_the_example_runs_the_auto_pipeline():
    from autocompress.config import load_run_config
    from autocompress.kfp.arguments import pipeline_arguments

    rc = load_run_config(REPO / "examples" / "digits" / "auto.yaml")
    assert rc.combination == "auto"
    name, args = pipeline_arguments(rc)
    assert name == "auto_cpu" and args["train_data_uri"] == "builtin://digits/train"
    assert args["calib_data_uri"] == "builtin://digits/calib"
    auto, _ = auto_adapters.parse_config(args["config"])
    assert auto.candidates == ["ptq", "prune", "prune+ptq"] and auto.seconds == 300
    assert pipeline_arguments(rc, gpu=True)[0] == "auto"


def test_a_missing_input_fails_before_the_auto_pipeline_starts(tmp_path, digits_files, digits_datasets):
    from autocompress.kfp import local_run

    cfg = yaml.safe_load(_yaml(tmp_path, digits_files.model_dir, digits_datasets).read_text())
    cfg["Data"]["eval"] = str(tmp_path / "missing-eval")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="Data.eval: .*missing-eval does not exist"):
        local_run.run_local(tmp_path / "bad.yaml", echo=lambda line: None)
    assert not (tmp_path / "out" / "pipeline-root").exists()


def test_submit_runs_the_auto_pipeline_on_a_cluster(tmp_path):
    from test_kfp_runner import FakeClient

    from autocompress.kfp import cluster

    cfg = {"Model": {"model_dir": "s3://models/digits"},
           "Data": {"train": "s3://data/train", "eval": "s3://data/eval", "calib": "s3://data/calib"},
           "Eval": {"metric": "top1", "max_drop": 0.01}, "Device": "gpu", "Auto": {"target": "gpu", "epochs": 2}}
    (tmp_path / "auto.yaml").write_text(yaml.safe_dump(cfg))
    fake = FakeClient()
    out = cluster.submit(tmp_path / "auto.yaml", kfp_client=fake, host="http://kfp.local", trial_shards=3)
    upload = next(kw for call, kw in fake.calls if call == "upload_pipeline")
    assert upload["pipeline_name"] == "autocompress-auto" and "nvidia.com/gpu" in upload["text"]
    params = fake.calls[-1][1]["params"]
    assert params["calib_data_uri"] == "s3://data/calib" and "trial_shards" not in params
    assert json.loads(params["config"]) == {"Auto": {"epochs": 2, "target": "gpu"}}
    assert out["pipeline"] == "auto"
    cfg["Data"]["calib"] = "/data/calib"
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="calib_data_uri is the local path /data/calib"):
        cluster.submit(tmp_path / "local.yaml", kfp_client=FakeClient())


def test_a_retried_branch_reuses_what_its_failed_attempt_finished(tmp_path, digits_files, digits_datasets):
    """The work folder next to the artifact outlives a killed attempt: the retry resumes from it."""
    from autocompress.kfp import adapters

    model = tmp_path / "model"
    adapters.load_model(str(digits_files.model_dir), model)
    auto_adapters.plan(json.dumps({"Auto": AUTO}), tmp_path / "plan")
    (tmp_path / "absent").mkdir()
    (tmp_path / "absent" / adapters.ABSENT_FILE).write_text("{}")
    folders = (model, digits_datasets / "train", digits_datasets / "eval", tmp_path / "absent", tmp_path / "absent")
    config = json.dumps({"Auto": AUTO})
    work = tmp_path / "candidates.checkpoints"
    # the first attempt finished ptq, then died before writing its artifact
    first = auto_adapters._search(*folders, config, work, metric="top1", max_drop=0.5, drop_type="absolute",
                                  device="cpu", batch_size=32, started_at=time.time()).run_candidates(["ptq"])
    assert first[0]["status"] == "done" and not (tmp_path / "candidates").exists()
    records = auto_adapters.branch('["ptq"]', tmp_path / "plan", *folders, config, tmp_path / "candidates",
                                   max_drop=0.5, work_dir=str(work))
    assert records[0]["resumed"] and records[0]["metric"] == first[0]["metric"]
    assert records[0]["model_dir"] == "candidates/ptq/model"
    assert (tmp_path / "candidates" / "candidates" / "ptq" / "model" / digits_files.model_filename).exists()
    assert not work.exists()  # done: the attempt's folder is gone, the artifact holds the result


def test_train_config_reaches_the_branches(tmp_path):
    """A TrainConfig next to Auto travels in the pipeline's config to the training candidates."""
    from autocompress.config import load_run_config
    from autocompress.kfp.arguments import pipeline_arguments

    cfg = yaml.safe_load((REPO / "examples" / "digits" / "auto.yaml").read_text())
    cfg["Auto"].pop("epochs", None)  # a TrainConfig sets the length itself (Auto.epochs beside it is refused)
    cfg["TrainConfig"] = {"train_iter": 7, "learning_rate": 0.002, "optimizer": "Momentum"}
    name, args = pipeline_arguments(load_run_config(cfg))
    auto, train = auto_adapters.parse_config(args["config"])
    assert name == "auto_cpu" and train == {"train_iter": 7, "learning_rate": 0.002, "optimizer": "Momentum"}
    assert auto_adapters.parse_config(auto_adapters.pipeline_config(auto)) == (auto, None)
