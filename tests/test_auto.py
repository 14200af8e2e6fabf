"""Auto mode on the real digits model: the choice is the fastest candidate within the budget, the
best model so far survives a SIGKILL and a rerun resumes, an unmeetable budget says so and exits
non-zero, and the Auto section is validated before any work."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autocompress.auto.candidates import plan, refinements
from autocompress.auto.config import AutoConfig, parse_duration
from autocompress.auto.search import families
from autocompress.errors import ConfigError

SMALL = {"target": "onednn-int8", "batch_size": 64, "time_budget": "5m", "ptq_trials": 2, "epochs": 2,
         "candidates": ["ptq", "prune", "prune+ptq"], "prune_ratios": [0.5], "refine": False}


def _sources(digits_data):
    from autocompress.data import FeedSource

    train_x, train_y = digits_data["train"]
    eval_x, eval_y = digits_data["eval"]
    return (FeedSource.from_arrays({"x": train_x}, labels=train_y, batch_size=64),
            FeedSource.from_arrays({"x": eval_x[:250]}, labels=eval_y[:250], batch_size=50),
            FeedSource.from_arrays({"x": eval_x[250:]}, labels=eval_y[250:], batch_size=50))


def _auto(files, save_dir, digits_data, auto=SMALL, **kwargs):
    from autocompress import AutoCompression

    train, evaluation, test = _sources(digits_data)
    return AutoCompression(str(files.model_dir), files.model_filename, files.params_filename, str(save_dir),
                           {"Auto": auto}, None, train, evaluation, devices="cpu", test_dataloader=test,
                           progress=False, **kwargs)


@pytest.fixture(scope="module")
def searched(digits_files, digits_data, tmp_path_factory):
    from conftest import tree_hashes

    before = tree_hashes(digits_files.model_dir)
    save_dir = tmp_path_factory.mktemp("auto") / "out"
    summary = _auto(digits_files, save_dir, digits_data).compression()
    assert tree_hashes(digits_files.model_dir) == before  # the input is never modified
    return summary, save_dir


def test_every_candidate_is_measured_on_the_target(searched):
    summary, save_dir = searched
    done = [c for c in summary["candidates"] if c["status"] == "done"]
    assert {c["id"] for c in done} == {"ptq", "prune-0.5", "prune-0.5+ptq"} or \
        {c["id"] for c in done} == {"ptq", "prune-0.5"}  # the chain runs only when its parent met the budget
    for c in done:
        assert set(c["latency_ms"]) == {"1", "64"} and all(v > 0 for v in c["latency_ms"].values())
        assert c["size_bytes"] > 0 and c["params"] > 0 and c["flops"] > 0 and c["seconds"] > 0
        assert c["peak_rss_bytes"] > 0 and 0 <= c["metric"] <= 1 and 0 <= c["test_metric"] <= 1
        assert c["metric_drop"] == pytest.approx(summary["baseline_metric"] - c["metric"])
        assert (Path(c["model_dir"]) / "inference.pdmodel").exists()
    assert summary["original"]["latency_ms"]["64"] > 0
    assert summary["deploy_batch_size"] == 64 and summary["target"] == "onednn-int8"
    skipped = {c["id"] for c in summary["candidates"] if c["status"] == "skipped"}
    assert skipped == set()  # candidates were named explicitly: none left out


def test_the_choice_is_the_fastest_within_the_budget(searched):
    summary, save_dir = searched
    eligible = [c for c in summary["candidates"] if c["status"] == "done" and c["within_budget"]
                and not c["slower"] and c["speedup"] > 1]
    if not eligible:
        assert summary["target_met"] is False
        return
    fastest = max(eligible, key=lambda c: c["speedup"])
    assert summary["chosen"] == fastest["id"] and summary["target_met"] is True
    for c in summary["candidates"]:
        if c["status"] == "done" and c["within_budget"]:
            assert c["final_ranking"] is True  # ranked in the one interleaved comparison
    # the delivered model is the chosen candidate's, and scores what the summary says on the test split
    chosen_dir = Path(fastest["model_dir"])
    for name in ("inference.pdmodel", "inference.pdiparams"):
        assert (save_dir / "model" / name).read_bytes() == (chosen_dir / name).read_bytes()
    assert summary["test_metric"] == fastest["test_metric"]


def test_the_delivered_model_scores_the_reported_test_metric(searched, digits_data):
    from autocompress.backend import DeployTarget, inference_predictor
    from autocompress.model_io import locate_model

    summary, save_dir = searched
    chosen = next(c for c in summary["candidates"] if c["id"] == summary["chosen"])
    predict = inference_predictor(locate_model(save_dir / "model"), int8=chosen["precision"] == "int8",
                                  target=DeployTarget("onednn"))
    x, y = digits_data["eval"]
    hits = sum(int((predict({"x": x[i:i + 50]})[0].argmax(-1) == y[i:i + 50, 0]).sum()) for i in range(250, 500, 50))
    assert hits / 250 == pytest.approx(summary["test_metric"])


def test_reports_are_written(searched):
    summary, save_dir = searched
    assert json.loads((save_dir / "summary.json").read_text())["chosen"] == summary["chosen"]
    assert summary["chosen"] in (save_dir / "report.md").read_text()
    assert "data:image/png;base64," in (save_dir / "report.html").read_text()
    assert not (save_dir / ".work").exists()


def test_plan_leaves_out_what_cannot_pay_on_the_target():
    run, skipped = plan(AutoConfig(target="paddle-cpu"))
    assert [c.id for c in run] == ["prune-0.25", "prune-0.5"]
    reasons = {s.id: s.reason for s in skipped}
    assert "no int8 kernels" in reasons["ptq"] and "no int8 kernels" in reasons["qat"]
    assert "sparse tensor cores" in reasons["asp"] and "dense speed" in reasons["sparse"]
    run, skipped = plan(AutoConfig(target="onednn-int8"))
    assert [c.id for c in run] == ["ptq", "prune-0.25", "prune-0.5", "prune-0.25+ptq", "prune-0.5+ptq", "qat"]
    assert families(AutoConfig(target="onednn-int8")) == [["ptq"], ["prune-0.25", "prune-0.25+ptq"],
                                                          ["prune-0.5", "prune-0.5+ptq"], ["qat"]]
    # naming a kind runs it even where it does not pay (measured, not assumed)
    run, skipped = plan(AutoConfig(target="paddle-cpu", candidates=["ptq", "sparse"]))
    assert [c.id for c in run] == ["ptq", "sparse"] and not skipped


def _pruned(ratio, within):
    return {"id": f"prune-{ratio:g}", "kind": "prune", "status": "done", "within_budget": within,
            "strategy_config": {"PruneConfig": {"prune_algo": "prune", "pruned_ratio": ratio}}}


def test_refinement_halves_the_ratio_gap_between_fit_and_miss():
    auto = AutoConfig(target="onednn-int8", prune_ratios=[0.25, 0.5])
    planned, _ = plan(auto)
    records = {r["id"]: r for r in (_pruned(0.25, True), _pruned(0.5, False))}
    proposed = refinements(auto, records, planned)
    assert [c.id for c in proposed] == ["prune-0.4", "prune-0.4+ptq"]  # 0.375 rounded to the 0.05 grid
    assert proposed[0].strategy_config["PruneConfig"]["pruned_ratio"] == 0.4
    assert proposed[1].parent == "prune-0.4"
    # every ratio fits: halfway to 0.9; a target without int8 gets no chain
    paddle = AutoConfig(target="paddle-cpu", prune_ratios=[0.5])
    assert [c.id for c in refinements(paddle, {"prune-0.5": _pruned(0.5, True)}, plan(paddle)[0])] == ["prune-0.7"]
    # nothing fits: halfway to 0; one grid step apart: done
    assert [c.id for c in refinements(paddle, {"prune-0.5": _pruned(0.5, False)}, [])] == ["prune-0.25"]
    records = {r["id"]: r for r in (_pruned(0.25, True), _pruned(0.3, False))}
    assert refinements(auto, records, planned) == []
    assert refinements(auto, {}, planned) == []  # no pruning result yet
    # a planned ratio the time budget left unrun: no ratio beyond it is proposed
    records = {"prune-0.25": _pruned(0.25, True), "prune-0.5": {**_pruned(0.5, False), "status": "not_run"}}
    assert refinements(auto, records, planned) == []


def test_time_left_after_the_plan_refines_the_pruning_ratio(digits_files, digits_data, tmp_path):
    auto = {**SMALL, "candidates": ["prune"], "prune_ratios": [0.5, 0.9], "refine": True, "epochs": 1}
    summary = _auto(digits_files, tmp_path / "out", digits_data, auto=auto).compression()
    ran = [c for c in summary["candidates"] if c["status"] == "done"]
    ratios = [c["strategy_config"]["PruneConfig"]["pruned_ratio"] for c in ran]
    assert ratios[:2] == [0.5, 0.9] and len(ratios) > 2
    fits = {c["strategy_config"]["PruneConfig"]["pruned_ratio"]: c["within_budget"] for c in ran}
    low = 0.5 if fits[0.5] else 0.0
    high = 0.9 if fits[0.5] else 0.5
    assert ratios[2] == round(round((low + high) / 2 / 0.05) * 0.05, 4)  # halfway, on the 0.05 grid
    for i, ratio in enumerate(ratios[2:], 2):  # each refined ratio lies between the best fit and the nearest miss so far
        seen = dict(zip(ratios[:i], [fits[r] for r in ratios[:i]]))
        best_fit = max((r for r, ok in seen.items() if ok), default=0.0)
        assert best_fit < ratio < min((r for r, ok in seen.items() if not ok and r > best_fit), default=0.9)
    assert summary["chosen"] is None or next(c for c in ran if c["id"] == summary["chosen"])["within_budget"]


def test_auto_section_is_validated_before_any_work(digits_files):
    from autocompress.api import auto_section
    from autocompress.auto.config import build_auto
    from autocompress.config import load_run_config

    with pytest.raises(ConfigError, match=r"Auto.budget: unknown key; allowed keys: \[.*'time_budget'"):
        build_auto({"budget": 3})
    with pytest.raises(ConfigError, match="Auto.time_budget: cannot read the duration"):
        build_auto({"time_budget": "soon"})
    with pytest.raises(ConfigError, match="Auto.target"):
        build_auto({"target": "tpu"})
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration(600) == 600
    with pytest.raises(ConfigError, match="chooses the strategies itself"):
        auto_section({"Auto": {}, "QuantizationConfig": {}})
    model = {"model_dir": str(digits_files.model_dir)}
    with pytest.raises(ConfigError, match=r"Auto and \['Deploy'\]"):
        load_run_config({"Model": model, "Data": {"train": "t", "eval": "e"}, "Auto": {}, "Deploy": {"batch_size": 4}})
    rc = load_run_config({"Model": model, "Data": {"train": "t", "eval": "e"},
                          "Auto": {"target": "paddle-cpu", "time_budget": "2m"}})
    assert rc.combination == "auto" and rc.strategy["Auto"].seconds == 120


def test_gpu_target_says_it_cannot_be_measured_here(digits_files, digits_data, tmp_path):
    import paddle

    if paddle.is_compiled_with_cuda():
        pytest.skip("a CUDA build can measure the gpu target")
    with pytest.raises(ConfigError, match="target 'gpu' cannot be measured on this machine"):
        _auto(digits_files, tmp_path / "gpu", digits_data, auto={**SMALL, "target": "gpu"}).compression()


def _optimize_cmd(files, datasets, save_dir, *extra):
    return [sys.executable, "-m", "autocompress.cli", "optimize", str(files.model_dir), "--data", str(datasets),
            "--save-dir", str(save_dir), "--batch-size", "32", "--ptq-trials", "2", "--epochs", "1", "--quiet", *extra]


def test_unmeetable_budget_keeps_the_best_and_exits_non_zero(digits_files, digits_datasets, tmp_path):
    save_dir = tmp_path / "out"
    proc = subprocess.run(_optimize_cmd(digits_files, digits_datasets, save_dir, "--max-drop", "0",
                                        "--candidates", "prune", "--prune-ratios", "0.9", "--no-refine"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    summary = json.loads((save_dir / "summary.json").read_text())
    assert summary["target_met"] is False and summary["chosen"] == "prune-0.9"
    assert summary["candidates"][0]["metric_drop"] > 0
    assert (save_dir / "model" / "inference.pdmodel").exists()  # the best candidate is still delivered
    assert "NOT met" in (save_dir / "report.md").read_text() and "NOT met" in proc.stdout


def test_sigkill_mid_search_leaves_the_best_so_far_and_a_rerun_resumes(digits_files, digits_datasets, tmp_path):
    from autocompress.backend import inference_predictor
    from autocompress.model_io import locate_model

    save_dir = tmp_path / "out"
    cmd = _optimize_cmd(digits_files, digits_datasets, save_dir, "--candidates", "ptq", "prune",
                        "--prune-ratios", "0.25", "0.5", "--no-refine")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done: list = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            summary = json.loads((save_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        done = [c["id"] for c in summary.get("candidates", []) if c.get("status") == "done"]
        if done:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the search finished before it could be killed; give it more candidates"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done and summary["chosen"] in done
    predict = inference_predictor(locate_model(save_dir / "model"), int8=True)  # usable right away
    assert predict({"x": np.zeros((2, 1, 8, 8), np.float32)})[0].shape == (2, 10)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode in (0, 3), rerun.stderr[-3000:]
    final = json.loads((save_dir / "summary.json").read_text())
    by_id = {c["id"]: c for c in final["candidates"]}
    assert all(by_id[i].get("resumed") for i in done)  # finished candidates are not run again
    assert {c["status"] for c in final["candidates"]} == {"done"}


def test_a_spent_time_budget_runs_nothing_more_and_says_so(digits_files, digits_data, tmp_path):
    summary = _auto(digits_files, tmp_path / "out", digits_data, auto={**SMALL, "time_budget": 0.01}).compression()
    assert {c["status"] for c in summary["candidates"]} == {"not_run"}
    assert all("time budget spent" in c["reason"] for c in summary["candidates"])
    assert summary["chosen"] is None and summary["target_met"] is False and summary["model_dir"] is None
    assert "no candidate finished" in " ".join(summary["warnings"])


def test_training_recipe_distills_logits_when_the_output_is_a_softmax(digits_files):
    """A softmax output (PP-OCRv4 rec) is distilled on its logits with KL; a logits output (the digits
    CNN) keeps the spec's defaults, a sigmoid map (PP-OCRv4 det) gets a small Adam step. Channels are
    ranked by their activations either way."""
    from autocompress.auto.search import training_recipe
    from autocompress.model_io import load_model, locate_model
    from autocompress.ocr import det_model_dir, rec_model_dir
    from autocompress.paddle_env import legacy_ir

    with legacy_ir():
        digits = training_recipe(load_model(digits_files))
        rec = training_recipe(load_model(locate_model(rec_model_dir())))
        det = training_recipe(load_model(locate_model(det_model_dir())))
    assert digits == {"DistillationConfig": {}, "PruneConfig": {"criterion": "activation"}, "TrainConfig": {}}
    assert rec["DistillationConfig"]["distill_loss"] == "kl_loss"
    pair = rec["DistillationConfig"]["distill_node_pair"]
    assert len(pair) == 2 and pair[0] == pair[1] and pair[0].startswith("linear_")
    assert rec["TrainConfig"] == {"optimizer": "Adam", "learning_rate": 3e-4}
    # a sigmoid probability map (the detector): l2 on the map, a small Adam step
    assert det == {"DistillationConfig": {}, "PruneConfig": {"criterion": "activation"},
                   "TrainConfig": {"optimizer": "Adam", "learning_rate": 1e-4}}


def test_the_summary_has_every_run_field(searched):
    from autocompress.summary import REQUIRED_FIELDS

    summary, _ = searched
    chosen = next(c for c in summary["candidates"] if c["id"] == summary["chosen"])
    assert set(REQUIRED_FIELDS) <= set(summary)
    assert summary["size_bytes_after"] == chosen["size_bytes"] and summary["metric_drop"] == chosen["metric_drop"]
    assert summary["latency_ms_after"] == chosen["latency_ms"]["64"]
    assert summary["latency_ms_before"] == summary["original"]["latency_ms"]["64"]


def test_a_train_config_fills_the_recipe_and_conflicts_with_auto_epochs(digits_files, digits_data, tmp_path):
    """A TrainConfig is not silently replaced or ignored: its keys win over the recipe (which fills what
    it leaves unset), and Auto.epochs / Auto.train_iter beside it is an error."""
    from autocompress import AutoCompression
    from autocompress.config import load_run_config

    train, evaluation, _ = _sources(digits_data)
    files = (str(digits_files.model_dir), digits_files.model_filename, digits_files.params_filename)
    with pytest.raises(ConfigError, match=r"Auto.epochs and a TrainConfig are both given"):
        AutoCompression(*files, str(tmp_path / "a"), {"Auto": SMALL}, {"train_iter": 3}, train, evaluation,
                        devices="cpu")
    with pytest.raises(ConfigError, match=r"Auto.train_iter and a TrainConfig"):
        load_run_config({"Model": {"model_dir": str(digits_files.model_dir)}, "Data": {"train": "t", "eval": "e"},
                         "Auto": {"train_iter": 5}, "TrainConfig": {"epochs": 1}})
    auto = {k: v for k, v in SMALL.items() if k != "epochs"} | {"candidates": ["prune"]}
    summary = AutoCompression(*files, str(tmp_path / "b"), {"Auto": auto}, {"train_iter": 3, "learning_rate": 0.01},
                              train, evaluation, devices="cpu", progress=False).compression()
    run = json.loads((Path(summary["save_dir"]) / "candidates" / "prune-0.5" / "summary.json").read_text())
    assert run["steps"] == 3 and {p["lr"] for p in run["curve"]} == {0.01}  # the TrainConfig's length and rate
    assert run["criterion"] == "activation"  # the recipe still ranks the channels
