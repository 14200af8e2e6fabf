"""ONNX export (issue 14 part 6): the PP-OCR cls model, FP32 and int8 (our PTQ, QDQ in ONNX), round-trips
through ONNX Runtime with outputs within the stated tolerance and the same top-1 on rotated rendered lines;
`Deploy.runtimes: [onnxruntime]` measures latency and the metric there and delivers the ONNX model; a missing
converter is named."""
import hashlib
import importlib.util
import json

import numpy as np
import pytest

from autocompress.errors import ModelError
from autocompress.model_io import locate_model, read_metadata

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'autocompress[onnx]') is not installed")
if importlib.util.find_spec("paddle2onnx") is None:
    pytest.skip("the onnx extra (paddle2onnx 1.3.1) is not installed", allow_module_level=True)

from autocompress.program.convert import inference_outputs  # noqa: E402
from autocompress.program.to_onnx import FP32_RTOL, INT8_REL_L1, export_onnx, onnx_predictor  # noqa: E402


@pytest.fixture(scope="module")
def cls_model():
    from autocompress.ocr import rec_model_dir

    return locate_model(rec_model_dir().parent / "ch_ppocr_mobile_v2_cls_infer")


@pytest.fixture(scope="module")
def rotated_lines():
    """16 rendered text lines, the second half turned by 180 degrees (cls label 1), as the cls input."""
    from autocompress.ocr import load_dictionary, preprocess, render_lines

    images, _ = render_lines(8, load_dictionary(), seed=3)
    images += [np.ascontiguousarray(im[::-1, ::-1]) for im in images]
    return preprocess(images, width=192), np.array([0] * 8 + [1] * 8)


@pytest.fixture(scope="module")
def cls_int8(cls_model, rotated_lines, tmp_path_factory):
    """The cls model through our PTQ (avg thresholds from 16 other rendered lines, both orientations)."""
    from autocompress.config import QuantizationConfig
    from autocompress.model_io import load_model
    from autocompress.ocr import load_dictionary, preprocess, render_lines
    from autocompress.paddle_env import legacy_ir
    from autocompress.quant.apply import QuantTemplate, save_quantized
    from autocompress.quant.calibration import collect_stats
    from autocompress.quant.targets import find_targets
    from autocompress.quant.thresholds import compute_thresholds

    images, _ = render_lines(8, load_dictionary(), seed=11)
    x = preprocess(images + [np.ascontiguousarray(im[::-1, ::-1]) for im in images], width=192)
    with legacy_ir():
        model = load_model(cls_model)
        targets = find_targets(model.program, QuantizationConfig())
        stats = collect_stats(model, [{"x": x[i:i + 4]} for i in range(0, len(x), 4)], targets, chunk_size=4)
        q = QuantTemplate(model, targets).instantiate(compute_thresholds(stats, "avg"))
        return save_quantized(q, model, tmp_path_factory.mktemp("cls-int8") / "model")


def test_cls_fp32_round_trips_through_onnxruntime(cls_model, rotated_lines, tmp_path, hashes):
    x, labels = rotated_lines
    before = hashes(cls_model.model_dir)
    path = export_onnx(cls_model.model_dir, tmp_path / "onnx")
    assert hashes(cls_model.model_dir) == before  # the input is never written to
    assert path == tmp_path / "onnx" / "model.onnx" and path.stat().st_size > 100_000
    meta = read_metadata(path.parent)["onnx"]
    check = meta["check"]
    assert meta["precision"] == "fp32" and meta["paddle2onnx"].startswith("1.3.") and meta["opset"] >= 13
    assert check["passed"] and check["enforced"] and check["max_abs_diff"] <= FP32_RTOL
    assert set(check["outputs"]) == {"softmax_0.tmp_0"}
    ref = inference_outputs(cls_model, {"x": x}, onednn=False)[1][0]
    got = onnx_predictor(path)({"x": x})[0]
    assert got.shape == ref.shape == (16, 2)
    assert np.abs(got - ref).max() <= FP32_RTOL
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert (got.argmax(1) == labels).mean() >= 0.9  # it still reads which way up a line is


def test_int8_cls_exports_as_qdq_and_keeps_its_top1(cls_int8, rotated_lines, tmp_path):
    x, labels = rotated_lines
    path = export_onnx(cls_int8.model_dir, tmp_path / "onnx", feed={"x": x})  # a real feed: the check is enforced
    data = path.read_bytes()
    assert b"QuantizeLinear" in data and b"DequantizeLinear" in data  # QDQ, not a float model
    meta = read_metadata(path.parent)
    check = meta["onnx"]["check"]
    assert meta["onnx"]["precision"] == "int8" and meta["precision"] == "int8"  # the Paddle model's metadata kept
    assert check["passed"] and check["enforced"] and check["rel_l1"] <= INT8_REL_L1
    assert check["outputs"]["softmax_0.tmp_0"]["argmax_agreement"] >= 14 / 16
    ref = inference_outputs(cls_int8, {"x": x}, onednn=False)[1][0]
    got = onnx_predictor(path)({"x": x})[0]
    assert abs((got.argmax(1) == labels).mean() - (ref.argmax(1) == labels).mean()) <= 2 / 16
    assert (got.argmax(1) == labels).mean() >= 0.85


def test_int8_on_the_random_feed_is_recorded_not_enforced(cls_int8, tmp_path):
    path = export_onnx(cls_int8.model_dir, tmp_path / "onnx")
    check = read_metadata(path.parent)["onnx"]["check"]
    assert check["enforced"] is False and "not enforced" in check["tolerance"]
    assert np.isfinite(check["rel_l1"]) and np.isfinite(check["mean_abs_diff"])


def test_cli_export_onnx(cls_model, tmp_path, capsys):
    from autocompress.cli import main

    np.savez(tmp_path / "feed.npz", x=np.random.default_rng(0).random((1, 3, 48, 192), dtype=np.float32))
    assert main(["export-onnx", str(cls_model.model_dir), str(tmp_path / "out"), "--feed", str(tmp_path / "feed.npz")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "out" / "model.onnx") in out and "within" in out and "[1, 3, 48, 192]" in out
    assert json.loads((tmp_path / "out" / "autocompress.json").read_text())["onnx"]["check"]["passed"]


def test_a_missing_converter_is_named_with_the_fix(cls_model, tmp_path, monkeypatch):
    import shutil
    import subprocess

    bare = shutil.which("python3", path="/usr/bin:/bin")
    has_it = "import importlib.util, sys; sys.exit(importlib.util.find_spec('paddle2onnx') is not None)"
    if bare is None or subprocess.run([bare, "-c", has_it]).returncode != 0:
        pytest.skip("no interpreter without paddle2onnx here")
    monkeypatch.setenv("AUTOCOMPRESS_PADDLE2ONNX_PYTHON", bare)
    with pytest.raises(ModelError) as err:
        export_onnx(cls_model.model_dir, tmp_path / "out")
    text = str(err.value)
    assert "paddle2onnx 1.3.1" in text and "pip install 'autocompress[onnx]'" in text and bare in text
    assert not (tmp_path / "out").exists()


def test_a_broken_model_is_refused_and_nothing_is_written(digits_copy, tmp_path):
    digits_copy.model_path.write_bytes(b"not a program")
    with pytest.raises(ModelError, match="could not load the model"):
        export_onnx(digits_copy.model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_onnxruntime_as_a_deploy_runtime(tmp_path, digits_files, digits_data):
    """Deploy.runtimes: [onnxruntime] gives latency rows at batch 1 and the deployment batch, and the
    compressed (int8) model's metric measured in ONNX Runtime."""
    from test_orchestration import _ptq

    s = _ptq(tmp_path, digits_files, digits_data, deploy={"runtimes": ["onnxruntime"], "batch_size": 8,
                                                          "allow_slower": True})
    rows = {(r["runtime"], r["batch"]): r for r in s["latency"]}
    assert set(rows) == {(r, b) for r in ("onednn", "onnxruntime") for b in (1, 8)}
    assert all(r["ms_before"] > 0 and r["ms_after"] > 0 for r in rows.values())
    assert "ONNX Runtime" in rows[("onnxruntime", 8)]["backend"] and "QDQ int8" in rows[("onnxruntime", 8)]["backend"]
    assert abs(rows[("onnxruntime", 8)]["metric"] - s["metric"]) <= 0.05  # the int8 model reads the same there
    assert s["metric"] > 0.8
    # the deliverable holds the ONNX model that was measured, with its check, beside the Paddle one
    onnx_path = tmp_path / "out" / "onnx" / "model.onnx"
    assert s["onnx_model"] == str(onnx_path) and onnx_path.is_file()
    meta = json.loads((onnx_path.parent / "autocompress.json").read_text())["onnx"]
    assert meta["precision"] == "int8" and meta["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    import onnxruntime

    x = digits_data["eval"][0][:8]
    got = onnxruntime.InferenceSession(str(onnx_path)).run(None, {"x": x})[0]
    assert (got.argmax(1) == np.ravel(digits_data["eval"][1][:8])).mean() >= 0.75


def test_the_onnxruntime_predictor_exports_once_and_checks_its_cache(cls_model, rotated_lines):
    import os

    from autocompress.backend import DeployTarget, inference_predictor
    from autocompress.program.to_onnx import cached_onnx

    x, _ = rotated_lines
    got = inference_predictor(cls_model, target=DeployTarget("onnxruntime"))({"x": x})[0]
    ref = inference_outputs(cls_model, {"x": x}, onednn=False)[1][0]
    assert np.abs(got - ref).max() <= FP32_RTOL
    path = cached_onnx(cls_model)
    assert oct(path.parent.parent.stat().st_mode & 0o777) == "0o700"
    stamp = path.stat().st_mtime_ns
    assert cached_onnx(cls_model) == path and path.stat().st_mtime_ns == stamp  # reused, not exported again
    path.write_bytes(b"tampered")
    os.utime(path, ns=(stamp, stamp))
    assert cached_onnx(cls_model) == path and path.read_bytes() != b"tampered"  # exported again


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("ch_PP-OCRv4_rec_infer", (2, 3, 48, 320)), ("ch_PP-OCRv4_det_infer", (1, 3, 160, 160))])
def test_pp_ocrv4_rec_and_det_fp32_round_trip(name, shape, cls_model, tmp_path):
    """The other two PP-OCRv4 models (int8 too: benchmarks/onnx_export.py, numbers in the README)."""
    files = locate_model(cls_model.model_dir.parent / name)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    path = export_onnx(files.model_dir, tmp_path / "onnx", feed={"x": x})
    check = read_metadata(path.parent)["onnx"]["check"]
    assert check["passed"] and check["enforced"] and check["inputs"] == {"x": list(shape)}
    ref = inference_outputs(files, {"x": x}, onednn=False)[1][0]
    got = onnx_predictor(path)({"x": x})[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() <= FP32_RTOL * max(1.0, float(np.abs(ref).max()))


def test_a_pir_model_exports_through_its_legacy_translation(digits_pir_files, digits_data, tmp_path):
    x = digits_data["eval"][0][:16]
    path = export_onnx(digits_pir_files.model_dir, tmp_path / "onnx", feed={"x": x})
    meta = read_metadata(path.parent)["onnx"]
    assert meta["format"] == "pir-json" and meta["from"] == "inference.json" and meta["check"]["passed"]
    ref = inference_outputs(digits_pir_files, {"x": x})[1][0]
    got = onnx_predictor(path)({"x": x})[0]
    assert np.abs(got - ref).max() <= FP32_RTOL and np.array_equal(got.argmax(1), ref.argmax(1))
