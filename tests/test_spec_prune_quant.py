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
