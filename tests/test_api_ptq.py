"""The PTQ-search combination through the spec's API, on the real digits data, and its bad inputs."""
import json
import math

import numpy as np
import pytest

from autocompress import AutoCompression
from autocompress.data import FeedSource
from autocompress.errors import ConfigError, DataError, EvalError, ModelError

SMALL_SEARCH = {
    "QuantizationConfig": {},
    "HyperParameterOptimizationConfig": {"ptq_algo": ["hist", "avg"], "bias_correct": [False],
                                         "batch_size": [32], "batch_num": [2, 4], "max_quant_count": 3},
}


def _make(files, save_dir, digits_data, strategy=None, eval_callback=None, train=None, **kw):
    calib_x = digits_data["calib"][0]
    eval_x, eval_y = digits_data["eval"]
    return AutoCompression(
        model_dir=str(files.model_dir), model_filename=files.model_filename, params_filename=files.params_filename,
        save_dir=str(save_dir), strategy_config=strategy or SMALL_SEARCH, train_config=None,
        train_dataloader=train if train is not None else FeedSource.from_arrays({"x": calib_x}, batch_size=32),
        eval_callback=eval_callback if eval_callback is not None else
        FeedSource.from_arrays({"x": eval_x}, labels=eval_y, batch_size=100),
        devices="cpu", progress=False, **kw)


def test_ptq_search_end_to_end(digits_copy, digits_data, tmp_path, hashes):
    before = hashes(digits_copy.model_dir)
    summary = _make(digits_copy, tmp_path / "out", digits_data).compression()
    assert hashes(digits_copy.model_dir) == before
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in ("strategy", "baseline_metric", "metric", "metric_drop", "size_bytes_before", "size_bytes_after",
                "latency_ms_before", "latency_ms_after", "trials", "seconds", "peak_rss_bytes", "target_met",
                "params_before", "params_after", "flops_before", "flops_after"):
        assert key in on_disk, key
    assert on_disk["strategy"] == "ptq_hpo" and on_disk["precision"] == "int8"
    assert on_disk["baseline_metric"] > 0.95
    assert on_disk["metric_drop"] <= 0.01 and on_disk["target_met"] is True
    assert on_disk["param_bytes_after"] <= 0.3 * on_disk["param_bytes_before"]
    assert 1 <= len(on_disk["trials"]) <= 3
    for trial in on_disk["trials"]:
        assert set(trial["config"]) >= {"ptq_algo", "batch_num"} and math.isfinite(trial["metric"])
        assert trial["seconds"] > 0
    assert (tmp_path / "out" / "report.md").read_text().startswith("# autocompress report: ptq_hpo")
    assert summary["metric"] == on_disk["metric"]


def _assert_nothing_written(save_dir):
    assert not save_dir.exists() or not any(p.suffix in (".pdmodel", ".pdiparams") for p in save_dir.rglob("*"))
    assert not (save_dir / "summary.json").exists()


def test_missing_model_dir(digits_data, tmp_path, digits_copy):
    with pytest.raises(ModelError, match="does not exist"):
        AutoCompression(str(tmp_path / "nope"), None, None, str(tmp_path / "out"), SMALL_SEARCH, None,
                        [{"x": np.zeros((1, 1, 8, 8), "float32")}], lambda p: 1.0, devices="cpu")
    assert not (tmp_path / "out").exists()


def test_wrong_model_file_name(digits_copy, digits_data, tmp_path):
    with pytest.raises(ModelError, match="model.pdmodel does not exist"):
        AutoCompression(str(digits_copy.model_dir), "model.pdmodel", None, str(tmp_path / "out"), SMALL_SEARCH, None,
                        [{"x": np.zeros((1, 1, 8, 8), "float32")}], lambda p: 1.0, devices="cpu")


def test_corrupt_model_file(digits_copy, digits_data, tmp_path, hashes):
    digits_copy.model_path.write_bytes(b"not a program")
    before = hashes(digits_copy.model_dir)
    with pytest.raises(ModelError, match="could not load the model"):
        _make(digits_copy, tmp_path / "out", digits_data).compression()
    assert hashes(digits_copy.model_dir) == before
    _assert_nothing_written(tmp_path / "out")


def test_unknown_config_key(digits_copy, digits_data, tmp_path):
    bad = {"QuantizationConfig": {"weight_bit": 8}, "HyperParameterOptimizationConfig": {}}
    with pytest.raises(ConfigError, match="weight_bit: unknown key"):
        _make(digits_copy, tmp_path / "out", digits_data, strategy=bad)
    assert not (tmp_path / "out").exists()


def test_unknown_ptq_algo(digits_copy, digits_data, tmp_path):
    bad = {"QuantizationConfig": {}, "HyperParameterOptimizationConfig": {"ptq_algo": ["KL", "fancy"]}}
    with pytest.raises(ConfigError, match="unknown ptq_algo 'fancy'"):
        _make(digits_copy, tmp_path / "out", digits_data, strategy=bad)


def test_empty_data(digits_copy, digits_data, tmp_path):
    with pytest.raises(DataError, match="no batches"):
        _make(digits_copy, tmp_path / "out", digits_data, train=[]).compression()
    _assert_nothing_written(tmp_path / "out")


def test_eval_callback_that_raises(digits_copy, digits_data, tmp_path):
    def broken(predict):
        raise KeyError("labels")

    with pytest.raises(EvalError, match="KeyError"):
        _make(digits_copy, tmp_path / "out", digits_data, eval_callback=broken).compression()
    _assert_nothing_written(tmp_path / "out")


def test_eval_callback_that_returns_nan(digits_copy, digits_data, tmp_path):
    with pytest.raises(EvalError, match="nan|non-finite|NaN"):
        _make(digits_copy, tmp_path / "out", digits_data, eval_callback=lambda predict: float("nan")).compression()
    _assert_nothing_written(tmp_path / "out")


def test_eval_function_receives_predictions(digits_copy, digits_data, tmp_path):
    """The spec's callback form: gets a predict callable, computes its own metric."""
    eval_x, eval_y = digits_data["eval"]
    seen = []

    def my_accuracy(predict):
        out = predict({"x": eval_x})[0]
        seen.append(out.shape)
        return float((out.argmax(1) == eval_y[:, 0]).mean())

    summary = _make(digits_copy, tmp_path / "out", digits_data, eval_callback=my_accuracy).compression()
    assert seen[0] == (len(eval_x), 10)
    assert summary["metric_name"] == "eval_callback" and summary["baseline_metric"] > 0.95


def test_data_that_does_not_fit_the_model(digits_copy, digits_data, tmp_path):
    wrong_shape = FeedSource.from_arrays({"x": np.zeros((8, 1, 9, 9), "float32")}, batch_size=4)
    with pytest.raises(DataError, match="shape"):
        _make(digits_copy, tmp_path / "out", digits_data, train=wrong_shape).compression()
    wrong_name = FeedSource.from_arrays({"image": np.zeros((8, 1, 8, 8), "float32")}, batch_size=4)
    with pytest.raises(DataError, match="x"):
        _make(digits_copy, tmp_path / "out", digits_data, train=wrong_name).compression()
    _assert_nothing_written(tmp_path / "out")
