"""Resume: a training process killed mid-run continues from its last checkpoint when rerun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autocompress.errors import ConfigError
from autocompress.train import run_distill
from test_train_support import top1_evaluator, train_source

TRAIN = {"train_iter": 120, "eval_iter": 20, "logging_iter": 20, "optimizer": "Momentum",
         "learning_rate": {"type": "StepDecay", "learning_rate": 0.005, "step_size": 50, "gamma": 0.5},
         "optim_args": {"weight_decay": 1e-4, "grad_clip": "ClipGradByGlobalNorm",
                        "grad_clip_args": {"clip_norm": 5.0}}}

SCRIPT = """
import sys, time, json
sys.path.insert(0, {tests!r})
from autocompress.demo.digits import digits_splits
from autocompress.model_io import locate_model
from autocompress.train import run_distill
from test_train_support import top1_evaluator, train_source
sp = digits_splits()
slow = lambda ctx: time.sleep(0.05)   # make the run long enough to be killed in the middle
run_distill(locate_model({model!r}), train_source(sp["train"][0]), top1_evaluator(*sp["eval"]), {{}},
            json.loads({train!r}), {out!r}, after_step=slow)
"""


def _last_step(out: Path):
    state = out / "checkpoints" / "last" / "state.json"
    try:
        return json.loads(state.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def test_killed_training_resumes_from_checkpoint(digits_files, digits_data, tmp_path):
    out = tmp_path / "out"
    code = SCRIPT.format(tests=str(Path(__file__).parent), model=str(digits_files.model_dir),
                         train=json.dumps(TRAIN), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, GLOG_minloglevel="2"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (_last_step(out) or 0) < 40 and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _last_step(out)
    assert 40 <= killed_at < 120
    assert not (out / "model").exists()

    x, y = digits_data["eval"]
    result = run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y), {}, TRAIN, out)
    assert result["resumed_from_step"] == killed_at
    assert result["steps"] == 120
    steps = [c["step"] for c in result["curve"]]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 120
    assert all(s in steps for s in range(20, killed_at + 1, 20))  # the killed run's curve was kept
    # the scheduler continued: StepDecay halves every 50 steps, so after 120 steps lr = 0.005 / 4
    assert result["curve"][-1]["lr"] == pytest.approx(0.00125)
    assert result["model_files"].model_path.exists()

    # a finished run rerun with the same save_dir resumes at the end and just re-saves
    again = run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y), {}, TRAIN, out)
    assert again["resumed_from_step"] == 120 and again["metric"] == pytest.approx(result["metric"])


def test_checkpoints_of_another_run_are_refused(digits_files, digits_data, tmp_path):
    x, y = digits_data["eval"]
    small = dict(TRAIN, train_iter=20)
    run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y), {}, small, tmp_path)
    with pytest.raises(ConfigError, match="checkpoints of a different run"):
        run_distill(digits_files, train_source(digits_data["train"][0]), top1_evaluator(x, y),
                    {"distill_loss": "kl_loss"}, small, tmp_path)
