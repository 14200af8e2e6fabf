"""The one orchestration keeps the spec's promises on every entry point: the PaddleSlim-style
eval_callback, the measured device and deployment backend, the no-training rule for PTQ, progress
switches, and one strategy registry."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from autocompress import AutoCompression, strategies
from autocompress.data import FeedSource
from autocompress.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PTQ = {"QuantizationConfig": {"quantize_op_types": ["conv2d", "matmul_v2", "mul"]},
       "HyperParameterOptimizationConfig": {"ptq_algo": ["avg", "abs_max"], "bias_correct": [False],
                                            "batch_size": [16], "batch_num": [2], "max_quant_count": 2,
                                            "search_algo": "grid", "finalists": 1}}


def _ptq(tmp_path, digits_files, digits_data, eval_callback=None, strategy=PTQ, **kw):
    xc, _ = digits_data["calib"]
    xe, ye = digits_data["eval"]
    evaluation = eval_callback or FeedSource.from_arrays({"x": xe[:200]}, ye[:200], batch_size=100)
    return AutoCompression(str(digits_files.model_dir), None, None, str(tmp_path / "out"), strategy, kw.pop("train", None),
                           FeedSource.from_arrays({"x": xc[:64]}, batch_size=16), evaluation,
                           kw.pop("devices", "cpu"), progress=False, max_drop=0.5, **kw).compression()


def test_paddleslim_eval_callback_runs_through_the_api(tmp_path, digits_files, digits_data):
    """`eval_callback(exe, program, feed_names, fetch_targets)` (PaddleSlim's form) used to fail: the
    baseline was scored on a predictor that has no program."""
    xe, ye = digits_data["eval"]
    calls = []

    def eval_function(exe, compiled_test_program, test_feed_names, test_fetch_list):
        out, = exe.run(compiled_test_program, feed={test_feed_names[0]: xe[:200]}, fetch_list=test_fetch_list)
        calls.append(len(test_feed_names))
        return float((np.asarray(out).argmax(-1) == ye[:200].reshape(-1)).mean())

    s = _ptq(tmp_path, digits_files, digits_data, eval_callback=eval_function)
    assert s["baseline_metric"] > 0.9 and abs(s["metric"] - s["baseline_metric"]) < 0.1
    assert "static executor" in s["metric_backend"] and s["metric_name"] == "eval_callback"
    assert len(calls) >= 3  # baseline, trials, final model


def test_train_config_with_ptq_is_an_error_in_the_api_too(tmp_path, digits_files, digits_data):
    with pytest.raises(ConfigError, match="does not train"):
        _ptq(tmp_path, digits_files, digits_data, train={"epochs": 1})


def test_tensorrt_without_a_gpu_is_an_error_not_a_substitute(tmp_path, digits_files, digits_data):
    strategy = json.loads(json.dumps(PTQ))
    strategy["QuantizationConfig"]["deploy_backend"] = "tensorrt"
    with pytest.raises(ConfigError, match="tensorrt.*GPU"):
        _ptq(tmp_path, digits_files, digits_data, strategy=strategy)


@pytest.mark.parametrize("backend,measured", [("onednn", "CPU oneDNN int8"), ("none", "stock Config, no oneDNN")])
def test_summary_states_the_backend_that_was_measured(tmp_path, digits_files, digits_data, backend, measured):
    strategy = json.loads(json.dumps(PTQ))
    strategy["QuantizationConfig"]["deploy_backend"] = backend
    s = _ptq(tmp_path, digits_files, digits_data, strategy=strategy)
    assert measured in s["latency_backend"] and measured in s["metric_backend"]
    assert s["deploy_backend"] == backend and s["device"] == "cpu"


def test_default_gpu_on_a_cpu_build_reports_cpu(tmp_path, digits_files, digits_data):
    import paddle

    if paddle.is_compiled_with_cuda():
        pytest.skip("this Paddle build has CUDA: the default 'gpu' is a GPU here")
    from autocompress.paddle_env import DEFAULT_DEVICE

    s = _ptq(tmp_path, digits_files, digits_data, devices=DEFAULT_DEVICE)
    assert s["device"] == "cpu" and "CPU" in s["latency_backend"]


def test_pipeline_training_stage_honours_progress_false(tmp_path, digits_files, digits_datasets, capfd):
    """The pipeline stage used to filter keywords by signature, so `progress=False` never reached
    run_distill and a progress bar ran in every pipeline log."""
    pytest.importorskip("kfp")
    from autocompress.kfp import adapters

    model = tmp_path / "model"
    adapters.load_model(str(digits_files.model_dir), model)
    config = json.dumps({"DistillationConfig": {}, "TrainConfig": {"train_iter": 3, "eval_iter": 3}})
    capfd.readouterr()
    adapters.distill_train(model, model, digits_datasets / "train", digits_datasets / "eval", config,
                           tmp_path / "trained")
    err = capfd.readouterr().err
    assert "it/s" not in err and "s/it" not in err and "%|" not in err
    assert (tmp_path / "trained" / digits_files.model_filename).exists()


def test_a_component_refuses_a_config_of_a_strategy_without_its_stage(tmp_path, digits_files, digits_datasets):
    pytest.importorskip("kfp")
    from autocompress.kfp import adapters

    model = tmp_path / "model"
    adapters.load_model(str(digits_files.model_dir), model)
    with pytest.raises(ConfigError, match="distill strategy, which has no calibrate stage"):
        adapters.calibrate(model, digits_datasets / "train", '{"DistillationConfig": {}, "TrainConfig": {"epochs": 1}}',
                           tmp_path / "stats")


def _literal_strings(node) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_strategy_names_live_in_one_registry():
    """No module outside autocompress/strategies/ lists the strategies (a tuple, list, set or dict
    with two or more of their names): everything else derives from the registry."""
    names = set(strategies.names())
    offenders = []
    for path in (ROOT / "autocompress").rglob("*.py"):
        if "strategies" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                found = _literal_strings(node) & names
                if len(found) >= 2:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {sorted(found)}")
    assert not offenders, offenders


def test_every_strategy_has_an_example_config_that_validates():
    from autocompress.config import load_run_config

    for name in strategies.names():
        rc = load_run_config(ROOT / "examples" / "digits" / f"{name}.yaml")
        assert rc.combination == name


def test_every_strategy_declares_a_pipeline_config_that_validates():
    from autocompress.job import Job

    for strategy in strategies.REGISTRY.values():
        assert Job.from_pipeline(json.dumps(strategy.pipeline_config)).strategy is strategy


def test_latency_on_every_named_runtime_at_batch_1_and_the_deployment_batch(tmp_path, digits_files, digits_data):
    """Issue 14: the summary gives latency where users run the model, not only oneDNN at batch 1; on
    another runtime it also measures the compressed model's metric there."""
    pytest.importorskip("openvino", reason="the openvino runtime is an optional extra")
    s = _ptq(tmp_path, digits_files, digits_data,
             deploy={"runtimes": ["onednn", "paddle-cpu", "openvino"], "batch_size": 8, "allow_slower": True})
    rows = {(r["runtime"], r["batch"]): r for r in s["latency"]}
    assert set(rows) == {(r, b) for r in ("onednn", "paddle-cpu", "openvino") for b in (1, 8)}
    assert all(r["ms_before"] > 0 and r["ms_after"] > 0 for r in rows.values())
    assert 0.5 < rows[("openvino", 8)]["metric"] <= 1.0 and "metric" not in rows[("onednn", 8)]
    assert s["deploy_batch_size"] == 8
    assert (s["latency_ms_before"], s["latency_ms_after"]) == (rows[("onednn", 1)]["ms_before"],
                                                              rows[("onednn", 1)]["ms_after"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Latency where it runs" in report and "OpenVINO" in report and "stock Config" in report


def test_a_slower_model_misses_the_target_unless_allowed(tmp_path, digits_files, digits_data, monkeypatch):
    from autocompress import measure

    def slower_after(models, feed, threads=1, target=None, per_round=None, **kw):
        if per_round is not None:
            per_round.extend([[1.0] * 15, [2.0] * 15])
        return [1.0, 2.0]  # the compressed model takes twice as long on every runtime, every round

    monkeypatch.setattr(measure, "compare_latency", slower_after)
    strict = _ptq(tmp_path / "a", digits_files, digits_data)
    assert strict["metric_drop"] <= 0.5 and strict["target_met"] is False
    assert any("slower than the original at the deployment batch" in w for w in strict["warnings"])
    allowed = _ptq(tmp_path / "b", digits_files, digits_data, deploy={"allow_slower": True})
    assert allowed["target_met"] is True and any("slower" in w for w in allowed["warnings"])


def test_reported_metric_comes_from_the_test_split_when_given(tmp_path, digits_files, digits_data):
    """Select on one split, report on another: with test data the summary's metric and baseline are
    measured on it; without, the summary says the metric is on the selection data."""
    xt, yt = digits_data["eval"]
    test = FeedSource.from_arrays({"x": xt[200:450]}, yt[200:450], batch_size=50)  # disjoint from the eval rows
    held_out = _ptq(tmp_path / "a", digits_files, digits_data, test_dataloader=test)
    on_eval = _ptq(tmp_path / "b", digits_files, digits_data)
    assert held_out["metric_split"] == "test" and on_eval["metric_split"] == "eval"
    assert held_out["baseline_metric"] != on_eval["baseline_metric"]  # 250 other samples
    assert not any("selection used" in w for w in held_out["warnings"])
    assert any("selection used" in w for w in on_eval["warnings"])


def test_timing_noise_does_not_make_a_model_slower(tmp_path, digits_files, digits_data, monkeypatch):
    """Same median gap but the rounds split evenly: noise, not a slower model."""
    from autocompress import measure

    def noisy(models, feed, threads=1, target=None, per_round=None, **kw):
        if per_round is not None:
            per_round.extend([[1.0, 2.0] * 8, [2.0, 1.0] * 8])
        return [1.0, 1.1]

    monkeypatch.setattr(measure, "compare_latency", noisy)
    s = _ptq(tmp_path, digits_files, digits_data)
    assert s["target_met"] is True and not any(r["slower"] for r in s["latency"])


def test_summary_carries_the_sha256_of_the_delivered_model(tmp_path, digits_files, digits_data):
    from autocompress.model_io import sha256_file

    s = _ptq(tmp_path, digits_files, digits_data)
    model = tmp_path / "out" / "model"
    assert s["model_sha256"] == {name: sha256_file(model / name) for name in s["model_sha256"]}
    assert set(s["model_sha256"]) == {digits_files.model_filename, digits_files.params_filename}
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["model_sha256"] == s["model_sha256"]
