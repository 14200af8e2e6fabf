"""Unit tests of the training pieces: trainable programs, teacher merging, losses, config errors."""
from __future__ import annotations

import numpy as np
import pytest

from autocompress import model_io
from autocompress.errors import ConfigError, DeviceError
from autocompress.paddle_env import legacy_ir
from autocompress.train import make_trainable, run_distill, run_multi_teacher
from autocompress.train import losses as L
from autocompress.train.optim import build_lr, build_optimizer
from autocompress.program.legacy.teachers import merge_teacher
from autocompress.program.legacy.trainable import copy_persistables
from test_train_support import top1_evaluator, train_source

QUICK = {"train_iter": 3, "eval_iter": 3, "optimizer": "SGD", "learning_rate": 0.001}


def _run(exe, program, scope, feed, fetch):
    import paddle

    with paddle.static.scope_guard(scope):
        return exe.run(program, feed=feed, fetch_list=fetch)


def test_trainable_eval_mode_matches_inference(digits_files, digits_data):
    import paddle

    x = digits_data["eval"][0][:64]
    with legacy_ir():
        model = model_io.load_model(digits_files)
        ref = _run(model.executor, model.program, model.scope, {"x": x}, model.fetch_targets)[0]
        t = make_trainable(model)
        scope = paddle.static.Scope()
        copy_persistables(t.program, model.scope, scope, paddle.CPUPlace())
        out = _run(model.executor, t.eval_program(), scope, {"x": x}, t.output_names)[0]
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        # weights are trainable Parameters; BN running statistics (written by batch_norm) are not
        stats = {n for op in t.program.global_block().ops if op.type == "batch_norm"
                 for n in op.input("Mean") + op.input("Variance")}
        assert stats and not stats & set(t.param_names)
        assert {"conv2d_0.w_0", "linear_0.w_0", "linear_0.b_0"} <= set(t.param_names)
        bn = [op for op in t.program.global_block().ops if op.type == "batch_norm"]
        assert all(not op.attr("is_test") and not op.attr("use_global_stats") for op in bn)
        frozen = make_trainable(model, freeze_bn=True)
        assert all(op.attr("use_global_stats") for op in frozen.program.global_block().ops if op.type == "batch_norm")
        # the loaded model's program is untouched (still inference mode, still has feed/fetch ops)
        assert {"feed", "fetch"} <= {op.type for op in model.program.global_block().ops}
        assert all(op.attr("is_test") for op in model.program.global_block().ops if op.type == "batch_norm")


def test_teacher_merge_prefixes_and_freezes(digits_files, digits_data):
    import paddle

    x = digits_data["eval"][0][:16]
    with legacy_ir():
        student = model_io.load_model(digits_files)
        teacher = model_io.load_model(digits_files)
        ref = _run(teacher.executor, teacher.program, teacher.scope, {"x": x}, teacher.fetch_targets)[0]
        t = make_trainable(student)
        scope = paddle.static.Scope()
        copy_persistables(t.program, student.scope, scope, paddle.CPUPlace())
        mt = merge_teacher(t.program, t.feed_names, teacher, "teacher_", True, scope, paddle.CPUPlace())
        block = t.program.global_block()
        assert mt.output_names == ["teacher_" + teacher.fetch_names[0]]
        assert mt.feed_map == {"x": "x"}                      # merge_feed: one shared input
        teacher_vars = [n for n in block.vars if n.startswith("teacher_")]
        assert len(teacher_vars) > 20 and all(block.var(n).stop_gradient for n in teacher_vars)
        assert not any(isinstance(block.var(n), paddle.base.framework.Parameter) for n in teacher_vars)
        assert mt.resolve("teacher_linear_0.tmp_1") == mt.resolve("linear_0.tmp_1") == "teacher_linear_0.tmp_1"
        out = _run(teacher.executor, t.program, scope, {"x": x}, mt.output_names)[0]
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)   # the teacher runs in inference mode


def _tiny_model(folder, shape):
    """A one-layer model with input `shape` saved as a legacy inference model."""
    import paddle

    with legacy_ir():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [-1] + list(shape), "float32")
            y = paddle.static.nn.fc(paddle.flatten(x, 1), 10)
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            paddle.static.save_inference_model(str(folder / "inference"), [x], [y], exe, program=main)
    return model_io.locate_model(folder)


def test_merge_feed_mismatch_is_a_clear_error(digits_files, digits_data, tmp_path):
    other = _tiny_model(tmp_path / "t", [1, 4, 4])
    x, y = digits_data["eval"]
    with pytest.raises(ConfigError, match=r"merge_feed=True.*teacher x \[-1, 1, 4, 4\].*student x \[-1, 1, 8, 8\]"):
        run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y), {}, QUICK,
                    tmp_path / "out", teacher_files=other)


def test_merge_feed_false_feeds_the_teacher_its_own_input(digits_files, digits_data, tmp_path):
    x, y = digits_data["eval"]
    result = run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y),
                         {"merge_feed": False}, QUICK, tmp_path / "out")
    assert result["steps"] == 3


def test_losses_match_numpy():
    import paddle

    rng = np.random.default_rng(0)
    T, S = rng.normal(size=(4, 3, 5, 5)).astype("float32"), rng.normal(size=(4, 3, 5, 5)).astype("float32")
    T2, S2 = rng.normal(size=(4, 2, 5, 5)).astype("float32"), rng.normal(size=(4, 2, 5, 5)).astype("float32")
    with legacy_ir():
        main, start = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, start):
            t, s = paddle.static.data("t", [-1, 3, 5, 5]), paddle.static.data("s", [-1, 3, 5, 5])
            t2, s2 = paddle.static.data("t2", [-1, 2, 5, 5]), paddle.static.data("s2", [-1, 2, 5, 5])
            outs = [L.l2_loss(t, s), L.l1_loss(t, s), L.soft_label_loss(t, s), L.kl_loss(t, s, 2.0),
                    L.cosine_loss(t, s), L.fsp_loss(t, t2, s, s2)]
        got = paddle.static.Executor(paddle.CPUPlace()).run(main, feed=dict(t=T, s=S, t2=T2, s2=S2), fetch_list=outs)

    def sm(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    pt, ps = sm(T.reshape(-1, 5)), sm(S.reshape(-1, 5))
    pt2, ps2 = sm(T.reshape(-1, 5) / 2), sm(S.reshape(-1, 5) / 2)
    tf, sf = T.reshape(4, -1), S.reshape(4, -1)

    def fsp(a, b):
        return np.einsum("nih,njh->nij", a.reshape(4, a.shape[1], -1), b.reshape(4, b.shape[1], -1)) / 25

    ref = [((S - T) ** 2).mean(), np.abs(S - T).mean(), (-(pt * np.log(ps)).sum(-1)).mean(),
           (pt2 * (np.log(pt2) - np.log(ps2))).sum(-1).mean() * 4,
           (1 - (tf * sf).sum(1) / np.linalg.norm(tf, axis=1) / np.linalg.norm(sf, axis=1)).mean(),
           ((fsp(S, S2) - fsp(T, T2)) ** 2).mean()]
    np.testing.assert_allclose([float(np.asarray(g).reshape(-1)[0]) for g in got], ref, rtol=1e-4)


def _distill_error(digits_files, digits_data, tmp_path, distill, train=QUICK, **kw):
    x, y = digits_data["eval"]
    return run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y), distill, train,
                       tmp_path / "out", **kw)


@pytest.mark.parametrize("distill, match", [
    ({"distill_node_pair": ["teacher_nope", "linear_0.tmp_1"]},
     r"distill_node_pair\[0\] = 'teacher_nope' is not a var of the teacher\. Valid names \(op outputs\): "
     r"teacher_conv2d_0\.tmp_0"),
    ({"distill_node_pair": ["teacher_linear_0.tmp_1", "nope"]},
     r"distill_node_pair\[1\] = 'nope' is not a var of the student\. Valid names .*linear_0\.tmp_1"),
    ({"distill_node_pair": ["teacher_linear_0.tmp_1"]}, r"odd number"),
    ({"distill_loss": ["l2_loss", "kl_loss"], "distill_lambda": [1.0]}, r"distill_lambda has 1 values"),
    ({"distill_loss": "nope_loss"}, r"unknown distill_loss 'nope_loss'; allowed: \['l2_loss'"),
    ({"distill_loss": "fsp_loss", "distill_node_pair": ["teacher_conv2d_0.tmp_0", "conv2d_0.tmp_0"]},
     r"fsp_loss .* two at a time; got 1 pairs"),
    ({"distill_node_pair": ["teacher_conv2d_0.tmp_0", "linear_0.tmp_1"]},
     r"l2_loss: teacher node teacher_conv2d_0\.tmp_0 has shape \[-1, 16, 8, 8\] but student node "
     r"linear_0\.tmp_1 has \[-1, 10\]"),
])
def test_bad_distill_configs(digits_files, digits_data, tmp_path, distill, match):
    with pytest.raises(ConfigError, match=match):
        _distill_error(digits_files, digits_data, tmp_path, distill)


def test_fsp_and_feature_pairs_train(digits_files, digits_data, tmp_path):
    pairs = ["teacher_conv2d_0.tmp_0", "conv2d_0.tmp_0", "teacher_conv2d_1.tmp_0", "conv2d_1.tmp_0"]
    result = _distill_error(digits_files, digits_data, tmp_path,
                            {"distill_loss": ["fsp_loss", "cosine_loss", "l1_loss"], "distill_node_pair": pairs,
                             "distill_lambda": [1.0, 0.5, 0.1]})
    assert result["steps"] == 3


@pytest.mark.parametrize("train, error, match", [
    ({"optimizer": "Adamm"}, ConfigError, r"unknown optimizer 'Adamm'; allowed \(paddle.optimizer\): \[.*'Adam'"),
    ({"optim_args": {"grad_clip": "ClipByMagic"}}, ConfigError, r"grad_clip 'ClipByMagic' .* allowed: \['ClipGradByGlobalNorm'"),
    ({"optim_args": {"betaa": 0.9}, "optimizer": "Adam"}, ConfigError, r"optim_args \(Adam\): unknown arguments \['betaa'\]; allowed: .*'beta1'"),
    ({"optim_args": {"grad_clip_args": {"max": 1.0}}}, ConfigError, r"grad_clip_args is set but grad_clip is not"),
    ({"optim_args": {"grad_clip": "ClipGradByValue", "grad_clip_args": {"maxx": 1}}}, ConfigError, r"unknown arguments \['maxx'\]"),
    ({"learning_rate": {"type": "Nope"}}, ConfigError, r"scheduler .*paddle.optimizer.lr"),
    ({"learning_rate": {"type": "CosineAnnealingDecay", "learning_rate": 0.1}}, ConfigError, r"CosineAnnealingDecay"),
    ({"train_iter": None}, ConfigError, r"TrainConfig needs epochs or train_iter"),
    ({"amp_config": {"custom_white_list": ["conv2d"]}}, DeviceError, r"amp_config: static mixed precision .* needs a GPU"),
    ({"recompute_config": {"checkpoints": []}}, ConfigError, r"recompute_config only works with the fleet API"),
    ({"sharding_config": {"sharding_degree": 2}}, ConfigError, r"sharding_config only works with the fleet API"),
])
def test_bad_train_configs(digits_files, digits_data, tmp_path, train, error, match):
    with pytest.raises(error, match=match):
        _distill_error(digits_files, digits_data, tmp_path, {}, dict(QUICK, **train))


def test_optimizer_args_and_spec_spelling_grid_clip():
    import paddle

    with legacy_ir():
        opt = build_optimizer("AdamW", 0.01, {"weight_decay": 0.05, "beta1": 0.8, "grid_clip": "ClipGradByNorm",
                                              "grad_clip_args": {"clip_norm": 2.0}})
        assert isinstance(opt, paddle.optimizer.AdamW) and opt._beta1 == 0.8
        assert isinstance(opt._grad_clip, paddle.nn.ClipGradByNorm) and opt._grad_clip.clip_norm == 2.0
        lr = build_lr({"type": "PiecewiseDecay", "boundaries": [10], "values": [0.1, 0.01]})
        assert isinstance(lr, paddle.optimizer.lr.PiecewiseDecay)


def test_use_fleet_in_a_process_no_launcher_started_is_refused(digits_files, digits_data, tmp_path, monkeypatch):
    monkeypatch.delenv("PADDLE_TRAINERS_NUM", raising=False)
    for train in ({"use_fleet": True}, {"use_fleet": True, "recompute_config": {"checkpoints": ["conv2d_1.tmp_0"]}}):
        with pytest.raises(ConfigError, match=r"use_fleet: true .*python -m paddle.distributed.launch.* or remove "
                                              r"use_fleet \(and recompute_config / sharding_config\)"):
            _distill_error(digits_files, digits_data, tmp_path, {}, dict(QUICK, **train))


def test_lr_scheduler_object_through_the_api(digits_files, digits_data, tmp_path):
    import paddle

    sched = paddle.optimizer.lr.ExponentialDecay(learning_rate=0.01, gamma=0.5)
    result = _distill_error(digits_files, digits_data, tmp_path, {}, dict(QUICK, learning_rate=sched))
    assert result["curve"][-1]["lr"] == pytest.approx(0.01 * 0.5 ** 3)


def test_multi_teacher_config_errors(digits_files, digits_data, tmp_path):
    x, y = digits_data["eval"]
    cfg = {"teacher_model_dir": [str(digits_files.model_dir)] * 2, "distill_loss": ["l2_loss", "kl_loss"],
           "distill_lambda": [1.0, 1.0], "distill_node_pair": [["teacher0_linear_0.tmp_1", "linear_0.tmp_1"],
                                                              ["teacher0_linear_0.tmp_1", "linear_0.tmp_1"]]}
    with pytest.raises(ConfigError, match=r"distill_node_pair\[1\]\[0\]|distill_node_pair\[1\] .*teacher0_linear"):
        run_multi_teacher(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y), cfg, QUICK,
                          tmp_path / "out")
    with pytest.raises(ConfigError, match=r"distill_lambda has 1 entries but there are 2 teachers"):
        run_multi_teacher(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y),
                          dict(cfg, distill_lambda=[1.0], distill_node_pair=None), QUICK, tmp_path / "out")


def test_after_step_hook_can_reapply_masks(digits_files, digits_data, tmp_path):
    """The pruning hook: a mask re-applied after every optimizer step survives into the saved model."""
    import paddle

    seen = []

    def mask(ctx):
        seen.append(ctx.step)
        assert "conv2d_0.w_0" in ctx.param_names
        t = ctx.scope.find_var("conv2d_0.w_0").get_tensor()
        w = np.array(t)
        w[:4] = 0.0
        t.set(w, ctx.place if ctx.place is not None else paddle.CPUPlace())

    # evaluate_initial=False: the unmasked start must not be a candidate for the best checkpoint
    result = _distill_error(digits_files, digits_data, tmp_path, {}, after_step=mask, evaluate_initial=False)
    assert seen == [1, 2, 3]
    with legacy_ir() as pd:
        saved = model_io.load_model(result["model_files"])
        w = np.array(saved.scope.find_var("conv2d_0.w_0").get_tensor())
    assert np.all(w[:4] == 0.0) and np.any(w[4:] != 0.0)
