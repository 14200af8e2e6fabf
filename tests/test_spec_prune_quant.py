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
