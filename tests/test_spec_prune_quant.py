"""Spec fidelity of the pruning and quantization parameters: each key either has the effect PaddleSlim
users expect (asserted on the saved model or the schedule) or is refused with a ConfigError naming it."""
from __future__ import annotations

import numpy as np
import pytest

from autocompress import model_io
from autocompress.config import PruneConfig, build
from autocompress.errors import ConfigError
from autocompress.paddle_env import legacy_ir
from autocompress.prune.asp import check_2_4
from autocompress.prune.masks import read_param, weight_params

SHORT_TRAIN = {"train_iter": 2, "eval_iter": 1, "optimizer": "Adam", "learning_rate": 0.001}


@pytest.fixture(scope="module")
def digits_io(digits_data):
    from autocompress.data import FeedSource
    from autocompress.evaluation import build_evaluator

    (xt, yt), (xe, ye) = digits_data["train"], digits_data["eval"]
    train = FeedSource.from_arrays({"x": xt[:256]}, yt[:256], batch_size=64)
    evaluator = build_evaluator(eval_data=FeedSource.from_arrays({"x": xe[:200]}, ye[:200], batch_size=200),
                                metric="top1", feed_names=["x"])
    return train, evaluator


def _weights(files) -> dict:
    with legacy_ir():
        model = model_io.load_model(files)
        return {n: (read_param(model.scope, n), use) for n, use in weight_params(model.program).items()}


# --- 1. PruneConfig with prune_algo 'asp' ---------------------------------------------------------

def test_asp_prune_params_name_masks_only_the_named_weights(digits_copy, tmp_path):
    from autocompress.prune import prune_model

    original = _weights(digits_copy)
    r = prune_model(digits_copy, {"prune_algo": "asp", "prune_params_name": ["conv2d_1.w_0"]}, tmp_path / "asp")
    saved = _weights(r["model_files"])
    assert list(r["sparsity"]["per_tensor"]) == ["conv2d_1.w_0"]
    w, use = saved["conv2d_1.w_0"]
    assert check_2_4(w, use) == 1.0 and (w == 0).mean() == pytest.approx(0.5)
    for name in ("conv2d_0.w_0", "conv2d_2.w_0", "linear_0.w_0"):  # not named: left dense, unchanged
        assert np.array_equal(saved[name][0], original[name][0]), name


def test_asp_prune_params_name_is_honoured_through_training(digits_copy, digits_io, tmp_path):
    from autocompress.prune.run import run_prune_distill

    train, evaluator = digits_io
    r = run_prune_distill(digits_copy, train, evaluator, {"prune_algo": "asp", "prune_params_name": ["conv2d_2.w_0"]},
                          {}, SHORT_TRAIN, tmp_path / "run", progress=False)
    saved = _weights(r["model_files"])
    assert set(r["sparsity"]["per_tensor"]) == {"conv2d_2.w_0"}
    assert check_2_4(*saved["conv2d_2.w_0"]) == 1.0
    assert (saved["linear_0.w_0"][0] == 0).mean() < 0.1  # the default FC target was not masked


@pytest.mark.parametrize("name, why", [("conv2d_0.w_0", "not a multiple of 4"), ("batch_norm_0.w_0", "not a conv"),
                                       ("nope.w_0", "not a conv")])
def test_asp_prune_params_name_that_cannot_hold_2_4_is_refused(digits_copy, tmp_path, name, why):
    from autocompress.prune import prune_model

    with pytest.raises(ConfigError, match=rf"prune_params_name.*{name}.*{why}"):
        prune_model(digits_copy, {"prune_algo": "asp", "prune_params_name": [name]}, tmp_path / "asp")


@pytest.mark.parametrize("key, value", [("pruned_ratio", 0.5), ("pruned_ratio", 0.25), ("criterion", "l1_norm"),
                                        ("criterion", "geometry_median")])
def test_asp_refuses_a_ratio_or_criterion(key, value):
    with pytest.raises(ConfigError, match=rf"PruneConfig.*{key}.*ASP is fixed 2:4 \(50%\).*prune_algo 'prune'"):
        build(PruneConfig, {"prune_algo": "asp", key: value})
    assert build(PruneConfig, {"prune_algo": "prune", key: value})  # fine for channel pruning
    assert build(PruneConfig, {"prune_algo": "asp"}).prune_algo == "asp"


# --- 2. GMP raises TrainConfig.eval_iter: visibly ----------------------------------------------------

def test_gmp_raising_eval_iter_is_a_recorded_warning(digits_copy, digits_io, tmp_path, caplog):
    from autocompress.prune.run import run_sparse_distill

    train, evaluator = digits_io
    gmp = {"prune_strategy": "gmp", "prune_ratio": 0.5,
           "gmp_config": {"pruning_iterations": 6, "tunning_iterations": 4, "pruning_steps": 2}}
    with caplog.at_level("WARNING", logger="autocompress.prune"):
        r = run_sparse_distill(digits_copy, train, evaluator, gmp, {}, dict(SHORT_TRAIN, train_iter=12, eval_iter=2),
                               tmp_path / "run", progress=False)
    notes = [w for w in r["warnings"] if "eval_iter" in w]
    assert len(notes) == 1
    assert "eval_iter 2" in notes[0] and "6" in notes[0] and "ramp" in notes[0]
    assert any(rec.levelname == "WARNING" and rec.getMessage() == notes[0] for rec in caplog.records)
    assert r["curve"] and all(c["step"] >= 6 for c in r["curve"])  # the effective eval_iter was used


# --- 3. gmp_config.tunning_iterations ------------------------------------------------------------------

def test_tunning_iterations_reserves_the_tuning_phase_at_the_end_of_training():
    from autocompress.prune.unstructured import GMPSchedule

    default = GMPSchedule(0.6, 100, {})
    assert (default.pruning, default.tunning) == (45, 55)  # PaddleSlim's 45% ramp; tuning: the rest
    s = GMPSchedule(0.6, 100, {"tunning_iterations": 80})  # the ramp shrinks so that 80 tuning steps fit
    assert (s.stable, s.pruning, s.tunning) == (0, 20, 80)
    assert s.ratio(19) < 0.6 == s.ratio(20)
    assert [s.phase(i) for i in (0, 19, 20, 99, 100)] == ["pruning", "pruning", "tuning", "tuning", "done"]
    assert s.to_dict()["tuning_ends_at"] == 100
    stable = GMPSchedule(0.6, None, {"stable_iterations": 5, "pruning_iterations": 10, "tunning_iterations": 3})
    assert [stable.phase(i) for i in (4, 5, 15, 17, 18)] == ["stable", "pruning", "tuning", "tuning", "done"]


@pytest.mark.parametrize("gmp, match", [
    ({"pruning_iterations": 50, "tunning_iterations": 60}, r"tunning_iterations 60.*iteration 110.*runs 100"),
    ({"stable_iterations": 30, "tunning_iterations": 70}, r"tunning_iterations 70.*no iteration left for the ramp"),
])
def test_a_tuning_phase_that_does_not_fit_the_training_is_refused(gmp, match):
    from autocompress.prune.unstructured import GMPSchedule

    with pytest.raises(ConfigError, match=rf"gmp_config\.{match}"):
        GMPSchedule(0.6, 100, gmp)


def test_masks_are_fixed_during_the_tuning_phase(tmp_path):
    """PaddleSlim's GMP: after the ramp the ratio stays at the target and the masks are not recomputed,
    however the weights move (its tuning entries repeat the target ratio, so no mask update fires)."""
    from autocompress.prune.masks import write_param
    from autocompress.prune.unstructured import UnstructuredPruner

    rng = np.random.default_rng(0)
    program, scope = _tiny_fc_program(tmp_path)
    with legacy_ir():
        pruner = UnstructuredPruner(program, scope, {"prune_strategy": "gmp", "prune_ratio": 0.5, "gmp_config": {
            "pruning_iterations": 10, "pruning_steps": 5, "tunning_iterations": 10}}, total_iters=20)
        pruner.start()
        masks = {}
        for it in range(1, 21):
            for n in pruner.names:  # an optimizer step that reshuffles the magnitudes
                write_param(scope, n, read_param(scope, n) + rng.normal(0, 1, read_param(scope, n).shape))
            pruner.step()
            masks[it] = {n: m.copy() for n, m in pruner.masks.masks.items()}
    assert pruner.schedule.phase(10) == "tuning"
    assert all(np.array_equal(masks[it][n], masks[10][n]) for it in range(10, 21) for n in pruner.names)
    assert max(it for it, _ in pruner.history) == 10  # the last mask update: the end of the ramp


def _tiny_fc_program(tmp_path):
    import paddle

    from autocompress.prune.testing import export_layer

    paddle.disable_static()
    paddle.seed(0)
    files = export_layer(paddle.nn.Linear(8, 4), tmp_path, (1, 8))
    with legacy_ir():
        model = model_io.load_model(files)
    return model.program, model.scope


# --- 4. PruneConfig.criterion 'geometry_median' (FPGM) --------------------------------------------------

def _two_conv_files(tmp_path, filters):
    import paddle

    from autocompress.prune.testing import export_layer

    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.c1 = paddle.nn.Conv2D(2, 4, 1)
            self.c2 = paddle.nn.Conv2D(4, 3, 1)

        def forward(self, x):
            return self.c2(paddle.nn.functional.relu(self.c1(x)))

    paddle.disable_static()
    net = Net()
    net.c1.weight.set_value(np.asarray(filters, np.float32).reshape(4, 2, 1, 1))
    return export_layer(net, tmp_path, (1, 2, 4, 4))


@pytest.mark.parametrize("criterion, dropped", [("l1_norm", 3), ("geometry_median", 0)])
def test_geometry_median_drops_the_filter_closest_to_the_others(tmp_path, criterion, dropped):
    """Filters (0.5, 0.5), (3, 0), (0, 3), (0.1, 0): the smallest is #3 (l1_norm drops it), but #0 sits
    nearest the geometric median of all four (distance sums 5.74, 9.69, 9.79, 6.54), so FPGM drops #0
    as the most replaceable, like PaddleSlim's `geometry_median`."""
    from autocompress.prune import prune_loaded

    files = _two_conv_files(tmp_path, [[0.5, 0.5], [3, 0], [0, 3], [0.1, 0]])
    with legacy_ir():
        model = model_io.load_model(files)
        graph, plan = prune_loaded(model, {"pruned_ratio": 0.25, "criterion": criterion,
                                           "prune_params_name": ["conv2d_0.w_0"]})
        kept = read_param(model.scope, "conv2d_0.w_0").reshape(3, 2)
    assert [list(v) for v in plan.removed.values()] == [[dropped]]
    expected = np.delete(np.array([[0.5, 0.5], [3, 0], [0, 3], [0.1, 0]], np.float32), dropped, axis=0)
    assert np.array_equal(kept, expected)  # the remaining filters, in order


# --- 5. QuantizationConfig through the PTQ engine: the saved model shows each key's effect -------------

ONE_TRIAL = {"ptq_algo": "abs_max", "batch_size": 10, "batch_num": 5, "bias_correct": False,
             "search_algo": "grid", "max_quant_count": 1, "finalists": 1}
WEIGHT_OPS = ("conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2")


def _ptq(files, data, out, deploy_eval=False, **quant):
    from autocompress.quant.ptq_search import run_ptq_search
    from test_quant_fixtures import calib_batches, top1_evaluator

    x, y = data["eval"]
    return run_ptq_search(files, calib_batches(data["calib"][0][:50]), top1_evaluator(x[:200], y[:200]), quant,
                          ONE_TRIAL, out, progress=False, deploy_eval=deploy_eval)


class SavedOps:
    """The saved quantized program, read as: which ops quantize which inputs."""

    def __init__(self, result):
        self.model = model_io.load_model(result["model_files"])
        block = self.model.program.global_block()
        self.ops = list(block.ops)
        self.producer = {n: op for op in self.ops for n in op.output_arg_names}
        self.block = block

    def real_quant(self, op) -> list[str]:
        """Input slots of `op` fed by a real quantize -> dequantize pair (a weight, or an activation whose
        quantize_linear is no mere observer of the oneDNN scales)."""
        slots = []
        for slot in op.input_names:
            for name in op.input(slot):
                deq = self.producer.get(name)
                if deq is None or deq.type != "dequantize_linear":
                    continue
                src = deq.input("X")[0]
                quant = self.producer.get(src)
                if self.block.var(src).persistable or (quant is not None and quant.type == "quantize_linear"
                                                       and not (quant.has_attr("only_observer")
                                                                and quant.attr("only_observer"))):
                    slots.append(slot)
        return slots

    def quantized_types(self) -> set[str]:
        return {op.type for op in self.ops if op.type not in ("quantize_linear", "dequantize_linear")
                and self.real_quant(op)}

    def of_type(self, kind):
        return [op for op in self.ops if op.type == kind]

    def skip_quant(self, op) -> bool:
        return op.has_attr("skip_quant") and op.attr("skip_quant") == 1


@pytest.fixture(scope="module")
def default_ptq(digits_files, digits_data, tmp_path_factory):
    return _ptq(digits_files, digits_data, tmp_path_factory.mktemp("ptq-default"))


def test_quantize_op_types_quantizes_only_the_listed_types(digits_files, digits_data, default_ptq, tmp_path):
    only = _ptq(digits_files, digits_data, tmp_path / "mm", quantize_op_types=["matmul_v2"])
    with legacy_ir():
        default, mm = SavedOps(default_ptq), SavedOps(only)
        assert default.quantized_types() == {"conv2d", "matmul_v2"}  # the digits CNN's weight ops
        assert mm.quantized_types() == {"matmul_v2"}
        assert mm.real_quant(mm.of_type("matmul_v2")[0]) == ["X", "Y"]
        for conv in mm.of_type("conv2d"):
            assert mm.block.var(conv.input("Filter")[0]).persistable  # FP32 weights, no dequantize_linear
            # and oneDNN must not run it in int8 from its neighbours' observer scales either
            assert mm.skip_quant(conv)
        assert not any(default.skip_quant(op) for op in default.ops)


def test_excluded_op_types_stay_fp32_when_deployed_with_onednn_int8(digits_files, digits_data, tmp_path):
    """The deployed outputs with conv2d left out of quantize_op_types equal those of the same model with
    every conv explicitly kept FP32 (FP32 fallback): oneDNN ran no conv in int8."""
    from autocompress.backend import inference_predictor
    from autocompress.model_io import load_model
    from autocompress.quant.apply import QuantTemplate, save_quantized
    from autocompress.quant.calibration import collect_stats
    from autocompress.quant.targets import find_targets, int8_layers
    from autocompress.quant.thresholds import compute_thresholds
    from test_quant_fixtures import calib_batches

    from autocompress.config import QuantizationConfig

    with legacy_ir():
        model = load_model(digits_files)
        targets = find_targets(model.program, QuantizationConfig(quantize_op_types=["matmul_v2"]))
        stats = collect_stats(model, calib_batches(digits_data["calib"][0][:50]), targets, chunk_size=10)
        thresholds = compute_thresholds(stats, "abs_max")
        assert not [layer for layer in int8_layers(model.program, targets) if layer.op_type == "conv2d"]
        excluded = save_quantized(QuantTemplate(model, targets).instantiate(thresholds), model, tmp_path / "a")
        convs = [f"conv2d({op.output('Output')[0]})" for op in model.program.global_block().ops
                 if op.type == "conv2d"]
        kept = save_quantized(QuantTemplate(model, targets, fp32_layers=convs).instantiate(thresholds), model,
                              tmp_path / "b")
    x = digits_data["eval"][0][:64]
    a = inference_predictor(excluded, int8=True)({"x": x})[0]
    b = inference_predictor(kept, int8=True)({"x": x})[0]
    assert np.array_equal(a, b)


def test_is_full_quantize_quantizes_more_op_types(digits_files, digits_data, default_ptq, tmp_path):
    full = _ptq(digits_files, digits_data, tmp_path / "full", is_full_quantize=True,
                quantize_op_types=["matmul_v2"])  # ignored: every type Paddle supports
    with legacy_ir():
        default, everything = SavedOps(default_ptq).quantized_types(), SavedOps(full).quantized_types()
    assert default < everything
    assert {"conv2d", "matmul_v2", "pool2d", "elementwise_add"} <= everything
    assert full["metric"] >= full["baseline_metric"] - 0.05


@pytest.mark.parametrize("weight_bits, activation_bits", [(4, 4), (4, 8), (8, 6)])
def test_bits_set_the_quantization_grid(digits_files, digits_data, tmp_path, weight_bits, activation_bits):
    r = _ptq(digits_files, digits_data, tmp_path / "bits", weight_bits=weight_bits, activation_bits=activation_bits,
             deploy_backend="none")
    with legacy_ir():
        saved = SavedOps(r)
        weights = {op.input("X")[0] for op in saved.of_type("dequantize_linear")
                   if saved.block.var(op.input("X")[0]).persistable}
        assert weights
        for op in saved.of_type("quantize_linear") + saved.of_type("dequantize_linear"):
            bits = weight_bits if op.input("X")[0] in weights else activation_bits
            assert op.attr("bit_length") == bits
            assert (op.attr("qmin"), op.attr("qmax")) == (-2 ** (bits - 1), 2 ** (bits - 1) - 1)
        for name in weights:
            w = read_param(saved.model.scope, name)
            axis = 1 if w.ndim == 2 else 0  # the per-channel axis (fc: output columns)
            levels = max(len(np.unique(np.take(w, i, axis=axis))) for i in range(w.shape[axis]))
            assert np.abs(w).max() <= 2 ** (weight_bits - 1) and levels <= 2 ** weight_bits
    # the grid is the one the kernels use: the simulated metric is a real low-bit model's, not noise
    assert r["metric"] >= r["baseline_metric"] - (0.05 if min(weight_bits, activation_bits) == 4 else 0.02)


def test_low_bits_need_a_backend_that_runs_them():
    from autocompress.config import QuantizationConfig

    with pytest.raises(ConfigError, match=r"weight_bits.*8-bit.*deploy_backend"):
        build(QuantizationConfig, {"weight_bits": 4})
    with pytest.raises(ConfigError, match=r"activation_bits.*8-bit.*deploy_backend"):
        build(QuantizationConfig, {"activation_bits": 6, "deploy_backend": "tensorrt"})
    assert build(QuantizationConfig, {"weight_bits": 4, "deploy_backend": "none"}).weight_bits == 4
    with pytest.raises(ConfigError, match=r"weight_bits=12.*int8.*2 to 8"):  # no int16 dequantize kernel
        build(QuantizationConfig, {"weight_bits": 12, "deploy_backend": "none"})
    assert build(QuantizationConfig, {"activation_bits": 16, "deploy_backend": "none"}).activation_bits == 16


@pytest.mark.parametrize("pattern", [None, "head_fp32"])
def test_not_quant_pattern_keeps_the_name_scope_fp32(tmp_path, pattern):
    """The spec: ops whose name_scope contains not_quant_pattern are not quantized (default 'skip_quant')."""
    from test_quant_fixtures import digits_data, train_digits_cnn

    scope = "skip_quant" if pattern is None else "my_head_fp32_block"
    files, data = train_digits_cnn(tmp_path / "model", steps=60, second_conv_scope=scope), digits_data()
    quant = {} if pattern is None else {"not_quant_pattern": pattern}  # a str works like a one-element list
    r = _ptq(files, data, tmp_path / "out", **quant)
    with legacy_ir():
        saved = SavedOps(r)
        first, second = saved.of_type("conv2d")
        assert saved.real_quant(first) == ["Filter", "Input"]
        assert saved.real_quant(second) == [] and saved.skip_quant(second)
        assert saved.block.var(second.input("Filter")[0]).persistable
        assert "mul" in saved.quantized_types()  # the static fc


def test_qat_programs_use_the_configured_bits_and_hold_left_out_types(digits_files):
    """QuantizationConfig in QAT (quant.qat): the training program's fake-quant ops and the converted model
    carry the configured grid (qmin/qmax from the bits), and conv2d, left out of quantize_op_types, is
    marked for oneDNN to keep FP32."""
    import paddle

    from autocompress.config import QuantizationConfig
    from autocompress.quant.qat import convert_for_inference, insert_fake_quant

    qc = QuantizationConfig(weight_bits=4, quantize_op_types=["matmul_v2"], deploy_backend="none")
    with legacy_ir():
        model = model_io.load_model(digits_files)
        train = insert_fake_quant(model.program, model.scope, paddle.CPUPlace(), qc)
        converted = convert_for_inference(train.clone(for_test=True), model.scope, paddle.CPUPlace(), qc)
        for program in (train, converted):
            ops = program.global_block().ops
            grids = {(op.attr("bit_length"), op.attr("qmin"), op.attr("qmax")) for op in ops
                     if op.type in ("quantize_linear", "dequantize_linear")}
            assert (4, -8, 7) in grids and grids <= {(4, -8, 7), (8, -128, 127)}
        ops = converted.global_block().ops
        assert all(op.attr("skip_quant") == 1 for op in ops if op.type == "conv2d")
        assert not any(op.has_attr("skip_quant") and op.attr("skip_quant") for op in ops if op.type == "matmul_v2")
