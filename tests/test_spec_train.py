"""Spec fidelity of the training keys: each test asserts the effect a PaddleSlim user expects from a
TrainConfig / DistillationConfig / MultiTeacherDistillationConfig key, or the clear refusal."""
from __future__ import annotations

import pytest

from autocompress.config import TrainConfig, build
from autocompress.errors import ConfigError, ModelError
from autocompress.paddle_env import legacy_ir


def _amp_program(amp_config):
    """A tiny static program minimized through train.amp.decorate; returns (optimizer, needs_init, programs)."""
    from autocompress.train import amp as amp_mod

    with legacy_ir() as paddle:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [-1, 4], "float32")
            loss = paddle.mean(paddle.static.nn.fc(paddle.static.nn.fc(x, 8), 2))
            opt, needs_init = amp_mod.decorate(paddle.optimizer.SGD(0.1), amp_config)
            opt.minimize(loss, startup_program=startup)
    return opt, needs_init, main, startup


def _fill_values(program) -> list[float]:
    return [op.attr("value") for op in program.global_block().ops if op.type == "fill_constant"]


def test_amp_config_paddle_keys_reach_decorate():
    """decorate()'s own keys (common form) pass through to paddle and shape the AMP program."""
    opt, needs_init, main, startup = _amp_program(
        {"init_loss_scaling": 64.0, "use_dynamic_loss_scaling": True, "incr_every_n_steps": 7, "decr_ratio": 0.25,
         "dtype": "float16", "level": "O1", "custom_black_list": ["mul"], "custom_white_list": ["elementwise_add"]})
    assert not needs_init
    assert (opt._init_loss_scaling, opt._use_dynamic_loss_scaling, opt._amp_level) == (64.0, True, "O1")
    assert (opt._incr_every_n_steps, opt._decr_ratio) == (7, 0.25)
    assert "mul" in opt._amp_lists.black_list and "elementwise_add" in opt._amp_lists.white_list
    assert 64.0 in _fill_values(startup)                                    # the loss-scaling var starts at 64
    ops = [op.type for op in main.global_block().ops]
    assert "update_loss_scaling" in ops and "check_finite_and_unscale" in ops  # dynamic scaling is in the program
    # (no fp16 casts: on CPU paddle drops every op from the white list, which is why a CPU run refuses
    # amp_config with a DeviceError: test_train_units.test_bad_train_configs)


def test_amp_config_spec_spelling_uses_paddle_fp16_form_with_paddleslim_defaults():
    """The spec's O2 keys (use_pure_fp16, use_fp16_guard) go to paddle's fp16 overload; like PaddleSlim's
    ACT, init_loss_scaling defaults to 128 and use_dynamic_loss_scaling to True."""
    opt, needs_init, _, startup = _amp_program({"use_pure_fp16": True, "use_fp16_guard": False})
    assert needs_init and opt._amp_level == "O2" and opt._use_fp16_guard is False
    assert (opt._init_loss_scaling, opt._use_dynamic_loss_scaling) == (128.0, True)
    assert opt._incr_every_n_steps == 1000 and opt._decr_ratio == 0.8   # the fp16 form's own defaults
    opt, needs_init, _, _ = _amp_program({"custom_white_list": ["mul"], "use_dynamic_loss_scaling": False})
    assert not needs_init and opt._amp_level == "O1" and not opt._use_dynamic_loss_scaling
    assert "mul" in opt._amp_lists.white_list


@pytest.mark.parametrize("amp, match", [
    ({"init_loss_scalling": 8.0}, r"TrainConfig\.amp_config: unknown keys \['init_loss_scalling'\]; allowed .*"
                                  r"'init_loss_scaling'"),
    ({"use_pure_fp16": True, "level": "O2"}, r"amp_config: mixes \['use_pure_fp16'\] .* with \['level'\]"),
    ({"level": "O3"}, r"amp_config: level must be one of \['O1', 'O2', 'OD'\]"),
    ({"dtype": "float8"}, r"amp_config: dtype must be one of"),
    ({"custom_white_list": "conv2d"}, r"amp_config: custom_white_list must be a list"),
    ({"level": "OD", "custom_black_list": ["mul"]}, r"level OD .* custom lists would be ignored"),
])
def test_amp_config_bad_keys_fail_when_the_config_is_read(amp, match):
    with pytest.raises(ConfigError, match=match):
        build(TrainConfig, {"train_iter": 1, "amp_config": amp})


# -- use_fleet / recompute_config / sharding_config -------------------------------------------------------------

QUICK = {"train_iter": 3, "eval_iter": 3, "optimizer": "SGD", "learning_rate": 0.001}


def _distill(digits_files, digits_data, tmp_path, distill=None, train=None, **kw):
    from autocompress.train import run_distill
    from test_train_support import top1_evaluator, train_source

    x, y = digits_data["eval"]
    return run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x[:200], y[:200]),
                       distill or {}, dict(QUICK, **(train or {})), tmp_path / "out", **kw)


@pytest.fixture
def one_rank_launch(monkeypatch):
    """The environment paddle.distributed.launch gives the single process of a one-device job."""
    endpoint = "127.0.0.1:61701"
    for key, value in {"PADDLE_TRAINERS_NUM": "1", "PADDLE_TRAINER_ID": "0", "PADDLE_TRAINER_ENDPOINTS": endpoint,
                       "PADDLE_CURRENT_ENDPOINT": endpoint}.items():
        monkeypatch.setenv(key, value)


def test_use_fleet_under_a_launcher_trains_with_fleet_and_recompute(digits_files, digits_data, tmp_path,
                                                                   one_rank_launch, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="autocompress.train"):
        result = _distill(digits_files, digits_data, tmp_path,
                          train={"use_fleet": True, "recompute_config": {"checkpoints": ["conv2d_1.tmp_0"]}})
    assert result["steps"] == 3
    assert "fleet: rank 0 of 1; applied" in caplog.text and "RecomputeOptimizer" in caplog.text


@pytest.mark.parametrize("train, match", [
    ({"sharding_config": {"sharding_degree": 1}}, r"sharding_config splits the optimizer state across ranks, but "
                                                  r"this job has 1 rank"),
    ({"recompute_config": {"checkpoints": []}}, r"recompute_config needs checkpoints"),
    ({"recompute_config": {"checkpoints": ["nope.tmp_0"]}},
     r"recompute_config.checkpoints \['nope.tmp_0'\] are not vars"),
    ({"recompute_config": {"checkpointz": ["conv2d_1.tmp_0"]}}, r"TrainConfig.recompute_config .*checkpointz.*allowed "
                                                                r"keys: .*'checkpoints'"),
])
def test_fleet_strategies_paddle_would_skip_are_refused(digits_files, digits_data, tmp_path, one_rank_launch, train,
                                                         match):
    with pytest.raises(ConfigError, match=match):
        _distill(digits_files, digits_data, tmp_path, train=dict(train, use_fleet=True))


# -- UnstructurePruneConfig.gmp_config.resume_iteration -----------------------------------------------------------

def test_gmp_resume_iteration_starts_the_schedule_there(digits_files, digits_data, tmp_path):
    """PaddleSlim's GMP pops the ratios of the first resume_iteration iterations: a run resumed at 8 of a
    10-iteration ramp starts at ratio(8) and reaches the target after 2 of its own steps."""
    from autocompress.prune.run import run_sparse_distill
    from autocompress.prune.unstructured import GMPSchedule
    from test_train_support import top1_evaluator, train_source

    gmp = {"stable_iterations": 0, "pruning_iterations": 10, "tunning_iterations": 0, "pruning_steps": 10,
           "initial_ratio": 0.1}
    config = {"prune_strategy": "gmp", "prune_ratio": 0.5, "gmp_config": dict(gmp, resume_iteration=8)}
    x, y = digits_data["eval"]
    result = run_sparse_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x[:200], y[:200]),
                                config, {}, QUICK, tmp_path / "out", progress=False)
    schedule = GMPSchedule(0.5, None, gmp)
    history = [tuple(h) for h in result["sparsity"]["ratio_history"]]
    assert history[:3] == [(8, schedule.ratio(8)), (9, schedule.ratio(9)), (10, 0.5)]
    assert schedule.ratio(8) > 0.4 and result["sparsity_after"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ConfigError, match=r"resume_iteration must be >= 0"):
        GMPSchedule(0.5, None, dict(gmp, resume_iteration=-1))


# -- callables and objects in TrainConfig.optim_args: resumable in a new process ----------------------------------

def decay_weights_only(name: str) -> bool:
    """An apply_decay_param_fun: weight decay on weights, not on biases or norms."""
    return name.endswith(".w_0")


def _optim_args(clip_norm=1.0, decay=decay_weights_only, weight_decay=None):
    import paddle

    return {"apply_decay_param_fun": decay, "grad_clip": paddle.nn.ClipGradByNorm(clip_norm),
            "weight_decay": weight_decay if weight_decay is not None else paddle.regularizer.L2Decay(1e-4)}


def _train_fingerprint(optim_args) -> str:
    from autocompress.train import checkpoint
    from autocompress.train.engine import _train_identity

    tc = build(TrainConfig, dict(QUICK, optimizer="AdamW", optim_args=optim_args))
    return checkpoint.fingerprint({"train": _train_identity(tc)})


def test_optim_args_objects_fingerprint_the_same_in_a_new_process():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_spec_train as t; "
            "print(t._train_fingerprint(t._optim_args()))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()[-1]
    assert out == _train_fingerprint(_optim_args())
    # ... and still tells different settings apart
    assert _train_fingerprint(_optim_args(clip_norm=2.0)) != out
    assert _train_fingerprint(_optim_args(decay=str.isidentifier)) != out


def test_optim_args_objects_train_and_resume_with_fresh_objects(digits_files, digits_data, tmp_path):
    """A run stopped after its step-2 checkpoint is rerun with new objects (as a new process builds
    them): it resumes instead of refusing the checkpoint."""
    import paddle

    class Killed(Exception):
        pass

    def kill_at_3(ctx):
        if ctx.step == 3:
            raise Killed

    train = {"optimizer": "AdamW", "eval_iter": 2, "train_iter": 4}
    def args():  # a new lambda and new clip object each time, as a new process makes them
        return _optim_args(weight_decay=0.01, decay=lambda name: decay_weights_only(name))

    first_args, fresh_args = args(), args()  # both kept alive: different memory addresses
    with pytest.raises(Killed):
        _distill(digits_files, digits_data, tmp_path, train=dict(train, optim_args=first_args), after_step=kill_at_3)
    again = _distill(digits_files, digits_data, tmp_path, train=dict(train, optim_args=fresh_args))
    assert again["resumed_from_step"] == 2 and again["steps"] == 4
    assert fresh_args["apply_decay_param_fun"] is not first_args["apply_decay_param_fun"]
    with pytest.raises(ConfigError, match="grad_clip_args only names the arguments of a grad_clip class"):
        _distill(digits_files, digits_data, tmp_path, train={"optim_args": {
            "grad_clip": paddle.nn.ClipGradByNorm(1.0), "grad_clip_args": {"clip_norm": 2.0}}})


# -- merge_feed: false ---------------------------------------------------------------------------------------------

def _renamed_input(files, out_dir, name="img"):
    """The digits model saved again with its input named `name` instead of `x` (same weights)."""
    import dataclasses

    from autocompress import model_io

    with legacy_ir():
        model = model_io.load_model(files)
        model.program.global_block()._rename_var(model.feed_names[0], name)
        return model_io.save_model(dataclasses.replace(model, feed_names=[name]), out_dir, {"strategy": "test-renamed"})


def _step_losses(caplog) -> list[str]:
    import re

    return re.findall(r"step \d+ epoch \d+ loss (\S+) \((.*?)\)", caplog.text)


def test_merge_feed_false_feeds_a_differently_named_teacher_input_by_position(digits_files, digits_data, tmp_path,
                                                                            caplog):
    """merge_feed: false gives the teacher its own input var (`teacher_img`), fed with the same batch as the
    student's `x` (by position): the losses equal those of the shared-input run."""
    import logging

    import paddle

    from autocompress import model_io
    from autocompress.train import make_trainable
    from autocompress.program.legacy.teachers import merge_teacher

    renamed = _renamed_input(digits_files, tmp_path / "renamed")
    with legacy_ir():
        t = make_trainable(model_io.load_model(digits_files))
        mt = merge_teacher(t.program, t.feed_names, model_io.load_model(renamed), "teacher_", False,
                           paddle.static.Scope(), paddle.CPUPlace())
        assert mt.feed_map == {} and mt.own_feeds == {"teacher_img": "x"}
        assert t.program.global_block().var("teacher_img").is_data
    train = {"logging_iter": 1}
    runs = {}
    for merge, teacher in ((False, renamed), (True, digits_files)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="autocompress.train"):
            _distill(digits_files, digits_data, tmp_path / str(merge), {"merge_feed": merge}, train,
                     teacher_files=teacher)
        runs[merge] = _step_losses(caplog)
    assert len(runs[False]) == 3 and runs[False] == runs[True]


def test_merge_feed_false_refuses_a_teacher_the_batch_cannot_feed(digits_files, digits_data, tmp_path):
    from test_train_units import _tiny_model

    other = _tiny_model(tmp_path / "t", [1, 4, 4])
    with pytest.raises(ConfigError, match=r"merge_feed: false feeds the teacher the student's batch .*teacher x "
                                          r"\[-1, 1, 4, 4\].*student x \[-1, 1, 8, 8\]"):
        _distill(digits_files, digits_data, tmp_path, {"merge_feed": False}, teacher_files=other)


# -- effects: distill_lambda, fsp_loss, teacher file names, logging_iter (single and multi-teacher) ----------------

def _logged_steps(caplog) -> dict[int, dict]:
    """step -> {"total": loss, <term name>: value} from the 'autocompress.train' step log lines."""
    import re

    steps = {}
    for step, total, parts in re.findall(r"step (\d+) epoch \d+ loss (\S+) \((.*?)\)", caplog.text):
        words = parts.split()
        steps[int(step)] = {"total": float(total), **{k: float(v) for k, v in zip(words[0::2], words[1::2])}}
    return steps


def _logged_run(caplog, run, *args, **kwargs):
    import logging

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="autocompress.train"):
        result = run(*args, **kwargs)
    return result, _logged_steps(caplog)


def _weights(files, names) -> dict:
    import numpy as np

    from autocompress import model_io

    with legacy_ir():
        model = model_io.load_model(files)
        return {n: np.array(model.scope.find_var(n).get_tensor()) for n in names}


EVERY_STEP = {"logging_iter": 1}
WEIGHTS = ("conv2d_0.w_0", "linear_0.w_0")


def test_distill_lambda_weights_each_loss_in_the_total(digits_files, digits_data, tmp_path, caplog):
    _, logged = _logged_run(caplog, _distill, digits_files, digits_data, tmp_path / "a",
                            {"distill_loss": ["l2_loss", "kl_loss"], "distill_lambda": [3.0, 0.5]}, EVERY_STEP)
    assert sorted(logged) == [1, 2, 3]
    for step in logged.values():
        assert step["l2_loss"] > 0 and step["kl_loss"] > 0
        assert step["total"] == pytest.approx(3.0 * step["l2_loss"] + 0.5 * step["kl_loss"], rel=1e-3)


def test_distill_lambda_zero_leaves_the_student_untrained(digits_files, digits_data, tmp_path):
    import numpy as np

    before = _weights(digits_files, WEIGHTS)
    after = {lam: _weights(_distill(digits_files, digits_data, tmp_path / str(lam), {"distill_lambda": lam},
                                    evaluate_initial=False)["model_files"], WEIGHTS) for lam in (0.0, 1.0)}
    assert all(np.array_equal(after[0.0][n], before[n]) for n in WEIGHTS)
    assert all(not np.array_equal(after[1.0][n], before[n]) for n in WEIGHTS)


def test_fsp_loss_on_two_conv_feature_maps_trains_only_what_feeds_them(digits_files, digits_data, tmp_path, caplog):
    """fsp_loss relates conv2d_0 and conv2d_1 outputs: it is in the loss, and its gradient reaches the conv
    weights but not the classifier after them."""
    import numpy as np

    pairs = ["teacher_conv2d_0.tmp_0", "conv2d_0.tmp_0", "teacher_conv2d_1.tmp_0", "conv2d_1.tmp_0"]
    result, logged = _logged_run(caplog, _distill, digits_files, digits_data, tmp_path,
                                 {"distill_loss": "fsp_loss", "distill_node_pair": pairs, "distill_lambda": 2.0},
                                 EVERY_STEP, evaluate_initial=False)
    assert sorted(logged) == [1, 2, 3]
    for step in logged.values():
        assert step["fsp_loss"] > 0 and step["total"] == pytest.approx(2.0 * step["fsp_loss"], rel=1e-3)
    before, after = _weights(digits_files, WEIGHTS), _weights(result["model_files"], WEIGHTS)
    assert not np.array_equal(after["conv2d_0.w_0"], before["conv2d_0.w_0"])
    assert np.array_equal(after["linear_0.w_0"], before["linear_0.w_0"])


@pytest.fixture
def two_model_dir(digits_files, tmp_path):
    """A folder with two teachers: the original as inference.* and a noisy copy as noisy.pdmodel/noisy.pdiparams."""
    import shutil

    from autocompress.model_io import locate_model
    from test_train_support import perturb_model

    noisy = perturb_model(digits_files, tmp_path / "noisy-src", noise=0.5)
    folder = tmp_path / "teachers"
    folder.mkdir()
    for src in digits_files.files():
        shutil.copy(src, folder / src.name)
    shutil.copy(noisy.model_path, folder / "noisy.pdmodel")
    shutil.copy(noisy.model_dir / noisy.params_filename, folder / "noisy.pdiparams")
    return folder, locate_model(folder, "noisy.pdmodel", "noisy.pdiparams")


def test_teacher_file_names_load_that_teacher(digits_files, digits_data, tmp_path, two_model_dir, caplog):
    folder, noisy = two_model_dir
    named = {"teacher_model_dir": str(folder), "teacher_model_filename": "noisy.pdmodel",
             "teacher_params_filename": "noisy.pdiparams"}
    _, by_name = _logged_run(caplog, _distill, digits_files, digits_data, tmp_path / "a", named, EVERY_STEP)
    _, direct = _logged_run(caplog, _distill, digits_files, digits_data, tmp_path / "b", {}, EVERY_STEP,
                            teacher_files=noisy)
    _, original = _logged_run(caplog, _distill, digits_files, digits_data, tmp_path / "c",
                              dict(named, teacher_model_filename="inference.pdmodel",
                                   teacher_params_filename="inference.pdiparams"), EVERY_STEP)
    assert by_name == direct and by_name[1]["l2_loss"] > 10 * original[1]["l2_loss"]
    for config, match in (({"teacher_model_dir": str(folder)}, r"several model files.*DistillationConfig\."
                                                                r"teacher_model_filename"),
                          (dict(named, teacher_model_filename="nope.pdmodel"),
                           r"nope\.pdmodel does not exist.*DistillationConfig\.teacher_model_filename"),
                          (dict(named, teacher_params_filename="nope.pdiparams"),
                           r"nope\.pdiparams does not exist.*DistillationConfig\.teacher_params_filename")):
        with pytest.raises(ModelError, match=match):
            _distill(digits_files, digits_data, tmp_path / "bad", config)


def test_logging_iter_logs_every_n_steps(digits_files, digits_data, tmp_path, caplog):
    _, logged = _logged_run(caplog, _distill, digits_files, digits_data, tmp_path, {},
                            {"train_iter": 6, "eval_iter": 6, "logging_iter": 2})
    assert sorted(logged) == [2, 4, 6]


def test_multi_teacher_lambdas_file_names_and_logging(digits_files, digits_data, tmp_path, two_model_dir, caplog):
    """Teacher 1 (picked by file name) with lambda 1, teacher 0 with lambda 0: the student trains exactly as
    with teacher 1 alone; logging_iter 2 logs steps 2 and 4 with both teachers' terms."""
    from autocompress.train import run_multi_teacher
    from test_train_support import top1_evaluator, train_source

    folder, noisy = two_model_dir
    x, y = digits_data["eval"]
    train = {"train_iter": 4, "eval_iter": 4, "logging_iter": 2}
    config = {"teacher_model_dir": [str(digits_files.model_dir), str(folder)], "distill_loss": ["kl_loss", "l2_loss"],
              "distill_lambda": [0.0, 1.0], "teacher_model_filename": [None, "noisy.pdmodel"],
              "teacher_params_filename": [None, "noisy.pdiparams"]}
    _, multi = _logged_run(caplog, run_multi_teacher, digits_files, train_source(digits_data["train"][0]),
                           top1_evaluator(x[:200], y[:200]), config, dict(QUICK, **train), tmp_path / "multi")
    _, single = _logged_run(caplog, _distill, digits_files, digits_data, tmp_path / "single", {}, train,
                            teacher_files=noisy)
    assert sorted(multi) == sorted(single) == [2, 4]
    for step in (2, 4):
        assert multi[step]["teacher0_kl_loss"] > 0
        assert multi[step]["total"] == multi[step]["teacher1_l2_loss"] == single[step]["l2_loss"]
    with pytest.raises(ModelError, match=r"teacher_model_dir\[1\].*nope\.pdmodel does not exist.*"
                                         r"MultiTeacherDistillationConfig\.teacher_model_filename\[1\]"):
        run_multi_teacher(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x[:200], y[:200]),
                          dict(config, teacher_model_filename=[None, "nope.pdmodel"]), QUICK, tmp_path / "bad")
