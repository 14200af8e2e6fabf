"""`pir_to_legacy`: a Paddle 3 PIR inference model -> an equivalent legacy `.pdmodel` program (the format every
compression engine works on), checked in Paddle Inference; round trips with `convert_to_pir`."""
import numpy as np
import paddle
import pytest

from autocompress.errors import ModelError
from autocompress.model_io import load_model, locate_model, read_metadata
from autocompress.paddle_env import legacy_ir
from autocompress.program.convert import convert_to_pir
from autocompress.program.convert import inference_outputs as infer  # a stock Paddle Inference CPU predictor
from autocompress.program.to_legacy import pir_to_legacy, supported_ops


def assert_close(ref, got, rtol=1e-4):
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape
        assert np.abs(r - g).max() <= rtol * max(1.0, np.abs(r).max())


def test_native_pir_digits_translates_to_an_equivalent_legacy_model(digits_pir_files, digits_files, digits_data,
                                                                     tmp_path, hashes):
    before = hashes(digits_pir_files.model_dir)
    out = pir_to_legacy(digits_pir_files, tmp_path / "legacy")
    assert hashes(digits_pir_files.model_dir) == before  # input untouched
    assert (out.model_filename, out.params_filename, out.format) == ("inference.pdmodel", "inference.pdiparams",
                                                                     "pdmodel")
    assert locate_model(out.model_dir).format == "pdmodel"
    feed = {"x": digits_data["eval"][0][:64]}
    ref_names, ref = infer(digits_pir_files, feed)
    names, got = infer(out, feed)
    assert names == ref_names == ["fetch_name_0"]  # the PIR model's output name is kept
    assert_close(ref, got)
    assert np.array_equal(ref[0].argmax(1), got[0].argmax(1))
    assert_close(infer(digits_files, feed)[1], got)  # and it is the digits CNN it was exported from
    check = read_metadata(out.model_dir)["translation"]
    assert check["paddle_version"] == paddle.__version__ and 0 <= check["max_abs_diff"] <= check["tolerance"]
    with legacy_ir():  # what the compression engines do with it
        model = load_model(out)
        assert model.feed_names == ["x"] and model.fetch_names == ["fetch_name_0"]
        types = {op.type for op in model.program.global_block().ops}
        assert {"conv2d", "batch_norm", "pool2d", "flatten_contiguous_range", "matmul_v2"} <= types
        result = model.executor.run(model.program, feed=feed, fetch_list=model.fetch_targets, scope=model.scope)
    assert_close(ref, result)


@pytest.mark.parametrize("name", ["cls", "rec"])
def test_pp_ocr_round_trip_legacy_pir_legacy(name, tmp_path, hashes):
    from autocompress.ocr import rec_model_dir

    if name == "rec":
        src = locate_model(rec_model_dir())
        x = np.random.default_rng(0).random((2, 3, 48, 160), dtype=np.float32)
    else:  # PP-OCR mobile v2 direction classifier, shipped next to the rec model
        src = locate_model(rec_model_dir().parent / "ch_ppocr_mobile_v2_cls_infer")
        x = np.random.default_rng(0).random((2, 3, 48, 192), dtype=np.float32)
    pir = convert_to_pir(src.model_dir, tmp_path / "pir")
    before = hashes(pir.model_dir)
    back = pir_to_legacy(pir, tmp_path / "legacy", feed={"x": x})
    assert hashes(pir.model_dir) == before
    ref_names, ref = infer(src, {"x": x})
    names, got = infer(back, {"x": x})
    assert names == ref_names  # the original fetch names survive both ways
    assert_close(ref, got)
    with legacy_ir():
        model = load_model(back)
        assert model.fetch_names == ref_names


def test_an_unsupported_operation_is_named(tmp_path):
    paddle.enable_static()
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.pir_utils.IrGuard():
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [-1, 4], "float32")
            y = paddle.cumsum(paddle.nn.Linear(4, 3)(x), axis=1)
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            paddle.static.save_inference_model(str(tmp_path / "model" / "inference"), [x], [y], exe, program=main)
    files = locate_model(tmp_path / "model")
    assert files.format == "pir-json"
    assert "pd_op.cumsum" not in supported_ops()
    with pytest.raises(ModelError) as err:
        pir_to_legacy(files, tmp_path / "out")
    text = str(err.value)
    assert "'pd_op.cumsum'" in text and paddle.__version__ in text and "legacy format" in text
    assert "OldIrGuard" in text
    assert not (tmp_path / "out").exists()


def test_a_legacy_model_is_refused(digits_files, tmp_path):
    with pytest.raises(ModelError, match="not a Paddle 3 PIR model"):
        pir_to_legacy(digits_files, tmp_path / "out")
