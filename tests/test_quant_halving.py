"""Successive halving in the PTQ search (HyperParameterOptimizationConfig.subset_eval) on the real digits
model and data: trials far below the best subset metric get no full evaluation and are never selected."""
import json

import numpy as np
import pytest

from autocompress.config import HyperParameterOptimizationConfig, build
from autocompress.errors import ConfigError
from autocompress.quant.ptq_search import TRIALS_FILE, run_ptq_search
from test_quant_fixtures import calib_batches, top1_evaluator

# hist at 0.7 clips the activations hard (~0.81 top-1); avg and abs_max stay at the FP32 level (~0.99):
# a space with clearly bad trials, in a fixed grid order (the bad ones come after a good one)
SPACE = {"ptq_algo": ["avg", "hist", "abs_max"], "batch_num": [2, 20], "batch_size": 10, "hist_percent": 0.7,
         "bias_correct": False, "search_algo": "grid", "max_quant_count": 6}
EVAL_BATCH = 64


def _counting(x, y):
    """The digits top-1 evaluator, recording the `limit` of every call."""
    calls = []
    inner = top1_evaluator(x, y, batch=EVAL_BATCH)

    def evaluate(predict, limit=None):
        calls.append(limit)
        return inner(predict, limit)
    return evaluate, calls


def _run(digits_files, digits_data, tmp_path, evaluate, **hpo):
    return run_ptq_search(digits_files, calib_batches(digits_data["calib"][0]), evaluate, {}, {**SPACE, **hpo},
                          tmp_path, progress=False)


def test_subset_eval_prunes_bad_trials_and_saves_full_evaluations(digits_files, digits_data, tmp_path):
    x, y = digits_data["eval"]
    n_batches = -(-len(x) // EVAL_BATCH)
    subset = -(-n_batches // 4)  # ceil(0.25 * batches)
    evaluate, calls = _counting(x, y)
    result = _run(digits_files, digits_data, tmp_path, evaluate, subset_eval=0.25)

    trials = result["trials"]
    pruned = [t for t in trials if t["pruned"]]
    full = [t for t in trials if not t["pruned"]]
    assert len(trials) == 6
    assert [t["config"]["ptq_algo"] for t in pruned] == ["hist", "hist"]
    for t in pruned:
        assert t["status"] == "pruned" and t["metric"] is None and t["deployed_metric"] is None
        assert t["subset_metric"] < 0.9
    for t in full:
        assert t["status"] == "ok" and t["subset_metric"] >= 0.98 and t["metric"] >= 0.97
    # calls: FP32 baseline, one subset run per trial, full runs only for the 4 promoted trials,
    # FP32 deployed, 3 finalists
    assert calls[0] is None and calls[1:1 + 2 * len(full) + len(pruned)].count(subset) == len(trials)
    search_full = calls[1:1 + len(trials) + len(full)].count(None)
    assert search_full == len(full) == 4 < len(trials)
    assert len(calls) == 1 + len(trials) + len(full) + 1 + 3
    assert set(calls) == {None, subset}
    # selection and finalists on full metrics only
    assert result["simulated_metric"] is not None and result["deployed_metric"] is not None
    assert result["best_config"]["ptq_algo"] != "hist"
    finalists = [t for t in trials if t["deployed_metric"] is not None]
    assert len(finalists) == 3 and not any(t["pruned"] for t in finalists)
    table = json.loads((tmp_path / TRIALS_FILE).read_text())
    assert table["subset_batches"] == subset and table["eval_batches"] == n_batches
    assert [t["pruned"] for t in table["trials"]] == [t["pruned"] for t in trials]
    best = table["trials"][table["best_index"]]
    assert best["pruned"] is False and best["metric"] is not None and best["deployed_metric"] is not None


def test_without_subset_eval_every_trial_is_fully_evaluated(digits_files, digits_data, tmp_path):
    x, y = digits_data["eval"]
    evaluate, calls = _counting(x, y)
    result = _run(digits_files, digits_data, tmp_path, evaluate)
    assert calls == [None] * (1 + 6 + 1 + 3)  # unchanged: baseline, trials, FP32 deployed, finalists
    assert all(t["status"] == "ok" and not t["pruned"] and t["subset_metric"] is None for t in result["trials"])
    hist = [t["metric"] for t in result["trials"] if t["config"]["ptq_algo"] == "hist"]
    assert len(hist) == 2 and max(hist) < 0.9
    table = json.loads((tmp_path / TRIALS_FILE).read_text())
    assert table["subset_batches"] is None


def test_subset_eval_needs_an_evaluator_that_takes_limit(digits_files, digits_data, tmp_path):
    x, y = digits_data["eval"]
    inner = top1_evaluator(x, y)
    calls = []

    def evaluate(predict):  # no `limit`: the subset cannot be asked for
        calls.append(1)
        return inner(predict)

    result = run_ptq_search(digits_files, calib_batches(digits_data["calib"][0]), evaluate, {},
                            {**SPACE, "max_quant_count": 2, "subset_eval": 0.25}, tmp_path, progress=False,
                            deploy_eval=False)
    assert len(calls) == 1 + 2
    assert not any(t["pruned"] for t in result["trials"])
    assert any("subset_eval ignored" in w for w in result["warnings"])


def test_subset_eval_with_an_eval_data_evaluator(digits_files, digits_data, tmp_path):
    """Data mode: the batch count comes from the data (4 batches of 50 -> 1 batch subset)."""
    from autocompress.evaluation import build_evaluator

    x, y = digits_data["eval"]
    evaluator = build_evaluator(eval_data=[(x[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)],
                                metric="top1", feed_names=["x"])
    assert evaluator.supports_limit
    result = run_ptq_search(digits_files, calib_batches(digits_data["calib"][0]), evaluator, {},
                            {**SPACE, "subset_eval": 0.25}, tmp_path, progress=False, deploy_eval=False)
    assert result["warnings"] == []
    assert [t["config"]["ptq_algo"] for t in result["trials"] if t["pruned"]] == ["hist", "hist"]
    assert json.loads((tmp_path / TRIALS_FILE).read_text())["subset_batches"] == 1


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1])
def test_subset_eval_must_be_a_proper_fraction(bad):
    with pytest.raises(ConfigError, match="subset_eval"):
        build(HyperParameterOptimizationConfig, {"subset_eval": bad})
    assert HyperParameterOptimizationConfig(subset_eval=0.25).subset_eval == 0.25
    assert HyperParameterOptimizationConfig().subset_eval is None


def test_ocr_evaluator_takes_limit_and_knows_its_batch_count():
    from autocompress.ocr import ocr_evaluator

    dictionary = ["a", "b"]
    batches = [np.full((1, 1), i, np.float32) for i in range(4)]

    def predict(feed):  # batch i reads "a" for i < 2, else "b"; truth is "a" everywhere
        probs = np.zeros((1, 1, 3), np.float32)
        probs[0, 0, 1 if feed["x"][0, 0] < 2 else 2] = 1
        return [probs]

    evaluate = ocr_evaluator(batches, [["a"]] * 4, dictionary)
    assert evaluate.num_batches == 4
    assert evaluate(predict, limit=1) == 1.0 and evaluate(predict) == 0.5
