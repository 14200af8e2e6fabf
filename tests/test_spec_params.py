"""Every spec parameter through `AutoCompression(...).compression()` on the real digits model: each test
asserts the parameter's effect on the numbers, files or saved model (docs/parameters.md maps every
parameter of auto-compression-api.rst to its tests)."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from autocompress import AutoCompression, model_io
from autocompress.program.legacy import info as program_info
from autocompress.data import FeedSource
from autocompress.errors import ConfigError, DeviceError, EvalError
from autocompress.paddle_env import legacy_ir
from autocompress.prune.asp import check_2_4
from autocompress.prune.masks import weight_params
from test_spec_train import _logged_run, _renamed_input, one_rank_launch, two_model_dir  # noqa: F401
from test_train_qat_fallback import _with_namescope
from test_train_support import perturbed_digits, predict_accuracy  # noqa: F401
from test_train_units import _tiny_model

TRAIN = {"train_iter": 2, "eval_iter": 2, "optimizer": "SGD", "learning_rate": 0.001}
WEIGHTS = ("conv2d_0.w_0", "conv2d_1.w_0", "conv2d_2.w_0", "linear_0.w_0")


@pytest.fixture(scope="module")
def feeds(digits_data):
    (xt, yt), (xe, ye), (xc, _) = digits_data["train"], digits_data["eval"], digits_data["calib"]
    return SimpleNamespace(
        train=FeedSource.from_arrays({"x": xt[:256]}, yt[:256], batch_size=32),
        calib=FeedSource.from_arrays({"x": xc[:64]}, batch_size=16),
        eval=FeedSource.from_arrays({"x": xe[:200]}, ye[:200], batch_size=200),
        xe=xe[:200], ye=ye[:200], xt=xt, yt=yt)


def _compress(model, save_dir, strategy, train, data, evaluation, *, model_filename=None, params_filename=None,
              **kw) -> dict:
    """One AutoCompression run on the CPU; latency only at batch 1 (these tests assert other effects)."""
    model_dir = model.model_dir if hasattr(model, "model_dir") else model
    return AutoCompression(str(model_dir), model_filename, params_filename, str(save_dir), strategy, train, data,
                           evaluation, "cpu", progress=False, max_drop=1.0, deploy={"batch_size": 1},
                           **kw).compression()


def _train(model, save_dir, feeds, strategy=None, train=None, data=None, **kw) -> dict:
    return _compress(model, save_dir, strategy or {"DistillationConfig": {}}, dict(TRAIN, **(train or {})),
                     data or feeds.train, feeds.eval, **kw)


def _saved(summary) -> dict:
    """name -> array of every persistable of the saved model."""
    with legacy_ir():
        model = model_io.load_model(model_io.locate_model(Path(summary["model_dir"])))
        block = model.program.global_block()
        return {v.name: np.array(model.scope.find_var(v.name).get_tensor()) for v in block.vars.values()
                if v.persistable and v.name not in ("feed", "fetch")}


def _saved_ops(summary):
    with legacy_ir():
        model = model_io.load_model(model_io.locate_model(Path(summary["model_dir"])))
        return list(model.program.global_block().ops)


def _last_checkpoint(summary) -> dict:
    folder = Path(summary["checkpoints"]) / "last"
    names = json.loads((folder / "state.json").read_text())["array_names"]
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        return {n: z[f"a{i}"] for i, n in enumerate(names)}


def _original(files, names=WEIGHTS) -> dict:
    with legacy_ir():
        model = model_io.load_model(files)
        return {n: np.array(model.scope.find_var(n).get_tensor()) for n in names}


# -- AutoCompression(model_dir, model_filename, params_filename, save_dir, train_dataloader) ----------------------

def test_model_and_params_filename_pick_the_model_and_name_the_output(digits_files, feeds, tmp_path, two_model_dir,
                                                                     hashes):
    """A folder with inference.* and noisy.*: the names load the noisy model (its metric is the baseline), the
    output keeps its names, everything lands in save_dir and the input folder is untouched."""
    folder, noisy = two_model_dir
    before = hashes(folder)
    save = tmp_path / "deliver"
    s = _train(folder, save, feeds, model_filename="noisy.pdmodel", params_filename="noisy.pdiparams")
    noisy_acc, clean_acc = (predict_accuracy(f, feeds.xe, feeds.ye) for f in (noisy, digits_files))
    assert s["baseline_metric"] == pytest.approx(noisy_acc, abs=0.01) and noisy_acc < clean_acc - 0.05
    assert sorted(p.name for p in (save / "model").glob("*.pd*")) == ["noisy.pdiparams", "noisy.pdmodel"]
    assert {"summary.json", "report.md", "model"} <= set(os.listdir(save)) and s["save_dir"] == str(save)
    assert json.loads((save / "summary.json").read_text())["baseline_metric"] == s["baseline_metric"]
    assert hashes(folder) == before
    assert sorted(os.listdir(tmp_path)) == ["deliver", "noisy-src", "teachers"]  # nothing written elsewhere


def test_epochs_count_passes_over_the_train_dataloader(digits_files, feeds, tmp_path):
    x, y = feeds.xt, feeds.yt
    five = FeedSource.from_arrays({"x": x[:160]}, y[:160], batch_size=32)
    three = FeedSource.from_arrays({"x": x[:96]}, y[:96], batch_size=32)
    epochs = {"epochs": 2, "train_iter": None, "eval_iter": 1000}
    assert _train(digits_files, tmp_path / "a", feeds, train=epochs, data=five)["steps"] == 10
    s = _train(digits_files, tmp_path / "b", feeds, train=epochs, data=three)
    assert s["steps"] == 6 and [c["step"] for c in s["curve"]] == [0, 6] and s["strategy"] == "distill"
    # train_iter (extension) ends training first when both are set
    assert _train(digits_files, tmp_path / "c", feeds, train=dict(epochs, train_iter=3), data=five)["steps"] == 3


# -- TrainConfig ---------------------------------------------------------------------------------------------------

def test_learning_rate_float_and_scheduler_dict_set_the_lr_of_each_step(digits_files, feeds, tmp_path):
    cosine = {"type": "CosineAnnealingDecay", "learning_rate": 0.01, "T_max": 4}
    s = _train(digits_files, tmp_path / "cos", feeds, train={"train_iter": 4, "eval_iter": 1, "learning_rate": cosine})
    expected = [0.005 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]  # the lr after k steps
    assert [c["lr"] for c in s["curve"]] == pytest.approx(expected, abs=1e-9)
    s = _train(digits_files, tmp_path / "flat", feeds, train={"train_iter": 3, "eval_iter": 1, "learning_rate": 0.003})
    assert [c["lr"] for c in s["curve"]] == [0.003] * 4


def test_optimizer_is_the_paddle_optimizer_that_steps(digits_files, feeds, tmp_path):
    state = {}
    for name in ("SGD", "Momentum", "Adam"):
        s = _train(digits_files, tmp_path / name, feeds, train={"optimizer": name})
        state[name] = (list(_last_checkpoint(s)), s["curve"][-1]["loss"])
    accumulators = {n: {k for k in ("velocity", "moment1", "moment2") if any(k in v for v in names)}
                    for n, (names, _) in state.items()}
    assert accumulators == {"SGD": set(), "Momentum": {"velocity"}, "Adam": {"moment1", "moment2"}}
    assert state["SGD"][1] != state["Adam"][1]


def test_optim_args_grad_clip_bounds_every_update(digits_files, feeds, tmp_path):
    before = _original(digits_files)
    clipped = {"optim_args": {"grid_clip": "ClipGradByValue", "grad_clip_args": {"max": 1e-6, "min": -1e-6}},
               "learning_rate": 0.1}
    moved = {}
    for name, train in (("free", {"learning_rate": 0.1}), ("clipped", clipped)):
        after = _last_checkpoint(_train(digits_files, tmp_path / name, feeds, train=train))
        moved[name] = max(float(np.abs(after[n] - before[n]).max()) for n in WEIGHTS)
    # at most 2 steps x lr 0.1 x gradient 1e-6 (plus float32 rounding), against > 1e-3 unclipped
    assert moved["clipped"] < 1e-5 and moved["free"] > 1e-3


def test_eval_iter_sets_the_evaluation_steps(digits_files, feeds, tmp_path):
    for every, steps in ((2, [0, 2, 4, 6]), (4, [0, 4, 6])):  # the end of training is always evaluated
        s = _train(digits_files, tmp_path / str(every), feeds, train={"train_iter": 6, "eval_iter": every})
        assert [c["step"] for c in s["curve"]] == steps


def test_logging_iter_through_the_api(digits_files, feeds, tmp_path, caplog):
    _, logged = _logged_run(caplog, _train, digits_files, tmp_path, feeds, train={"train_iter": 4, "logging_iter": 2})
    assert sorted(logged) == [2, 4]


def test_origin_metric_checks_the_eval_function(digits_files, feeds, tmp_path):
    measured = predict_accuracy(digits_files, feeds.xe, feeds.ye)
    s = _train(digits_files, tmp_path / "ok", feeds, train={"origin_metric": measured + 0.005})
    assert s["steps"] == 2
    with pytest.raises(EvalError, match=r"origin_metric is 0.5 but the original model measures 0\.9\d+ .*eval "
                                        r"function .* likely wrong"):
        _train(digits_files, tmp_path / "bad", feeds, train={"origin_metric": 0.5})
    assert not (tmp_path / "bad" / "model").exists() and not (tmp_path / "bad" / "summary.json").exists()


def test_target_metric_stops_training_once_reached(perturbed_digits, digits_files, feeds, tmp_path):
    student, base, perturbed = perturbed_digits
    target = perturbed + 0.5 * (base - perturbed)
    train = {"train_iter": 60, "eval_iter": 2, "optimizer": "Adam", "learning_rate": 0.002, "target_metric": target}
    s = _train(student, tmp_path, feeds, {"DistillationConfig": {"teacher_model_dir": str(digits_files.model_dir)}},
               train)
    assert s["stopped_early"] is True and s["steps"] < 60 and s["steps"] == s["curve"][-1]["step"]
    assert s["curve"][-1]["metric"] >= target > max(c["metric"] for c in s["curve"][:-1])
    assert s["engine_metric"] >= target


def test_use_fleet_recompute_sharding_and_amp_reach_the_engine(digits_files, feeds, tmp_path, one_rank_launch,
                                                              caplog):
    caplog.set_level(logging.INFO, logger="autocompress.train")
    s = _train(digits_files, tmp_path / "fleet", feeds,
               train={"use_fleet": True, "recompute_config": {"checkpoints": ["conv2d_1.tmp_0"]}})
    assert s["steps"] == 2
    assert "fleet: rank 0 of 1; applied" in caplog.text and "RecomputeOptimizer" in caplog.text
    with pytest.raises(ConfigError, match=r"sharding_config splits the optimizer state across ranks"):
        _train(digits_files, tmp_path / "shard", feeds, train={"use_fleet": True,
                                                               "sharding_config": {"sharding_degree": 1}})
    with pytest.raises(DeviceError, match=r"amp_config: static mixed precision .* needs a GPU"):
        _train(digits_files, tmp_path / "amp", feeds, train={"amp_config": {"custom_white_list": ["conv2d"]}})


# -- DistillationConfig / MultiTeacherDistillationConfig ----------------------------------------------------------

def test_distill_node_pair_lambda_and_teacher_files_through_the_api(digits_files, feeds, tmp_path, two_model_dir,
                                                                   caplog):
    """l2 between the noisy teacher's and the student's conv2d_1 output, weighted 2: the loss is 2 x l2 > 0
    (the student's own teacher would give 0), and only the layers that feed conv2d_1 train."""
    folder, _ = two_model_dir
    distill = {"teacher_model_dir": str(folder), "teacher_model_filename": "noisy.pdmodel",
               "teacher_params_filename": "noisy.pdiparams", "distill_loss": "l2_loss", "distill_lambda": 2.0,
               "distill_node_pair": ["teacher_conv2d_1.tmp_0", "conv2d_1.tmp_0"]}
    s, logged = _logged_run(caplog, _train, digits_files, tmp_path, feeds, {"DistillationConfig": distill},
                        {"logging_iter": 1})
    assert sorted(logged) == [1, 2]
    for step in logged.values():
        assert step["l2_loss"] > 0.01 and step["total"] == pytest.approx(2.0 * step["l2_loss"], rel=1e-3)
    before, after = _original(digits_files), _last_checkpoint(s)
    assert not np.array_equal(after["conv2d_1.w_0"], before["conv2d_1.w_0"])
    assert np.array_equal(after["conv2d_2.w_0"], before["conv2d_2.w_0"])
    assert np.array_equal(after["linear_0.w_0"], before["linear_0.w_0"])


def test_distill_loss_list_with_one_lambda_each_through_the_api(digits_files, feeds, tmp_path, two_model_dir,
                                                               caplog):
    folder, _ = two_model_dir
    distill = {"teacher_model_dir": str(folder), "teacher_model_filename": "noisy.pdmodel",
               "teacher_params_filename": "noisy.pdiparams", "distill_loss": ["l2_loss", "kl_loss"],
               "distill_lambda": [3.0, 0.5]}
    _, logged = _logged_run(caplog, _train, digits_files, tmp_path, feeds, {"DistillationConfig": distill},
                        {"logging_iter": 1})
    for step in logged.values():
        assert step["l2_loss"] > 0 and step["kl_loss"] > 0
        assert step["total"] == pytest.approx(3.0 * step["l2_loss"] + 0.5 * step["kl_loss"], rel=1e-3)


def test_merge_feed_through_the_api(digits_files, feeds, tmp_path, two_model_dir, caplog):
    """merge_feed false gives the teacher its own input var (here `img`), fed the student's batch: the losses
    equal those of the same teacher sharing `x` (merge_feed true). Which of the two the engine built shows in
    its refusal of a teacher the batch cannot feed (the program itself: test_spec_train)."""
    _, noisy = two_model_dir
    renamed = _renamed_input(noisy, tmp_path / "renamed")
    runs = {}
    for merge, teacher in ((False, renamed), (True, noisy)):
        distill = {"teacher_model_dir": str(teacher.model_dir), "teacher_model_filename": teacher.model_filename,
                   "teacher_params_filename": teacher.params_filename, "merge_feed": merge}
        _, runs[merge] = _logged_run(caplog, _train, digits_files, tmp_path / str(merge), feeds,
                                 {"DistillationConfig": distill}, {"logging_iter": 1})
    assert runs[False] == runs[True] and runs[False][1]["l2_loss"] > 0.01
    other = _tiny_model(tmp_path / "tiny", [1, 4, 4])  # a teacher the student's batch cannot feed
    for merge, match in ((True, r"merge_feed=True needs the teacher and student to take the same inputs"),
                         (False, r"merge_feed: false feeds the teacher the student's batch")):
        with pytest.raises(ConfigError, match=match):
            _train(digits_files, tmp_path / f"tiny-{merge}", feeds, {"DistillationConfig": {
                "teacher_model_dir": str(other.model_dir), "merge_feed": merge}})


def test_multi_teacher_keys_through_the_api(digits_files, feeds, tmp_path, two_model_dir, caplog):
    """Teacher 0 (the original, kl on the logits, lambda 0) and teacher 1 (noisy.* by file name, l2 on
    conv2d_1, lambda 1): the total is teacher 1's term and only the layers feeding conv2d_1 train; with
    merge_feed false and teacher 1's input renamed, the run is the same."""
    folder, noisy = two_model_dir
    renamed = _renamed_input(noisy, tmp_path / "renamed")
    multi = {"teacher_model_dir": [str(digits_files.model_dir), str(folder)],
             "teacher_model_filename": [None, "noisy.pdmodel"], "teacher_params_filename": [None, "noisy.pdiparams"],
             "distill_loss": ["kl_loss", "l2_loss"], "distill_lambda": [0.0, 1.0],
             "distill_node_pair": [["teacher0_linear_0.tmp_1", "linear_0.tmp_1"],
                                   ["teacher1_conv2d_1.tmp_0", "conv2d_1.tmp_0"]]}
    s, logged = _logged_run(caplog, _train, digits_files, tmp_path / "a", feeds,
                        {"MultiTeacherDistillationConfig": multi}, {"logging_iter": 1})
    assert s["strategy"] == "multi_teacher_distill" and sorted(logged) == [1, 2]
    for step in logged.values():
        assert step["teacher1_l2_loss"] > 0.01 and step["total"] == step["teacher1_l2_loss"]
        assert "teacher0_kl_loss" in step
    before, after = _original(digits_files), _last_checkpoint(s)
    assert not np.array_equal(after["conv2d_1.w_0"], before["conv2d_1.w_0"])
    assert np.array_equal(after["linear_0.w_0"], before["linear_0.w_0"])
    separate = dict(multi, teacher_model_dir=[str(digits_files.model_dir), str(renamed.model_dir)],
                    teacher_model_filename=None, teacher_params_filename=None, merge_feed=False)
    _, again = _logged_run(caplog, _train, digits_files, tmp_path / "b", feeds,
                       {"MultiTeacherDistillationConfig": separate}, {"logging_iter": 1})
    assert again == logged


# -- QuantizationConfig -------------------------------------------------------------------------------------------

ONE_PTQ = {"ptq_algo": "abs_max", "bias_correct": False, "weight_quantize_type": "channel_wise_abs_max",
           "batch_size": 16, "batch_num": 2, "max_quant_count": 1, "search_algo": "grid", "finalists": 1}
FP32_RUN = {"deploy_backend": "none"}  # stock Paddle Inference: no oneDNN int8 re-evaluation (faster)


def _ptq(files, save_dir, feeds, hpo=None, quant=None) -> dict:
    strategy = {"QuantizationConfig": dict(FP32_RUN, **(quant or {})),
                "HyperParameterOptimizationConfig": dict(ONE_PTQ, **(hpo or {}))}
    return _compress(files, save_dir, strategy, None, feeds.calib, feeds.eval)


def _quantized(ops) -> set:
    """Op types of a saved model with an input that is really quantized: a weight behind dequantize_linear,
    or an activation behind a quantize_linear that is not a mere observer of oneDNN's scales."""
    producer = {n: op for op in ops for n in op.output_arg_names}

    def real(name):
        deq = producer.get(name)
        if deq is None or deq.type != "dequantize_linear":
            return False
        quant = producer.get(deq.input("X")[0])
        return quant is None or (quant.type == "quantize_linear" and not (
            quant.has_attr("only_observer") and quant.attr("only_observer")))

    return {op.type for op in ops if op.type not in ("quantize_linear", "dequantize_linear")
            and any(real(n) for n in op.input_arg_names)}


def _scales(params) -> tuple[dict, dict]:
    """(weight scales, activation scales) of a saved PTQ model, by tensor name."""
    scales = {n[:-len("@scale")]: v for n, v in params.items() if n.endswith("@scale")}
    weights = {n: v for n, v in scales.items() if n in params and n.endswith(".w_0")}
    return weights, {n: v for n, v in scales.items() if n not in weights}


@pytest.fixture(scope="module")
def ptq_reference(digits_files, feeds, tmp_path_factory):
    s = _ptq(digits_files, tmp_path_factory.mktemp("ptq-ref"), feeds)
    return s, _saved(s), _saved_ops(s)


def test_quantize_op_types_and_bits_reach_the_ptq_engine(digits_files, feeds, tmp_path, ptq_reference):
    s = _ptq(digits_files, tmp_path, feeds, quant={"quantize_op_types": ["matmul_v2"], "weight_bits": 4,
                                                   "activation_bits": 6})
    ops = _saved_ops(s)
    assert _quantized(ops) == {"matmul_v2"} and _quantized(ptq_reference[2]) == {"conv2d", "matmul_v2"}
    weights, _ = _scales(_saved(s))
    assert list(weights) == ["linear_0.w_0"]  # the convs keep FP32 weights
    bits = {op.input("X")[0]: op.attr("bit_length") for op in ops if op.type == "quantize_linear"}
    bits.update({op.input("X")[0]: op.attr("bit_length") for op in ops if op.type == "dequantize_linear"
                 and op.input("X")[0] in weights})
    assert bits.pop("linear_0.w_0") == 4 and set(bits.values()) == {6}
    assert s["precision"] == "int8" and s["strategy"] == "ptq_hpo"


def test_is_full_quantize_quantizes_every_supported_type(digits_files, feeds, tmp_path, ptq_reference):
    full = _quantized(_saved_ops(_ptq(digits_files, tmp_path, feeds, quant={"is_full_quantize": True})))
    default = _quantized(ptq_reference[2])
    assert default < full and {"pool2d", "elementwise_add"} <= full


def test_not_quant_pattern_reaches_the_ptq_engine(digits_files, feeds, tmp_path):
    scoped = _with_namescope(digits_files, tmp_path / "scoped", 1, "/block/my_head_fp32/")
    s = _ptq(scoped, tmp_path / "out", feeds, quant={"not_quant_pattern": "head_fp32"})
    weights, _ = _scales(_saved(s))
    assert "conv2d_1.w_0" not in weights and {"conv2d_0.w_0", "conv2d_2.w_0"} <= set(weights)
    conv1 = [op for op in _saved_ops(s) if op.type == "conv2d"][1]
    assert conv1.has_attr("skip_quant") and conv1.attr("skip_quant")


def test_quantization_config_reaches_qat(digits_files, feeds, tmp_path):
    s = _train(digits_files, tmp_path, feeds, {"QuantizationConfig": {"quantize_op_types": ["matmul_v2"]},
                                               "DistillationConfig": {}})
    assert s["strategy"] == "qat_distill" and s["precision"] == "int8"
    quantized = _quantized(_saved_ops(s))
    assert "matmul_v2" in quantized and "conv2d" not in quantized


# -- HyperParameterOptimizationConfig ------------------------------------------------------------------------------

def test_search_stays_inside_the_space_and_runs_max_quant_count_trials(digits_files, feeds, tmp_path):
    """Lists of ptq_algo / bias_correct are choices, lists of hist_percent / batch_size / batch_num bounds."""
    hpo = {"ptq_algo": ["hist", "mse"], "bias_correct": [True, False], "weight_quantize_type": "abs_max",
           "hist_percent": [0.99, 0.999], "batch_size": [8, 16], "batch_num": [1, 3], "max_quant_count": 5,
           "search_algo": "tpe"}
    s = _ptq(digits_files, tmp_path, feeds, hpo)
    trials = [t["config"] for t in s["trials"]]
    assert len(trials) == 5 == len(json.loads((tmp_path / "trials.json").read_text()))
    for c in trials:
        assert c["ptq_algo"] in ("hist", "mse") and c["bias_correct"] in (True, False)
        assert c["weight_quantize_type"] == "abs_max"
        assert 8 <= c["batch_size"] <= 16 and 1 <= c["batch_num"] <= 3 and 0.99 <= c["hist_percent"] <= 0.999
    assert len({json.dumps(c, sort_keys=True) for c in trials}) == 5


def test_max_quant_count_caps_a_larger_grid(digits_files, feeds, tmp_path):
    s = _ptq(digits_files, tmp_path, feeds, {"ptq_algo": ["abs_max", "avg"], "batch_num": [1, 2],
                                             "max_quant_count": 3})
    configs = {(t["config"]["ptq_algo"], t["config"]["batch_num"]) for t in s["trials"]}
    assert len(s["trials"]) == 3 == len(configs) and configs < {(a, n) for a in ("abs_max", "avg") for n in (1, 2)}


def test_ptq_algo_and_hist_percent_set_the_activation_scales(digits_files, feeds, tmp_path, ptq_reference):
    ref_weights, ref = _scales(ptq_reference[1])
    runs = {}
    for name, hpo in (("avg", {"ptq_algo": "avg"}), ("hist90", {"ptq_algo": "hist", "hist_percent": 0.9}),
                      ("hist9999", {"ptq_algo": "hist", "hist_percent": 0.9999})):
        s = _ptq(digits_files, tmp_path / name, feeds, hpo)
        assert s["trials"][0]["config"]["ptq_algo"] == hpo["ptq_algo"]
        weights, runs[name] = _scales(_saved(s))
        assert all(np.array_equal(weights[n], ref_weights[n]) for n in ref_weights)  # weights: unchanged
    relu = "relu_1.tmp_0"
    assert runs["avg"][relu] < ref[relu] and runs["hist90"][relu] < runs["hist9999"][relu] <= ref[relu]
    assert all(runs["avg"][n] <= ref[n] for n in ref)  # abs_max is the largest


def test_weight_quantize_type_sets_the_weight_scale_granularity(digits_files, feeds, tmp_path, ptq_reference):
    ref_weights, ref_acts = _scales(ptq_reference[1])
    weights, acts = _scales(_saved(_ptq(digits_files, tmp_path, feeds, {"weight_quantize_type": "abs_max"})))
    assert {n: v.size for n, v in ref_weights.items()} == {"conv2d_0.w_0": 16, "conv2d_1.w_0": 32,
                                                          "conv2d_2.w_0": 64, "linear_0.w_0": 10}
    assert {n: v.size for n, v in weights.items()} == dict.fromkeys(ref_weights, 1)
    for n, v in weights.items():
        assert v[0] == pytest.approx(ref_weights[n].max(), rel=1e-5)  # one scale: the tensor's max
    assert all(np.array_equal(acts[n], ref_acts[n]) for n in ref_acts)


def test_bias_correct_removes_the_per_channel_mean_error_of_the_weights(digits_files, feeds, tmp_path,
                                                                        ptq_reference):
    fp32 = _original(digits_files)
    corrected = _saved(_ptq(digits_files, tmp_path, feeds, {"bias_correct": True}))

    def mean_error(params, name):
        q, scale = params[name], params[name + "@scale"]
        axis = 1 if q.ndim == 2 else 0
        shape = [-1 if i == axis else 1 for i in range(q.ndim)]
        error = q * scale.reshape(shape) / 127.0 - fp32[name]
        return np.abs(error.mean(axis=tuple(i for i in range(q.ndim) if i != axis))).mean()

    for name in WEIGHTS:
        assert mean_error(corrected, name) < 0.5 * mean_error(ptq_reference[1], name), name
    acts, ref_acts = _scales(corrected)[1], _scales(ptq_reference[1])[1]
    assert all(np.array_equal(acts[n], ref_acts[n]) for n in ref_acts)  # activations: unchanged


def test_batch_size_times_batch_num_is_the_calibration_set(digits_files, feeds, tmp_path, ptq_reference):
    """abs_max over the first batch_size x batch_num samples: 16 x 4 and 32 x 2 (64 samples) calibrate alike,
    and never below the 32 samples of 16 x 2."""
    _, ref = _scales(ptq_reference[1])
    runs = {}
    for size, num in ((16, 4), (32, 2)):
        s = _ptq(digits_files, tmp_path / f"{size}x{num}", feeds, {"batch_size": size, "batch_num": num})
        assert s["trials"][0]["calib_samples"] == 64
        runs[size] = _scales(_saved(s))[1]
    assert ptq_reference[0]["trials"][0]["calib_samples"] == 32
    assert all(np.array_equal(runs[16][n], runs[32][n]) and runs[16][n] >= ref[n] for n in ref)
    assert any(runs[16][n] > ref[n] for n in ref)


# -- PruneConfig ----------------------------------------------------------------------------------------------------

PRUNE_TRAIN = {"train_iter": 1, "eval_iter": 1, "learning_rate": 1e-9}  # weights stay where pruning left them


def _prune(files, save_dir, feeds, prune) -> dict:
    return _train(files, save_dir, feeds, {"PruneConfig": prune, "DistillationConfig": {}}, PRUNE_TRAIN)


@pytest.mark.parametrize("name, ratio", [("conv2d_1.w_0", 0.5), ("conv2d_2.w_0", 0.25)])
def test_pruned_ratio_and_prune_params_name_shrink_only_the_named_conv(digits_files, feeds, tmp_path, name, ratio):
    before = _original(digits_files)
    s = _prune(digits_files, tmp_path, feeds, {"pruned_ratio": ratio, "prune_params_name": [name]})
    after = _saved(s)
    shapes = {n: (before[n].shape, after[n].shape) for n in WEIGHTS}
    old, new = shapes.pop(name)
    assert new[0] == round(old[0] * (1 - ratio)) and new[1:] == old[1:]
    consumer = {"conv2d_1.w_0": "conv2d_2.w_0", "conv2d_2.w_0": "linear_0.w_0"}[name]  # its input shrinks too
    c_old, c_new = shapes.pop(consumer)
    assert c_new[0 if consumer.startswith("linear") else 1] < c_old[0 if consumer.startswith("linear") else 1]
    assert all(o == n for o, n in shapes.values())  # the other layers keep their shapes
    with legacy_ir():
        saved = model_io.load_model(model_io.locate_model(Path(s["model_dir"])))
        assert s["params_after"] == program_info.count_params(saved.program) < s["params_before"]
    assert s["strategy"] == "prune_distill"


def _bn_scale_after(files, conv_out: str) -> np.ndarray:
    with legacy_ir():
        model = model_io.load_model(files)
        ops = list(model.program.global_block().ops)
        start = next(i for i, op in enumerate(ops) if conv_out in op.output_arg_names)
        bn = next(op for op in ops[start:] if op.type == "batch_norm")
        return np.array(model.scope.find_var(bn.input("Scale")[0]).get_tensor())


def _filter_scores(files) -> dict:
    """criterion -> importance of each conv2d_1 filter (higher = kept), as PaddleSlim defines them."""
    w = _original(files)["conv2d_1.w_0"]
    rows = w.reshape(len(w), -1).astype(np.float64)
    return {"l1_norm": np.abs(rows).sum(1), "bn_scale": np.abs(_bn_scale_after(files, "conv2d_1.tmp_0")),
            "geometry_median": np.linalg.norm(rows[:, None] - rows[None], axis=-1).sum(1)}, rows


def _top_half(score) -> list[int]:
    return sorted(int(i) for i in np.argsort(-score, kind="stable")[:len(score) // 2])


@pytest.mark.parametrize("criterion", ["l1_norm", "bn_scale", "geometry_median"])
def test_criterion_decides_which_filters_are_kept(digits_files, feeds, tmp_path, criterion):
    scores, rows = _filter_scores(digits_files)
    expected = _top_half(scores[criterion])
    assert any(_top_half(v) != expected for c, v in scores.items() if c != criterion)  # the criteria disagree
    s = _prune(digits_files, tmp_path, feeds, {"pruned_ratio": 0.5, "prune_params_name": ["conv2d_1.w_0"],
                                               "criterion": criterion})
    kept = _saved(s)["conv2d_1.w_0"].reshape(len(rows) // 2, -1)
    assert [int(np.argmin(np.abs(rows - k).sum(1))) for k in kept] == expected and s["criterion"] == criterion


def test_prune_algo_asp_masks_2_4_in_the_named_weights(digits_files, feeds, tmp_path):
    before = _original(digits_files)
    s = _prune(digits_files, tmp_path, feeds, {"prune_algo": "asp", "prune_params_name": ["conv2d_2.w_0"]})
    after = _saved(s)
    with legacy_ir():
        uses = weight_params(model_io.load_model(model_io.locate_model(Path(s["model_dir"]))).program)
    assert check_2_4(after["conv2d_2.w_0"], uses["conv2d_2.w_0"]) == 1.0
    assert (after["conv2d_2.w_0"] == 0).mean() == pytest.approx(0.5)
    assert all(after[n].shape == before[n].shape for n in WEIGHTS) and s["params_after"] == s["params_before"]
    assert (after["linear_0.w_0"] == 0).mean() < 0.01  # not named: dense


# -- UnstructurePruneConfig ----------------------------------------------------------------------------------------

def _sparse(files, save_dir, feeds, config, train=None) -> dict:
    return _train(files, save_dir, feeds, {"UnstructurePruneConfig": config, "DistillationConfig": {}},
                  dict(PRUNE_TRAIN, **(train or {})))


def _zeros(params, names) -> dict:
    return {n: float((params[n] == 0).mean()) for n in names}


def test_prune_ratio_with_and_without_local_sparsity(digits_files, feeds, tmp_path):
    overall = _sparse(digits_files, tmp_path / "global", feeds, {"prune_ratio": 0.5})
    per_tensor = _zeros(_saved(overall), WEIGHTS)
    assert overall["strategy"] == "sparse_distill" and overall["sparsity_before"] < 0.01
    assert overall["sparsity_after"] == pytest.approx(0.5, abs=1e-3)
    assert overall["sparsity"]["per_tensor"] == pytest.approx(per_tensor, abs=1e-6)
    assert max(per_tensor.values()) - min(per_tensor.values()) > 0.2  # one global threshold: ratios differ
    local = _sparse(digits_files, tmp_path / "local", feeds, {"prune_ratio": 0.3, "local_sparsity": True})
    assert local["sparsity_after"] == pytest.approx(0.3, abs=1e-3)
    assert _zeros(_saved(local), WEIGHTS) == pytest.approx(dict.fromkeys(WEIGHTS, 0.3), abs=0.01)


def test_threshold_mode_zeroes_the_small_weights_and_ignores_prune_ratio(digits_files, feeds, tmp_path):
    before = _original(digits_files)
    s = _sparse(digits_files, tmp_path, feeds, {"prune_mode": "threshold", "threshold": 0.05, "prune_ratio": 0.9})
    after = _saved(s)
    for n in WEIGHTS:
        assert np.array_equal(after[n] == 0, np.abs(before[n]) < 0.05), n
    small = sum(int((np.abs(before[n]) < 0.05).sum()) for n in WEIGHTS) / sum(before[n].size for n in WEIGHTS)
    assert s["sparsity_after"] == pytest.approx(small, abs=1e-6) and abs(small - 0.9) > 0.3


@pytest.fixture(scope="module")
def conv1x1_files(tmp_path_factory):
    """A digits-shaped CNN with a 3x3 and a 1x1 convolution (random weights: only sparsity is measured)."""
    import paddle

    from autocompress.prune.testing import export_layer

    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.c3 = paddle.nn.Conv2D(1, 8, 3, padding=1)
            self.c1 = paddle.nn.Conv2D(8, 8, 1)
            self.fc = paddle.nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            h = paddle.nn.functional.relu(self.c1(paddle.nn.functional.relu(self.c3(x))))
            return self.fc(paddle.flatten(h, 1))

    paddle.disable_static()
    paddle.seed(0)
    return export_layer(Net(), tmp_path_factory.mktemp("conv1x1"), (1, 1, 8, 8))


def test_prune_params_type_conv1x1_only_leaves_the_other_weights_dense(conv1x1_files, feeds, tmp_path):
    names = ("conv2d_0.w_0", "conv2d_1.w_0", "linear_0.w_0")  # 3x3, 1x1, fc
    only = _sparse(conv1x1_files, tmp_path / "1x1", feeds, {"prune_ratio": 0.5, "prune_params_type": "conv1x1_only"})
    assert list(only["sparsity"]["per_tensor"]) == ["conv2d_1.w_0"]
    assert _zeros(_saved(only), names) == {"conv2d_0.w_0": 0.0, "conv2d_1.w_0": 0.5, "linear_0.w_0": 0.0}
    every = _sparse(conv1x1_files, tmp_path / "all", feeds, {"prune_ratio": 0.5})
    assert sorted(every["sparsity"]["per_tensor"]) == list(names)


def test_gmp_ramps_from_initial_ratio_in_prune_steps(digits_files, feeds, tmp_path):
    gmp = {"prune_strategy": "gmp", "prune_ratio": 0.6,
           "gmp_config": {"pruning_iterations": 4, "prune_steps": 2, "initial_ratio": 0.2}}
    s = _sparse(digits_files, tmp_path / "gmp", feeds, gmp, {"train_iter": 6, "eval_iter": 6})
    history = [tuple(h) for h in s["sparsity"]["ratio_history"]]
    assert history[0] == (0, 0.2) and history[-1][1] == pytest.approx(0.6) and len(history) == 3
    assert 0.2 < history[1][1] < 0.6 and s["sparsity_after"] == pytest.approx(0.6, abs=1e-3)
    one_shot = _sparse(digits_files, tmp_path / "none", feeds, {"prune_ratio": 0.6})  # prune_strategy None
    assert [tuple(h) for h in one_shot["sparsity"]["ratio_history"]] == [(0, 0.6)]
    assert one_shot["sparsity"]["schedule"] is None and s["sparsity"]["schedule"]["initial_ratio"] == 0.2
