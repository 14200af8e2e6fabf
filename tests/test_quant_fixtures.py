"""Shared helpers for the quant tests: a small CNN trained on scikit-learn's real digits in seconds.

The session's demo model (conftest `digits_files`, `autocompress.demo.digits`) serves most tests;
`train_digits_cnn` builds the same kind of model where a test needs its own (e.g. with a name scope).
Imported by the other test_quant_* modules.
"""
from __future__ import annotations

import numpy as np


def digits_data(seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)[:, None]
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return {"train": (x[:1000], y[:1000]), "calib": (x[1000:1300], y[1000:1300]), "eval": (x[1300:], y[1300:])}


def train_digits_cnn(out_dir, seed=0, steps=300, second_conv_scope=None):
    """A conv-conv-fc classifier saved as a legacy .pdmodel; returns ModelFiles. ~3 s on 2 cores.
    second_conv_scope: build the second conv under `paddle.static.name_scope(second_conv_scope)`."""
    import contextlib

    from autocompress.model_io import locate_model
    from autocompress.paddle_env import legacy_ir

    data = digits_data(seed)
    with legacy_ir() as paddle:
        paddle.seed(seed)
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [-1, 1, 8, 8], "float32")
            label = paddle.static.data("label", [-1, 1], "int64")
            h = paddle.nn.functional.relu(paddle.static.nn.conv2d(x, 16, 3, padding=1))
            with paddle.static.name_scope(second_conv_scope) if second_conv_scope else contextlib.nullcontext():
                h = paddle.nn.functional.relu(paddle.static.nn.conv2d(h, 32, 3, padding=1))
            h = paddle.nn.functional.max_pool2d(h, 2)
            logits = paddle.static.nn.fc(paddle.flatten(h, 1), 10)
            prob = paddle.nn.functional.softmax(logits)
            loss = paddle.mean(paddle.nn.functional.cross_entropy(logits, label))
            test_program = main.clone(for_test=True)
            paddle.optimizer.Adam(0.01).minimize(loss)
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            xt, yt = data["train"]
            rng = np.random.default_rng(seed)
            for _ in range(steps):
                idx = rng.integers(0, len(xt), 64)
                exe.run(main, feed={"x": xt[idx], "label": yt[idx]}, fetch_list=[loss])
            paddle.static.save_inference_model(f"{out_dir}/inference", [x], [prob], exe, program=test_program)
    return locate_model(out_dir)


def top1_evaluator(x, y, batch=64):
    """evaluate(predict, limit=None) -> top-1 accuracy on (x, y)."""
    def evaluate(predict, limit=None):
        n_batches = (len(x) + batch - 1) // batch
        hits = total = 0
        for b in range(n_batches if limit is None else min(limit, n_batches)):
            xb, yb = x[b * batch:(b + 1) * batch], y[b * batch:(b + 1) * batch]
            hits += int((predict({"x": xb})[0].argmax(-1) == yb[:, 0]).sum())
            total += len(xb)
        return hits / total
    return evaluate


def calib_batches(x, batch=10):
    return [{"x": x[i:i + batch]} for i in range(0, len(x), batch)]


def test_digits_model_learns(tmp_path):
    from autocompress.model_io import load_model
    from autocompress.paddle_env import legacy_ir
    from autocompress.evaluation import executor_predictor

    files = train_digits_cnn(tmp_path)
    x, y = digits_data()["eval"]
    with legacy_ir():
        acc = top1_evaluator(x, y)(executor_predictor(load_model(files)))
    assert acc > 0.9
