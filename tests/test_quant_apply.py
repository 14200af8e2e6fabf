"""Calibration once, thresholds -> int8 model without recalibration, deployable with oneDNN int8."""
import dataclasses

import numpy as np
import pytest

from autocompress.backend import inference_predictor
from autocompress.config import QuantizationConfig
from autocompress.evaluation import executor_predictor
from autocompress.paddle_env import legacy_ir
from autocompress.quant.apply import QuantTemplate, save_quantized
from autocompress.quant.calibration import CalibrationStats, collect_stats
from autocompress.quant.targets import find_targets
from autocompress.quant.thresholds import compute_thresholds
from autocompress.quant.weights import quantize_weight, weight_scales
from test_quant_fixtures import calib_batches, digits_data, top1_evaluator, train_digits_cnn


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from autocompress.model_io import load_model

    files = train_digits_cnn(tmp_path_factory.mktemp("digits"))
    data = digits_data()
    with legacy_ir():
        model = load_model(files)
        targets = find_targets(model.program, QuantizationConfig())
        stats = collect_stats(model, calib_batches(data["calib"][0]), targets, chunk_size=10)
    return files, model, targets, stats, data


def test_targets_follow_paddles_tables(digits):
    _, model, targets, _, _ = digits
    conv_filters = [op.input("Filter")[0] for op in model.program.global_block().ops if op.type == "conv2d"]
    assert set(conv_filters) <= set(targets.weights)
    assert "x" in targets.activations  # the input of the first conv is quantized
    assert all(not model.program.global_block().var(n).persistable for n in targets.activations)


def test_stats_are_per_chunk_and_round_trip_through_npz(digits, tmp_path):
    _, model, targets, stats, data = digits
    assert list(stats.chunk_samples) == [10] * 30 and stats.hist.shape == (len(targets.activations), 30, 2048)
    x = data["calib"][0]
    assert stats.chunk_absmax[stats.index()["x"], 0] == pytest.approx(np.abs(x[:10]).max())
    assert stats.hist[:, 3].sum(axis=1).min() > 0
    path = stats.save(tmp_path / "stats.npz")
    with np.load(path, allow_pickle=False) as z:  # readable without pickle
        assert "hist" in z.files
    again = CalibrationStats.load(path)
    assert again.names == stats.names and np.array_equal(again.hist, stats.hist)
    assert again.meta["samples"] == 300


def test_quantized_model_is_int8_accurate_and_runs_with_onednn_int8(digits, tmp_path):
    from autocompress.model_io import InputGuard, load_model
    from autocompress.program.legacy.info import param_bytes

    files, model, targets, stats, data = digits
    guard = InputGuard(files)
    x, y = data["eval"]
    evaluate = top1_evaluator(x, y)
    with legacy_ir():
        fp32 = evaluate(executor_predictor(model))
        thresholds = compute_thresholds(stats, "avg", 100)
        template = QuantTemplate(model, targets)
        q = template.instantiate(thresholds)
        assert np.array(q.scope.find_var("x@scale").get_tensor())[0] == pytest.approx(thresholds["x"])
        simulated = evaluate(executor_predictor(dataclasses.replace(model, scope=q.scope), program=q.program))
        out = save_quantized(q, model, tmp_path / "int8")
        loaded = load_model(out)
        ops = [op.type for op in loaded.program.global_block().ops]
        w = np.array(loaded.scope.find_var(next(iter(targets.weights))).get_tensor())
        ratio = param_bytes(loaded.program, loaded.scope) / param_bytes(model.program, model.scope)
    assert "quantize_linear" in ops and "dequantize_linear" in ops
    assert w.dtype == np.int8
    assert ratio < 0.35  # int8 weights; the tiny model's fp32 biases and scales are the rest
    deployed = evaluate(inference_predictor(out, int8=True))
    assert fp32 > 0.9
    assert simulated >= fp32 - 0.01 and deployed >= fp32 - 0.01
    guard.verify()


def test_template_is_reused_across_trials_without_touching_the_fp32_model(digits):
    _, model, targets, stats, _ = digits
    name = next(iter(targets.weights))
    before = np.array(model.scope.find_var(name).get_tensor()).copy()
    with legacy_ir():
        template = QuantTemplate(model, targets, weight_quantize_type="abs_max")
        a = template.instantiate(compute_thresholds(stats, "abs_max"))
        scale_a = np.array(a.scope.find_var("x@scale").get_tensor())
        b = template.instantiate(compute_thresholds(stats, "KL"))
    assert a.program is b.program and a.scope is b.scope  # one interpreter cache entry for all trials
    assert scale_a != np.array(b.scope.find_var("x@scale").get_tensor())
    assert np.array_equal(np.array(model.scope.find_var(name).get_tensor()), before)
    assert template.scales[name].shape == (1,)  # abs_max: one scale per tensor


def test_not_quant_pattern_keeps_matching_ops_in_fp32(digits):
    from autocompress.model_io import load_model

    files, _, _, stats, _ = digits
    with legacy_ir():
        model = load_model(files)  # a private copy: the name scope is set in memory only
        convs = [op for op in model.program.global_block().ops if op.type == "conv2d"]
        convs[0]._set_attr("op_namescope", "/backbone/keep_fp32_stem/")
        targets = find_targets(model.program, QuantizationConfig(not_quant_pattern=["keep_fp32"]))
        assert convs[0].input("Filter")[0] not in targets.weights
        assert convs[1].input("Filter")[0] in targets.weights
        q = QuantTemplate(model, targets).instantiate(compute_thresholds(stats, "avg"))
    by_type = {}
    for op in q.program.global_block().ops:
        by_type.setdefault(op.type, []).append(op)
    first = [op for op in by_type["conv2d"] if op.input("Filter")[0] == convs[0].input("Filter")[0]]
    assert first and first[0].input("Input")[0] == "x"  # no dequantize_linear in front of it


def test_missing_thresholds_are_a_clear_error(digits):
    from autocompress.errors import DataError

    _, model, targets, _, _ = digits
    with legacy_ir(), pytest.raises(DataError, match="Rerun calibration"):
        QuantTemplate(model, targets).instantiate({})


def test_bias_correction_removes_the_per_channel_mean_error():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.1
    w[:, 0, 0, 0] += 0.02  # off-grid values shared by each channel
    scales = weight_scales(w, 0)
    plain = quantize_weight(w, scales, 0)
    corrected = quantize_weight(w, scales, 0, bias_correct=True)
    step = scales[:, None] / 127

    def mean_err(q):
        return ((w.reshape(8, -1) - q.reshape(8, -1) * step) / step).mean(axis=1)

    assert corrected.dtype == np.int8 and not np.array_equal(plain, corrected)
    assert np.abs(mean_err(corrected)).max() <= 0.5 / 36 + 1e-9  # within half a step per channel sum
    assert np.abs(mean_err(corrected)).sum() < np.abs(mean_err(plain)).sum()
    assert np.abs(corrected.astype(int) - plain).max() == 1  # only roundings flipped


def test_weight_quantization_matches_paddles_quant_tensor():
    from paddle.static.quantization.utils import quant_tensor

    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    for axis in (0, 1):
        scales = weight_scales(w, axis)
        expected = quant_tensor(w.copy(), scales.tolist(), axis, 8, onnx_format=True)
        assert np.array_equal(quantize_weight(w, scales, axis), expected.astype(np.int8))
    scale = weight_scales(w, -1)
    assert np.array_equal(quantize_weight(w, scale, -1), quant_tensor(w.copy(), float(scale[0]), -1, 8, True))


def test_a_conv_scaled_to_nothing_by_its_batch_norm_stays_fp32(tmp_path):
    """A conv whose batch norm multiplies it by ~1e-4 (PP-OCRv4 det's conv2d_159) has a folded int8
    step of ~1e-6; OpenVINO's int8 path loses such a layer, so it stays FP32 (TINY_WEIGHT_STEP)."""
    import paddle

    from autocompress.model_io import load_model
    from autocompress.prune.testing import export_layer
    from autocompress.quant.targets import tiny_weight_layers

    paddle.disable_static()
    paddle.seed(0)
    conv = [paddle.nn.Conv2D(c, 8, 3, padding=1, bias_attr=False) for c in (3, 8)]
    net = paddle.nn.Sequential(conv[0], paddle.nn.BatchNorm2D(8), paddle.nn.ReLU(),
                               conv[1], paddle.nn.BatchNorm2D(8), paddle.nn.ReLU())
    net.eval()
    net[1]._variance.set_value(np.full([8], 1e8, "float32"))  # gamma / sqrt(var) = 1e-4
    files = export_layer(net, tmp_path / "m", [1, 3, 8, 8])
    paddle.enable_static()
    with legacy_ir():
        model = load_model(files)
        targets = find_targets(model.program, QuantizationConfig())
        tiny = tiny_weight_layers(model.program, model.scope, targets)
        convs = [op for op in model.program.global_block().ops if op.type == "conv2d"]
        assert tiny == [f"conv2d({convs[0].output('Output')[0]})"]  # the second conv is a normal one
        template = QuantTemplate(model, targets)
        stats = collect_stats(model, [{"x": np.random.RandomState(0).rand(4, 3, 8, 8).astype("float32")}],
                              targets, chunk_size=4)
        out = save_quantized(template.instantiate(compute_thresholds(stats, "avg")), model, tmp_path / "q")
        quantized = load_model(out)
        filters = {op.input("X")[0] for op in quantized.program.global_block().ops if op.type == "dequantize_linear"}
    assert convs[0].input("Filter")[0] not in filters and convs[1].input("Filter")[0] in filters
