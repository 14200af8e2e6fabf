"""Unstructured sparsity (ratio / threshold / GMP, local / global) and ASP 2:4 masks."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from autocompress import model_io
from autocompress.config import UnstructurePruneConfig, build
from autocompress.errors import ConfigError
from autocompress.paddle_env import legacy_ir
from autocompress.prune.asp import ASPPruner, check_2_4, mask_2_4
from autocompress.prune.masks import WeightUse, read_param, scope_sparsity, write_param
from autocompress.prune.testing import export_layer, randomize_norms, run_model
from autocompress.prune.unstructured import GMPSchedule, UnstructuredPruner, compute_masks, select_params, \
    sparsify_model

nn = paddle.nn


class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2D(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2D(8)
        self.c2 = nn.Conv2D(8, 16, 1)
        self.fc1 = nn.Linear(16 * 4, 32)
        self.fc2 = nn.Linear(32, 6)

    def forward(self, x):
        h = nn.functional.relu(self.b1(self.c1(x)))
        h = nn.functional.adaptive_avg_pool2d(nn.functional.relu(self.c2(h)), 2)
        return self.fc2(nn.functional.relu(self.fc1(paddle.flatten(h, 1))))


@pytest.fixture(scope="module")
def net_files(tmp_path_factory):
    paddle.disable_static()
    paddle.seed(0)
    layer = Net()
    randomize_norms(layer)
    return export_layer(layer, tmp_path_factory.mktemp("net"), (1, 3, 8, 8))


def test_select_params_skips_norms_and_biases(net_files):
    with legacy_ir():
        model = model_io.load_model(net_files)
        names = select_params(model.program)
        assert sorted(names) == ["conv2d_0.w_0", "conv2d_1.w_0", "linear_0.w_0", "linear_1.w_0"]
        assert select_params(model.program, "conv1x1_only") == ["conv2d_1.w_0"]


def test_local_ratio_gives_each_tensor_the_ratio_and_global_gives_the_model():
    rng = np.random.RandomState(0)
    weights = {"a": rng.randn(40, 10), "b": 0.01 * rng.randn(100)}
    local = compute_masks(weights, ratio=0.75, local=True)
    assert [int((~m).sum()) for m in local.values()] == [300, 75]
    glob = compute_masks(weights, ratio=0.75, local=False)
    assert sum(int((~m).sum()) for m in glob.values()) == 375
    assert (~glob["b"]).mean() == 1.0  # the small tensor goes first under one global threshold


def test_threshold_mode():
    w = {"a": np.array([[0.001, -0.02], [0.5, -0.009]])}
    assert compute_masks(w, mode="threshold", threshold=0.01)["a"].tolist() == [[False, True], [True, False]]


def test_threshold_mode_without_threshold_is_a_config_error():
    with pytest.raises(ConfigError, match=r"threshold.*needs a threshold"):
        build(UnstructurePruneConfig, {"prune_mode": "threshold"})
    with pytest.raises(ConfigError, match="needs a threshold"):
        compute_masks({"a": np.ones((2, 2))}, mode="threshold")


@pytest.mark.parametrize("bad", [{"prune_ratio": 1.0}, {"prune_ratio": -0.5}, {"gmp_config": {"steps": 3}},
                                 {"prune_params_type": "conv3x3"}])
def test_bad_unstructured_configs(bad):
    with pytest.raises(ConfigError):
        build(UnstructurePruneConfig, bad)


def test_gmp_schedule_is_cubic_and_reaches_the_target():
    s = GMPSchedule(0.75, None, {"stable_iterations": 10, "pruning_iterations": 100, "tunning_iterations": 50,
                                 "pruning_steps": 10, "initial_ratio": 0.15})
    assert s.ratio(0) == s.ratio(9) == 0.0
    assert s.ratio(10) == pytest.approx(0.15)
    ratios = [s.ratio(t) for t in range(10, 111)]
    assert all(b >= a for a, b in zip(ratios, ratios[1:]))
    assert s.ratio(60) == pytest.approx(0.75 - 0.6 * 0.5 ** 3)  # halfway: cubic, most of the ramp done
    assert s.ratio(110) == s.ratio(1000) == 0.75
    assert len(set(ratios)) == 11  # 10 ramp steps + the target
    with pytest.raises(ConfigError, match="epochs or train_iter"):
        GMPSchedule(0.5, None, None)
    with pytest.raises(ConfigError, match="until iteration 120.*training runs 100"):
        GMPSchedule(0.5, 100, {"stable_iterations": 20, "pruning_iterations": 100})


def test_gmp_masks_hold_through_steps(net_files):
    with legacy_ir():
        model = model_io.load_model(net_files)
        pruner = UnstructuredPruner(model.program, model.scope,
                                    {"prune_strategy": "gmp", "prune_ratio": 0.8,
                                     "gmp_config": {"pruning_iterations": 20, "tunning_iterations": 5,
                                                    "prune_steps": 4}})
        pruner.start()
        seen = []
        for _ in range(30):
            for n in pruner.names:  # an optimizer step moves every weight
                write_param(model.scope, n, read_param(model.scope, n) + 0.001)
            pruner.step()
            seen.append(scope_sparsity(model.scope, pruner.names)["overall"])
        assert seen[0] == pytest.approx(0.15, abs=0.01)
        assert seen[-1] == pytest.approx(0.8, abs=0.01)
        assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))
        report = pruner.report()
        assert set(report["per_tensor"]) == set(pruner.names)


def test_sparsify_model_saves_zeros_that_compress(net_files, tmp_path, hashes):
    before = hashes(net_files.model_dir)
    result = sparsify_model(net_files, {"prune_ratio": 0.75, "local_sparsity": True}, tmp_path / "out")
    assert hashes(net_files.model_dir) == before
    assert all(abs(v - 0.75) < 0.02 for v in result["sparsity"]["per_tensor"].values())
    with legacy_ir():
        saved = model_io.load_model(result["model_files"])
        assert scope_sparsity(saved.scope, result["sparsity"]["per_tensor"])["overall"] == pytest.approx(0.75, abs=0.01)
        assert read_param(saved.scope, "batch_norm2d_0.w_0").min() > 0  # norms untouched
        out = run_model(saved, {"x": np.ones((2, 3, 8, 8), "float32")})[0]
        assert out.shape == (2, 6)
    assert result["size_after"]["params_compressed_bytes"] < 0.6 * result["size_before"]["params_compressed_bytes"]


# --- ASP ---------------------------------------------------------------------------------------

def test_mask_2_4_keeps_the_two_largest_along_the_input_dim():
    w = np.array([[1.0, -5.0], [2.0, 0.1], [-3.0, 0.2], [0.5, 4.0]])  # [K=4, N=2], X @ W
    use = WeightUse("w", "matmul_v2", (4, 2))
    assert mask_2_4(w, use).tolist() == [[False, True], [True, False], [True, False], [False, True]]
    conv = np.random.RandomState(0).randn(3, 8, 2, 2)
    cuse = WeightUse("c", "conv2d", conv.shape)
    m = mask_2_4(conv, cuse)
    assert m.shape == conv.shape
    assert (m.reshape(3, 2, 4, 2, 2).sum(axis=2) == 2).all()  # channel groups of 4 keep 2
    assert check_2_4(conv * m, cuse) == 1.0


def test_asp_masks_survive_training_steps(net_files):
    with legacy_ir():
        model = model_io.load_model(net_files)
        asp = ASPPruner(model.program, model.scope, include_convs=True)
        assert "conv2d_0.w_0" in asp.skipped  # 3 input channels cannot hold 2:4
        assert set(asp.names) == {"conv2d_1.w_0", "linear_0.w_0", "linear_1.w_0"}
        asp.prune()
        rng = np.random.RandomState(0)
        for _ in range(5):
            for n in asp.names:
                write_param(model.scope, n, read_param(model.scope, n) + rng.randn(*asp.uses[n].shape) * 0.1)
            asp.step()
        report = asp.report()
        assert report["all_groups_ok"] and report["overall"] == pytest.approx(0.5)
        for n, use in asp.uses.items():
            assert check_2_4(read_param(model.scope, n), use) == 1.0
