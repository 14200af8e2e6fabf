"""Shared helpers for the training tests (digits data sources, evaluators, perturbed students),
plus tests of the helpers' own assumptions."""
from __future__ import annotations

import numpy as np
import pytest

from autocompress.data import FeedSource
from autocompress.evaluation import build_evaluator


def train_source(x, batch_size=32, seed=0):
    """A shuffling training source (a new order every pass, like a DataLoader with shuffle=True)."""
    state = {"epoch": 0}

    def gen():
        rng = np.random.default_rng(seed + state["epoch"])
        state["epoch"] += 1
        order = rng.permutation(len(x))
        for i in range(0, len(order), batch_size):
            yield {"x": x[order[i:i + batch_size]]}

    return FeedSource.from_any(gen, ["x"])


def top1_evaluator(x, y, batch_size=100):
    return build_evaluator(eval_data=FeedSource.from_arrays({"x": x}, y, batch_size=batch_size),
                           metric="top1", feed_names=["x"])


def perturb_model(files, out_dir, noise: float, seed: int = 0):
    """A copy of `files` whose conv/linear weights got Gaussian noise of `noise` x their std."""
    from autocompress import model_io
    from autocompress.program.legacy import info as program_info
    from autocompress.paddle_env import legacy_ir

    rng = np.random.default_rng(seed)
    with legacy_ir() as paddle:
        model = model_io.load_model(files)
        for name in program_info.persistable_names(model.program):
            if not name.endswith(".w_0") or "batch_norm" in name:
                continue
            t = model.scope.find_var(name).get_tensor()
            w = np.array(t)
            t.set((w + rng.normal(0, noise * w.std(), w.shape)).astype(w.dtype), paddle.CPUPlace())
        return model_io.save_model(model, out_dir, {"strategy": "test-perturbed"})


def predict_accuracy(files, x, y, int8=None) -> float:
    """Top-1 of a saved model: with the static executor (int8=None) or Paddle Inference."""
    from autocompress import model_io
    from autocompress.paddle_env import legacy_ir

    if int8 is None:
        with legacy_ir() as paddle:
            model = model_io.load_model(files)
            with paddle.static.scope_guard(model.scope):
                out = model.executor.run(model.program, feed={"x": x}, fetch_list=model.fetch_targets)[0]
    else:
        from autocompress.backend import inference_predictor

        predict = inference_predictor(files, int8=int8)
        out = np.concatenate([predict({"x": x[i:i + 100]})[0] for i in range(0, len(x), 100)])
    return float((np.asarray(out).argmax(-1) == y.reshape(-1)).mean())


@pytest.fixture(scope="session")
def perturbed_digits(digits_files, digits_data, tmp_path_factory):
    """A student that lost >= 10 points of top-1 by weight noise, and the accuracies."""
    x, y = digits_data["eval"]
    base = predict_accuracy(digits_files, x, y)
    for noise in (0.6, 0.8, 1.0, 1.3):
        out = perturb_model(digits_files, tmp_path_factory.mktemp("perturbed") / "m", noise)
        acc = predict_accuracy(out, x, y)
        if base - acc >= 0.10:
            return out, base, acc
    pytest.fail("weight noise up to 1.3 std did not cost 10 points")


def test_perturbed_student_lost_ten_points(perturbed_digits):
    _, base, acc = perturbed_digits
    assert base >= 0.95
    assert base - acc >= 0.10
