"""Pruning + distillation on the real digits model (scikit-learn's load_digits): the issue's targets."""
from __future__ import annotations

import numpy as np
import pytest

from autocompress import model_io
from autocompress.program.legacy import info as program_info
from autocompress.paddle_env import legacy_ir
from autocompress.prune.asp import check_2_4, eligible
from autocompress.prune.masks import read_param
from autocompress.prune.run import run_prune_distill, run_sparse_distill

TRAIN = {"epochs": 5, "optimizer": "Adam", "learning_rate": 0.005, "eval_iter": 20}


@pytest.fixture(scope="module")
def digits_io(digits_data):
    from autocompress.data import FeedSource
    from autocompress.evaluation import build_evaluator

    (xt, yt), (xe, ye) = digits_data["train"], digits_data["eval"]
    train = FeedSource.from_arrays({"x": xt}, yt, batch_size=64)
    evaluator = build_evaluator(eval_data=FeedSource.from_arrays({"x": xe}, ye, batch_size=250), metric="top1",
                                feed_names=["x"])
    return train, evaluator


def _sparsity(files, names):
    with legacy_ir():
        model = model_io.load_model(files)
        ws = [read_param(model.scope, n) for n in names]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws)


def test_channel_pruning_half_then_distill_stays_within_one_point(digits_copy, digits_io, tmp_path, hashes):
    train, evaluator = digits_io
    before = hashes(digits_copy.model_dir)
    r = run_prune_distill(digits_copy, train, evaluator, {"pruned_ratio": 0.5}, {}, TRAIN, tmp_path / "run",
                          progress=False)
    assert hashes(digits_copy.model_dir) == before
    print(f"digits prune 0.5: params {r['params_before']} -> {r['params_after']}, FLOPs {r['flops_before']} -> "
          f"{r['flops_after']}, top-1 {r['baseline_metric']:.4f} -> {r['metric']:.4f}")
    assert r["params_after"] <= 0.6 * r["params_before"]
    assert r["flops_after"] <= 0.6 * r["flops_before"]
    assert r["size_bytes_after"] < r["size_bytes_before"]
    assert r["metric"] >= r["baseline_metric"] - 0.010
    # the saved model is the pruned one and scores what the engine reported
    with legacy_ir():
        model = model_io.load_model(r["model_files"])
        assert program_info.count_params(model.program) == r["params_after"]
        from autocompress.evaluation import executor_predictor

        assert evaluator(executor_predictor(model)) == pytest.approx(r["metric"], abs=1e-6)


def test_gmp_75_percent_hits_the_target_and_stays_within_one_point(digits_copy, digits_io, tmp_path):
    train, evaluator = digits_io
    r = run_sparse_distill(digits_copy, train, evaluator, {"prune_strategy": "gmp", "prune_ratio": 0.75}, {},
                           TRAIN, tmp_path / "run", progress=False)
    names = list(r["sparsity"]["per_tensor"])
    measured = _sparsity(r["model_files"], names)
    print(f"digits GMP 0.75: sparsity {measured:.4f}, top-1 {r['baseline_metric']:.4f} -> {r['metric']:.4f}, "
          f"compressed params {r['compressed_size_before']['params_compressed_bytes']} -> "
          f"{r['compressed_size_after']['params_compressed_bytes']} bytes")
    assert abs(measured - 0.75) <= 0.01
    assert r["metric"] >= r["baseline_metric"] - 0.010
    assert all(c["step"] >= 47 for c in r["curve"])  # only fully sparse weights were candidates
    assert r["compressed_size_after"]["params_compressed_bytes"] < \
        0.5 * r["compressed_size_before"]["params_compressed_bytes"]


def test_asp_training_keeps_two_of_four_zero(digits_copy, digits_io, tmp_path):
    train, evaluator = digits_io
    tc = dict(TRAIN, epochs=1)
    r = run_prune_distill(digits_copy, train, evaluator, {"prune_algo": "asp"}, {}, tc, tmp_path / "run",
                          asp_include_convs=True, progress=False)
    with legacy_ir():
        model = model_io.load_model(r["model_files"])
        uses, skipped = eligible(model.program, include_convs=True)
        assert "conv2d_0.w_0" in skipped  # 1 input channel
        assert len(uses) == 3  # two convs and the classifier
        for name, use in uses.items():
            assert check_2_4(read_param(model.scope, name), use) == 1.0, name
    assert r["sparsity"]["all_groups_ok"]
    assert r["metric"] >= r["baseline_metric"] - 0.03
    assert np.isfinite(r["metric"])


def _batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


@pytest.mark.parametrize("strategy", [
    {"PruneConfig": {"pruned_ratio": 0.5}, "DistillationConfig": {}},
    {"UnstructurePruneConfig": {"prune_ratio": 0.5, "local_sparsity": True}, "DistillationConfig": {}},
])
def test_autocompression_api_runs_both_pruning_combinations(digits_copy, digits_data, tmp_path, strategy):
    import json

    from autocompress import AutoCompression

    (xt, yt), (xe, ye) = digits_data["train"], digits_data["eval"]
    ac = AutoCompression(str(digits_copy.model_dir), digits_copy.model_filename, digits_copy.params_filename,
                         str(tmp_path / "out"), strategy, dict(TRAIN, epochs=2), _batches(xt, yt, 64),
                         _batches(xe, ye, 250), devices="cpu", max_drop=0.02, progress=False)
    summary = ac.compression()
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["strategy"] == summary["strategy"] in ("prune_distill", "sparse_distill")
    assert summary["metric"] >= summary["baseline_metric"] - 0.02
    if "PruneConfig" in strategy:
        assert summary["params_after"] < 0.6 * summary["params_before"]
        assert summary["flops_after"] < 0.6 * summary["flops_before"]
    else:
        assert summary["sparsity_after"] == pytest.approx(0.5, abs=0.01)
        assert summary["sparsity_before"] < 0.01
        assert summary["nonzero_params_after"] < summary["params_after"]


def test_pipeline_split_prune_then_distill_keeps_asp_masks(digits_copy, digits_io, tmp_path):
    """The pipeline prunes in one stage and trains in the next: pruned_input=True."""
    from autocompress.prune import prune_model

    train, evaluator = digits_io
    pruned = prune_model(digits_copy, {"prune_algo": "asp"}, tmp_path / "pruned")
    assert pruned["sparsity"]["all_groups_ok"]
    teacher = {"teacher_model_dir": str(digits_copy.model_dir)}
    r = run_prune_distill(pruned["model_files"], train, evaluator, {"prune_algo": "asp"}, teacher,
                          {"train_iter": 10, "eval_iter": 5}, tmp_path / "run", pruned_input=True, progress=False)
    with legacy_ir():
        model = model_io.load_model(r["model_files"])
        uses, _ = eligible(model.program)
        assert list(uses) == ["linear_0.w_0"]
        assert check_2_4(read_param(model.scope, "linear_0.w_0"), uses["linear_0.w_0"]) == 1.0
    assert r["baseline_metric"] > 0.98  # measured on the original (the teacher), not the masked input
