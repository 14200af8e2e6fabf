"""Metrics on hand-made arrays with exact expected numbers."""
import math
import textwrap

import numpy as np
import pytest

from autocompress.errors import ConfigError, EvalError
from autocompress.metrics import ArgmaxRef, fidelity, load_metric, top1, top5

SCORES = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.5, 0.5]], np.float32)


def test_top1_exact_and_ties_go_to_lower_index():
    assert top1(SCORES, np.array([1, 0, 0, 0])) == 0.75          # row 3 is a tie -> class 0
    assert top1([SCORES], np.array([[1], [0], [0], [1]])) == 0.5  # list of outputs, [N, 1] labels
    assert top1(np.zeros((4, 3), np.float32), np.array([0, 1, 2, 0])) == 0.5  # constant output: only class 0


def test_top5_exact():
    scores = np.array([[7, 6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6, 7]], np.float32)
    assert top5(scores, np.array([4, 4])) == 1.0
    assert top5(scores, np.array([5, 1])) == 0.0
    assert top5(scores, np.array([0, 1])) == 0.5
    assert top5(SCORES, np.array([0, 1, 0, 1])) == 1.0            # fewer than 5 classes: all count


def test_accumulates_over_batches():
    acc = load_metric("top1").accumulator()
    acc.update([SCORES[:3]], np.array([1, 0, 0]))
    acc.update([SCORES[3:]], np.array([0]))
    assert acc.result() == 0.75


def test_label_errors():
    with pytest.raises(EvalError, match="needs labels.*use metric 'fidelity'"):
        top1(SCORES, None)
    with pytest.raises(EvalError, match="got 3 labels for 4 samples"):
        top1(SCORES, np.array([1, 0, 0]))
    with pytest.raises(EvalError, match=r"class scores of shape \[N, C\]"):
        top1(np.zeros((4, 2, 3)), np.zeros(4, np.int64))
    with pytest.raises(EvalError, match="class indices"):
        top1(SCORES, np.array([0.5, 1, 0, 0]))
    with pytest.raises(EvalError, match="no samples"):
        load_metric("top1").accumulator().result()


def test_fidelity_classes_sequences_and_ids():
    ref = np.array([[0.2, 0.8], [0.3, 0.7], [0.1, 0.9], [0.7, 0.3]], np.float32)
    assert fidelity(SCORES, ref) == 0.75  # argmax 1,0,1,0 (tie -> 0) vs 1,1,1,0
    seq = np.zeros((2, 3, 4), np.float32)
    seq_ref = np.zeros((2, 3, 4), np.float32)
    seq[..., 1] = 1
    seq_ref[..., 1] = 1
    seq_ref[0, 0, 2] = 2
    seq_ref[1, 2, 3] = 2
    assert fidelity(seq, seq_ref) == pytest.approx(4 / 6)  # 6 positions, 4 agree
    assert fidelity(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75  # integer class ids


def test_fidelity_continuous():
    out = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], np.float32).reshape(3, 1, 2, 2)
    ref = np.array([[2, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.float32).reshape(3, 1, 2, 2)
    assert fidelity(out, ref) == pytest.approx((1 + 1 / math.sqrt(2) + 1) / 3)  # both zero -> 1
    # one value per sample: 1 - relative error, floored at 0
    got = fidelity(np.array([[1.1], [2.0], [9.0]]), np.array([[1.0], [4.0], [3.0]]))
    assert got == pytest.approx((0.9 + 0.5 + 0) / 3)
    # NaN from a broken model scores 0 for that sample instead of crashing the search
    bad = out.copy()
    bad[0, 0, 0, 0] = np.nan
    assert fidelity(bad, ref) == pytest.approx((0 + 1 / math.sqrt(2) + 1) / 3)


def test_fidelity_several_outputs_and_argmax_reference():
    ref = np.array([[0.2, 0.8], [0.3, 0.7], [0.1, 0.9], [0.7, 0.3]], np.float32)
    ids = np.array([1, 2, 3, 4])
    assert fidelity([SCORES, ids], [ref, np.array([0, 0, 3, 4])]) == pytest.approx((0.75 + 0.5) / 2)
    assert fidelity([SCORES], [ArgmaxRef.of(ref)]) == 0.75
    with pytest.raises(EvalError, match=r"output 0 has shape \[4, 2\]"):
        fidelity(SCORES, ref[:3])
    with pytest.raises(EvalError, match="2 outputs but the reference has 1"):
        fidelity([SCORES, ids], [ref])


def test_load_metric_names_and_plugins(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown metric 'top3'; allowed: \['top1', 'top5', 'fidelity'\]"):
        load_metric("top3")
    (tmp_path / "my_metrics.py").write_text(textwrap.dedent("""
        import numpy as np
        calls = []
        def mean_max(outputs, labels):
            calls.append((len(outputs), outputs[0].shape, None if labels is None else labels.shape))
            return float(outputs[0].max(axis=1).mean())
        def boom(outputs, labels):
            raise RuntimeError("bad metric")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    metric = load_metric("my_metrics:mean_max")
    acc = metric.accumulator()
    acc.update([SCORES[:2]], np.array([1, 0]))
    acc.update([SCORES[2:]], np.array([0, 0]))
    assert acc.result() == pytest.approx((0.9 + 0.8 + 0.7 + 0.5) / 4)
    assert importlib.import_module("my_metrics").calls == [(1, (4, 2), (4,))]  # one call on all batches
    with pytest.raises(EvalError, match="metric plugin my_metrics:boom failed: RuntimeError: bad metric"):
        load_metric("my_metrics:boom")(SCORES, None)
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        load_metric("my_metrics:nope")
    with pytest.raises(ConfigError, match="not of the form"):
        load_metric("my_metrics:mean max")
