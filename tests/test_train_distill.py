"""Distillation, multi-teacher distillation and QAT + distillation on the real digits model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autocompress.errors import EvalError
from autocompress.model_io import read_metadata
from autocompress.train import TrainingError, run_distill, run_multi_teacher
from test_train_support import (perturbed_digits, predict_accuracy, top1_evaluator,  # noqa: F401
                                train_source)

TRAIN = {"epochs": 3, "eval_iter": 20, "logging_iter": 10, "optimizer": "Adam", "learning_rate": 0.002}


def test_distill_recovers_perturbed_student(perturbed_digits, digits_files, digits_data, tmp_path, hashes):
    student, base, perturbed = perturbed_digits
    x, y = digits_data["eval"]
    before = hashes(student.model_dir), hashes(digits_files.model_dir)
    result = run_distill(student, train_source(digits_data["train"][0]), top1_evaluator(x, y),
                         {"distill_loss": "l2_loss"}, TRAIN, tmp_path / "out", teacher_files=digits_files)
    recovered = (result["metric"] - perturbed) / (base - perturbed)
    assert result["baseline_metric"] == pytest.approx(perturbed)
    assert recovered >= 0.8, (base, perturbed, result["metric"])
    # the saved model is the trained one, with the input's file names, and the inputs are untouched
    saved = result["model_files"]
    assert saved.model_filename == student.model_filename
    assert predict_accuracy(saved, x, y) == pytest.approx(result["metric"])
    assert (hashes(student.model_dir), hashes(digits_files.model_dir)) == before
    assert read_metadata(saved.model_dir)["strategy"] == "distill"
    curve = result["curve"]
    assert curve[0]["step"] == 0 and curve[-1]["step"] == result["steps"]
    assert all({"step", "loss", "metric"} <= set(c) for c in curve)


def test_multi_teacher_beats_perturbed_student(perturbed_digits, digits_files, digits_data, tmp_path):
    from autocompress.demo.digits import train_digits_model

    student, base, perturbed = perturbed_digits
    second = train_digits_model(tmp_path / "teacher2", seed=1, epochs=6)
    x, y = digits_data["eval"]
    cfg = {"teacher_model_dir": [str(digits_files.model_dir), str(second.model_dir)],
           "distill_loss": ["l2_loss", "kl_loss"], "distill_lambda": [1.0, 0.5]}
    result = run_multi_teacher(student, train_source(digits_data["train"][0]), top1_evaluator(x, y), cfg,
                               TRAIN, tmp_path / "out")
    assert result["strategy"] == "multi_teacher_distill"
    assert result["metric"] >= perturbed + 0.05, (perturbed, result["metric"])
    assert predict_accuracy(result["model_files"], x, y) == pytest.approx(result["metric"])


def test_qat_distill_int8_within_half_point(digits_files, digits_data, tmp_path):
    x, y = digits_data["eval"]
    fp32 = predict_accuracy(digits_files, x, y)
    result = run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y), {},
                         dict(TRAIN, learning_rate=0.001), tmp_path / "out", quant_config={})
    saved = result["model_files"]
    ops = _op_types(saved)
    assert "quantize_linear" in ops and "dequantize_linear" in ops
    assert read_metadata(saved.model_dir)["precision"] == "int8"
    assert result["precision"] == "int8"
    assert result["steps"] <= 3 * int(np.ceil(len(digits_data["train"][0]) / 32))
    deployed_int8 = predict_accuracy(saved, x, y, int8=True)   # oneDNN int8 kernels
    assert fp32 - deployed_int8 <= 0.005, (fp32, deployed_int8)
    assert fp32 - result["metric"] <= 0.005  # simulated (fake-quant) metric too


def test_origin_metric_mismatch_blames_eval_function(digits_files, digits_data, tmp_path):
    x, y = digits_data["eval"]
    with pytest.raises(EvalError, match="eval function .* likely wrong"):
        run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y), {},
                    dict(TRAIN, origin_metric=0.5), tmp_path / "out")
    assert not (tmp_path / "out" / "model").exists()


def test_target_metric_stops_early(perturbed_digits, digits_files, digits_data, tmp_path):
    student, base, perturbed = perturbed_digits
    x, y = digits_data["eval"]
    target = perturbed + 0.5 * (base - perturbed)
    result = run_distill(student, train_source(digits_data["train"][0]), top1_evaluator(x, y), {},
                         dict(TRAIN, epochs=10, eval_iter=5, target_metric=target), tmp_path / "out",
                         teacher_files=digits_files)
    assert result["target_met"] is True and result["stopped_early"] is True
    assert result["metric"] >= target
    assert result["steps"] < 10 * 40


def test_nan_loss_stops_and_keeps_last_good_checkpoint(digits_files, digits_data, tmp_path):
    """Divergence simulated through the after_step hook: the output bias turns NaN after step 29."""
    import paddle

    x, y = digits_data["eval"]

    def diverge(ctx):
        if ctx.step == 29:
            t = ctx.scope.find_var("linear_0.b_0").get_tensor()
            t.set(np.full(np.array(t).shape, np.nan, np.float32), paddle.CPUPlace())

    with pytest.raises(TrainingError, match="non-finite at step 30.*last good checkpoint \\(step 20\\)"):
        run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y), {}, TRAIN,
                    tmp_path / "out", after_step=diverge)
    state = json.loads((tmp_path / "out" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 20
    assert not (tmp_path / "out" / "model").exists()


def test_nan_weights_behind_finite_loss_are_caught(digits_files, digits_data, tmp_path):
    """NaN inputs: relu/max-pool squash NaN so the loss stays finite, but the weights go NaN."""
    from autocompress.data import FeedSource

    x, y = digits_data["eval"]
    xt = digits_data["train"][0]

    def poisoned():
        for n, i in enumerate(range(0, len(xt), 32)):
            batch = xt[i:i + 32].copy()
            if n >= 25:
                batch[:] = np.nan
            yield {"x": batch}

    with pytest.raises(TrainingError, match="weights became non-finite by step 40.*checkpoint \\(step 20\\)"):
        run_distill(digits_files, FeedSource.from_any(poisoned, ["x"]), top1_evaluator(x, y), {}, TRAIN,
                    tmp_path / "out")


def _op_types(files):
    from autocompress.model_io import load_model
    from autocompress.paddle_env import legacy_ir

    with legacy_ir():
        return {op.type for op in load_model(files).program.global_block().ops}
