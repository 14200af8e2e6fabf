"""FP32 fallback on the real digits model: a PTQ configuration that clips hard (hist at the 80th
percentile) loses ~35 points when deployed with oneDNN int8; keeping the most sensitive layers in
FP32 wins most of it back, and the saved model really runs those layers in FP32."""
import json

import numpy as np
import pytest

from autocompress.config import HyperParameterOptimizationConfig, QuantizationConfig
from autocompress.model_io import locate_model
from autocompress.paddle_env import legacy_ir
from autocompress.quant.fallback import fallback_plan, group_sizes, layer_costs, rank_layers, relative_noise
from autocompress.quant.ptq_search import MODEL_SUBDIR, TRIALS_FILE, run_ptq_search
from test_quant_fixtures import calib_batches, top1_evaluator

TARGET = 0.982  # the FP32 model scores 0.992 on oneDNN: 1 point of drop allowed
CLIPPING = {"ptq_algo": "hist", "hist_percent": 0.8, "batch_size": 10, "batch_num": 30, "bias_correct": False,
            "search_algo": "grid", "max_quant_count": 1, "finalists": 1}


def _search(files, data, out, **hpo):
    x, y = data["eval"]
    return run_ptq_search(files, calib_batches(data["calib"][0]), top1_evaluator(x, y), {}, {**CLIPPING, **hpo},
                          out, target_metric=TARGET, progress=False)


@pytest.fixture(scope="module")
def searches(digits_files, digits_data, tmp_path_factory):
    on = tmp_path_factory.mktemp("fallback-on")
    off = tmp_path_factory.mktemp("fallback-off")
    return (_search(digits_files, digits_data, on, fp32_fallback=6), on,
            _search(digits_files, digits_data, off, fp32_fallback=0), off)


def _saved_ops(folder):
    from autocompress.model_io import load_model, locate_model

    with legacy_ir():
        model = load_model(locate_model(folder / MODEL_SUBDIR))
        block = model.program.global_block()
        ops = list(block.ops)
        # a conv whose Filter is a parameter runs on FP32 weights; a quantized one reads dequantize_linear's output
        fp32_convs = {op.output("Output")[0] for op in ops
                      if op.type == "conv2d" and block.var(op.input("Filter")[0]).persistable}
    return ops, fp32_convs


def test_fallback_never_lowers_the_deployed_metric_and_keeps_its_layers_fp32(searches, digits_files):
    """What holds on every run, whatever the machine's oneDNN numerics give for the exact metrics: the
    fallback starts from the same int8 model, never lowers its deployed metric, respects the cap, stops
    for a stated reason, and the layers it kept run in FP32 in the saved model."""
    from autocompress.model_io import load_model
    from autocompress.quant.fallback import MAX_STEPS
    from autocompress.quant.targets import find_targets, int8_layers, layer_key

    on, on_dir, off, _ = searches
    cap = 6
    assert on["int8_deployed_metric"] == off["deployed_metric"] == off["int8_deployed_metric"]  # same trial
    assert on["deployed_metric"] == on["metric"] >= on["int8_deployed_metric"]  # never lower
    assert len(on["fp32_layers"]) <= cap
    for r in (on, off):
        assert r["target_met"] == (r["metric"] >= TARGET)
    steps = on["fallback_steps"]
    if on["int8_deployed_metric"] >= TARGET:  # nothing to recover: the fallback does not run
        assert steps == [] and on["fp32_layers"] == []
        return
    assert 1 <= len(steps) <= MAX_STEPS and "FP32 fallback" in on["warnings"][0]
    assert all(s["fp32_layers"][-len(s["added"]):] == s["added"] and len(s["fp32_layers"]) <= cap for s in steps)
    best = on["int8_deployed_metric"]
    for s in steps:  # a step is kept exactly when it raised the best deployed metric so far
        assert s["accepted"] == (s["deployed_metric"] > best)
        best = max(best, s["deployed_metric"])
    accepted = [s for s in steps if s["accepted"]]
    if accepted:
        assert (accepted[-1]["fp32_layers"], accepted[-1]["deployed_metric"]) == (on["fp32_layers"],
                                                                                 on["deployed_metric"])
    else:
        assert on["fp32_layers"] == [] and on["deployed_metric"] == on["int8_deployed_metric"]
    with legacy_ir():
        model = load_model(digits_files)
        candidates = len(int8_layers(model.program, find_targets(model.program, QuantizationConfig())))
    tried = sum(len(s["added"]) for s in steps)
    assert (on["deployed_metric"] >= TARGET or len(on["fp32_layers"]) == cap or tried >= candidates
            or len(steps) == MAX_STEPS)  # why it stopped
    with legacy_ir():
        saved = load_model(locate_model(on_dir / MODEL_SUBDIR))
        block = saved.program.global_block()
        producer = {n: op for op in block.ops for n in op.output_arg_names}
        by_key = {layer_key(op): op for op in block.ops}
        for key in on["fp32_layers"]:
            op = by_key[key]
            assert op.attr("skip_quant") == 1, key
            for name in op.input_arg_names:  # no dequantize_linear in front: FP32 inputs and weights
                assert name not in producer or producer[name].type != "dequantize_linear", (key, name)
                if block.var(name).persistable:
                    assert np.array(saved.scope.find_var(name).get_tensor()).dtype == np.float32, (key, name)


def test_saved_model_runs_the_fallback_layers_in_fp32(searches):
    on, on_dir, off, off_dir = searches
    on_ops, on_fp32_convs = _saved_ops(on_dir)
    off_ops, off_fp32_convs = _saved_ops(off_dir)

    def count(ops, kind):
        return sum(op.type == kind for op in ops)

    assert count(on_ops, "quantize_linear") < count(off_ops, "quantize_linear")
    assert count(on_ops, "dequantize_linear") < count(off_ops, "dequantize_linear")
    from autocompress.quant.targets import layer_key

    skipped = {layer_key(op) for op in on_ops if op.has_attr("skip_quant") and op.attr("skip_quant") == 1}
    assert skipped == set(on["fp32_layers"])  # the int attribute oneDNN's placement pass honours
    assert {f"conv2d({o})" for o in on_fp32_convs} == {k for k in on["fp32_layers"] if k.startswith("conv2d(")}
    assert off_fp32_convs == set()
    meta = json.loads((on_dir / MODEL_SUBDIR / "autocompress.json").read_text())
    assert meta["fp32_layers"] == on["fp32_layers"] and meta["metric"] == on["deployed_metric"]
    table = json.loads((on_dir / TRIALS_FILE).read_text())
    assert table["trials"][0]["fp32_layers"] == on["fp32_layers"]
    assert table["trials"][0]["fallback_steps"] == on["fallback_steps"]
    assert not (on_dir / ".fallback").exists()


def test_fallback_off_leaves_everything_quantized(searches):
    _, _, off, off_dir = searches
    assert off["fp32_layers"] == [] and off["fallback_steps"] == [] and off["warnings"] == []
    assert off["deployed_metric"] == off["int8_deployed_metric"]
    ops, fp32_convs = _saved_ops(off_dir)
    assert not any(op.has_attr("skip_quant") and op.attr("skip_quant") for op in ops)
    assert fp32_convs == set() and sum(op.type == "conv2d" for op in ops) == 3


def test_automatic_default_caps_at_ten_percent_and_skips_a_met_target(digits_files, digits_data, tmp_path):
    auto = _search(digits_files, digits_data, tmp_path / "auto")  # fp32_fallback unset: automatic
    assert len(auto["fp32_layers"]) <= 1  # ceil(10% of the 10 int8 layers)
    assert auto["deployed_metric"] >= auto["int8_deployed_metric"]
    assert auto["fallback_steps"] and auto["fallback_steps"][0]["deployed_metric"] is not None
    x, y = digits_data["eval"]
    good = run_ptq_search(digits_files, calib_batches(digits_data["calib"][0]), top1_evaluator(x, y), {},
                          {**CLIPPING, "ptq_algo": "avg"}, tmp_path / "good", target_metric=TARGET, progress=False)
    assert good["deployed_metric"] >= TARGET and good["fallback_steps"] == [] and good["fp32_layers"] == []


def test_every_layer_in_fp32_deploys_like_the_fp32_model(digits_files, digits_data, tmp_path):
    """Thresholds at the median destroy the int8 model (0.10); with every int8 layer kept FP32 the
    deployed model scores like FP32 (0.992): nothing runs in int8 any more, not even pool2d, whose
    int8 run the simulated model never shows."""
    from autocompress.model_io import load_model
    from autocompress.quant.apply import QuantTemplate, save_quantized
    from autocompress.quant.calibration import collect_stats
    import dataclasses

    from autocompress.backend import inference_predictor
    from autocompress.evaluation import executor_predictor
    from autocompress.quant.targets import find_targets, int8_layers
    from autocompress.quant.thresholds import compute_thresholds

    x, y = digits_data["eval"]
    evaluate = top1_evaluator(x, y)
    with legacy_ir():
        model = load_model(digits_files)
        targets = find_targets(model.program, QuantizationConfig())
        layers = int8_layers(model.program, targets)
        stats = collect_stats(model, calib_batches(digits_data["calib"][0]), targets, chunk_size=10)
        thresholds = compute_thresholds(stats, "hist", hist_percent=0.5)
        quantized = [layer.key for layer in layers if layer.quantized]
        only_quantized = save_quantized(QuantTemplate(model, targets, fp32_layers=quantized).instantiate(thresholds),
                                        model, tmp_path / "quantized-fp32")
        q_all = QuantTemplate(model, targets, fp32_layers=[layer.key for layer in layers]).instantiate(thresholds)
        simulated = evaluate(executor_predictor(dataclasses.replace(model, scope=q_all.scope), program=q_all.program))
        every = save_quantized(q_all, model, tmp_path / "all-fp32")
    assert [layer.op_type for layer in layers].count("pool2d") == 2 and len(quantized) == 4
    assert simulated == pytest.approx(0.992)
    assert evaluate(inference_predictor(every, int8=True)) == pytest.approx(0.992)
    # the conv/matmul layers alone are not enough: oneDNN still runs both pool2d in int8
    assert evaluate(inference_predictor(only_quantized, int8=True)) < 0.2


@pytest.fixture(scope="module")
def digits_int8(digits_files, digits_data):
    """(loaded digits model, its int8 layers, calibration statistics)."""
    from autocompress.model_io import load_model
    from autocompress.quant.calibration import collect_stats
    from autocompress.quant.targets import find_targets, int8_layers

    with legacy_ir():
        model = load_model(digits_files)
        targets = find_targets(model.program, QuantizationConfig())
        layers = int8_layers(model.program, targets)
        stats = collect_stats(model, calib_batches(digits_data["calib"][0]), targets, chunk_size=10)
    return model, layers, stats


def test_ranking_and_plan_are_cheap_and_documented(digits_int8):
    from autocompress.quant.thresholds import compute_thresholds

    _, layers, stats = digits_int8
    tight = rank_layers(layers, stats, compute_thresholds(stats, "abs_max"), 8, {})
    clipped = rank_layers(layers, stats, compute_thresholds(stats, "hist", hist_percent=0.5), 8, {})
    assert len(tight) == len(layers) == 10
    assert [s for _, s in tight] == sorted((s for _, s in tight), reverse=True)
    assert max(s for _, s in tight) < 0.01 < min(s for _, s in clipped)  # clipping at the median is noisy
    # relative noise: tiny at the max, large when half the values are clipped
    hist = np.ones((1, 2048))
    assert relative_noise(hist, np.array([1 / 2048]), np.array([1.0]), 8)[0] < 1e-4
    assert relative_noise(hist, np.array([1 / 2048]), np.array([0.5]), 8)[0] > 0.1
    assert fallback_plan(None, 10, 0.9, 0.95, 0.99) == (1, 0.95)
    assert fallback_plan(None, 10, 0.9, None, 0.99) is None       # automatic needs a missed target
    assert fallback_plan(None, 10, 0.96, 0.95, 0.99) is None
    assert fallback_plan(0, 10, 0.5, 0.95, 0.99) is None          # off
    assert fallback_plan(4, 10, 0.9, None, 0.99) == (4, 0.99)     # explicit: up to the FP32 metric
    assert fallback_plan(40, 10, 0.9, 0.95, 0.99) == (10, 0.95)
    sizes = group_sizes(6)
    assert [next(sizes) for _ in range(5)] == [1, 1, 2, 4, 6]


def test_fallback_ranks_by_noise_per_cost(digits_int8):
    """Of two equally noisy layers the cheaper one goes to FP32 first; costs are work shares."""
    from autocompress.quant.targets import Layer

    model, layers, stats = digits_int8
    with legacy_ir():
        block = model.program.global_block()
        shapes = {w: tuple(block.var(w).shape) for layer in layers for w in layer.weights}
    costs = layer_costs(layers, stats, shapes)
    assert set(costs) == {layer.key for layer in layers} and sum(costs.values()) == pytest.approx(1.0)
    by_type = {}
    for layer in layers:
        by_type.setdefault(layer.op_type, []).append(costs[layer.key])
    # a conv's multiply-accumulates outweigh the elements a pool reads and writes
    assert max(by_type["conv2d"]) > 10 * max(by_type["pool2d"])
    # every element of every calibration sample is counted: the first conv's output holds
    # samples x C x H x W of them, and its cost relative to a pool's is MACs against elements moved
    first = next(layer for layer in layers if layer.op_type == "conv2d")
    pool = next(layer for layer in layers if layer.op_type == "pool2d")
    samples = int(stats.chunk_samples.sum())
    with legacy_ir():
        out_shape = block.var(first.outputs[0]).shape
    out_elements = samples * int(np.prod(out_shape[1:]))
    assert stats.hist[stats.index()[first.outputs[0]]].sum() == out_elements
    w = shapes[first.weights[0]]
    pool_elements = sum(int(stats.hist[stats.index()[n]].sum()) for n in set(pool.activations + pool.outputs))
    assert costs[first.key] / costs[pool.key] == pytest.approx(out_elements * w[1] * w[2] * w[3] / pool_elements)
    # equal noise: the cheap layer first; ten times the noise: the expensive one first
    cheap, dear = Layer("cheap", "pool2d", False, ["a"], [], []), Layer("dear", "conv2d", True, ["b"], [], [])
    from autocompress.quant.calibration import CalibrationStats

    flat = CalibrationStats(["a", "b"], np.array([1]), np.ones((2, 1)), np.ones((2, 1)),
                            np.ones((2, 1, 2048), np.uint32), np.ones(2, np.float32), {})
    th = {"a": 0.5, "b": 0.5}
    assert [k for k, _ in rank_layers([dear, cheap], flat, th, 8, {}, {"cheap": 0.05, "dear": 0.95})] == ["cheap", "dear"]
    assert [k for k, _ in rank_layers([dear, cheap], flat, th, 8, {}, None)] == ["dear", "cheap"]  # tie: program order
    noisy = {"a": 0.99, "b": 0.05}  # clipping "b" at 5 % of its range: far noisier
    assert [k for k, _ in rank_layers([dear, cheap], flat, noisy, 8, {}, {"cheap": 0.05, "dear": 0.95})][0] == "dear"


def test_fp32_fallback_must_be_non_negative():
    from autocompress.errors import ConfigError

    assert HyperParameterOptimizationConfig().fp32_fallback is None
    assert HyperParameterOptimizationConfig(fp32_fallback=0).fp32_fallback == 0
    with pytest.raises((ValueError, ConfigError), match=">= 0"):
        HyperParameterOptimizationConfig(fp32_fallback=-1)


def test_changing_only_the_fallback_keeps_the_search_trials(digits_files):
    """A rerun that changes the finalists, the fallback cap or its ranking reuses the trial log."""
    from autocompress.quant.calibration import CalibrationStats
    from autocompress.quant.ptq_search import _fingerprint

    stats = CalibrationStats(["a"], np.array([1]), np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1, 8), np.uint32),
                             np.ones(1, np.float32), {})

    def fingerprint(**hpo):
        return _fingerprint(digits_files, stats, QuantizationConfig(), HyperParameterOptimizationConfig(**hpo),
                            None, 0.9, None, "cpu")

    base = fingerprint()
    assert fingerprint(fp32_fallback=3, fallback_ranking="noise", finalists=1) == base
    assert fingerprint(ptq_algo=["avg"]) != base and fingerprint(hist_percent=[0.9]) != base
