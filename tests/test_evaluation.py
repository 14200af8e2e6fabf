"""Evaluation: a tiny static program (nearest-centroid classifier on real digits), the executor
predictor, and every eval_callback form, including callbacks that raise or return NaN."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from autocompress import model_io
from autocompress.data import FeedSource
from autocompress.errors import ConfigError, DataError, EvalError
from autocompress.evaluation import ModelContext, build_evaluator, executor_predictor
from autocompress.paddle_env import legacy_ir


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images.astype(np.float32)[:, None] / 16.0, d.target.astype(np.int64)[:, None]


@pytest.fixture(scope="module")
def model(tmp_path_factory, digits):
    """Linear layer whose weights are the class means: argmax(x.mu - |mu|^2/2) = nearest centroid."""
    x, y = digits
    flat = x.reshape(len(x), 64)
    mu = np.stack([flat[y[:, 0] == c].mean(0) for c in range(10)])
    w, b = mu.T.astype(np.float32), (-0.5 * (mu ** 2).sum(1)).astype(np.float32)
    out_dir = tmp_path_factory.mktemp("model")
    with legacy_ir() as paddle:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            inp = paddle.static.data("x", [-1, 1, 8, 8], "float32")
            logits = paddle.static.nn.fc(paddle.flatten(inp, 1), 10)
        exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            weight, bias = main.all_parameters()
            scope.var(weight.name).get_tensor().set(w, paddle.CPUPlace())
            scope.var(bias.name).get_tensor().set(b, paddle.CPUPlace())
            paddle.static.save_inference_model(str(out_dir / "inference"), [inp], [logits], exe, program=main)
        loaded = model_io.load_model(model_io.locate_model(out_dir))
    return loaded, w, b


def numpy_logits(x, w, b):
    return x.reshape(len(x), 64) @ w + b


def accuracy(logits, y):
    return float((logits.argmax(1) == y[:, 0]).mean())


def loader(x, y, batch_size=100):
    import paddle

    class DS(paddle.io.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], y[i]

    return paddle.io.DataLoader(DS(), batch_size=batch_size, shuffle=False)


def test_executor_predictor_matches_numpy(model, digits):
    loaded, w, b = model
    x, y = digits
    predict = executor_predictor(loaded)
    out = predict({"x": x[:50]})
    assert isinstance(out, list) and len(out) == 1 and out[0].shape == (50, 10)
    np.testing.assert_allclose(out[0], numpy_logits(x[:50], w, b), rtol=1e-4, atol=1e-4)
    with legacy_ir():
        clone = loaded.program.clone(for_test=True)
    np.testing.assert_allclose(executor_predictor(loaded, clone)({"x": x[:5]})[0], out[0][:5], rtol=1e-5)
    with pytest.raises(EvalError, match=r"needs \['x'\]"):
        predict({"image": x[:5]})
    assert accuracy(numpy_logits(x, w, b), y) > 0.85  # a real classifier, not a constant


def test_eval_dataloader_scored_with_top1_and_limit(model, digits):
    loaded, w, b = model
    x, y = digits
    want = accuracy(numpy_logits(x, w, b), y)
    ev = build_evaluator(loader(x, y), metric="top1", feed_names=loaded.feed_names)
    assert ev.mode == "data" and ev.supports_limit and ev.num_batches() == 18
    predict = executor_predictor(loaded)
    assert ev(predict) == pytest.approx(want)
    assert ev(predict, limit=2) == pytest.approx(accuracy(numpy_logits(x[:200], w, b), y[:200]))
    top5 = build_evaluator(eval_data=FeedSource.from_arrays({"x": x}, y), metric="top5", feed_names=["x"])
    assert top5(predict) >= want
    unlabelled = build_evaluator(eval_data=[(x[:10],)], metric="top1", feed_names=["x"])
    with pytest.raises(EvalError, match="needs labels"):
        unlabelled(predict)


def test_fidelity_reference_is_computed_once(model, digits):
    loaded, w, b = model
    x, y = digits
    reference = executor_predictor(loaded)
    calls = []

    def counted(feed):
        calls.append(1)
        return reference(feed)

    ev = build_evaluator(eval_data=FeedSource.from_arrays({"x": x}, batch_size=300), metric="fidelity",
                         feed_names=["x"], reference_predict=counted)
    assert ev(reference) == 1.0
    noisy_w = w + np.random.default_rng(0).normal(0, 0.5, w.shape).astype(np.float32)

    def noisy(feed):
        return [numpy_logits(feed["x"], noisy_w, b)]

    got = ev(noisy)
    want = float((numpy_logits(x, noisy_w, b).argmax(1) == numpy_logits(x, w, b).argmax(1)).mean())
    assert got == pytest.approx(want, abs=1e-3) and got < 1.0
    assert ev(noisy, limit=1) == pytest.approx(
        float((numpy_logits(x[:300], noisy_w, b).argmax(1) == numpy_logits(x[:300], w, b).argmax(1)).mean()),
        abs=1e-3)
    assert len(calls) == 6  # 6 batches, once each, across three evaluations
    with pytest.raises(ConfigError, match="reference_predict"):
        build_evaluator(eval_data=[(x[:10],)], metric="fidelity", feed_names=["x"])


def test_predict_callback_forms(model, digits):
    loaded, w, b = model
    x, y = digits
    want = accuracy(numpy_logits(x, w, b), y)

    def eval_fn(predict):  # the spec's form: iterates its own data, gets the predictions
        correct = 0
        for xb, yb in loader(x, y, 500):
            correct += int((predict([xb, yb])[0].argmax(1) == np.asarray(yb)[:, 0]).sum())
        return correct / len(x)

    ev = build_evaluator(eval_fn, feed_names=loaded.feed_names)
    assert ev.mode == "predict" and not ev.supports_limit
    assert ev(executor_predictor(loaded)) == pytest.approx(want)
    dict_form = build_evaluator(lambda predict: accuracy(predict({"x": x})[0], y), feed_names=["x"])
    assert dict_form(executor_predictor(loaded), limit=3) == pytest.approx(want)  # limit: n/a for callbacks
    # written for paddle tensors as the spec describes the predictions: `.numpy()` works too
    tensor_style = build_evaluator(lambda predict: accuracy(predict(x)[0].numpy(), y), feed_names=["x"])
    assert tensor_style(executor_predictor(loaded)) == pytest.approx(want)


def test_paddleslim_callback_form(model, digits):
    loaded, w, b = model
    x, y = digits
    seen = {}

    def eval_fn(exe, program, feed_names, fetch_targets):
        seen["feed_names"] = feed_names
        out = exe.run(program, feed={feed_names[0]: x}, fetch_list=fetch_targets)[0]
        return accuracy(out, y)

    ev = build_evaluator(eval_fn, feed_names=loaded.feed_names, model_context=ModelContext.from_model(loaded))
    assert ev.mode == "paddleslim"
    assert ev(executor_predictor(loaded)) == pytest.approx(accuracy(numpy_logits(x, w, b), y))
    assert seen["feed_names"] == ["x"]
    with legacy_ir():
        clone = loaded.program.clone(for_test=True)
    ctx = ModelContext.from_model(loaded, clone)
    assert ctx.fetch_targets[0].block.program is clone
    assert build_evaluator(eval_fn)(None, context=ctx) == pytest.approx(accuracy(numpy_logits(x, w, b), y))
    with pytest.raises(EvalError, match="PaddleSlim signature.*def eval\\(predict\\)"):
        build_evaluator(eval_fn)(executor_predictor(loaded))


def test_failing_callbacks_are_clear_errors(model, digits):
    loaded, _, _ = model
    predict = executor_predictor(loaded)

    def raises(predict):
        return 1 / 0

    with pytest.raises(EvalError, match="eval_callback .*raises failed: ZeroDivisionError: division by zero"):
        build_evaluator(raises)(predict)
    with pytest.raises(EvalError, match="returned nan; it must return a finite float"):
        build_evaluator(lambda p: float("nan"))(predict)
    with pytest.raises(EvalError, match="returned inf"):
        build_evaluator(lambda p: np.float32("inf"))(predict)
    with pytest.raises(EvalError, match="returned str"):
        build_evaluator(lambda p: "0.9")(predict)
    with pytest.raises(DataError, match="has 3 elements"):  # our own errors pass through unchanged
        build_evaluator(lambda p: p([1, 2, 3]), feed_names=["x"])(predict)


def test_build_evaluator_inputs(model, digits, tmp_path):
    loaded, w, b = model
    x, y = digits
    with pytest.raises(ConfigError, match="pass eval_callback"):
        build_evaluator()
    with pytest.raises(ConfigError, match="not both"):
        build_evaluator(lambda p: 1.0, eval_data=[(x, y)])
    with pytest.raises(ConfigError, match="unknown metric 'acc'"):
        build_evaluator(eval_data=[(x, y)], metric="acc", feed_names=["x"])

    def gen():  # a generator function is data, not a callback
        yield x[:100], y[:100]

    ev = build_evaluator(gen, feed_names=["x"])
    assert ev.mode == "data"
    assert ev(executor_predictor(loaded)) == pytest.approx(accuracy(numpy_logits(x[:100], w, b), y[:100]))
    from autocompress.data import write_dataset

    folder = write_dataset(tmp_path / "eval", {"x": x}, y)
    assert build_evaluator(str(folder), feed_names=["x"])(executor_predictor(loaded)) == pytest.approx(
        accuracy(numpy_logits(x, w, b), y))


def test_for_model_checks_shapes_and_casts(model, digits):
    loaded, _, _ = model
    x, y = digits
    src = FeedSource.for_model([(x[:4].astype(np.float64), y[:4])], loaded)
    assert src.first().feed["x"].dtype == np.float32
    with pytest.raises(DataError, match=r"expects \[-1, 1, 8, 8\]"):
        FeedSource.for_model([(x[:4].reshape(4, 64),)], loaded).first()
