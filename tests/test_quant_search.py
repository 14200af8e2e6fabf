"""The PTQ search end to end on the real digits data: trials reuse one calibration, best model and
trial table always saved, reproducible samplers."""
import json

import numpy as np
import pytest

from autocompress.config import HyperParameterOptimizationConfig
from autocompress.quant.ptq_search import MODEL_SUBDIR, TRIALS_FILE, run_ptq_search
from autocompress.quant.space import GridSampler, SearchSpace, make_sampler
from test_quant_fixtures import calib_batches, digits_data, top1_evaluator, train_digits_cnn

SPACE = {"ptq_algo": ["KL", "hist", "mse", "avg"], "batch_num": [2, 20], "batch_size": 10, "hist_percent": 0.999,
         "bias_correct": False, "search_algo": "grid", "max_quant_count": 8}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return train_digits_cnn(tmp_path_factory.mktemp("digits")), digits_data()


def _space(**kw):
    return SearchSpace.from_config(HyperParameterOptimizationConfig(**{**SPACE, **kw}))


def test_spec_semantics_lists_are_choices_or_bounds():
    space = _space(hist_percent=[0.99, 0.9999, 0.995], batch_size=[30, 10, 20])
    assert space.choices["ptq_algo"] == ["KL", "hist", "mse", "avg"]
    assert space.bounds["hist_percent"][:2] == (0.99, 0.9999) and space.bounds["batch_size"][:2] == (10, 30)
    for algo in ("tpe", "random"):
        sampler = make_sampler(space, algo, seed=3, budget=20)
        for _ in range(20):
            c = sampler.ask()
            assert c.ptq_algo in space.choices["ptq_algo"]
            assert 10 <= c.batch_size <= 30 and 2 <= c.batch_num <= 20
            assert c.ptq_algo != "hist" or 0.99 <= c.hist_percent <= 0.9999
            sampler.tell(c, float(c.batch_num))


@pytest.mark.parametrize("algo", ["tpe", "random", "grid"])
def test_samplers_are_reproducible_with_a_seed(algo):
    def run(seed):
        sampler = make_sampler(_space(batch_size=[10, 30]), algo, seed, 12)
        seen = []
        for _ in range(12):
            c = sampler.ask()
            if c is None:
                break
            seen.append(c)
            sampler.tell(c, -abs(c.batch_size - 17) + (c.ptq_algo == "mse"))
        return seen

    assert run(1) == run(1)
    if algo != "grid":
        assert run(1) != run(2)


def test_grid_covers_algorithms_times_batch_num():
    grid = GridSampler(_space(), seed=0, budget=8).grid
    assert {(c.ptq_algo, c.batch_num) for c in grid} == {(a, n) for a in SPACE["ptq_algo"] for n in (2, 20)}


def test_search_end_to_end_saves_best_model_and_trials(digits, tmp_path):
    files, data = digits
    x, y = data["eval"]
    calls = []

    def evaluate(predict, limit=None):
        calls.append(1)
        return top1_evaluator(x, y)(predict, limit)

    result = run_ptq_search(files, calib_batches(data["calib"][0]), evaluate, {}, SPACE, tmp_path,
                            target_metric=0.5, progress=False)
    assert len(result["trials"]) == 8 and all(t["status"] == "ok" for t in result["trials"])
    assert {t["calib_samples"] for t in result["trials"]} == {20, 200}
    assert result["calibration_samples"] == 200  # calibrated once, on the largest trial's samples
    assert result["metric"] == result["deployed_metric"] >= result["baseline_metric"] - 0.01
    assert result["target_met"] is True and result["interrupted"] is False
    finalists = [t for t in result["trials"] if t["deployed_metric"] is not None]
    assert len(finalists) == 3
    assert result["deployed_metric"] == max(t["deployed_metric"] for t in finalists)
    table = json.loads((tmp_path / TRIALS_FILE).read_text())
    assert len(table["trials"]) == 8 and table["baseline_metric"] == result["baseline_metric"]
    assert result["model_files"].model_dir == tmp_path / MODEL_SUBDIR
    meta = json.loads((tmp_path / MODEL_SUBDIR / "autocompress.json").read_text())
    assert meta["precision"] == "int8" and meta["metric"] == result["metric"]
    assert not (tmp_path / ".finalists").exists()
    assert len(calls) == 1 + 8 + 1 + 3  # fp32, trials, fp32 deployed, finalists


def test_interrupt_keeps_best_so_far_and_the_trial_table(digits, tmp_path):
    files, data = digits
    x, y = data["eval"]
    count = {"n": 0}

    def evaluate(predict, limit=None):
        count["n"] += 1
        if count["n"] == 4:  # baseline + 2 trials done
            raise KeyboardInterrupt
        return top1_evaluator(x, y)(predict)

    result = run_ptq_search(files, calib_batches(data["calib"][0]), evaluate, {}, SPACE, tmp_path, progress=False)
    assert result["interrupted"] is True and len(result["trials"]) == 2
    table = json.loads((tmp_path / TRIALS_FILE).read_text())
    assert table["interrupted"] is True and len(table["trials"]) == 2
    assert (tmp_path / MODEL_SUBDIR / "inference.pdiparams").exists()


def test_duplicate_effective_configs_cost_no_trial(digits, tmp_path):
    files, data = digits
    x, y = data["eval"]
    # batch_num 1..2 with 10-sample chunks and only 2 algorithms: at most 4 distinct models
    hpo = {**SPACE, "ptq_algo": ["avg", "abs_max"], "batch_num": [1, 2], "search_algo": "random", "max_quant_count": 6}
    result = run_ptq_search(files, calib_batches(data["calib"][0]), top1_evaluator(x, y), {}, hpo, tmp_path,
                            progress=False, deploy_eval=False)
    keys = {(t["config"]["ptq_algo"], t["calib_samples"]) for t in result["trials"]}
    assert len(keys) == len(result["trials"]) <= 4
    assert result["deployed_metric"] is None and result["metric"] == result["simulated_metric"]


def test_non_finite_metric_stops_with_a_clear_error(digits, tmp_path):
    from autocompress.errors import EvalError

    files, data = digits
    with pytest.raises(EvalError, match="finite"):
        run_ptq_search(files, calib_batches(data["calib"][0]), lambda predict: float("nan"), {}, SPACE, tmp_path,
                       progress=False)


def test_empty_calibration_data_is_a_clear_error(digits, tmp_path):
    from autocompress.errors import DataError

    files, data = digits
    x, y = data["eval"]
    with pytest.raises(DataError, match="empty"):
        run_ptq_search(files, [], top1_evaluator(x, y), {}, SPACE, tmp_path, progress=False)
    assert not (tmp_path / MODEL_SUBDIR).exists()


def test_precomputed_stats_skip_calibration(digits, tmp_path):
    from autocompress.config import QuantizationConfig
    from autocompress.model_io import load_model
    from autocompress.paddle_env import legacy_ir
    from autocompress.quant.calibration import collect_stats
    from autocompress.quant.targets import find_targets

    files, data = digits
    x, y = data["eval"]
    with legacy_ir():
        model = load_model(files)
        stats = collect_stats(model, calib_batches(data["calib"][0]), find_targets(model.program, QuantizationConfig()),
                              chunk_size=10, max_samples=100)
    result = run_ptq_search(files, None, top1_evaluator(x, y), {}, {**SPACE, "max_quant_count": 2}, tmp_path,
                            progress=False, stats=stats, deploy_eval=False)
    assert result["calibration_samples"] == 100 and len(result["trials"]) == 2
    assert np.isfinite(result["metric"])


def test_paddleslim_style_callback_sees_each_trials_program(digits, tmp_path):
    """PaddleSlim's `(exe, program, feed_names, fetch_targets)` callback must run the trial's quantized
    program, not the FP32 one; such a callback cannot run on the deployed predictor, so finalists are skipped."""
    from autocompress.evaluation import build_evaluator

    files, data = digits
    x, y = data["eval"]
    seen = []

    def slim_eval(exe, program, feed_names, fetch_targets):
        seen.append(sum(op.type == "dequantize_linear" for op in program.global_block().ops))
        out = exe.run(program, feed={feed_names[0]: x}, fetch_list=fetch_targets)[0]
        return float((out.argmax(-1) == y[:, 0]).mean())

    evaluator = build_evaluator(eval_callback=slim_eval, feed_names=["x"])
    result = run_ptq_search(files, calib_batches(data["calib"][0]), evaluator, {}, {**SPACE, "max_quant_count": 2},
                            tmp_path, progress=False)
    assert seen[0] == 0 and all(n > 0 for n in seen[1:]) and len(seen) == 3
    assert result["deployed_metric"] is None and result["metric"] >= result["baseline_metric"] - 0.01


def test_grid_with_a_range_no_algorithm_uses_terminates():
    """hist_percent is a range but no 'hist' algorithm is searched: more levels add nothing, and the
    grid used to grow its level count forever."""
    from autocompress.config import HyperParameterOptimizationConfig
    from autocompress.quant.space import GridSampler, SearchSpace

    hpo = HyperParameterOptimizationConfig(ptq_algo=["avg", "abs_max"], bias_correct=[False], batch_size=[16],
                                           batch_num=[2], hist_percent=[0.98, 0.999], max_quant_count=4,
                                           search_algo="grid")
    grid = GridSampler(SearchSpace.from_config(hpo), seed=0, budget=4).grid
    assert sorted(c.ptq_algo for c in grid) == ["abs_max", "avg"]
