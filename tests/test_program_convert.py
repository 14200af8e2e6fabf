"""`convert_to_pir` / `autocompress convert --to pir`: legacy .pdmodel -> Paddle 3 PIR .json, same outputs
in Paddle Inference; the native PIR digits model (`digits_pir_files`)."""
import json
import shutil

import numpy as np
import paddle
import pytest

from autocompress.data import FeedSource
from autocompress.errors import AutoCompressError, ModelError
from autocompress.model_io import locate_model, read_metadata
from autocompress.program.convert import convert_to_pir
from autocompress.program.convert import inference_outputs as infer  # a stock Paddle Inference CPU predictor


def assert_close(ref, got, rtol=1e-4):
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape
        assert np.abs(r - g).max() <= rtol * max(1.0, np.abs(r).max())


def test_digits_converts_to_pir_with_the_same_outputs(digits_copy, digits_data, tmp_path, hashes):
    before = hashes(digits_copy.model_dir)
    out = convert_to_pir(digits_copy.model_dir, tmp_path / "pir")
    assert hashes(digits_copy.model_dir) == before  # input untouched
    assert (out.model_filename, out.params_filename, out.format) == ("inference.json", "inference.pdiparams",
                                                                     "pir-json")
    assert sorted(p.name for p in out.model_dir.iterdir()) == ["autocompress.json", "inference.json",
                                                                "inference.pdiparams"]
    assert locate_model(out.model_dir).format == "pir-json"
    assert out.model_path.read_text().startswith('{"base_code":{"magic":"pir"')
    feed = {"x": digits_data["eval"][0][:64]}
    ref_names, ref = infer(digits_copy, feed)
    names, got = infer(out, feed)
    assert names == ref_names == ["linear_0.tmp_1"]  # deploy code asking for the output by name still works
    assert_close(ref, got)
    assert np.array_equal(ref[0].argmax(1), got[0].argmax(1))
    check = read_metadata(out.model_dir)["conversion"]
    assert check["paddle_version"] == paddle.__version__ and check["warnings"] == []
    assert 0 <= check["max_abs_diff"] <= check["tolerance"]


def test_the_file_stem_is_kept_and_the_cli_verb_writes_the_files(digits_files, tmp_path, capsys, hashes):
    from autocompress.cli import main

    src = tmp_path / "model"
    src.mkdir()
    shutil.copy(digits_files.model_path, src / "digits.pdmodel")
    shutil.copy(digits_files.params_path, src / "digits.pdiparams")
    (src / "digits.pdiparams.info").write_bytes(b"")  # training metadata, as PaddleOCR ships it
    before = hashes(src)
    rc = main(["convert", "--to", "pir", str(src), str(tmp_path / "out"), "--model-filename", "digits.pdmodel",
               "--params-filename", "digits.pdiparams"])
    assert rc == 0
    assert hashes(src) == before
    printed = capsys.readouterr().out
    assert str(tmp_path / "out" / "digits.json") in printed and "max |legacy - pir|" in printed
    out = locate_model(tmp_path / "out")
    assert (out.model_filename, out.params_filename, out.format) == ("digits.json", "digits.pdiparams", "pir-json")
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    assert_close(infer(digits_files, {"x": x})[1], infer(out, {"x": x})[1])


def test_real_pp_ocrv4_rec_converts_and_reads_the_same(tmp_path, hashes):
    from autocompress.ocr import ctc_greedy_decode, load_dictionary, preprocess, rec_model_dir, render_lines

    src = locate_model(rec_model_dir())
    before = hashes(src.model_dir)
    out = convert_to_pir(src.model_dir, tmp_path / "rec-pir")
    assert hashes(src.model_dir) == before
    assert (out.model_filename, out.params_filename) == ("inference.json", "inference.pdiparams")
    d = load_dictionary()
    images, texts = render_lines(8, d, seed=5)
    feed = {"x": preprocess(images)}
    ref_names, ref = infer(src, feed)
    names, got = infer(out, feed)
    assert names == ref_names
    assert_close(ref, got)
    assert ctc_greedy_decode(got[0], d) == ctc_greedy_decode(ref[0], d)
    assert read_metadata(out.model_dir)["conversion"]["warnings"] == []


def test_pp_ocrv4_det_converts_and_the_onednn_gap_is_named(tmp_path):
    """Paddle 3.3.1's oneDNN runtime cannot take `nearest_interp` in a PIR program (its `scale` is a list
    of float64; Paddle's own exports fail the same way): the conversion is checked without oneDNN and
    the card says so, naming the operation and the Paddle version."""
    from autocompress.ocr import rec_model_dir

    src = locate_model(rec_model_dir().parent / "ch_PP-OCRv4_det_infer")
    out = convert_to_pir(src.model_dir, tmp_path / "det-pir")
    x = np.random.default_rng(2).random((1, 3, 96, 128), dtype=np.float32)
    assert_close(infer(src, {"x": x}, onednn=False)[1], infer(out, {"x": x}, onednn=False)[1])
    warnings = read_metadata(out.model_dir)["conversion"]["warnings"]
    if paddle.__version__ == "3.3.1":
        assert len(warnings) == 1
    for warning in warnings:
        assert "'nearest_interp'" in warning and paddle.__version__ in warning and "disable_mkldnn" in warning


def test_corrupt_input_is_a_clear_error_and_writes_nothing(digits_files, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "inference.pdmodel").write_bytes(b"not a protobuf program")
    shutil.copy(digits_files.params_path, bad / "inference.pdiparams")
    with pytest.raises(AutoCompressError, match="could not load the model") as err:
        convert_to_pir(bad, tmp_path / "out")
    assert str(bad / "inference.pdmodel") in str(err.value)  # the user's file, not a private copy
    assert "Failed to parse program_desc" in str(err.value)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    shutil.copy(digits_files.model_path, truncated / "inference.pdmodel")
    (truncated / "inference.pdiparams").write_bytes(digits_files.params_path.read_bytes()[:1000])
    with pytest.raises(AutoCompressError, match="could not load the model .*loading model parameters"):
        convert_to_pir(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "truncated"]  # no temporary folders left


def test_refuses_a_pir_input_and_an_out_dir_over_the_input(digits_copy, digits_pir_files, tmp_path):
    with pytest.raises(ModelError, match="already a Paddle 3 PIR model"):
        convert_to_pir(digits_pir_files.model_dir, tmp_path / "out")
    with pytest.raises(ModelError, match="would replace the input"):
        convert_to_pir(digits_copy.model_dir, digits_copy.model_dir)
    with pytest.raises(ModelError, match="would replace the input"):
        convert_to_pir(digits_copy.model_dir, digits_copy.model_dir.parent)


def test_an_operation_the_translator_cannot_take_is_named_with_the_paddle_version(digits_copy, tmp_path,
                                                                                  monkeypatch):
    # the translator's own words for an op it has no PIR definition of (measured with Paddle 3.3.1)
    def refuse(desc):
        raise SystemError("(Fatal) Op pool2d should have corresponding OpInfo pd_op.pool2d "
                          "(at /paddle/paddle/fluid/ir_adaptor/translator/op_translator.cc:297)")

    monkeypatch.setattr(paddle.pir, "translate_to_pir", refuse)
    with pytest.raises(ModelError) as err:
        convert_to_pir(digits_copy.model_dir, tmp_path / "out")
    assert f"Paddle {paddle.__version__}" in str(err.value) and "operation 'pool2d'" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_digits_pir_files_is_a_native_pir_model_with_the_legacy_outputs(digits_pir_files, digits_files,
                                                                        digits_data):
    files = locate_model(digits_pir_files.model_dir)
    assert (files.model_filename, files.params_filename, files.format) == ("inference.json", "inference.pdiparams",
                                                                           "pir-json")
    program = json.loads(files.model_path.read_text())
    assert program["base_code"]["magic"] == "pir"
    feed = {"x": digits_data["eval"][0][:128]}
    ref = infer(digits_files, feed)[1]
    got = infer(files, feed)[1]
    assert_close(ref, got)
    assert np.array_equal(ref[0].argmax(1), got[0].argmax(1))


def test_parameter_names_match_by_layer_rank_whatever_the_counters():
    from autocompress.demo.digits import _names_by_rank

    a = _names_by_rank(["conv2d_3.w_0", "conv2d_4.w_0", "conv2d_3.b_0", "linear_7.w_0"])
    b = _names_by_rank(["conv2d_0.w_0", "conv2d_1.w_0", "conv2d_0.b_0", "linear_0.w_0"])
    assert {k: (a[k], b[k]) for k in a} == {("conv2d", 0, "w_0"): ("conv2d_3.w_0", "conv2d_0.w_0"),
                                             ("conv2d", 1, "w_0"): ("conv2d_4.w_0", "conv2d_1.w_0"),
                                             ("conv2d", 0, "b_0"): ("conv2d_3.b_0", "conv2d_0.b_0"),
                                             ("linear", 0, "w_0"): ("linear_7.w_0", "linear_0.w_0")}


def test_a_pir_model_onednn_cannot_run_is_selected_on_the_stock_runtime_when_asked(tmp_path):
    """PIR det on the default oneDNN target failed in the baseline with "fix the callback": the error
    now names the operation, the Paddle version and the fix, and Deploy.runtimes ['paddle-cpu'] first
    makes the stock runtime the job's target (a job without QuantizationConfig had no way to ask)."""
    from autocompress.backend import DeployTarget
    from autocompress.evaluation import build_evaluation
    from autocompress.job import Job
    from autocompress.ocr import det_model_dir

    out = convert_to_pir(det_model_dir(), tmp_path / "det-pir")
    x = np.random.default_rng(3).random((1, 3, 96, 128), dtype=np.float32)
    reference = infer(out, {"x": x}, onednn=False)[1][0]

    def evaluate(predict):
        return float(-np.abs(np.asarray(predict({"x": x})[0]) - reference).max())

    stock = Job.create({"PruneConfig": {"pruned_ratio": 0.25}, "DistillationConfig": {}}, {"train_iter": 1}, deploy={"runtimes": ["paddle-cpu", "onednn"]})
    assert stock.deploy_backend == "none"
    assert Job.create({"PruneConfig": {"pruned_ratio": 0.25}, "DistillationConfig": {}}, {"train_iter": 1}).deploy_backend == "onednn"
    sample = FeedSource.from_arrays({"x": x}, batch_size=1)
    if paddle.__version__ == "3.3.1":
        with pytest.raises(ModelError) as err:
            build_evaluation(out, evaluate, "top1", ["x"], DeployTarget("onednn"), sample_source=sample)
        for part in ("'nearest_interp'", paddle.__version__, "'paddle-cpu'", "legacy .pdmodel"):
            assert part in str(err.value)
        assert "callback" not in str(err.value)
    evaluation = build_evaluation(out, evaluate, "top1", ["x"], DeployTarget.for_job(stock.deploy_backend, "cpu"),
                                  sample_source=sample)
    assert evaluation.baseline == pytest.approx(0.0, abs=1e-5)
